//! Configuration parsing and validation from bytes: no input may panic, hang or grow memory.
#![no_main]

use std::path::Path;

use keyprov::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::from_bytes(Path::new("/fuzz/keyprov.yaml"), data) {
        Ok(config) => {
            let _ = config.manifest_context();
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            for diagnostic in &diagnostics {
                let _ = diagnostic.to_string();
            }
        }
    }
});

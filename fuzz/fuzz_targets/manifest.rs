//! Manifest loading and validation from bytes: no input may panic, hang or grow memory.
#![no_main]

use std::path::{Path, PathBuf};

use keyprov::manifest::{self, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let state = PathBuf::from("/nonexistent-keyprov-fuzz/state");
    let roots = [PathBuf::from("/nonexistent-keyprov-fuzz/ssl")];
    let hooks = [PathBuf::from("/bin/echo")];
    let ctx = Context {
        state_dir: &state,
        output_roots: &roots,
        hooks_allowed: &hooks,
        check_hooks_allowed: true,
    };
    let loaded = manifest::load_bytes(Path::new("/fuzz/manifests.d/m.yaml"), data, &ctx);
    // A file either yields keys or says why not, never both.
    assert!(loaded.diagnostics.is_empty() || loaded.keys.is_empty());
    for diagnostic in &loaded.diagnostics {
        let _ = diagnostic.to_string();
    }
});

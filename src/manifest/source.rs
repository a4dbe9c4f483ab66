//! Reading a manifest or configuration file safely: only regular files (a FIFO or a symlink to
//! `/dev/zero` is refused at once instead of blocking or streaming forever), at most a size
//! cap, UTF-8 text with no NUL, an optional UTF-8 byte order mark dropped.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The UTF-8 byte order mark some editors write first.
const BOM: &str = "\u{feff}";

/// Reads `path` as YAML text of at most `max_bytes` bytes; the error says what is wrong.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String, String> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; std adds O_CLOEXEC.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|err| format!("cannot open: {err}"))?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot inspect: {err}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}; expected a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read: {err}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    decode(bytes)
}

fn too_large(max_bytes: u64) -> String {
    format!(
        "file is larger than {} MiB; split it into several files",
        max_bytes >> 20
    )
}

/// Turns file contents into text: UTF-8 without NUL bytes, a leading byte order mark removed.
pub fn decode(bytes: Vec<u8>) -> Result<String, String> {
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!(
            "binary content (NUL byte at offset {at}); expected UTF-8 YAML text"
        ));
    }
    let mut text = String::from_utf8(bytes).map_err(|err| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); expected UTF-8 YAML text",
            err.utf8_error().valid_up_to()
        )
    })?;
    if text.starts_with(BOM) {
        text.drain(..BOM.len());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_text_and_drops_a_bom() {
        assert_eq!(
            decode(b"\xef\xbb\xbfkind: x\n".to_vec()).unwrap(),
            "kind: x\n"
        );
        assert_eq!(decode(b"a: 1".to_vec()).unwrap(), "a: 1");
        assert!(
            decode(b"a\0".to_vec())
                .unwrap_err()
                .contains("NUL byte at offset 1")
        );
        assert!(
            decode(b"a: \xff".to_vec())
                .unwrap_err()
                .contains("offset 3")
        );
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_text(&fifo, 100).unwrap_err(),
            "is a FIFO; expected a regular file"
        );
        let zero = tmp.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(
            read_text(&zero, 100)
                .unwrap_err()
                .contains("character device")
        );
        assert!(
            read_text(tmp.path(), 100)
                .unwrap_err()
                .contains("a directory")
        );
        let big = tmp.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; 3 << 20]).unwrap();
        assert!(
            read_text(&big, 2 << 20)
                .unwrap_err()
                .contains("larger than 2 MiB")
        );
        assert_eq!(read_text(&big, 3 << 20).unwrap().len(), 3 << 20);
    }
}

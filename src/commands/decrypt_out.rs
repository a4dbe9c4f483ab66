//! Where `keyprov decrypt` puts the private key: stdout (`--out -`, or no `--out`), or a file
//! that is new or a regular file, replaced atomically with mode 0600. Anything else at the path
//! (a device such as `/dev/null`, a symlink such as `/dev/stdout`, a FIFO, a directory, a
//! socket) is refused before anything is decrypted, and left exactly as it is: replacing it
//! would put a private key where a device node or link was.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

/// Parses `--version`: a generation number, `1`, or its directory name, `v0001`.
pub fn parse_generation(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix(['v', 'V']).unwrap_or(text);
    match digits.parse::<u32>() {
        Ok(generation) if generation > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(generation)
        }
        _ => Err(format!(
            "{text:?} is not a generation: give its number (1) or its version name (v0001)"
        )),
    }
}

/// What a file at the path is, in words, when it is not one `--out` may replace.
fn refused_kind(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_symlink() {
        Some("a symbolic link")
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

fn refusal(path: &Path, kind: &str) -> String {
    format!(
        "--out {}: it is {kind}; keyprov writes the private key only to a new path or over a \
         regular file (use `--out -` or no --out for stdout): nothing was written",
        path.display()
    )
}

/// Whether `path` may take the private key: `Ok(true)` when a regular file is there,
/// `Ok(false)` when nothing is; an error naming the path and what is there otherwise.
/// Called before decrypting, so that a refused path costs no KMS call.
pub fn check(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match refused_kind(meta.file_type()) {
            None => Ok(true),
            Some(kind) => Err(refusal(path, kind)),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(format!(
            "--out {}: cannot inspect it: {err}",
            path.display()
        )),
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (a temporary file beside it, fsync,
/// then an exchange or a no-replace rename), never over anything but a regular file: what
/// another process put at the path after [`check`] is swapped back and refused.
pub fn write(path: &Path, contents: &[u8]) -> Result<(), String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let existed = check(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temporary_name(dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| cannot(&e))?;
    let placed = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| cannot(&e))
        .and_then(|()| {
            drop(file);
            place(&tmp, path, existed)
        });
    // The temporary name holds our file (on failure) or the replaced regular file.
    let _ = std::fs::remove_file(&tmp);
    placed
}

/// A name for the temporary file in `dir` that no one uses.
fn temporary_name(dir: &Path) -> PathBuf {
    let mut name = OsString::from(".keyprov-decrypt-");
    name.push(uuid::Uuid::new_v4().simple().to_string());
    dir.join(name)
}

/// Moves the written `tmp` to `path`: over the regular file there (`existed`) by an atomic
/// exchange, checked afterwards, or onto a free name without replacing anything.
fn place(tmp: &Path, path: &Path, existed: bool) -> Result<(), String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    if !existed {
        return match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(()),
            // Something appeared meanwhile: say what, leave it.
            Err(Errno::EEXIST) => Err(check(path).err().unwrap_or_else(|| {
                format!(
                    "--out {}: a file appeared there while keyprov was writing; nothing was \
                     replaced, run again",
                    path.display()
                )
            })),
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                std::fs::hard_link(tmp, path).map_err(|e| cannot(&e))
            }
            Err(e) => Err(cannot(&e)),
        };
    }
    match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {
            // `tmp` now names what was at the path: a regular file is dropped by the caller;
            // anything else is put back.
            let swapped = std::fs::symlink_metadata(tmp).map_err(|e| cannot(&e))?;
            match refused_kind(swapped.file_type()) {
                None => Ok(()),
                Some(kind) => {
                    renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE)
                        .map_err(|e| cannot(&e))?;
                    Err(refusal(path, kind))
                }
            }
        }
        // A file system without exchange: checked once more, then renamed over.
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            check(path)?;
            std::fs::rename(tmp, path).map_err(|e| cannot(&e))
        }
        Err(e) => Err(cannot(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_numbers_or_version_names() {
        assert_eq!(parse_generation("1"), Ok(1));
        assert_eq!(parse_generation("v0001"), Ok(1));
        assert_eq!(parse_generation("v12"), Ok(12));
        for bad in ["v", "0", "v0000", "-1", "+1", "x1", "1.0", "v 1", ""] {
            assert!(parse_generation(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_regular_file_is_replaced_and_a_new_path_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn anything_else_is_refused_and_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write(&link, b"secret").unwrap_err();
        assert!(err.contains("a symbolic link"), "{err}");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let err = write(dir.path(), b"secret").unwrap_err();
        assert!(err.contains("a directory"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

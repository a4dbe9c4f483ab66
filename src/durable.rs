//! Durability: flushing what was written (files, directories, whole filesystems) before the
//! next step relies on it.

use std::fs::File;
use std::path::Path;

/// fsyncs a directory (or file) by path, so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

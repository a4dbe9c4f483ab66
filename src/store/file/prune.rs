//! Removing old or never-linked versions: renamed aside first, then deleted.

use super::*;

/// Removes old or never-linked versions; links to them go first, and `jwks.json` follows the
/// links before any version goes (with `keep: 0` the previous version is pruned right after an
/// activation: a set still listing it would fail `verify`). Each is renamed aside (durably)
/// before it is deleted, so a crash leaves garbage to collect, never a half-deleted version
/// under its own name.
pub fn prune(output: &FileOutput, generations: &[u32]) -> Result<(), StoreError> {
    let dir = existing_key_dir(output)?;
    if let Some(current) = read_link_generation(&dir, CURRENT)?
        && generations.contains(&current)
    {
        return Err(StoreError::Corrupt {
            path: dir.path().display().to_string(),
            message: format!("refusing to prune the current generation {current}"),
        });
    }
    let mut unlinked = false;
    for link in [PREVIOUS, NEXT] {
        if read_link_generation(&dir, link)?.is_some_and(|g| generations.contains(&g)) {
            set_link(&dir, link, None)?;
            unlinked = true;
        }
    }
    if unlinked {
        let mut sync = SyncSet::default();
        public::write_jwks(&dir, output, &mut sync)?;
        sync.flush()?;
    }
    let mut trash = Vec::new();
    for &generation in generations {
        let name = version_name(generation);
        if dir.stat(&name).is_none() {
            continue;
        }
        let aside = temporary_name(TRASH_PREFIX, &name);
        dir.remove_tree(&aside)?;
        dir.rename(&name, &aside)?;
        trash.push(aside);
    }
    dir.sync()?;
    for aside in trash {
        dir.remove_tree(&aside)?;
    }
    dir.sync()
}

//! Containment of output directories: a manifest from Git must not write outside the daemon's
//! state directory or the configured output roots, neither with `..`, nor with an absolute
//! path elsewhere, nor through a symlink leading out.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Resolves an output `dir` into (containing root, directory) as written in a manifest: default `<stateDir>/keys/<name>`, relative
/// paths under `stateDir`, absolute paths only inside `stateDir` or one of `output_roots`.
pub fn resolve_output_dir(
    dir: Option<&str>,
    name: &str,
    state_dir: &Path,
    output_roots: &[PathBuf],
) -> Result<(PathBuf, PathBuf), String> {
    let Some(dir) = dir else {
        return Ok((state_dir.to_path_buf(), state_dir.join("keys").join(name)));
    };
    if dir.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let path = Path::new(dir);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{dir:?} contains \"..\"; output directories must stay inside stateDir or an outputRoot"
        ));
    }
    let resolved: PathBuf = if path.is_absolute() {
        path.components().collect()
    } else {
        state_dir.join(path).components().collect()
    };
    let roots = std::iter::once(state_dir).chain(output_roots.iter().map(PathBuf::as_path));
    let Some(root) = roots
        .clone()
        .find(|root| resolved.starts_with(root) && resolved != *root)
    else {
        let allowed: Vec<String> = roots.map(|r| r.display().to_string()).collect();
        return Err(format!(
            "{dir:?} is outside stateDir and outputRoots (allowed: {}); add its parent to outputRoots in the config",
            allowed.join(", ")
        ));
    };
    // keyprov's own: a key directory there would be pruned with them once its key is gone.
    for (reserved, what) in [
        (crate::state_layout::RETRY_DIR, "its retry records"),
        (crate::state_layout::LEDGER_DIR, "its ledger records"),
    ] {
        let reserved = state_dir.join(reserved);
        if resolved.starts_with(&reserved) {
            return Err(format!(
                "{dir:?} is {}, which keyprov keeps {what} in; choose another directory",
                reserved.display()
            ));
        }
    }
    ensure_no_symlink_escape(root, &resolved)?;
    Ok((root.to_path_buf(), resolved))
}

/// Checks that no symlink below `root` on the way to `path` leads outside `root`. Called at
/// validation and again just before writing. Costs one `lstat` per existing component.
pub fn ensure_no_symlink_escape(root: &Path, path: &Path) -> Result<(), String> {
    let Ok(relative) = path.strip_prefix(root) else {
        return Err(format!(
            "{} is not inside {}",
            path.display(),
            root.display()
        ));
    };
    let mut walked = root.to_path_buf();
    for component in relative.components() {
        walked.push(component);
        match walked.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                let real = walked.canonicalize().map_err(|err| {
                    format!(
                        "{} is a symlink that cannot be resolved: {err}",
                        walked.display()
                    )
                })?;
                let real_root = root
                    .canonicalize()
                    .map_err(|err| format!("cannot resolve {}: {err}", root.display()))?;
                if !real.starts_with(&real_root) {
                    return Err(format!(
                        "{} leads through a symlink to {}, outside {}",
                        walked.display(),
                        real.display(),
                        root.display()
                    ));
                }
            }
            Ok(_) => {}
            // Nothing below a missing directory can be a symlink yet.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(format!("cannot inspect {}: {err}", walked.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_contains() {
        let state = Path::new("/nonexistent-keyprov/state");
        let roots = [PathBuf::from("/nonexistent-keyprov/ssl")];
        let ok =
            |dir: Option<&str>| resolve_output_dir(dir, "k", state, &roots).map(|(_, dir)| dir);
        assert_eq!(ok(None).unwrap(), state.join("keys/k"));
        assert_eq!(ok(Some("a/b")).unwrap(), state.join("a/b"));
        assert_eq!(ok(Some("./a")).unwrap(), state.join("a"));
        assert_eq!(
            ok(Some("/nonexistent-keyprov/ssl/k")).unwrap(),
            roots[0].join("k")
        );
        assert!(ok(Some("../x")).unwrap_err().contains("\"..\""));
        assert!(ok(Some("a/../../x")).unwrap_err().contains("\"..\""));
        assert!(
            ok(Some("/etc/ssl"))
                .unwrap_err()
                .contains("outside stateDir")
        );
        assert!(
            ok(Some("/nonexistent-keyprov/ssl"))
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            ok(Some("/nonexistent-keyprov/sslx/k"))
                .unwrap_err()
                .contains("outside")
        );
        assert!(ok(Some("")).unwrap_err().contains("empty"));
        // keyprov's own directories (a key there would take them along when pruned).
        for dir in [
            "retry",
            "retry/x",
            "ledger",
            "ledger/manifest-cache",
            "/nonexistent-keyprov/state/ledger/x",
        ] {
            let err = ok(Some(dir)).unwrap_err();
            assert!(err.contains("which keyprov keeps its"), "{dir}: {err}");
        }
        assert_eq!(ok(Some("ledgers")).unwrap(), state.join("ledgers"));
    }

    #[test]
    fn symlink_leading_out_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("link")).unwrap();
        std::fs::create_dir_all(state.join("keys")).unwrap();
        std::os::unix::fs::symlink("keys", state.join("inner")).unwrap();
        let err = resolve_output_dir(Some("link/k"), "k", &state, &[]).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        resolve_output_dir(Some("inner/k"), "k", &state, &[]).unwrap();
    }
}

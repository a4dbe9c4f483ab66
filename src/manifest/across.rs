//! The checks no single manifest file can make: unique key names, distinct output directories
//! and distinct secrets across every file loaded.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use super::Output;
use super::file::ManifestFile;

/// Checks what no single file can: unique names, distinct output directories and secrets.
/// A clash is reported on the later file, which is thereby invalid; the name (or both names)
/// concerned are frozen.
pub(super) fn check_across_files(files: &mut [ManifestFile], frozen: &mut BTreeSet<String>) {
    let mut names: HashMap<String, (usize, usize)> = HashMap::new();
    // Directories taken, and every ancestor of one (mapped to the directory below it).
    let mut dirs: HashMap<PathBuf, (usize, usize, usize, String)> = HashMap::new();
    let mut ancestors: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut secrets: HashMap<String, (usize, usize, usize, String)> = HashMap::new();
    for f in 0..files.len() {
        for k in 0..files[f].keys.len() {
            let (doc, name) = (files[f].keys[k].0, files[f].keys[k].1.name.clone());
            if let Some(&(of, od)) = names.get(&name) {
                // Reported where it was added: in the file changed last (the other, earlier
                // definition is named in the message).
                let modified = |i: usize| {
                    std::fs::metadata(&files[i].path)
                        .and_then(|m| m.modified())
                        .ok()
                };
                let (at, at_doc, other, other_doc) = if of != f && modified(of) > modified(f) {
                    (of, od, f, doc)
                } else {
                    (f, doc, of, od)
                };
                let other = files[other].location(other_doc, "metadata.name");
                files[at].report(
                    at_doc,
                    "metadata.name",
                    format!("duplicate name {name:?}, also defined at {other}"),
                );
                frozen.insert(name);
                continue;
            }
            names.insert(name.clone(), (f, doc));
            let outputs = files[f].keys[k].1.outputs.clone();
            for (o, output) in outputs.iter().enumerate() {
                let field = format!("spec.outputs[{o}]");
                match output {
                    Output::File(file) => {
                        // An ancestor (or the directory itself) already taken, or a taken
                        // directory below this one: both would mix two keys' versions.
                        let clash = file
                            .dir
                            .ancestors()
                            .find_map(|a| dirs.get_key_value(a))
                            .or_else(|| {
                                ancestors
                                    .get(&file.dir)
                                    .and_then(|below| dirs.get_key_value(below))
                            })
                            .map(|(dir, owner)| (dir.clone(), owner.clone()));
                        if let Some((dir, (of, od, oo, other_name))) = clash {
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            let how = if dir == file.dir {
                                "the same directory as"
                            } else {
                                "a directory nested with that of"
                            };
                            files[f].report(
                                doc,
                                &format!("{field}.file.dir"),
                                format!("{} is {how} key {other_name:?} ({other}); every key needs its own directory", file.dir.display()),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            for ancestor in file.dir.ancestors().skip(1) {
                                if ancestors.contains_key(ancestor) {
                                    // Its own ancestors are in already.
                                    break;
                                }
                                ancestors.insert(ancestor.to_path_buf(), file.dir.clone());
                            }
                            dirs.insert(file.dir.clone(), (f, doc, o, name.clone()));
                        }
                    }
                    Output::SecretsManager(secret) => {
                        if let Some((of, od, oo, other_name)) =
                            secrets.get(&secret.secret_id).cloned()
                        {
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            files[f].report(
                                doc,
                                &format!("{field}.secretsManager.secretId"),
                                format!("secret {:?} is also the output of key {other_name:?} ({other})", secret.secret_id),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            secrets.insert(secret.secret_id.clone(), (f, doc, o, name.clone()));
                        }
                    }
                }
            }
        }
    }
}

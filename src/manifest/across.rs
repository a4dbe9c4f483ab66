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
    // Directories taken, and every ancestor of one (mapped to the directory below it). An
    // owner is (file, document, output, key within the file).
    let mut dirs: HashMap<PathBuf, Owner> = HashMap::new();
    let mut ancestors: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut secrets: HashMap<String, Owner> = HashMap::new();
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
            for o in 0..files[f].keys[k].1.outputs.len() {
                let owner = (f, doc, o, k);
                let owner_name = |files: &[ManifestFile], (of, _, _, ok): Owner| {
                    files[of].keys[ok].1.name.clone()
                };
                match &files[f].keys[k].1.outputs[o] {
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
                            .map(|(dir, owner)| (dir == &file.dir, *owner));
                        let dir = file.dir.clone();
                        if let Some((same, (of, od, oo, ok))) = clash {
                            let other_name = owner_name(files, (of, od, oo, ok));
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            let how = if same {
                                "the same directory as"
                            } else {
                                "a directory nested with that of"
                            };
                            files[f].report(
                                doc,
                                &format!("spec.outputs[{o}].file.dir"),
                                format!("{} is {how} key {other_name:?} ({other}); every key needs its own directory", dir.display()),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            for ancestor in dir.ancestors().skip(1) {
                                if ancestors.contains_key(ancestor) {
                                    // Its own ancestors are in already.
                                    break;
                                }
                                ancestors.insert(ancestor.to_path_buf(), dir.clone());
                            }
                            dirs.insert(dir, owner);
                        }
                    }
                    Output::SecretsManager(secret) => {
                        if let Some(&(of, od, oo, ok)) = secrets.get(&secret.secret_id) {
                            let secret_id = secret.secret_id.clone();
                            let other_name = owner_name(files, (of, od, oo, ok));
                            let other = files[of].location(od, &format!("spec.outputs[{oo}]"));
                            files[f].report(
                                doc,
                                &format!("spec.outputs[{o}].secretsManager.secretId"),
                                format!("secret {secret_id:?} is also the output of key {other_name:?} ({other})"),
                            );
                            frozen.insert(name.clone());
                            frozen.insert(other_name);
                        } else {
                            secrets.insert(secret.secret_id.clone(), owner);
                        }
                    }
                }
            }
            names.insert(name, (f, doc));
        }
    }
}

/// Where an output was first seen: (file, document, output, key within the file).
type Owner = (usize, usize, usize, usize);

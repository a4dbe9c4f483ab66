//! Build script: records the git revision for `keyprov --version` (`unknown` outside a git
//! checkout, e.g. a crate tarball), and a digest of the manifest reader's sources for the
//! parse cache's entry names (a build from an uncommitted tree shares HEAD's revision).

use std::process::Command;

/// What `git ARGS` prints, trimmed; `None` outside a git checkout.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

/// A digest of the files under `src/manifest` and of `Cargo.lock` (what makes the documents
/// the parse cache keeps): any change to them names every entry anew.
fn manifest_sources_digest() -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("src/manifest")
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.push("Cargo.lock".into());
    let mut hasher = DefaultHasher::new();
    for file in files {
        hasher.write(file.as_os_str().as_encoded_bytes());
        hasher.write(&std::fs::read(&file).unwrap_or_default());
    }
    format!("{:016x}", hasher.finish())
}

fn main() {
    println!(
        "cargo:rustc-env=KEYPROV_MANIFEST_SOURCES={}",
        manifest_sources_digest()
    );
    println!("cargo:rerun-if-changed=src/manifest");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEYPROV_REVISION={revision}");
    // A new commit changes HEAD (or the branch it names). Asked of git rather than assumed at
    // .git/: in a worktree `.git` is a file, and a path that does not exist reruns every build.
    for path in ["HEAD", "refs/heads"] {
        if let Some(found) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={found}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KEYPROV_REVISION");
}

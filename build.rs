//! Build script: records the git revision for `keyprov --version` (`unknown` outside a git
//! checkout, e.g. a crate tarball).

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

fn main() {
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

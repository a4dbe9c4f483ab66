//! One install procedure: the `sh` block of README.md "Install (systemd)" is the one of
//! systemd/README.md "Install", it installs the packaged configuration and creates
//! /etc/keyprov/manifests.d, and scripts/systemd-check runs those same configuration steps.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The first ```sh block after `heading`.
fn sh_block(text: &str, heading: &str) -> String {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} missing"));
    let rest = &text[start..];
    let open = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let close = rest[open..].find("\n```").unwrap();
    rest[open..open + close].to_string()
}

#[test]
fn readme_and_systemd_readme_give_one_procedure_which_systemd_check_runs() {
    let readme = sh_block(&read("README.md"), "### Install (systemd)");
    let systemd = sh_block(&read("systemd/README.md"), "## Install");
    assert_eq!(readme, systemd);
    for step in [
        "install -m640 -g keyprov config/deb/keyprov.yaml /etc/keyprov/keyprov.yaml",
        "install -d -m750 -g keyprov /etc/keyprov/manifests.d",
        "systemd-sysusers keyprov.conf",
        "systemd-tmpfiles --create keyprov.conf",
    ] {
        assert!(readme.contains(step), "{step}");
    }
    assert!(!readme.contains("config/example.yaml"));
    let check = read("scripts/systemd-check");
    for step in [
        "install -m640 -g keyprov config/deb/keyprov.yaml /etc/keyprov/keyprov.yaml",
        "install -d -m750 -g keyprov /etc/keyprov/manifests.d",
        "systemd-sysusers keyprov.conf",
        "systemd-tmpfiles --create keyprov.conf",
        "install -m755 target/release/keyprov /usr/bin/keyprov",
        "install -Dm644 systemd/keyprov.sysusers /usr/lib/sysusers.d/keyprov.conf",
        "install -Dm644 systemd/keyprov.tmpfiles /usr/lib/tmpfiles.d/keyprov.conf",
    ] {
        assert!(check.contains(step), "scripts/systemd-check lacks {step:?}");
    }
}

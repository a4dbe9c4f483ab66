//! The command line itself: exit codes of usage errors, help and version; output into a pipe
//! whose reader went away (`keyprov verify | head -1`).

mod common;

use std::process::{Command, Stdio};

use common::*;

fn keyprov(args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_keyprov"))
        .args(args)
        .env_remove("KEYPROV_CONFIG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("keyprov runs")
        .into()
}

#[test]
fn usage_errors_exit_64_help_and_version_exit_0() {
    for args in [
        &["--bogus"][..],
        &[],
        &["rotate"],
        &["run", "--once", "--bogus"],
        &["decrypt", "alpha", "--version"],
        &["decrypt", "alpha", "--version", "x"],
        &["frobnicate"],
    ] {
        let run = keyprov(args);
        assert_eq!(run.code, 64, "keyprov {args:?}: {}", run.all());
        assert!(
            run.stderr.starts_with("error: ") || run.stderr.contains("Usage: keyprov"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "", "{args:?}: usage errors go to stderr");
        assert!(!run.all().contains("panicked"), "{}", run.all());
    }
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["-V"],
        &["help"],
        &["help", "run"],
        &["verify", "--help"],
    ] {
        let run = keyprov(args);
        assert_eq!(run.code, 0, "keyprov {args:?}: {}", run.all());
        assert!(!run.stdout.is_empty(), "{args:?} prints on stdout");
        assert_eq!(run.stderr, "", "{args:?}");
    }
}

#[test]
fn every_command_that_reads_the_configuration_lists_the_exit_codes_in_its_help() {
    for command in [
        "run", "plan", "validate", "status", "rotate", "decrypt", "verify",
    ] {
        let run = keyprov(&[command, "--help"]);
        assert_eq!(run.code, 0, "{command}: {}", run.all());
        assert!(
            run.stdout.contains("Exit codes: 0 converged")
                && run.stdout.contains("75 stateDir lock held"),
            "keyprov {command} --help: {}",
            run.stdout
        );
    }
}

#[test]
fn an_invalid_config_still_exits_2() {
    let install = Install::new("bogusField: 1");
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let run = install.keyprov(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
}

/// Runs `keyprov ARGS --config <config>` (no --config for schema and --help) with its stdout a pipe whose read end is already
/// closed, so that every write to stdout fails with EPIPE.
fn into_closed_pipe(install: &Install, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
    command.args(args);
    if !matches!(args, ["schema"] | ["--help"]) {
        command.arg("--config").arg(install.config());
    }
    let mut child = command
        .env_remove("KEYPROV_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(install.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap().into()
}

#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    let install = Install::new("");
    for name in ["alpha", "beta", "gamma"] {
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(name, "ECC_NIST_P256", "  rotation: {every: 30d}\n"),
        );
    }
    install.run_once(0);
    for (args, code) in [
        (&["verify"][..], 0),
        (&["status"], 0),
        (&["status", "--json"], 0),
        (&["plan"], 0),
        (&["validate"], 0),
        (&["run", "--once"], 0),
        (&["rotate", "alpha"], 0),
        (&["decrypt", "beta"], 0),
        (&["schema"], 0),
        (&["--help"], 0),
    ] {
        let run = into_closed_pipe(&install, args);
        assert_eq!(run.code, code, "keyprov {args:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("Broken pipe"),
            "keyprov {args:?}: {}",
            run.stderr
        );
    }
    // The command's own verdict survives: a failing verify still exits 1.
    let current = install.key_dir("gamma").join("current");
    std::fs::write(current.join("public.pem"), "garbage").unwrap();
    let run = into_closed_pipe(&install, &["verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn verify_into_head_prints_one_line_and_no_panic() {
    let install = Install::new("");
    for i in 0..40 {
        let name = format!("key{i:02}");
        install.manifest(
            &format!("{name}.yaml"),
            &manifest(&name, "ECC_NIST_P256", ""),
        );
    }
    install.run_once(0);
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' verify --config '{}' | head -1",
            env!("CARGO_BIN_EXE_keyprov"),
            install.config().display()
        ))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let run = Run::from(output);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "ok      key00 generation 1\n");
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let keyprov = env!("CARGO_BIN_EXE_keyprov");
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <(\"{keyprov}\" completions bash) && complete -p keyprov"
        ))
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success() && registered.contains("keyprov"),
        "{registered}{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    for (shell, marker) in [("zsh", "#compdef keyprov"), ("fish", "complete -c keyprov")] {
        let out = Command::new(keyprov)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(marker),
            "{shell}"
        );
    }
    let page = Command::new(keyprov).arg("man").output().unwrap();
    assert!(page.status.success());
    let roff = String::from_utf8(page.stdout).unwrap();
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH keyprov 1"),
        "{roff}"
    );
    for subcommand in ["validate", "run", "status", "rotate", "completions"] {
        assert!(
            roff.contains(subcommand),
            "{subcommand} missing from the man page"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyprov.1");
    std::fs::write(&file, &roff).unwrap();
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("man(1) is installed");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success() && text.contains("NAME") && text.contains("SYNOPSIS"),
        "{text}{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
}

#[test]
fn version_names_the_git_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyprov"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let revision = text
        .trim()
        .strip_prefix(concat!("keyprov ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
}

/// Configured paths are printed normalised: `conf/../manifests.d` as `manifests.d`, a stateDir
/// `../state` under it as `<root>/state`, in `validate`'s diagnostics and `status`'s outputs.
#[test]
fn configured_paths_are_printed_normalised() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::create_dir_all(root.join("manifests.d")).unwrap();
    std::fs::write(
        root.join("conf/keyprov.yaml"),
        "manifests: [../manifests.d]\nstateDir: ../state\nprovider: local\n",
    )
    .unwrap();
    std::fs::write(
        root.join("manifests.d/a.yaml"),
        manifest("a", "ECC_NIST_P256", ""),
    )
    .unwrap();
    std::fs::write(root.join("manifests.d/b.yaml"), "bad: 1\n").unwrap();
    let run = |args: &[&str]| -> Run {
        Command::new(env!("CARGO_BIN_EXE_keyprov"))
            .args(args)
            .current_dir(root)
            .env_remove("KEYPROV_CONFIG")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("keyprov runs")
            .into()
    };
    let validate = run(&["validate", "--config", "conf/keyprov.yaml"]);
    assert_eq!(validate.code, 2, "{}", validate.all());
    assert!(
        validate.stderr.contains("error: manifests.d/b.yaml:1:1:"),
        "{}",
        validate.stderr
    );
    assert!(!validate.all().contains(".."), "{}", validate.all());
    std::fs::remove_file(root.join("manifests.d/b.yaml")).unwrap();
    let once = run(&["run", "--once", "--config", "conf/keyprov.yaml"]);
    assert_eq!(once.code, 0, "{}", once.all());
    assert!(!once.all().contains(".."), "{}", once.all());
    let status = run(&["status", "--config", "conf/keyprov.yaml"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let location = format!("file:{}@1", root.join("state/keys/a").display());
    assert!(status.stdout.contains(&location), "{}", status.stdout);
}

//! Exit-code precedence through the binary: an error always outranks "changes pending",
//! 2 beats 1 beats 3 beats 0, for `plan`, `run --once` and `status`, over every combination of
//! an invalid manifest, a failing key and a pending change.

mod common;

use common::*;

/// One installation with a converged key, plus what `case` asks for: an invalid manifest, a
/// key that fails (its output directory is a regular file, so it cannot even be observed), a
/// new key (a pending change).
fn install(invalid: bool, failing: bool, pending: bool) -> Install {
    let install = Install::new("");
    install.manifest("steady.yaml", &manifest("steady", "ECC_NIST_P256", ""));
    install.run_once(0);
    if invalid {
        install.manifest(
            "broken.yaml",
            "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: broken}\nspec: {keyPairSpec: NOPE}\n",
        );
    }
    if failing {
        install.manifest("failing.yaml", &manifest("failing", "ECC_NIST_P256", ""));
        std::fs::write(install.key_dir("failing"), b"not a directory").unwrap();
    }
    if pending {
        install.manifest("fresh.yaml", &manifest("fresh", "ECC_NIST_P256", ""));
    }
    install
}

#[test]
fn an_error_outranks_changes_pending_for_plan_run_and_status() {
    let mut table = Vec::new();
    for case in 0..8 {
        let (invalid, failing, pending) = (case & 4 != 0, case & 2 != 0, case & 1 != 0);
        let install = install(invalid, failing, pending);
        let error = if invalid {
            Some(2)
        } else if failing {
            Some(1)
        } else {
            None
        };
        let plan = error.unwrap_or(if pending { 3 } else { 0 });
        let status = error.unwrap_or(0);
        // Read-only commands first, then the run, then status once more.
        let mut got = Vec::new();
        for args in [
            &["plan"][..],
            &["plan", "--json"],
            &["status"],
            &["run", "--once"],
        ] {
            got.push((args.join(" "), install.keyprov(args)));
        }
        got.push(("status after the run".into(), install.keyprov(&["status"])));
        let want = [plan, plan, status, status, status];
        for ((what, run), want) in got.iter().zip(want) {
            table.push(format!(
                "invalid={invalid} failing={failing} pending={pending}: {what} exited {} (want {want})",
                run.code
            ));
            assert_eq!(run.code, want, "{}\n{}", table.join("\n"), run.all());
        }
        let json: serde_json::Value = serde_json::from_str(&got[1].1.stdout).unwrap();
        assert_eq!(json["exitCode"], plan, "{}", got[1].1.stdout);
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn status_exits_1_while_a_key_is_failing() {
    // SM2 is a valid keyPairSpec that the local provider cannot make: the run fails the key,
    // which can still be observed (no generation yet); its retry record says it is failing.
    let install = Install::new("");
    install.manifest("ok.yaml", &manifest("ok", "ECC_NIST_P256", ""));
    install.manifest("sm2.yaml", &manifest("sm2", "SM2", ""));
    let before = install.keyprov(&["status"]);
    assert_eq!(before.code, 0, "pending only: {}", before.all());
    install.run_once(1);
    let status = install.keyprov(&["status"]);
    assert_eq!(status.code, 1, "{}", status.all());
    assert!(
        status.stdout.contains("failing: 1 attempt(s)"),
        "{}",
        status.all()
    );
    let json = install.keyprov(&["status", "--json"]);
    assert_eq!(json.code, 1, "{}", json.all());
    // Fixed: the next run succeeds and removes the record.
    install.manifest("sm2.yaml", &manifest("sm2", "ECC_NIST_P384", ""));
    install.run_once(0);
    let status = install.keyprov(&["status"]);
    assert_eq!(status.code, 0, "{}", status.all());
}

#[test]
fn help_states_the_precedence() {
    let help = |args: &[&str]| -> Run {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyprov"))
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    for command in [&["--help"][..], &["plan", "--help"], &["status", "--help"]] {
        let help = help(command);
        assert_eq!(help.code, 0, "{}", help.all());
        // Help is wrapped to the terminal's width.
        let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("2 beats 1 beats 3 beats 0"),
            "{command:?}: {}",
            help.stdout
        );
    }
    let status = help(&["status", "--help"]);
    assert!(status.stdout.contains("failing"), "{}", status.stdout);
}

#[test]
fn rotate_or_decrypt_of_a_key_no_manifest_defines_is_a_usage_error_naming_the_keys() {
    let install = Install::new("");
    install.manifest("a.yaml", &manifest("payments", "ECC_NIST_P256", ""));
    install.manifest("b.yaml", &manifest("orders", "ECC_NIST_P256", ""));
    install.run_once(0);
    for args in [&["rotate", "nosuch"][..], &["decrypt", "nosuch"]] {
        let run = install.keyprov(args);
        assert_eq!(run.code, 64, "{args:?}: {}", run.all());
        assert!(
            run.stderr.contains(&format!(
                "error: {} nosuch: no manifest defines key \"nosuch\"; keys known: orders, payments",
                args[0]
            )),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Nothing was rotated meanwhile.
    assert_eq!(versions(&install.key_dir("payments")), ["v0001"]);
}

#[test]
fn rotate_or_decrypt_of_a_key_in_an_invalid_manifest_exits_2_naming_it() {
    let install = install(false, false, false);
    // steady's manifest broken after it was made: the key is frozen, not unknown.
    install.manifest(
        "steady.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: steady}\nspec: {keyPairSpec: NOPE}\n",
    );
    for args in [&["rotate", "steady"][..], &["decrypt", "steady"]] {
        let run = install.keyprov(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        assert!(
            run.stderr
                .contains("key \"steady\" is defined in an invalid manifest"),
            "{args:?}: {}",
            run.stderr
        );
        // No private key printed (rotate prints its summary line).
        assert!(
            !run.stdout.contains("PRIVATE KEY"),
            "{args:?}: {}",
            run.stdout
        );
    }
    assert_eq!(versions(&install.key_dir("steady")), ["v0001"]);
}

//! What a new user reads: summaries, plan, and errors, each shown once and telling the truth.

mod common;

use common::{Install, manifest};

#[test]
fn a_failed_key_is_not_a_changed_key_and_its_error_is_printed_once() {
    let install = Install::new("");
    install.manifest("sm2.yaml", &manifest("sm2-key", "SM2", ""));
    let run = install.run_once(1);
    assert!(
        run.stdout
            .contains("keyprov: 1 key, 0 changed, 1 failed, 1 provider call\n"),
        "{}",
        run.all()
    );
    let mentions = run
        .stderr
        .matches("key \"sm2-key\": SM2 key pairs need AWS KMS")
        .count();
    assert_eq!(mentions, 1, "{}", run.stderr);
}

#[test]
fn plan_never_says_no_changes_when_a_manifest_is_invalid() {
    let install = Install::new("");
    install.manifest("good.yaml", &manifest("good", "ECC_NIST_P256", ""));
    install.run_once(0);
    install.manifest("bad.yaml", &manifest("bad", "ECC_NIST_P999", ""));
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(!plan.stdout.contains("No changes:"), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("No changes planned: 1 converged, invalid manifests"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_missing_manifest_directory_is_an_error_naming_its_whole_path() {
    let install = Install::new("");
    std::fs::remove_dir_all(install.manifests()).unwrap();
    let mut command = install.command(&["run", "--once"]);
    command.current_dir("/");
    let run: common::Run = command.output().unwrap().into();
    assert_eq!(run.code, 2, "{}", run.all());
    let wanted = format!("{}: does not exist", install.manifests().display());
    assert!(run.stderr.contains(&wanted), "{}", run.stderr);
    assert!(!run.stdout.contains("No changes"), "{}", run.stdout);
}

#[test]
fn validate_of_a_path_that_does_not_exist_blames_the_argument_not_the_configuration() {
    let install = Install::new("");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    let missing = install.root().join("typo.yaml");
    let present = install.manifests().join("k.yaml");
    let run = install.keyprov(&[
        "validate",
        missing.to_str().unwrap(),
        present.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("typo.yaml: does not exist: fix this path given to `keyprov validate`"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("listed under `manifests`"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("1 problem found"), "{}", run.stdout);
}

#[test]
fn an_invalid_keyprov_log_is_an_error() {
    let install = Install::new("");
    let run = install.keyprov_env(&["plan"], &[("KEYPROV_LOG", "[span{x=1}]=trace")]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("KEYPROV_LOG=") && run.stderr.contains("is not a valid log filter"),
        "{}",
        run.stderr
    );
    let fine = install.keyprov_env(&["plan"], &[("KEYPROV_LOG", "debug")]);
    assert_eq!(fine.code, 0, "{}", fine.all());
}

#[test]
fn status_shows_invalid_keys_staged_activation_and_ages_in_seconds() {
    let install = Install::new("");
    install.manifest(
        "good.yaml",
        &manifest("good", "ECC_NIST_P256", "  rotation: {publishAhead: 1d}\n"),
    );
    install.run_once(0);
    let rotate = install.keyprov(&["rotate", "good"]);
    assert_eq!(rotate.code, 0, "{}", rotate.all());
    install.manifest("broken.yaml", &manifest("broken", "ECC_NIST_P999", ""));

    let table = install.keyprov(&["status"]);
    assert_eq!(table.code, 2, "{}", table.all());
    let broken = table
        .stdout
        .lines()
        .find(|l| l.starts_with("broken "))
        .unwrap();
    assert!(broken.contains("invalid"), "{}", table.stdout);
    assert!(
        table.stdout.contains("its manifest is invalid (")
            && table.stdout.contains("broken.yaml:6)"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("orphan"), "{}", table.stdout);
    let good = table
        .stdout
        .lines()
        .find(|l| l.starts_with("good "))
        .unwrap();
    assert!(good.contains("gen 2 in 23h 59m ("), "{good}");
    // Seconds old: shown in seconds (it used to be rounded down to minutes, so `0s`).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let later = install.keyprov(&["status"]);
    let good_later = later
        .stdout
        .lines()
        .find(|l| l.starts_with("good "))
        .unwrap();
    let age = good_later.split_whitespace().nth(3).unwrap();
    assert!(age.ends_with('s') && age != "0s", "{good_later}");

    let json = install.keyprov(&["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let keys = parsed["keys"].as_array().unwrap();
    let broken = keys.iter().find(|k| k["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "invalid");
    assert!(parsed["orphans"].as_array().unwrap().is_empty());
    let good = keys.iter().find(|k| k["name"] == "good").unwrap();
    assert_eq!(good["next"], 2);
    assert!(good["nextActivatesAt"].is_string(), "{good}");

    let rotate = install.keyprov(&["rotate", "broken"]);
    assert_ne!(rotate.code, 0);
    assert!(
        rotate
            .stderr
            .contains("key \"broken\" is defined in an invalid manifest (")
            && !rotate.stderr.contains("no manifest defines"),
        "{}",
        rotate.stderr
    );
}

#[test]
fn decrypt_of_a_generation_that_does_not_exist_lists_those_that_do() {
    let install = Install::new("");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    install.run_once(0);
    let run = install.keyprov(&["decrypt", "k", "--version", "7"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("no output holds generation 7; generations held: 1"),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_without_a_configuration_checks_the_shipped_example_and_says_what_it_skipped() {
    let empty = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/manifests.d");
    let run: common::Run = std::process::Command::new(env!("CARGO_BIN_EXE_keyprov"))
        .args(["validate"])
        .arg(&example)
        .current_dir(empty.path())
        .env("KEYPROV_CONFIG", empty.path().join("none.yaml"))
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("3 key pairs in 2 files are valid"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("checked everything but hooks.allowed and outputRoots"),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_reports_every_problem_of_a_document_in_the_users_words() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: k}\nspec:\n  \
         keyPairSpec: ECC_NIST_P999\n  kmsKeyId: alias/k\n  rotaton: {every: 1d}\n  \
         rotation: {keep: -1, every: 5}\n  includePlaintext: yes\n  outputs: [{file: {}}]\n",
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    for want in [
        "k.yaml:7:3: spec.rotaton: unknown field `rotaton`; did you mean `rotation`?",
        "k.yaml:8:14: spec.rotation.keep: must be a whole number >= 0",
        "k.yaml:8:24: spec.rotation.every: must be a duration with its unit, not the number 5; write \"5d\" (units: s, m, h, d)",
        "k.yaml:9:3: spec.includePlaintext: must be true or false",
        "k.yaml:5:3: spec.keyPairSpec: unknown value \"ECC_NIST_P999\"",
    ] {
        assert!(
            run.stderr.contains(want),
            "missing {want:?} in\n{}",
            run.stderr
        );
    }
    assert!(run.stdout.contains("5 problems found"), "{}", run.stdout);
    assert!(!run.stderr.contains("expected u32"), "{}", run.stderr);
}

#[test]
fn a_duplicated_key_is_reported_at_its_own_line() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &format!(
            "{}spec:\n  keyPairSpec: RSA_2048\n",
            manifest("k", "ECC_NIST_P256", "")
        ),
    );
    let lines = manifest("k", "ECC_NIST_P256", "").lines().count() + 1;
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let want = format!("k.yaml:{lines}:1: spec: duplicate key `spec`");
    assert!(
        run.stderr.contains(&want),
        "missing {want:?} in\n{}",
        run.stderr
    );
}

#[test]
fn two_manifests_without_a_separator_suggest_one_and_jose_names_their_spec() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &format!(
            "{}{}",
            manifest("a", "ECC_NIST_P256", ""),
            manifest("b", "ECC_NIST_P256", "")
        ),
    );
    install.manifest("jose.yaml", &manifest("jose", "ES256", ""));
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    for want in [
        "k.yaml:10:1: apiVersion: duplicate key `apiVersion`: it is already set above; if a \
         second manifest starts here, separate the two with a line `---` before it",
        "jose.yaml:6:3: spec.keyPairSpec: unknown value \"ES256\", expected one of RSA_2048",
        "; did you mean ECC_NIST_P256?",
    ] {
        assert!(
            run.stderr.contains(want),
            "missing {want:?} in\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_run_names_the_keys_an_invalid_manifest_freezes_and_help_says_what_is_supported() {
    let install = Install::new("");
    install.manifest("ok.yaml", &manifest("ok", "ECC_NIST_P256", ""));
    install.manifest("bad.yaml", &manifest("frozen-one", "ECC_NIST_P999", ""));
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("invalid manifests: 1 key left exactly as it is: frozen-one"),
        "{}",
        run.stderr
    );
    let help = |args: &[&str]| -> common::Run {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyprov"))
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    let completions = help(&["completions", "--help"]);
    assert!(
        completions
            .stdout
            .contains("[possible values: bash, zsh, fish]")
            || completions
                .stdout
                .contains("[possible values: bash, zsh,\n"),
        "{}",
        completions.stdout
    );
    assert!(
        !completions.stdout.contains("powershell"),
        "{}",
        completions.stdout
    );
    assert_eq!(help(&["completions", "elvish"]).code, 64);
    let verify = help(&["verify", "--help"]);
    assert!(
        verify.stdout.contains("current and next"),
        "{}",
        verify.stdout
    );
}

#[test]
fn with_json_logs_everything_on_stderr_is_json_and_the_summary_is_on_stdout() {
    let install = Install::new("log: {format: json, level: info}");
    install.manifest("good.yaml", &manifest("good", "ECC_NIST_P256", ""));
    install.manifest("bad.yaml", &manifest("bad", "ECC_NIST_P999", ""));
    install.manifest("sm2.yaml", &manifest("sm2-key", "SM2", ""));
    for args in [
        &["run", "--once"][..],
        &["plan"],
        &["validate"],
        &["status"],
    ] {
        let run = install.keyprov(args);
        assert_ne!(run.code, 0, "{args:?}: {}", run.all());
        assert!(!run.stderr.trim().is_empty(), "{args:?}");
        for line in run.stderr.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
            assert!(event["level"].is_string(), "{line}");
        }
        let diagnostic = run
            .stderr
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["field"] == "spec.keyPairSpec");
        if args != ["status"] {
            let diagnostic = diagnostic.unwrap_or_else(|| panic!("{args:?}: {}", run.stderr));
            assert!(diagnostic["file"].as_str().unwrap().ends_with("bad.yaml"));
            assert!(diagnostic["line"].as_u64().unwrap() > 0);
        }
    }
    let run = install.keyprov(&["run", "--once"]);
    assert!(run.stdout.starts_with("keyprov: "), "{}", run.stdout);
}

#[test]
fn bad_indentation_is_explained_once_at_its_line() {
    let install = Install::new("");
    install.manifest(
        "over.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: a\nspec:\n  \
         keyPairSpec: ECC_NIST_P256\n   kmsKeyId: alias/k\n  outputs: [{file: {}}]\n",
    );
    install.manifest(
        "under.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: b\nspec:\n  \
         keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/k\n  outputs:\n  - file:\n    dir: x\n",
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let over: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("over.yaml"))
        .collect();
    assert_eq!(over.len(), 1, "{over:?}");
    assert!(
        over[0].contains("over.yaml:7:12: YAML syntax error:")
            && over[0].contains("indented more than the keys above it"),
        "{over:?}"
    );
    let under: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("under.yaml"))
        .collect();
    assert_eq!(under.len(), 1, "{under:?}");
    assert!(
        under[0].contains("under.yaml:10:5: spec.outputs[0].dir:")
            && under[0].contains("indent `dir` under `file`"),
        "{under:?}"
    );
}

#[test]
fn plan_shows_a_spec_change_old_to_new() {
    let install = Install::new("");
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    install.run_once(0);
    install.manifest("k.yaml", &manifest("k", "RSA_2048", ""));
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "k: generate generation 2 (spec changed): keyPairSpec ECC_NIST_P256 -> RSA_2048\n"
        ),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_spec_change_names_the_context_entries_and_kms_key_that_changed() {
    let install = Install::new("");
    let context = "  encryptionContext: {service: pay, env: prod}\n";
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", context));
    install.run_once(0);
    // Only the context: the kmsKeyId stays, and the reserved keyprov: entries are no change.
    let context = "  encryptionContext: {service: billing, team: x}\n";
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", context));
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "k: generate generation 2 (spec changed): encryptionContext: changed service pay -> \
             billing, added team=x, removed env=prod\n"
        ),
        "{}",
        plan.stdout
    );
    // Only the KMS key: named with the ARN generation 1 was made with.
    let text = manifest(
        "k",
        "ECC_NIST_P256",
        "  encryptionContext: {service: pay, env: prod}\n",
    )
    .replace("alias/test", "alias/other");
    install.manifest("k.yaml", &text);
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    let line = plan
        .stdout
        .lines()
        .find(|l| l.starts_with("k: generate"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.starts_with(
            "k: generate generation 2 (spec changed): kmsKeyId -> alias/other (generation 1 was \
             made with "
        ) && !line.contains("keyPairSpec")
            && !line.contains("encryptionContext"),
        "{line}"
    );
    // run says it too, at info level.
    let run = install.run_once(0);
    assert!(
        run.stderr.contains("spec changed: kmsKeyId -> alias/other"),
        "{}",
        run.all()
    );
}

#[test]
fn missing_aws_credentials_say_so_and_where_the_chain_looked() {
    // Nothing listens on port 9 of loopback; the credentials are missing before any request.
    let install = Install::new(
        "provider: aws\naws: {region: us-east-1, endpointUrl: \"http://127.0.0.1:9\"}",
    );
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    let home = tempfile::tempdir().unwrap();
    let run = install.keyprov_env(
        &["run", "--once"],
        &[("HOME", home.path().to_str().unwrap())],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("no AWS credentials to call KMS for key alias/test")
            && run.stderr.contains("Where the chain looked: Environment:")
            && !run.stderr.contains("check the network"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unreachable_endpoint_logs_each_retry() {
    let install = Install::new(
        "provider: aws\naws: {region: us-east-1, endpointUrl: \"http://127.0.0.1:9\", maxAttempts: 3}",
    );
    install.manifest("k.yaml", &manifest("k", "ECC_NIST_P256", ""));
    let run = install.keyprov_env(
        &["run", "--once"],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    for attempt in 1..=2 {
        let retry = format!(": attempt #{attempt} failed with connector error");
        let line = run.stderr.lines().find(|l| l.contains(&retry));
        let next = format!("; retrying (attempt #{})", attempt + 1);
        assert!(
            line.is_some_and(|l| {
                l.contains("WARN KMS GenerateDataKeyPair") && l.contains(&next)
            }),
            "{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("cannot reach KMS"), "{}", run.stderr);
    assert!(!run.stderr.contains("DEBUG"), "{}", run.stderr);
}

#[test]
fn the_configuration_reports_every_problem_at_once() {
    let install = Install::new("");
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nprovidr: aws\n\
         reconcile: {concurrency: -3, debounce: 5, prune: maybe}\nlog: {format: xml}\n",
    )
    .unwrap();
    let run = install.keyprov(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.all());
    for want in [
        "keyprov.yaml:3:1: providr: unknown field `providr`; did you mean `provider`?",
        "keyprov.yaml:4:13: reconcile.concurrency: must be a whole number >= 0",
        "keyprov.yaml:4:30: reconcile.debounce: must be a duration with its unit, not the \
         number 5; write `debounce: 5ms`",
        "keyprov.yaml:4:43: reconcile.prune: must be true or false",
        "keyprov.yaml:5:7: log.format: unknown value \"xml\", expected one of text, json",
    ] {
        assert!(
            run.stderr.contains(want),
            "missing {want:?} in\n{}",
            run.stderr
        );
    }
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nreconcile: {concurrency: 2}\n\
         reconcile: {debounce: 1s}\n",
    )
    .unwrap();
    let run = install.keyprov(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("keyprov.yaml:4:1: reconcile: duplicate key `reconcile`"),
        "{}",
        run.stderr
    );
}

#[test]
fn rotate_now_counts_the_next_rotation_from_the_real_activation() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &manifest(
            "k",
            "ECC_NIST_P256",
            "  rotation: {every: 30d, publishAhead: 7d}\n",
        ),
    );
    install.run_once(0);
    let staged = install.keyprov(&["rotate", "k"]);
    assert_eq!(staged.code, 0, "{}", staged.all());
    let now = install.keyprov(&["rotate", "k", "--now"]);
    assert_eq!(now.code, 0, "{}", now.all());
    let status = install.keyprov(&["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    // A fresh pair, not the staged generation 2 made before the emergency.
    assert_eq!(parsed["keys"][0]["generation"], 3);
    let next =
        keyprov::schedule::parse_time(parsed["keys"][0]["nextRotation"].as_str().unwrap()).unwrap();
    let from_now = next
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    let day = 86_400;
    // 30 days (+ spread of at most 1 h) from now, not from the planned activation 7 days on.
    assert!(
        from_now > 29 * day && from_now < 30 * day + 3600,
        "next rotation in {} days",
        from_now as f64 / day as f64
    );
    // And nothing is due: the key stays converged.
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
}

#[test]
fn an_invalid_configuration_asking_for_json_logs_is_reported_in_json() {
    let install = Install::new("");
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nlog: {format: json}\nprovidr: aws\n",
    )
    .unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let event: serde_json::Value = serde_json::from_str(run.stderr.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stderr));
    assert_eq!(event["field"], "providr", "{event}");
    assert_eq!(event["line"], 4, "{event}");
}

#[test]
fn a_duplicate_name_is_reported_in_the_file_that_added_it_naming_both() {
    let install = Install::new("");
    install.manifest("z-first.yaml", &manifest("twin", "ECC_NIST_P256", ""));
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Added later, though it sorts first.
    install.manifest("a-later.yaml", &manifest("twin", "RSA_2048", ""));
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "manifests.d/a-later.yaml:4:3: metadata.name: duplicate name \"twin\", also defined at manifests.d/z-first.yaml:4:3"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_and_validate_speak_json_for_ci() {
    let install = Install::new("");
    install.manifest(
        "good.yaml",
        &manifest("good", "ECC_NIST_P256", "  rotation: {every: 30d}\n"),
    );
    install.run_once(0);
    install.manifest("new.yaml", &manifest("new", "RSA_2048", ""));
    install.manifest("bad.yaml", &manifest("bad", "ECC_NIST_P999", ""));

    let plan = install.keyprov(&["plan", "--json"]);
    // An invalid manifest outranks the pending change.
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stderr.trim().is_empty() || !plan.stderr.contains("error:"),
        "{}",
        plan.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(doc["changes"][0]["key"], "new", "{doc}");
    assert!(
        doc["changes"][0]["action"]
            .as_str()
            .unwrap()
            .starts_with("generate generation 1 (new key)"),
        "{doc}"
    );
    assert_eq!(doc["converged"], 1);
    assert_eq!(doc["invalid"], true);
    assert_eq!(doc["problems"][0]["field"], "spec.keyPairSpec", "{doc}");
    assert!(
        doc["problems"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("bad.yaml")
    );
    assert_eq!(doc["nextRotations"][0]["key"], "good");
    assert_eq!(doc["exitCode"], 2);

    let validate = install.keyprov(&["validate", "--json"]);
    assert_eq!(validate.code, 2, "{}", validate.all());
    assert!(!validate.stderr.contains("error:"), "{}", validate.stderr);
    let doc: serde_json::Value = serde_json::from_str(&validate.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["files"], 3);
    assert_eq!(doc["problems"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["problems"][0]["line"], 6, "{doc}");
}

#[test]
fn a_manifest_whose_file_name_is_not_utf8_is_read_not_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let install = Install::new("");
    let name = std::ffi::OsStr::from_bytes(b"odd\xff.yaml");
    std::fs::write(
        install.manifests().join(name),
        manifest("odd", "ECC_NIST_P256", ""),
    )
    .unwrap();
    let validate = install.keyprov(&["validate"]);
    assert!(
        validate.stdout.contains("1 key pair in 1 file is valid"),
        "{}",
        validate.all()
    );
    install.run_once(0);
    assert!(install.key_dir("odd").join("current").exists());
}

#[test]
fn a_dedented_first_line_of_a_block_is_blamed_at_its_own_line() {
    let install = Install::new("");
    let head = "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: a\nspec:\n";
    // The first `outputs:` item one space short: the parser stumbles on the item after it.
    install.manifest(
        "item.yaml",
        &format!(
            "{head}  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/k\n  outputs:\n   - file:\n        \
             dir: a\n    - file:\n        dir: b\n"
        ),
    );
    // The first key of `spec:` one space short.
    install.manifest(
        "key.yaml",
        &format!(
            "{head} keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/k\n  outputs: [{{file: {{}}}}]\n"
        ),
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "item.yaml:9:4: YAML syntax error: this list item is indented 3 spaces but the next \
             list item of its block (line 11) 4: indent it 4 spaces like that one\n"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "key.yaml:6:2: YAML syntax error: this key is indented 1 space but the next key of \
             its block (line 7) 2: indent it 2 spaces like that one\n"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_list_item_out_of_line_gets_the_list_item_hint() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &manifest("k", "ECC_NIST_P256", "").replace(
            "    - file: {}\n",
            "    - file: {dir: a}\n   - file: {dir: b}\n",
        ),
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "k.yaml:10:4: YAML syntax error: while parsing a block mapping, did not find expected \
             key (a list item is indented differently from the items before it: align the `-`)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn orphans_of_keys_with_a_custom_dir_are_listed_and_look_alikes_are_not() {
    let root = tempfile::tempdir().unwrap();
    let install = Install::new(&format!("outputRoots: [{}]", root.path().display()));
    let custom = root.path().join("team/app/signing");
    let with_dir = |name: &str, dir: &str| {
        manifest(name, "ECC_NIST_P256", "").replace("file: {}", &format!("file: {{dir: {dir}}}"))
    };
    install.manifest("gone.yaml", &with_dir("gone", custom.to_str().unwrap()));
    install.manifest("rel.yaml", &with_dir("rel", "nested/rel"));
    install.manifest("stay.yaml", &with_dir("stay", "nested/stay"));
    install.run_once(0);
    // Look-alikes keyprov did not make: a `current` link without keyprov's meta.json, and a
    // symlink to a real key directory (never followed).
    let fake = root.path().join("fake");
    std::fs::create_dir_all(fake.join("v0001")).unwrap();
    std::fs::write(fake.join("v0001/meta.json"), "{}").unwrap();
    std::os::unix::fs::symlink("v0001", fake.join("current")).unwrap();
    std::os::unix::fs::symlink(&custom, root.path().join("link")).unwrap();
    std::fs::remove_file(install.manifests().join("gone.yaml")).unwrap();
    std::fs::remove_file(install.manifests().join("rel.yaml")).unwrap();

    let status = install.keyprov(&["status", "--json"]);
    let json: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.all()));
    let mut orphans: Vec<String> = json["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}:{}",
                o["kind"].as_str().unwrap(),
                o["location"].as_str().unwrap()
            )
        })
        .collect();
    orphans.sort();
    let mut wanted = vec![
        format!("file:{}", custom.display()),
        format!("file:{}", install.state().join("nested/rel").display()),
    ];
    wanted.sort();
    assert_eq!(orphans, wanted, "{}", status.all());
    // prune (plan) sees the one under stateDir; the one in the output root (which another
    // installation may share) is listed by status, never pruned.
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\noutputRoots: [{}]\n\
             reconcile: {{prune: true, pruneAfter: 24h}}\n",
            root.path().display()
        ),
    )
    .unwrap();
    let plan = install.keyprov(&["plan"]);
    let under_state = format!("file:{}", install.state().join("nested/rel").display());
    assert!(
        plan.stdout
            .contains(&format!("orphan {under_state}: pruned after")),
        "{}",
        plan.all()
    );
    assert!(
        !plan.stdout.contains(&custom.display().to_string()),
        "{}",
        plan.all()
    );
    assert!(!plan.stdout.contains("fake"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("link"), "{}", plan.stdout);
}

#[test]
fn a_configuration_duration_without_its_unit_says_what_to_write() {
    for (extra, want) in [
        (
            "fleet: {claimTimeout: 5}",
            "fleet.claimTimeout: must be a duration with its unit, not the number 5; write \
             `claimTimeout: 5s` for 5 seconds (units: ms, s, m, h, d)",
        ),
        (
            "fleet: {generateWindow: \"10\"}",
            "fleet.generateWindow: must be a duration with its unit, not \"10\" (a number); \
             write `generateWindow: 10s` for 10 seconds",
        ),
        (
            "reconcile: {debounce: 300}",
            "reconcile.debounce: must be a duration with its unit, not the number 300; write \
             `debounce: 300ms` for 300 milliseconds",
        ),
        (
            "aws: {operationTimeout: 60}",
            "aws.operationTimeout: must be a duration with its unit, not the number 60; write \
             `operationTimeout: 60s` for 60 seconds",
        ),
    ] {
        let install = Install::new("");
        std::fs::write(
            install.config(),
            format!("manifests: [manifests.d]\nstateDir: state\n{extra}\n"),
        )
        .unwrap();
        let run = install.keyprov(&["validate"]);
        assert_eq!(run.code, 2, "{extra}: {}", run.all());
        assert!(run.stderr.contains(want), "{extra}: {}", run.stderr);
        assert!(!run.stderr.contains("quote it"), "{extra}: {}", run.stderr);
    }
}

#[test]
fn plan_names_outputs_by_their_directory_or_secret_not_their_index() {
    let install = Install::new("");
    let text = |keep: u32| {
        manifest(
            "two",
            "ECC_NIST_P256",
            &format!("  rotation: {{keep: {keep}}}\n"),
        )
        .replace(
            "    - file: {}\n",
            "    - file: {}\n    - file: {dir: two-copy}\n",
        )
    };
    install.manifest("two.yaml", &text(1));
    install.run_once(0);
    let rotated = install.keyprov(&["rotate", "two", "--now"]);
    assert_eq!(rotated.code, 0, "{}", rotated.all());
    let main = install.key_dir("two");
    let copy = install.state().join("two-copy");
    // Fewer generations kept, a lost copy, a loosened mode: a prune, a copy and a repair.
    install.manifest("two.yaml", &text(0));
    std::fs::remove_dir_all(&copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        main.join("v0002/public.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    let (main, copy) = (main.display(), copy.display());
    for want in [
        format!("two: copy generation 2 as current to file:{copy}"),
        format!("two: repair file:{main}: "),
        format!("two: prune generation 1 from file:{main}"),
    ] {
        assert!(
            plan.stdout.contains(&want),
            "missing {want:?} in\n{}",
            plan.all()
        );
    }
    for index in ["output 0", "output 1", "outputs [", "[file:"] {
        assert!(!plan.stdout.contains(index), "{index:?} in\n{}", plan.all());
    }
}

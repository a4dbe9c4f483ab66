//! End-to-end reconciles on the embedded local provider: real binary, real files, real hooks.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const LOCAL_SPECS: [&str; 8] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519",
];

fn name_of(spec: &str) -> String {
    spec.to_lowercase().replace('_', "-")
}

#[test]
fn every_spec_makes_a_pair_that_signs_and_verifies() {
    let install = Install::new("");
    for spec in LOCAL_SPECS {
        install.manifest(
            &format!("{}.yaml", name_of(spec)),
            &manifest(&name_of(spec), spec, ""),
        );
    }
    install.manifest("sm2.yaml", &manifest("sm2-key", "SM2", ""));
    let run = install.run_once(1);
    assert!(
        run.stdout.contains("9 keys, 8 changed, 1 failed"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("key \"sm2-key\": SM2 key pairs need AWS KMS"),
        "{}",
        run.stderr
    );
    for spec in LOCAL_SPECS {
        let dir = install.key_dir(&name_of(spec));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
        assert_eq!(meta["keyPairSpec"], spec);
        assert_eq!(meta["generation"], 1);
        let public = public_der(&dir);
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        let sha: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(meta["publicKeySha256"], sha);
        let private = decrypt(&install, &name_of(spec));
        assert_pair_matches(spec, &private, &public);
    }
    let verify = install.keyprov(&["verify"]);
    assert_eq!(
        verify.code,
        1,
        "the SM2 key has no pair to verify: {}",
        verify.all()
    );
    assert_eq!(verify.stdout.matches("ok ").count(), 8, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("FAILED  sm2-key"),
        "{}",
        verify.stdout
    );
}

#[test]
fn converged_run_makes_no_provider_call_and_touches_nothing() {
    let install = Install::new("");
    install.manifest(
        "a.yaml",
        &manifest("alpha", "ECC_NIST_P256", "  rotation: {every: 30d}\n"),
    );
    install.manifest(
        "b.yaml",
        &manifest("beta", "ECC_NIST_P384", "  includePlaintext: true\n"),
    );
    install.run_once(0);
    let before = snapshot(install.root());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let run = install.run_once(0);
    assert!(
        run.stdout
            .contains("2 keys, 0 changed, 0 failed, 0 provider calls"),
        "{}",
        run.stdout
    );
    assert_eq!(
        before,
        snapshot(install.root()),
        "a no-op reconcile changed the tree"
    );
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert_eq!(before, snapshot(install.root()), "plan changed the tree");
}

#[test]
fn spec_change_makes_the_next_version_and_keep_is_honoured() {
    let install = Install::new("");
    let dir = install.key_dir("signer");
    let with = |spec: &str, context: &str| {
        manifest(
            "signer",
            spec,
            &format!("  encryptionContext: {{app: {context}}}\n  rotation: {{keep: 1}}\n"),
        )
    };
    install.manifest("s.yaml", &with("ECC_NIST_P256", "one"));
    install.run_once(0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "previous"), None);

    install.manifest("s.yaml", &with("ECC_NIST_P384", "one"));
    let run = install.run_once(0);
    assert!(run.stdout.contains("1 provider call"), "{}", run.stdout);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    assert_eq!(versions(&dir), ["v0001", "v0002"]);

    install.manifest("s.yaml", &with("ECC_NIST_P384", "two"));
    install.run_once(0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0003"));
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0002"));
    assert_eq!(versions(&dir), ["v0002", "v0003"], "keep: 1 prunes v0001");
    let private = decrypt(&install, "signer");
    assert_pair_matches("ECC_NIST_P384", &private, &public_der(&dir));

    // A metadata-only change (mode) repairs in place, without a new generation.
    install.manifest(
        "s.yaml",
        &with("ECC_NIST_P384", "two").replace("    - file: {}", "    - file: {mode: \"0600\"}"),
    );
    let run = install.run_once(0);
    assert!(run.stdout.contains("0 provider calls"), "{}", run.stdout);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0003"));
    let mode = std::fs::metadata(dir.join("current/public.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

fn hook_script(install: &Install) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = install.root().join("hook.log");
    let script = install.root().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$KEYPROV_EVENT $KEYPROV_NAME $KEYPROV_GENERATION $KEYPROV_OUTPUT_DIRS\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

#[test]
fn rotation_happens_when_due_and_not_before() {
    let mut install = Install::new("");
    let (script, log) = hook_script(&install);
    install.extra_config = format!("hooks: {{allowed: [{}]}}", script.display());
    install.write_config();
    install.manifest(
        "r.yaml",
        &manifest(
            "rotor",
            "ECC_NIST_P256",
            &format!(
                "  rotation: {{every: 30d}}\n  onRotate:\n    - command: [\"{}\"]\n",
                script.display()
            ),
        ),
    );
    let dir = install.key_dir("rotor");
    let at = |time: &str| vec![("KEYPROV_TEST_NOW".to_string(), time.to_string())];
    install.env = at("2030-01-01T00:00:00Z");
    install.run_once(0);
    // Due 30 days on, plus the key's fixed spread (see schedule::spread).
    let due = at_spread("rotor", "2030-01-31T00:00:00Z", 30);
    install.env = at(&shifted(due, -1));
    let run = install.run_once(0);
    assert!(
        run.stdout.contains("0 changed"),
        "not yet due: {}",
        run.stdout
    );
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    install.env = at(&shifted(due, 0));
    let run = install.run_once(0);
    assert!(run.stdout.contains("1 changed"), "due: {}", run.stdout);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    let hooks = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        hooks,
        format!(
            "activate rotor 1 {d}\nactivate rotor 2 {d}\n",
            d = dir.display()
        ),
        "onRotate runs for the first generation and for each rotation"
    );
}

#[test]
fn staged_rotation_publishes_ahead_then_activates() {
    let mut install = Install::new("");
    let (script, log) = hook_script(&install);
    install.extra_config = format!("hooks: {{allowed: [{}]}}", script.display());
    install.write_config();
    install.manifest(
        "s.yaml",
        &manifest(
            "staged",
            "ECC_NIST_P256",
            &format!(
                "  rotation: {{every: 30d, publishAhead: 7d}}\n  onRotate:\n    - command: [\"{}\"]\n      on: [publish, activate]\n",
                script.display()
            ),
        ),
    );
    let dir = install.key_dir("staged");
    let at = |time: &str| vec![("KEYPROV_TEST_NOW".to_string(), time.to_string())];
    install.env = at("2030-01-01T00:00:00Z");
    install.run_once(0);
    install.env = at("2030-01-23T23:00:00Z");
    install.run_once(0);
    assert_eq!(
        link(&dir, "next"),
        None,
        "publication starts 7 days before due"
    );
    let due = at_spread("staged", "2030-01-31T00:00:00Z", 30);
    // The staged timeline: publication (publish hooks) 7 days before activation, in both.
    let now = [("KEYPROV_TEST_NOW", "2030-01-23T23:00:00Z")];
    let status = install.keyprov_env(&["status", "--json"], &now);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        status["keys"][0]["nextPublishAt"],
        shifted(due, -7 * 86_400)
    );
    assert_eq!(status["keys"][0]["nextRotation"], shifted(due, 0));
    let table = install.keyprov_env(&["status"], &now).stdout;
    assert!(table.contains("(published in "), "{table}");
    let plan = install.keyprov_env(&["plan", "--json"], &now);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(
        plan["nextRotations"][0]["publishAt"],
        shifted(due, -7 * 86_400)
    );
    assert_eq!(plan["nextRotations"][0]["dueAt"], shifted(due, 0));
    install.env = at(&shifted(due, -7 * 86_400));
    install.run_once(0);
    assert_eq!(
        link(&dir, "current").as_deref(),
        Some("v0001"),
        "current unchanged while staged"
    );
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("next/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["activatesAt"], keyprov::schedule::format_time(due));
    let status = install.keyprov_env(
        &["status", "--json"],
        &[("KEYPROV_TEST_NOW", "2030-01-25T00:00:00Z")],
    );
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["keys"][0]["generation"], 1);
    assert_eq!(status["keys"][0]["next"], 2);
    assert_eq!(status["keys"][0]["state"], "converged");

    install.env = at(&shifted(due, -1));
    install.run_once(0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    install.env = at(&shifted(due, 0));
    install.run_once(0);
    assert_eq!(link(&dir, "current").as_deref(), Some("v0002"));
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "next"), None);
    let hooks = std::fs::read_to_string(&log).unwrap();
    let events: Vec<String> = hooks
        .lines()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        events,
        ["activate staged 1", "publish staged 2", "activate staged 2"]
    );
}

#[test]
fn rotate_command_stages_or_activates_now() {
    let install = Install::new("");
    install.manifest(
        "s.yaml",
        &manifest(
            "manual",
            "ECC_NIST_P256",
            "  rotation: {publishAhead: 1d}\n",
        ),
    );
    let dir = install.key_dir("manual");
    install.run_once(0);
    let run = install.keyprov(&["rotate", "manual"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(link(&dir, "current").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    // --now with one staged: a fresh pair, current at once (the staged one goes).
    let run = install.keyprov(&["rotate", "manual", "--now"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(link(&dir, "current").as_deref(), Some("v0003"));
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "next"), None);
    let run = install.keyprov(&["rotate", "nosuch"]);
    assert_eq!(run.code, 64, "{}", run.all());
    assert!(
        run.stderr.contains("no manifest defines key \"nosuch\""),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_lists_pending_actions_and_exits_3() {
    let install = Install::new("");
    install.manifest("p.yaml", &manifest("planned", "ECC_NIST_P256", ""));
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("planned: generate generation 1 (new key)"),
        "{}",
        plan.stdout
    );
    assert!(!install.state().exists(), "plan changes nothing");
    install.run_once(0);
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("No changes: 1 key converged."),
        "{}",
        plan.stdout
    );
}

#[test]
fn plaintext_private_keys_never_reach_the_logs() {
    let install = Install::new("");
    install.manifest(
        "p.yaml",
        &manifest("secretive", "RSA_2048", "  includePlaintext: true\n"),
    );
    let run = install.keyprov_env(&["run", "--once"], &[("KEYPROV_LOG", "trace")]);
    assert_eq!(run.code, 0, "{}", run.all());
    let dir = install.key_dir("secretive");
    let mode = std::fs::metadata(dir.join("current/private.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let der = pem_der(&dir.join("current/private.pem"));
    assert_eq!(decrypt(&install, "secretive"), der);
    let status = install.keyprov_env(&["status", "--json"], &[("KEYPROV_LOG", "trace")]);
    let logs = format!(
        "{}{}{}",
        run.all(),
        status.all(),
        install
            .keyprov_env(&["verify"], &[("KEYPROV_LOG", "trace")])
            .all()
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    // Any 24-byte window of the key, raw, base64 (PEM body) or hex, is a leak.
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    assert!(logs.len() > 200, "trace logging produced output");
    for window in b64.as_bytes().chunks(32) {
        assert!(
            !logs.contains(std::str::from_utf8(window).unwrap()),
            "base64 of the private key in the logs"
        );
    }
    for window in hex.as_bytes().chunks(48) {
        assert!(
            !logs.contains(std::str::from_utf8(window).unwrap()),
            "hex of the private key in the logs"
        );
    }
    let raw = logs.as_bytes();
    for window in der.chunks(24) {
        assert!(
            !raw.windows(window.len()).any(|w| w == window),
            "raw private key bytes in the logs"
        );
    }
}

#[test]
fn interrupted_writes_are_cleaned_up_and_the_key_converges() {
    let install = Install::new("");
    install.manifest("c.yaml", &manifest("crashy", "ECC_NIST_P256", ""));
    install.run_once(0);
    let dir = install.key_dir("crashy");
    // What a crash can leave: a half-written temporary version, a complete version that was
    // never linked, and a temporary link.
    std::fs::create_dir(dir.join(".tmp-v0002-4242")).unwrap();
    std::fs::write(dir.join(".tmp-v0002-4242/public.pem"), "-----BEGIN PUB").unwrap();
    std::fs::create_dir(dir.join("v0003")).unwrap();
    for file in ["public.pem", "private.enc", "meta.json"] {
        std::fs::copy(dir.join("v0001").join(file), dir.join("v0003").join(file)).unwrap();
    }
    std::os::unix::fs::symlink("v0003", dir.join(".tmp-current-4242")).unwrap();
    let before = public_der(&dir);
    let plan = install.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("leftover .tmp-v0002-4242 from an interrupted write"),
        "{}",
        plan.stdout
    );
    install.run_once(0);
    assert_eq!(
        link(&dir, "current").as_deref(),
        Some("v0001"),
        "readers never saw the unlinked version"
    );
    assert_eq!(versions(&dir), ["v0001"]);
    assert!(!dir.join(".tmp-v0002-4242").exists() && !dir.join(".tmp-current-4242").exists());
    assert_eq!(public_der(&dir), before);
    let again = install.run_once(0);
    assert!(again.stdout.contains("0 changed"), "{}", again.stdout);
}

#[test]
fn leftovers_of_interrupted_key_creations_are_collected_when_the_keys_are_made() {
    let install = Install::new("");
    install.manifest(
        "k.yaml",
        &[
            manifest("alpha", "ECC_NIST_P256", ""),
            manifest("beta-2", "ECC_NIST_P256", ""),
        ]
        .join("---\n"),
    );
    install.run_once(0);
    install.manifest(
        "n.yaml",
        &[
            manifest("gamma", "ECC_NIST_P256", ""),
            manifest("delta", "ECC_NIST_P256", ""),
        ]
        .join("---\n"),
    );
    // What killed creations leave beside the key directories (one listing per pass finds
    // them all), and one of another key's name that is not created in this run.
    let keys = install.state().join("keys");
    for (leftover, file) in [
        (".tmp-new-4242-gamma", "v0001/public.pem"),
        (".tmp-new-77-gamma", "meta.json"),
        (".tmp-new-4242-delta", "x"),
        (".tmp-new-4242-epsilon", "x"),
    ] {
        let path = keys.join(leftover).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "half").unwrap();
    }
    install.run_once(0);
    for name in ["gamma", "delta"] {
        assert_eq!(
            link(&install.key_dir(name), "current").as_deref(),
            Some("v0001")
        );
    }
    assert_eq!(
        leftovers(&keys),
        [keys.join(".tmp-new-4242-epsilon")],
        "the leftovers of the keys created are gone, no other"
    );
    let again = install.run_once(0);
    assert!(again.stdout.contains("0 changed"), "{}", again.stdout);
}

/// `rotate --now` is the emergency path (a suspected compromise): with a generation already
/// staged, it makes and activates a fresh pair; the staged one, made before it, is never
/// activated, never becomes `previous`, and goes. The next rotation counts from the fresh one.
#[test]
fn rotate_now_replaces_a_staged_generation_with_a_fresh_pair() {
    let mut install = Install::new("");
    let (script, log) = hook_script(&install);
    install.extra_config = format!("hooks: {{allowed: [{}]}}", script.display());
    install.write_config();
    install.manifest(
        "e.yaml",
        &manifest(
            "emergency",
            "ECC_NIST_P256",
            &format!(
                "  rotation: {{every: 30d, publishAhead: 7d}}\n  onRotate:\n    - command: [\"{}\"]\n      on: [publish, activate]\n",
                script.display()
            ),
        ),
    );
    let dir = install.key_dir("emergency");
    let at = |now: &str, args: &[&str]| {
        let run = install.keyprov_env(args, &[("KEYPROV_TEST_NOW", now)]);
        assert_eq!(run.code, 0, "{args:?} at {now}: {}", run.all());
        run
    };
    at("2030-01-01T00:00:00Z", &["run", "--once"]);
    at("2030-01-05T00:00:00Z", &["rotate", "emergency"]);
    assert_eq!(link(&dir, "next").as_deref(), Some("v0002"));
    let staged = pem_der(&dir.join("v0002/public.pem"));
    let old = pem_der(&dir.join("v0001/public.pem"));
    let run = at("2030-01-05T01:00:00Z", &["rotate", "emergency", "--now"]);
    assert!(run.stdout.contains("1 changed"), "{}", run.all());
    assert_eq!(
        link(&dir, "current").as_deref(),
        Some("v0003"),
        "{}",
        run.all()
    );
    assert_eq!(link(&dir, "previous").as_deref(), Some("v0001"));
    assert_eq!(link(&dir, "next"), None);
    assert_eq!(versions(&dir), ["v0001", "v0003"], "the staged pair goes");
    let fresh = public_der(&dir);
    assert!(
        fresh != staged && fresh != old,
        "a pair made by rotate --now"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("current/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["activatesAt"], "2030-01-05T01:00:00.000000Z");
    let events: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        events,
        [
            "activate emergency 1",
            "publish emergency 2",
            "activate emergency 3"
        ],
        "generation 2 is never activated"
    );
    let status = at("2030-01-05T01:00:00Z", &["status", "--json"]).stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let key = &status["keys"][0];
    assert_eq!(key["generation"], 3);
    assert_eq!(key["next"], serde_json::Value::Null);
    assert_eq!(key["state"], "converged");
    let due = at_spread("emergency", "2030-02-04T01:00:00Z", 30);
    assert_eq!(key["nextRotation"], shifted(due, 0));
}

/// `time` plus the rotation spread of key `name` rotating every `days` days.
fn at_spread(name: &str, time: &str, days: u64) -> std::time::SystemTime {
    keyprov::schedule::parse_time(time).unwrap()
        + keyprov::schedule::spread(name, std::time::Duration::from_secs(days * 86_400))
}

/// `time` moved by `seconds`, formatted for KEYPROV_TEST_NOW.
fn shifted(time: std::time::SystemTime, seconds: i64) -> String {
    let moved = if seconds < 0 {
        time - std::time::Duration::from_secs(seconds.unsigned_abs())
    } else {
        time + std::time::Duration::from_secs(seconds as u64)
    };
    keyprov::schedule::format_time(moved)
}

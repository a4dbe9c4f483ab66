//! What `validate` and `plan` tell on a consumer host (`fleet.role: consumer`): a key it can
//! never make (only file outputs) is warned of, and plan shows what the consumer will do — copy
//! from the secret, or wait for a writer — never a generation it will not make.

mod common;

use common::*;

#[test]
fn a_key_a_consumer_never_makes_is_warned_of_and_not_planned_as_a_generation() {
    let install = Install::new("fleet: {role: consumer}");
    install.manifest("files.yaml", &manifest("files-only", "ECC_NIST_P256", ""));

    let validate = install.keyprov(&["validate"]);
    assert_eq!(validate.code, 0, "{}", validate.all());
    assert!(
        validate.stderr.contains(
            "warning: manifests.d/files.yaml: key \"files-only\": never made on this host: a \
             consumer (fleet.role: consumer) never generates"
        ) && validate.stderr.contains("(consumer per keyprov.yaml)"),
        "{}",
        validate.all()
    );
    let json = install.keyprov(&["validate", "--json"]);
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(document["valid"], true);
    assert!(
        document["warnings"][0]
            .as_str()
            .unwrap()
            .contains("key \"files-only\": never made on this host"),
        "{document}"
    );

    let plan = install.keyprov(&["plan"]);
    // Nothing will change on this host: no generation is planned, and the key is named.
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        !plan.stdout.contains("generate generation"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("files-only: never made on this host: a consumer (fleet.role: consumer)"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("1 key never made on this consumer (see above)"),
        "{}",
        plan.all()
    );
    let json = install.keyprov(&["plan", "--json"]);
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(document["changes"], serde_json::json!([]), "{document}");
    assert_eq!(
        document["neverMadeHere"][0]["key"], "files-only",
        "{document}"
    );
    assert_eq!(document["exitCode"], 0, "{document}");

    // A writer gets no such warning.
    let writer = Install::new("");
    writer.manifest("files.yaml", &manifest("files-only", "ECC_NIST_P256", ""));
    let validate = writer.keyprov(&["validate"]);
    assert!(!validate.stderr.contains("warning"), "{}", validate.all());
}

#[test]
fn plan_on_a_consumer_waits_for_a_writer_then_plans_the_copy() {
    let Some(endpoint) = localstack() else { return };
    let keyring = tempfile::tempdir().unwrap();
    let keyring = keyring.path().join("fleet.keyring");
    let secret = format!("keyprov-test/consumer-plan-{}", uuid::Uuid::new_v4());
    let writer = fleet_host(&endpoint, &keyring, "", "");
    let consumer = fleet_host(&endpoint, &keyring, "", "fleet: {role: consumer}");
    writer.manifest("shared.yaml", &file_and_secret("shared", &secret, ""));
    consumer.manifest("shared.yaml", &file_and_secret("shared", &secret, ""));

    let validate = consumer.keyprov(&["validate"]);
    assert!(!validate.stderr.contains("warning"), "{}", validate.all());
    // No secret yet: the consumer waits for a writer; it plans no generation of its own.
    let plan = consumer.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        !plan.stdout.contains("generate generation"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains(
            "shared: no change on this host: generation 1 is made by a writer; this consumer \
             copies it from the secret once it is there"
        ),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("1 key waiting for a writer (this host is a consumer)"),
        "{}",
        plan.all()
    );

    // Once a writer made it, the consumer plans the copy into its file output.
    writer.run_once(0);
    let plan = consumer.keyprov(&["plan"]);
    assert_eq!(plan.code, 3, "{}", plan.all());
    assert!(
        !plan.stdout.contains("generate generation"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("shared: copy generation 1 as current"),
        "{}",
        plan.all()
    );
    consumer.run_once(0);
    assert_eq!(
        link(&consumer.key_dir("shared"), "current").as_deref(),
        Some("v0001")
    );
    let plan = consumer.keyprov(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
}

//! The bad-input corpus: every invalid manifest gets its precise message (file:line:column:
//! field: message), exit 2, and leaves an existing state directory byte-for-byte unchanged.

mod common;

use common::*;

/// (corpus file, expected diagnostic after `manifests.d/<file>`; `…` stands for a temporary path).
const CORPUS: &[(&str, &str)] = &[
    (
        "syntax-error.yaml",
        ":10:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'",
    ),
    (
        "wrong-type-outputs.yaml",
        ":8:3: spec.outputs: must be a list (`- item` lines or `[a, b]`), not the text \"file\"",
    ),
    (
        "wrong-type-bool.yaml",
        ":8:3: spec.includePlaintext: must be true or false, not the text \"yes please\"",
    ),
    (
        "unknown-field-spec.yaml",
        ":8:3: spec.rotaton: unknown field `rotaton`; did you mean `rotation`? (fields here: encryptionContext, grantTokens, includePlaintext, keyPairSpec, kmsKeyId, onRotate, outputs, rotation)",
    ),
    (
        "unknown-field-top.yaml",
        ":10:1: status: unknown field `status` (fields here: apiVersion, kind, metadata, spec)",
    ),
    (
        "unknown-spec.yaml",
        ":6:3: spec.keyPairSpec: unknown value \"EC_P256\", expected one of RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, ECC_NIST_EDWARDS25519, SM2",
    ),
    (
        "duplicate-name.yaml",
        ":4:3: metadata.name: duplicate name \"good-key\", also defined at manifests.d/00-good.yaml:4:3",
    ),
    (
        "empty-outputs.yaml",
        ":8:3: spec.outputs: at least one output (file or secretsManager) is required",
    ),
    (
        "bad-duration.yaml",
        ":9:5: spec.rotation.every: invalid duration \"ninety days\"",
    ),
    (
        "publish-ahead-too-long.yaml",
        ":8:25: spec.rotation.publishAhead: 7days must be shorter than rotation.every (7days)",
    ),
    (
        "path-escape-dotdot.yaml",
        ":10:9: spec.outputs[0].file.dir: \"../../etc/cron.d\" contains \"..\"",
    ),
    (
        "path-escape-absolute.yaml",
        ":10:9: spec.outputs[0].file.dir: \"/etc/ssl/private\" is outside stateDir and outputRoots",
    ),
    (
        "symlink-escape.yaml",
        ":10:9: spec.outputs[0].file.dir: …/state/escape leads through a symlink to …/outside, outside …/state",
    ),
    (
        "hook-not-allowed.yaml",
        ":11:17: spec.onRotate[0].command[0]: \"/bin/rm\" is not in the config's hooks.allowed (/bin/echo)",
    ),
    (
        "hook-relative.yaml",
        ":11:17: spec.onRotate[0].command[0]: \"systemctl\" must be an absolute path listed in the config's hooks.allowed",
    ),
    (
        "empty.yaml",
        ": contains no KeyPair document (the file is empty or holds only comments)",
    ),
    (
        "comments-only.yaml",
        ": contains no KeyPair document (the file is empty or holds only comments)",
    ),
    (
        "wrong-api-version.yaml",
        ":1:1: apiVersion: unsupported value \"keyprov/v2\", expected keyprov/v1",
    ),
    (
        "wrong-kind.yaml",
        ":2:1: kind: unsupported value \"Secret\", expected KeyPair",
    ),
    (
        "bad-name.yaml",
        ":4:3: metadata.name: invalid name \"Payments_Signing\"",
    ),
    ("missing-field.yaml", ":5:1: spec.kmsKeyId: is required"),
    (
        "bad-mode.yaml",
        ":10:9: spec.outputs[0].file.mode: \"0666\" grants write or execute to group or others",
    ),
    (
        "bad-format.yaml",
        ":9:14: spec.outputs[0].file.format: unknown value \"jks\", expected one of pem, der",
    ),
    (
        "both-outputs.yaml",
        ":9:7: spec.outputs[0]: an output has exactly one of file or secretsManager, not both",
    ),
    (
        "bad-hook-event.yaml",
        ":12:12: spec.onRotate[0].on[0]: unknown value \"rotate\", expected one of publish, activate",
    ),
    (
        "negative-keep.yaml",
        ":8:14: spec.rotation.keep: must be a whole number >= 0 (at most 4294967295), not the number -1",
    ),
    (
        "second-document-invalid.yaml",
        ":16:3: spec.keyPairSpec: unknown value \"RSA_1024\"",
    ),
    (
        "same-dir-as-neighbour.yaml",
        ":9:14: spec.outputs[0].file.dir: …/state/keys/good-key is the same directory as key \"good-key\" (manifests.d/00-good.yaml:10:7); every key needs its own directory",
    ),
    (
        "tabs-and-garbage.yaml",
        ":4:2: YAML syntax error: tabs disallowed within this context (block indentation)",
    ),
    (
        "list-document.yaml",
        ":1:1: must be a mapping (`key: value` lines), not a list",
    ),
    // Durations that once overflowed status and rotate (item 6).
    (
        "every-too-long.yaml",
        ":9:5: spec.rotation.every: duration \"20000y\" is longer than the maximum of 100years",
    ),
    (
        "publish-ahead-too-far.yaml",
        ":10:5: spec.rotation.publishAhead: duration \"19000y\" is longer than the maximum of 100years",
    ),
    (
        "hook-timeout-too-long.yaml",
        ":12:7: spec.onRotate[0].timeout: duration \"2d\" is longer than the maximum of 1day",
    ),
    // Typos that once hung keyprov with unbounded memory (issue 8, item 1).
    (
        "typo-mapping-value.yaml",
        ":4:17: YAML syntax error: mapping values are not allowed in this context",
    ),
    (
        "typo-indented-key.yaml",
        ":5:10: YAML syntax error: mapping values are not allowed in this context",
    ),
    (
        "typo-sequence-entry.yaml",
        ":5:12: YAML syntax error: block sequence entries are not allowed in this context",
    ),
    (
        "two-yaml-directives.yaml",
        ":2:1: YAML syntax error: duplicate version directive",
    ),
    // Anchors that once panicked serde_yaml, or that it resolves wrongly (item 2).
    (
        "undefined-alias.yaml",
        ":5:7: alias *nope refers to no anchor defined before it in this document",
    ),
    (
        "recursive-alias.yaml",
        ":5:24: alias *l refers to no anchor defined before it in this document (or to a node that contains the alias)",
    ),
    (
        "redefined-anchor.yaml",
        ":5:15: anchor &n is defined again (first on line 4); give each anchor its own name",
    ),
    (
        "alias-bomb.yaml",
        ":11:14: aliases expand to more than 100000 nodes; refusing a possible alias bomb",
    ),
    (
        "deep-nesting.yaml",
        ":7:129: nested deeper than 64 levels; a manifest needs far fewer",
    ),
];

fn corpus(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/corpus/invalid/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A converged installation holding one valid key, whose rotation is due (so a run that
/// wrongly went ahead would rotate it).
fn converged() -> Install {
    let install = Install::new("hooks: {allowed: [/bin/echo]}");
    install.manifest(
        "00-good.yaml",
        &manifest("good-key", "ECC_NIST_P256", "  rotation: {every: 1d}\n"),
    );
    install.keyprov_env(
        &["run", "--once"],
        &[("KEYPROV_TEST_NOW", "2030-01-01T00:00:00Z")],
    );
    let outside = install.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, install.state().join("escape")).unwrap();
    install
}

/// True when one line of `text` holds the parts of `want` (split at `…`) in order.
fn reported(text: &str, want: &str) -> bool {
    text.lines().any(|line| {
        let mut rest = line;
        want.split('…').all(|part| match rest.find(part) {
            Some(at) => {
                rest = &rest[at + part.len()..];
                true
            }
            None => false,
        })
    })
}

fn assert_rejected(install: &Install, file: &str, expected: &str) {
    let before = snapshot(&install.state());
    let want = format!("error: manifests.d/{file}{expected}");
    let validate = install.keyprov(&["validate"]);
    assert_eq!(
        validate.code,
        2,
        "{file}: validate exit: {}",
        validate.all()
    );
    assert!(
        reported(&validate.stderr, &want),
        "{file}: want {want:?}\ngot: {}",
        validate.stderr
    );
    // Due for rotation at this time: only the bad neighbour may hold it back.
    let run = install.keyprov_env(
        &["run", "--once"],
        &[("KEYPROV_TEST_NOW", "2030-01-01T12:00:00Z")],
    );
    assert_eq!(run.code, 2, "{file}: run exit: {}", run.all());
    assert!(
        reported(&run.stderr, &want),
        "{file}: run must report {want:?}: {}",
        run.stderr
    );
    assert_eq!(
        before,
        snapshot(&install.state()),
        "{file}: the state directory changed"
    );
}

#[test]
fn every_invalid_manifest_is_reported_precisely_and_changes_nothing() {
    let install = converged();
    let files: Vec<String> = std::fs::read_dir(format!(
        "{}/tests/corpus/invalid",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect();
    assert_eq!(
        files.len(),
        CORPUS.len(),
        "every corpus file has an expectation"
    );
    for (file, expected) in CORPUS {
        install.manifest(file, &corpus(file));
        assert_rejected(&install, file, expected);
        std::fs::remove_file(install.manifests().join(file)).unwrap();
    }
}

#[test]
fn huge_and_binary_files_are_refused() {
    let install = converged();
    let mut huge = manifest("huge", "ECC_NIST_P256", "");
    huge.push_str(&format!("# {}\n", "x".repeat(5 << 20)));
    install.manifest("huge.yaml", &huge);
    assert_rejected(
        &install,
        "huge.yaml",
        ": file is larger than 4 MiB; split it into several files",
    );
    std::fs::remove_file(install.manifests().join("huge.yaml")).unwrap();

    std::fs::write(
        install.manifests().join("binary.yaml"),
        [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0],
    )
    .unwrap();
    assert_rejected(
        &install,
        "binary.yaml",
        ": binary content (NUL byte at offset 7); expected UTF-8 YAML text",
    );
    std::fs::write(
        install.manifests().join("binary.yaml"),
        [b'a', b':', b' ', 0xff, 0xfe, b'\n'],
    )
    .unwrap();
    assert_rejected(
        &install,
        "binary.yaml",
        ": not UTF-8 text (invalid byte at offset 3)",
    );
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let install = Install::new("");
    install.manifest(
        "many.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: Bad_Name\nspec:\n  keyPairSpec: EC_P256\n  kmsKeyId: alias/x\n  rotation: {every: soon}\n  outputs:\n    - file: {dir: ../x, mode: \"0777\"}\n",
    );
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2);
    for want in [
        "many.yaml:4:3: metadata.name",
        "many.yaml:6:3: spec.keyPairSpec",
        "many.yaml:8:14: spec.rotation.every",
        "many.yaml:10:14: spec.outputs[0].file.dir",
        "many.yaml:10:25: spec.outputs[0].file.mode",
    ] {
        assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
    }
    assert!(run.stdout.contains("5 problems found;"), "{}", run.all());
}

#[test]
fn valid_keys_still_reconcile_beside_a_bad_neighbour() {
    let install = converged();
    install.manifest("bad.yaml", &corpus("unknown-spec.yaml"));
    install.manifest("10-new.yaml", &manifest("new-key", "ECC_NIST_P256", ""));
    let run = install.keyprov_env(
        &["run", "--once"],
        &[("KEYPROV_TEST_NOW", "2030-01-01T00:10:00Z")],
    );
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(
        link(&install.key_dir("new-key"), "current").as_deref(),
        Some("v0001")
    );
    assert_eq!(
        link(&install.key_dir("good-key"), "current").as_deref(),
        Some("v0001")
    );
}

#[test]
fn invalid_config_changes_nothing_and_exits_2() {
    let install = converged();
    let before = snapshot(&install.state());
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nprovider: gcp\n",
    )
    .unwrap();
    let run = install.keyprov(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "keyprov.yaml:3:1: provider: unknown value \"gcp\", expected one of local, aws"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(before, snapshot(&install.state()));
    std::fs::write(
        install.config(),
        "manifests: [manifests.d]\nstateDir: state\nreconcile:\n  concurrency: 0\n  resyncEvery: often\n",
    )
    .unwrap();
    let run = install.keyprov(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("keyprov.yaml:4:3: reconcile.concurrency: must be at least 1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("keyprov.yaml:5:3: reconcile.resyncEvery: invalid duration \"often\""),
        "{}",
        run.stderr
    );
    assert_eq!(before, snapshot(&install.state()));
}

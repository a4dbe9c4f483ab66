//! `keyprov schema` checked by an independent validator (Python's `jsonschema`, from the
//! LocalStack virtualenv that `scripts/test` installs): every shipped manifest validates, a
//! manifest with a bad keyPairSpec or an unknown field does not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATE: &str = r#"
import json, re, sys, yaml, jsonschema

# YAML 1.2 booleans (true/false only), as keyprov and yaml-language-server read them;
# PyYAML's YAML 1.1 default would turn the key `on:` into True.
class Yaml12Loader(yaml.SafeLoader):
    pass
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
for path in sys.argv[2:]:
    for number, document in enumerate(yaml.load_all(open(path), Loader=Yaml12Loader)):
        if document is None:
            continue
        errors = sorted(validator.iter_errors(document), key=str)
        print(f"{path}#{number}: {'ok' if not errors else 'invalid: ' + errors[0].message}")
"#;

/// Validates `files` against `keyprov schema`; one line per document.
fn validate(files: &[PathBuf]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let schema = Command::new(env!("CARGO_BIN_EXE_keyprov"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(schema.status.success());
    let schema_path = dir.path().join("schema.json");
    std::fs::write(&schema_path, &schema.stdout).unwrap();
    let args = ["-c", VALIDATE]
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([schema_path.as_os_str()])
        .chain(files.iter().map(|f| f.as_os_str()));
    let out = common::python_stdout(args, "jsonschema");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_manifest_validates_against_the_schema() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = yaml_files(&repo.join("config/manifests.d"));
    files.extend(yaml_files(&repo.join("config/localstack.d")));
    // The tests' own good manifest, as written by common::manifest.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        common::manifest(
            "good",
            "ECC_NIST_P256",
            "  rotation: {every: 30d, keep: 2}\n",
        ),
    )
    .unwrap();
    files.push(good);
    let results = validate(&files);
    assert!(results.len() >= 5, "{results:?}");
    for line in &results {
        assert!(line.ends_with(": ok"), "{line}");
    }
}

#[test]
fn a_bad_spec_or_an_unknown_field_fails_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let bad_spec = dir.path().join("bad-spec.yaml");
    std::fs::write(&bad_spec, common::manifest("bad", "ECC_NIST_P999", "")).unwrap();
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        common::manifest("odd", "RSA_2048", "  rotaton: {every: 1d}\n"),
    )
    .unwrap();
    let bad_event = dir.path().join("bad-event.yaml");
    std::fs::write(
        &bad_event,
        common::manifest(
            "hooked",
            "RSA_2048",
            "  onRotate: [{command: [/usr/bin/true], on: [rotate]}]\n",
        ),
    )
    .unwrap();
    let results = validate(&[bad_spec, unknown, bad_event]);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results[0].contains("'ECC_NIST_P999' is not one of"),
        "{results:?}"
    );
    assert!(
        results[1].contains("'rotaton' was unexpected"),
        "{results:?}"
    );
    assert!(results[2].contains("'rotate' is not one of"), "{results:?}");
}

#[test]
fn the_configuration_the_debian_package_installs_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deb/keyprov.yaml");
    let config = keyprov::config::Config::load(&path).unwrap_or_else(|problems| {
        panic!("{problems:?}");
    });
    assert_eq!(config.state_dir, Path::new("/var/lib/keyprov"));
    assert_eq!(
        config.manifests,
        vec![PathBuf::from("/etc/keyprov/manifests.d")]
    );
}

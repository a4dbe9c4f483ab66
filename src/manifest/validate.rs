//! Semantic checks of one manifest document, turning it into a [`KeyPair`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Context;
use super::document::{self, Document};
use super::model::{FileOutput, Format, Hook, KeyPair, Output, Rotation, SecretsManagerOutput};
use super::paths::resolve_output_dir;
use crate::private_formats::PrivateFormat;
use crate::public_formats::PublicFormat;
use crate::schedule::{MAX_ROTATION, parse_bounded_duration};
use crate::spec::KeyPairSpec;

/// The only manifest API version.
pub const API_VERSION: &str = "keyprov/v1";
/// The only manifest kind.
pub const KIND: &str = "KeyPair";
/// Default mode of public.*, private.enc and meta.json.
pub const DEFAULT_MODE: u32 = 0o640;
/// Default time limit of an onRotate command.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time limit of an onRotate command: one day.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(86_400);
const MAX_GRANT_TOKENS: usize = 10;

/// A problem found in one document, before it is given a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records the error of `result` under `field` and returns its value.
    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.add(field, message)).ok()
    }
}

/// Validates one document; returns every problem found, not just the first.
pub fn validate(doc: Document, source: &Path, ctx: &Context) -> Result<KeyPair, Vec<Problem>> {
    let mut problems = Problems::default();
    if doc.api_version != API_VERSION {
        problems.add(
            "apiVersion",
            format!(
                "unsupported value {:?}, expected {API_VERSION}",
                doc.api_version
            ),
        );
    }
    if doc.kind != KIND {
        problems.add(
            "kind",
            format!("unsupported value {:?}, expected {KIND}", doc.kind),
        );
    }
    let name = doc.metadata.name;
    problems.check("metadata.name", check_name(&name));
    let spec = doc.spec;
    let key_spec = problems.check(
        "spec.keyPairSpec",
        spec.key_pair_spec.parse::<KeyPairSpec>(),
    );
    if spec.kms_key_id.trim().is_empty() {
        problems.add("spec.kmsKeyId", "must not be empty");
    }
    if spec.grant_tokens.len() > MAX_GRANT_TOKENS {
        problems.add(
            "spec.grantTokens",
            format!(
                "{} tokens given, KMS accepts at most {MAX_GRANT_TOKENS}",
                spec.grant_tokens.len()
            ),
        );
    }
    for (key, value) in &spec.encryption_context {
        if key.is_empty() || value.is_empty() {
            problems.add(
                format!("spec.encryptionContext.{key}"),
                "encryption context keys and values must not be empty",
            );
        }
        if key.starts_with(crate::binding::RESERVED_PREFIX) {
            problems.add(
                format!("spec.encryptionContext.{key}"),
                format!(
                    "keys starting with {:?} are reserved: keyprov adds {} and {} itself to \
                     bind every pair to its key and generation",
                    crate::binding::RESERVED_PREFIX,
                    crate::binding::NAME_KEY,
                    crate::binding::GENERATION_KEY
                ),
            );
        }
    }
    let rotation = spec
        .rotation
        .map(|rotation| check_rotation(rotation, &mut problems))
        .unwrap_or_default();
    let outputs = check_outputs(spec.outputs, &name, ctx, &mut problems);
    if let Some(key_spec) = key_spec {
        check_public_formats(&outputs, &name, key_spec, &mut problems);
        check_private_formats(
            &outputs,
            &name,
            key_spec,
            spec.include_plaintext,
            &mut problems,
        );
    }
    let on_rotate = spec
        .on_rotate
        .into_iter()
        .enumerate()
        .filter_map(|(i, hook)| {
            check_hook(hook, &format!("spec.onRotate[{i}]"), ctx, &mut problems)
        })
        .collect();
    match (problems.0.is_empty(), key_spec) {
        (true, Some(key_spec)) => Ok(KeyPair {
            name,
            labels: doc.metadata.labels,
            spec: key_spec,
            kms_key_id: spec.kms_key_id,
            encryption_context: spec.encryption_context,
            grant_tokens: spec.grant_tokens,
            include_plaintext: spec.include_plaintext,
            rotation,
            outputs,
            on_rotate,
            source: source.to_path_buf(),
        }),
        _ => Err(problems.0),
    }
}

/// Checks a key name: a DNS label, as Kubernetes names are.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !valid_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "invalid name {name:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_rotation(rotation: document::Rotation, problems: &mut Problems) -> Rotation {
    let every = rotation.every.as_deref().and_then(|text| {
        problems.check(
            "spec.rotation.every",
            parse_bounded_duration(text, MAX_ROTATION),
        )
    });
    let publish_ahead = rotation.publish_ahead.as_deref().and_then(|text| {
        problems.check(
            "spec.rotation.publishAhead",
            parse_bounded_duration(text, MAX_ROTATION),
        )
    });
    if let (Some(every), Some(ahead)) = (every, publish_ahead)
        && ahead >= every
    {
        problems.add(
            "spec.rotation.publishAhead",
            format!(
                "{} must be shorter than rotation.every ({})",
                humantime::format_duration(ahead),
                humantime::format_duration(every)
            ),
        );
    }
    Rotation {
        every,
        publish_ahead,
        keep: rotation.keep.unwrap_or(1),
    }
}

fn check_outputs(
    outputs: Vec<document::Output>,
    name: &str,
    ctx: &Context,
    problems: &mut Problems,
) -> Vec<Output> {
    if outputs.is_empty() {
        problems.add(
            "spec.outputs",
            "at least one output (file or secretsManager) is required",
        );
    }
    let mut checked: Vec<Output> = Vec::new();
    for (i, output) in outputs.into_iter().enumerate() {
        let field = format!("spec.outputs[{i}]");
        let output = match (output.file, output.secrets_manager) {
            (Some(file), None) => {
                check_file_output(file, name, &format!("{field}.file"), ctx, problems)
                    .map(Output::File)
            }
            (None, Some(secret)) => {
                check_secret_output(secret, &format!("{field}.secretsManager"), problems)
                    .map(Output::SecretsManager)
            }
            (Some(_), Some(_)) => {
                problems.add(
                    field,
                    "an output has exactly one of file or secretsManager, not both",
                );
                None
            }
            (None, None) => {
                problems.add(field, "an output needs one of file or secretsManager");
                None
            }
        };
        if let Some(output) = output {
            if checked
                .iter()
                .any(|other| other.location() == output.location() && other.kind() == output.kind())
            {
                problems.add(
                    format!("spec.outputs[{i}]"),
                    format!("{output} is listed twice"),
                );
            } else {
                checked.push(output);
            }
        }
    }
    checked
}

/// Refuses public formats that cannot hold keys of `key_spec` (no OpenSSH type for secp256k1
/// or SM2, no JOSE curve for SM2), naming the key.
fn check_public_formats(
    outputs: &[Output],
    name: &str,
    key_spec: KeyPairSpec,
    problems: &mut Problems,
) {
    for (i, output) in outputs.iter().enumerate() {
        let Output::File(file) = output else { continue };
        for format in &file.public_formats {
            if let Some(why) = format.unsupported(key_spec) {
                problems.add(
                    format!("spec.outputs[{i}].file.publicFormats"),
                    format!(
                        "key {name:?} ({}) cannot have {} public keys: {why}; remove {:?}",
                        key_spec.as_str(),
                        format.as_str(),
                        format.as_str()
                    ),
                );
            }
        }
    }
}

/// Refuses private formats that cannot hold keys of `key_spec`, and any without
/// `includePlaintext` (there is no plaintext to write), naming the key.
fn check_private_formats(
    outputs: &[Output],
    name: &str,
    key_spec: KeyPairSpec,
    include_plaintext: bool,
    problems: &mut Problems,
) {
    for (i, output) in outputs.iter().enumerate() {
        let Output::File(file) = output else { continue };
        if !file.private_formats.is_empty() && !include_plaintext {
            problems.add(
                format!("spec.outputs[{i}].file.privateFormats"),
                format!(
                    "key {name:?} writes no plaintext private key: set spec.includePlaintext: \
                     true, or remove privateFormats"
                ),
            );
        }
        for format in &file.private_formats {
            if let Some(why) = format.unsupported(key_spec) {
                problems.add(
                    format!("spec.outputs[{i}].file.privateFormats"),
                    format!(
                        "key {name:?} ({}) cannot have {} private keys: {why}; remove {:?}",
                        key_spec.as_str(),
                        format.as_str(),
                        format.as_str()
                    ),
                );
            }
        }
    }
}

fn check_file_output(
    file: document::FileOutput,
    name: &str,
    field: &str,
    ctx: &Context,
    problems: &mut Problems,
) -> Option<FileOutput> {
    let resolved = problems.check(
        &format!("{field}.dir"),
        resolve_output_dir(file.dir.as_deref(), name, ctx.state_dir, ctx.output_roots),
    );
    let format = match file.format.as_deref() {
        None | Some("pem") => Some(Format::Pem),
        Some("der") => Some(Format::Der),
        Some(other) => {
            problems.add(
                format!("{field}.format"),
                format!("unknown value {other:?}, expected one of pem, der"),
            );
            None
        }
    };
    let mode = match file.mode.as_deref() {
        None => Some(DEFAULT_MODE),
        Some(text) => problems.check(&format!("{field}.mode"), parse_mode(text)),
    };
    for (value, what) in [(&file.owner, "owner"), (&file.group, "group")] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            problems.add(format!("{field}.{what}"), "must not be empty");
        }
    }
    let mut public_formats = Vec::new();
    for (i, text) in file.public_formats.unwrap_or_default().iter().enumerate() {
        match PublicFormat::parse(text) {
            Some(format) if public_formats.contains(&format) => problems.add(
                format!("{field}.publicFormats[{i}]"),
                format!("{text:?} is listed twice"),
            ),
            Some(format) => public_formats.push(format),
            None => problems.add(
                format!("{field}.publicFormats[{i}]"),
                format!("unknown value {text:?}, expected one of jwk, openssh"),
            ),
        }
    }
    public_formats.sort_unstable();
    let mut private_formats = Vec::new();
    for (i, text) in file.private_formats.unwrap_or_default().iter().enumerate() {
        match PrivateFormat::parse(text) {
            Some(format) if private_formats.contains(&format) => problems.add(
                format!("{field}.privateFormats[{i}]"),
                format!("{text:?} is listed twice"),
            ),
            Some(format) => private_formats.push(format),
            None => problems.add(
                format!("{field}.privateFormats[{i}]"),
                format!("unknown value {text:?}, expected openssh"),
            ),
        }
    }
    private_formats.sort_unstable();
    let (root, dir) = resolved?;
    Some(FileOutput {
        root,
        dir,
        format: format?,
        mode: mode?,
        public_formats,
        private_formats,
        owner: file.owner,
        group: file.group,
    })
}

/// Parses an octal file mode and refuses write or execute for group and others.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode =
        (!text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .then(|| u32::from_str_radix(text, 8).ok())
            .flatten()
            .ok_or_else(|| format!("{text:?} is not an octal mode like \"0640\""))?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?}: setuid, setgid and sticky bits are not allowed"
        ));
    }
    if mode & 0o033 != 0 {
        return Err(format!(
            "{text:?} grants write or execute to group or others; key files may be at most 0644"
        ));
    }
    Ok(mode)
}

fn check_secret_output(
    secret: document::SecretsManagerOutput,
    field: &str,
    problems: &mut Problems,
) -> Option<SecretsManagerOutput> {
    if secret.secret_id.trim().is_empty() {
        problems.add(format!("{field}.secretId"), "must not be empty");
        return None;
    }
    Some(SecretsManagerOutput {
        secret_id: secret.secret_id,
        kms_key_id: secret.kms_key_id,
        tags: secret.tags,
    })
}

fn check_hook(
    hook: document::Hook,
    field: &str,
    ctx: &Context,
    problems: &mut Problems,
) -> Option<Hook> {
    let program_ok = match hook.command.first() {
        None => {
            problems.add(format!("{field}.command"), "must name a program");
            false
        }
        Some(program) if !Path::new(program).is_absolute() => {
            problems.add(
                format!("{field}.command[0]"),
                format!(
                    "{program:?} must be an absolute path listed in the config's hooks.allowed"
                ),
            );
            false
        }
        Some(program)
            if ctx.check_hooks_allowed
                && !ctx
                    .hooks_allowed
                    .iter()
                    .any(|allowed| allowed == Path::new(program)) =>
        {
            problems.add(
                format!("{field}.command[0]"),
                format!(
                    "{program:?} is not in the config's hooks.allowed ({})",
                    if ctx.hooks_allowed.is_empty() {
                        "empty".to_string()
                    } else {
                        ctx.hooks_allowed
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
            false
        }
        Some(_) => true,
    };
    let (mut on_publish, mut on_activate) = (false, hook.on.is_none());
    for (i, event) in hook.on.iter().flatten().enumerate() {
        match event.as_str() {
            "publish" => on_publish = true,
            "activate" => on_activate = true,
            other => problems.add(
                format!("{field}.on[{i}]"),
                format!("unknown value {other:?}, expected one of publish, activate"),
            ),
        }
    }
    let timeout = match hook.timeout.as_deref() {
        None => Some(DEFAULT_HOOK_TIMEOUT),
        Some(text) => problems.check(
            &format!("{field}.timeout"),
            parse_bounded_duration(text, MAX_HOOK_TIMEOUT),
        ),
    };
    Some(Hook {
        command: program_ok.then_some(hook.command)?,
        on_publish,
        on_activate,
        timeout: timeout?,
    })
}

/// Makes `path` absolute against `base` (the config file's directory) and normalises it
/// lexically, so keyprov prints `/etc/state`, not `/etc/keyprov/../state`: `.` goes and
/// `dir/..` collapses. Symlinks are not resolved; only where `dir` is one is its `..` kept (the
/// kernel's `..` leaves the link's target, not `dir`'s parent), so the path names the same
/// file either way.
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut normal = PathBuf::new();
    for component in base.join(path).components() {
        if component != Component::ParentDir {
            normal.push(component);
            continue;
        }
        match normal.components().next_back() {
            // `/..` is `/`.
            Some(Component::RootDir) => {}
            Some(Component::Normal(_))
                if !std::fs::symlink_metadata(&normal).is_ok_and(|m| m.is_symlink()) =>
            {
                normal.pop();
            }
            _ => normal.push(".."),
        }
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_paths_are_normalised_without_changing_what_they_name() {
        let cases = [
            ("/etc/keyprov", "../manifests.d", "/etc/manifests.d"),
            ("/etc/keyprov", "./state/./keys", "/etc/keyprov/state/keys"),
            ("/etc/keyprov", "../../../x", "/x"),
            ("h2", "../manifests.d", "manifests.d"),
            ("h2", "../../m", "../m"),
            ("/etc/keyprov", "/var/lib/keyprov/..", "/var/lib"),
        ];
        for (base, path, want) in cases {
            assert_eq!(absolute(Path::new(base), Path::new(path)), Path::new(want));
        }
        // Through a symlink, `..` is the target's parent: kept, so the path still names it.
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/usr/share", tmp.path().join("link")).unwrap();
        let through = absolute(&tmp.path().join("link"), Path::new("../x"));
        assert_eq!(through, tmp.path().join("link/../x"));
    }

    #[test]
    fn names() {
        for ok in ["a", "payments-signing", "k8s-1", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes() {
        let cases = [
            ("0640", Ok(0o640)),
            ("640", Ok(0o640)),
            ("0600", Ok(0o600)),
            ("0644", Ok(0o644)),
            ("0400", Ok(0o400)),
            ("0660", Err("grants write")),
            ("0641", Err("grants write")),
            ("0750", Err("grants write")),
            ("0648", Err("not an octal mode")),
            ("rw-r-----", Err("not an octal mode")),
            ("", Err("not an octal mode")),
            ("4640", Err("setuid")),
        ];
        for (text, want) in cases {
            match (parse_mode(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}

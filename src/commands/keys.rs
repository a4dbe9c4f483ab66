//! `keyprov decrypt` and `keyprov verify`: private keys back through the provider's Decrypt;
//! `verify` checks every file of every output against the others.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use zeroize::Zeroizing;

use crate::binding;
use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::{FileOutput, Format, KeyPair, Output};
use crate::plan::Link;
use crate::provider::{AnyProvider, PrivateKey, local};
use crate::store::{StoredVersion, Stores, VersionMeta, file};

/// Reads `generation` (default: current) of `key` from the first output holding it intact,
/// files or secrets; says how far it is to be believed (a secret's version must be bound).
async fn read_stored(
    stores: &Stores,
    key: &KeyPair,
    generation: Option<u32>,
) -> Result<(StoredVersion, binding::Unbound), String> {
    let generation = match generation {
        Some(g) => g,
        None => {
            let observed = stores
                .observe_key(key)
                .await
                .map_err(|e| format!("key {:?}: {e}", key.name))?;
            match crate::plan::authoritative(&observed).0 {
                Some(current) => current.generation,
                None => {
                    return Err(format!(
                        "key {:?} has no current generation yet (run keyprov run --once)",
                        key.name
                    ));
                }
            }
        }
    };
    let mut last_error = match stores.observe_key(key).await {
        Ok(observed) => {
            let mut held: Vec<u32> = observed
                .iter()
                .flat_map(|o| o.versions.iter().copied())
                .collect();
            held.sort_unstable();
            held.dedup();
            let held: Vec<String> = held.iter().map(u32::to_string).collect();
            format!(
                "key {:?}: no output holds generation {generation}; generations held: {}",
                key.name,
                if held.is_empty() {
                    "none".to_string()
                } else {
                    held.join(", ")
                }
            )
        }
        Err(_) => format!(
            "key {:?}: no output holds generation {generation}",
            key.name
        ),
    };
    for index in 0..key.outputs.len() {
        if !stores
            .has_version(key, index, generation)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        let trust = match key.outputs[index] {
            crate::manifest::Output::SecretsManager(_) => binding::Unbound::Refuse,
            _ => binding::Unbound::Accept,
        };
        match stores.read_version(key, index, generation).await {
            Ok(version) => return Ok((version, trust)),
            Err(e) => last_error = format!("key {:?}: {e}", key.name),
        }
    }
    Err(last_error)
}

/// Decrypts a stored version with the manifest's KMS key and bound context (never what the
/// version records about them), and checks it is the private key of its public key.
async fn decrypt_stored(
    provider: &AnyProvider,
    key: &KeyPair,
    (stored, trust): &(StoredVersion, binding::Unbound),
) -> Result<PrivateKey, String> {
    let generation = stored.meta.generation;
    binding::prove(provider, key, stored, generation, *trust)
        .await
        .map_err(|e| format!("key {:?} generation {generation}: {e}", key.name))
}

/// `keyprov decrypt NAME`: the private key as PEM on stdout (also with `out` `-`), or into
/// `out` (mode 0600; only a new path or a regular file: [`super::decrypt_out`]).
pub async fn decrypt(
    config: &Config,
    name: &str,
    generation: Option<u32>,
    out: Option<&Path>,
) -> Exit {
    let loaded = super::load_manifests(config);
    if let Some(message) = super::unknown_key(&loaded, name) {
        crate::output::error(format_args!("decrypt {name}: {message}"));
        return Exit::Usage;
    }
    if loaded.frozen.contains(name) && !loaded.keys.iter().any(|k| k.name == name) {
        // Defined in an invalid manifest: exit 2, as rotate does (nothing is read or written).
        let message = super::find_key(&loaded, name).err().unwrap_or_default();
        crate::output::error(format_args!("decrypt {name}: {message}"));
        return Exit::Invalid;
    }
    let out = out.filter(|path| *path != Path::new("-"));
    let result = async {
        if let Some(path) = out {
            super::decrypt_out::check(path)?;
        }
        let key = super::find_key(&loaded, name)?;
        let stores = std::sync::Arc::new(crate::reconcile::new_stores(config));
        let stored = read_stored(&stores, key, generation).await?;
        let provider = AnyProvider::from_config(config);
        let private = decrypt_stored(&provider, key, &stored).await?;
        let pem = private.to_pem();
        match out {
            Some(path) => super::decrypt_out::write(path, pem.as_bytes()),
            None => {
                let mut stdout = std::io::stdout().lock();
                match stdout
                    .write_all(pem.as_bytes())
                    .and_then(|()| stdout.flush())
                {
                    // The reader went away (`| head`): nothing left to do, not a failure.
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        Err(format!("cannot write to stdout: {e}"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => Exit::Ok,
        Err(err) => {
            crate::output::error(err);
            Exit::KeyFailed
        }
    }
}

/// Largest file `verify` reads; keyprov's own files are a few KiB.
const MAX_FILE: u64 = 1 << 20;

/// One thing `verify` found wrong: the file (or directory) concerned and what is wrong.
struct Problem {
    path: PathBuf,
    message: String,
}

/// Problems of one key, and what its versions decrypt to (one provider call per ciphertext).
struct Findings {
    problems: Vec<Problem>,
    derived: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Findings {
    fn add(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            message: message.into(),
        });
    }
}

/// Reads a regular file without following a symlink in its last component, without blocking
/// on a FIFO, and at most [`MAX_FILE`] bytes; the error says what is wrong.
fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                "is a symbolic link, not a file keyprov wrote".to_string()
            }
            _ if e.kind() == std::io::ErrorKind::NotFound => "missing".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let metadata = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Ok(bytes)
}

/// Decodes a key file: the DER itself, or a PEM block that must carry `label`.
fn decode(format: Format, bytes: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    match format {
        Format::Der => Ok(Zeroizing::new(bytes.to_vec())),
        Format::Pem => {
            let block = pem::parse(bytes).map_err(|e| format!("not PEM: {e}"))?;
            if block.tag() != label {
                return Err(format!("a PEM {:?} block, expected {label:?}", block.tag()));
            }
            Ok(Zeroizing::new(block.into_contents()))
        }
    }
}

/// Checks every file of version `generation` of `output`; returns its public key when the
/// version holds together (public key, meta.json and private key agree).
async fn check_version(
    provider: &AnyProvider,
    key: &KeyPair,
    output: &FileOutput,
    generation: u32,
    findings: &mut Findings,
) -> Option<Vec<u8>> {
    let dir = file::version_dir(output, generation);
    let before = findings.problems.len();

    let meta_path = dir.join("meta.json");
    let meta = match read_file(&meta_path)
        .and_then(|b| serde_json::from_slice::<VersionMeta>(&b).map_err(|e| e.to_string()))
    {
        Ok(meta) => Some(meta),
        Err(e) => {
            findings.add(&meta_path, e);
            None
        }
    };
    let mut spec = key.spec;
    if let Some(meta) = &meta {
        if meta.name != key.name {
            findings.add(
                &meta_path,
                format!("name is {:?}, expected {:?}", meta.name, key.name),
            );
        }
        if meta.generation != generation {
            let message = format!("generation is {}, expected {generation}", meta.generation);
            findings.add(&meta_path, message);
        }
        match meta.key_pair_spec.parse() {
            Ok(parsed) => spec = parsed,
            Err(e) => findings.add(&meta_path, format!("keyPairSpec: {e}")),
        }
    }

    let public_path = dir.join(format!("public.{}", output.format.extension()));
    let public = read_file(&public_path)
        .and_then(|b| decode(output.format, &b, "PUBLIC KEY"))
        .map(|der| der.to_vec());
    if let Err(e) = &public {
        findings.add(&public_path, e.clone());
    }
    let public = public.ok();

    let enc_path = dir.join("private.enc");
    let derived = match (read_file(&enc_path), &meta) {
        (Err(e), _) => {
            findings.add(&enc_path, e);
            None
        }
        (Ok(_), None) => None,
        (Ok(ciphertext), Some(meta)) => {
            let cache_key = [ciphertext.as_slice(), meta.kms_key_arn.as_bytes()].concat();
            if !findings.derived.contains_key(&cache_key) {
                let opened = (meta, &ciphertext[..], generation, binding::Unbound::Accept);
                let derived = derive_public(provider, key, opened, spec).await;
                if let Err(e) = &derived {
                    findings.add(&enc_path, e.clone());
                }
                findings.derived.insert(cache_key.clone(), derived.ok());
            }
            findings.derived[&cache_key].clone()
        }
    };

    let sha = |der: &[u8]| crate::store::public_key_sha256(der);
    match (&public, &derived) {
        (Some(public), Some(derived)) if public != derived => findings.add(
            &public_path,
            "does not match the private key in private.enc",
        ),
        (Some(public), None) => {
            if let Some(meta) = meta.as_ref().filter(|m| m.public_key_sha256 != sha(public)) {
                let message = format!(
                    "publicKeySha256 {} is not the SHA-256 of {}",
                    meta.public_key_sha256,
                    public_path.display()
                );
                findings.add(&meta_path, message);
            }
        }
        _ => {}
    }
    if let (Some(derived), Some(meta)) = (&derived, &meta)
        && meta.public_key_sha256 != sha(derived)
    {
        let message = format!(
            "publicKeySha256 {} is not the SHA-256 of the key pair's public key",
            meta.public_key_sha256
        );
        findings.add(&meta_path, message);
    }

    if key.include_plaintext {
        let plain_path = dir.join(format!("private.{}", output.format.extension()));
        let reference = derived.as_ref().or(public.as_ref());
        match read_file(&plain_path)
            .and_then(|b| decode(output.format, &b, "PRIVATE KEY"))
            .and_then(|der| local::public_key_of(spec, &der).map_err(|e| e.to_string()))
        {
            Err(e) => findings.add(&plain_path, e),
            Ok(of_plain) if Some(&of_plain) != reference && reference.is_some() => {
                findings.add(&plain_path, "is not the private key of this version")
            }
            Ok(_) => {}
        }
    }
    (findings.problems.len() == before)
        .then_some(derived)
        .flatten()
}

/// A version to open: its meta, its ciphertext, the generation it must be, and whether one
/// written before the binding is accepted.
type Opened<'a> = (&'a VersionMeta, &'a [u8], u32, binding::Unbound);

/// Decrypts a version's private key through the provider, with the manifest's KMS key and
/// bound context ([`binding::open`]), and derives its public key.
async fn derive_public(
    provider: &AnyProvider,
    key: &KeyPair,
    (meta, ciphertext, generation, unbound): Opened<'_>,
    spec: crate::spec::KeyPairSpec,
) -> Result<Vec<u8>, String> {
    let private = binding::open(provider, key, meta, ciphertext, generation, unbound)
        .await
        .map_err(|e| format!("cannot decrypt through the provider: {e}"))?;
    local::public_key_of(spec, private.der())
        .map_err(|e| format!("decrypts to something that is not a private key: {e}"))
}

/// Checks every file output of `key`: `current` (and `next`) of every output, the same
/// generations everywhere, holding the same pair. Returns the current generation and `next`.
async fn verify_key(
    provider: &AnyProvider,
    stores: &Stores,
    key: &KeyPair,
) -> Result<(u32, Option<u32>), Vec<Problem>> {
    let outputs: Vec<&FileOutput> = key
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::File(f) => Some(f),
            Output::SecretsManager(_) => None,
        })
        .collect();
    let mut findings = Findings {
        problems: Vec::new(),
        derived: HashMap::new(),
    };
    let secrets = verify_secrets(provider, stores, key, &mut findings).await;
    // What verifiers consume beside the PEM: derived from the public key, checked against it;
    // private.ssh, derived from private.pem (checked against the public key below).
    for output in outputs
        .iter()
        .filter(|o| !o.public_formats.is_empty() || !o.private_formats.is_empty())
    {
        if let Ok(observed) = file::observe(output, &key.name, key.include_plaintext) {
            for drift in observed.drift.iter().filter(|d| {
                ["public.jwk", "public.pub", "jwks.json", "private.ssh"]
                    .iter()
                    .any(|f| d.contains(f))
            }) {
                findings.add(&output.dir, drift.clone());
            }
        }
    }
    let Some(first) = outputs.first() else {
        return match secrets {
            Some((current, next)) if findings.problems.is_empty() => Ok((current, next)),
            _ => Err(findings.problems),
        };
    };
    let mut heads = Vec::new();
    for (link, which) in [("current", Link::Current), ("next", Link::Next)] {
        let mut seen: Option<(&Path, Option<u32>)> = None;
        for output in &outputs {
            let path = output.dir.join(link);
            let generation = match file::linked_generation(output, which) {
                Ok(generation) => generation,
                Err(e) => {
                    findings.add(&path, e.to_string());
                    continue;
                }
            };
            match seen {
                None => seen = Some((&output.dir, generation)),
                Some((dir, other)) if other != generation => {
                    let name = |g: Option<u32>| g.map_or("absent".into(), file::version_name);
                    let message = format!(
                        "{} here, {} in {}: every output must hold the same version",
                        name(generation),
                        name(other),
                        dir.display()
                    );
                    findings.add(&path, message);
                }
                Some(_) => {}
            }
            if let Some(generation) = generation {
                heads.push((*output, generation));
            }
        }
        if link == "current" && heads.is_empty() && findings.problems.is_empty() {
            findings.add(
                &first.dir.join("current"),
                "missing: no generation yet (run keyprov run --once)",
            );
        }
    }
    let mut publics: HashMap<u32, (PathBuf, Vec<u8>)> = HashMap::new();
    for (output, generation) in heads {
        let Some(public) = check_version(provider, key, output, generation, &mut findings).await
        else {
            continue;
        };
        let dir = file::version_dir(output, generation);
        match publics.get(&generation) {
            Some((other, theirs)) if *theirs != public => {
                let message = format!("holds another key pair than {}", other.display());
                findings.add(&dir, message);
            }
            Some(_) => {}
            None => {
                publics.insert(generation, (dir, public));
            }
        }
    }
    let current = file::linked_generation(first, Link::Current).ok().flatten();
    let next = file::linked_generation(first, Link::Next).ok().flatten();
    if let Some((secret_current, secret_next)) = secrets
        && (Some(secret_current), secret_next) != (current, next)
    {
        findings.add(
            &first.dir,
            format!(
                "holds current {current:?} / next {next:?}, the secrets {secret_current} / \
                 {secret_next:?}: every output must hold the same version"
            ),
        );
    }
    for (generation, public) in &publics_by_generation(&publics) {
        if let Some(theirs) = secret_publics(stores, key, *generation).await
            && theirs != *public
        {
            findings.add(
                &file::version_dir(first, *generation),
                "holds another key pair than the secret for this generation",
            );
        }
    }
    match current {
        Some(current) if findings.problems.is_empty() => Ok((current, next)),
        _ => Err(findings.problems),
    }
}

/// The public keys found per generation in the file outputs.
fn publics_by_generation(publics: &HashMap<u32, (PathBuf, Vec<u8>)>) -> Vec<(u32, Vec<u8>)> {
    publics
        .iter()
        .map(|(generation, (_, public))| (*generation, public.clone()))
        .collect()
}

/// The public key of `generation` as the first secret output holding it intact has it.
async fn secret_publics(stores: &Stores, key: &KeyPair, generation: u32) -> Option<Vec<u8>> {
    for (index, output) in key.outputs.iter().enumerate() {
        if matches!(output, Output::SecretsManager(_))
            && let Ok(version) = stores.read_version(key, index, generation).await
        {
            return Some(version.public_key_der);
        }
    }
    None
}

/// Checks every secret output of `key`: its current (and next) version reads back whole and
/// hash-checked, and its private key decrypts to its public key. Returns the secrets'
/// current and next generation when they agree.
async fn verify_secrets(
    provider: &AnyProvider,
    stores: &Stores,
    key: &KeyPair,
    findings: &mut Findings,
) -> Option<(u32, Option<u32>)> {
    if !key
        .outputs
        .iter()
        .any(|o| matches!(o, Output::SecretsManager(_)))
    {
        return None;
    }
    let observed = match stores.observe_key(key).await {
        Ok(observed) => observed,
        Err(err) => {
            findings.add(&key.source, err);
            return None;
        }
    };
    let mut heads = None;
    for ((index, output), seen) in key.outputs.iter().enumerate().zip(&observed) {
        let Output::SecretsManager(secret) = output else {
            continue;
        };
        let place = PathBuf::from(format!("secretsManager:{}", secret.secret_id));
        for damage in &seen.damaged {
            for problem in &damage.problems {
                findings.add(&place, problem.clone());
            }
        }
        match stores.secrets().misplaced_current(key, secret).await {
            Ok(Some(problem)) => findings.add(&place, problem),
            Ok(None) => {}
            Err(err) => findings.add(&place, err.to_string()),
        }
        let Some(current) = seen.current.as_ref().map(|c| c.generation) else {
            findings.add(&place, "no current version (run keyprov run --once)");
            continue;
        };
        let next = seen.next.as_ref().map(|n| n.generation);
        match heads {
            None => heads = Some((current, next)),
            Some(other) if other != (current, next) => findings.add(
                &place,
                "holds another current or next version than the other secret outputs",
            ),
            Some(_) => {}
        }
        for generation in std::iter::once(current).chain(next) {
            match stores.read_version(key, index, generation).await {
                Ok(version) => {
                    let opened = (
                        &version.meta,
                        &version.private_key_ciphertext[..],
                        generation,
                        binding::Unbound::Refuse,
                    );
                    let origin = binding::origin(key, index, generation);
                    match derive_public(provider, key, opened, key.spec).await {
                        Ok(public) if public == version.public_key_der => {}
                        Ok(_) => findings.add(
                            &place,
                            format!("{origin}: the private key does not match the public key"),
                        ),
                        Err(err) => findings.add(&place, format!("{origin}: {err}")),
                    }
                }
                Err(err) => findings.add(&place, err.to_string()),
            }
        }
    }
    heads
}

/// `keyprov verify`: every file of `current` (and `next`) of every output of every key: the
/// public key parses and matches meta.json's SHA-256 and the private key decrypted through the
/// provider, `private.pem` (with includePlaintext) matches, and every output holds the same
/// version. One line per problem, naming the file; exit 1 if there is any.
pub async fn verify(config: &Config) -> Exit {
    let loaded = super::load_manifests(config);
    let provider = AnyProvider::from_config(config);
    let stores = std::sync::Arc::new(crate::reconcile::new_stores(config));
    let mut exit = if loaded.is_valid() {
        Exit::Ok
    } else {
        Exit::Invalid
    };
    for key in &loaded.keys {
        match verify_key(&provider, &stores, key).await {
            Ok((generation, None)) => crate::outln!("ok      {} generation {generation}", key.name),
            Ok((generation, Some(next))) => {
                crate::outln!("ok      {} generation {generation} (next {next})", key.name)
            }
            Err(problems) => {
                for problem in problems {
                    crate::outln!(
                        "FAILED  {}: {}: {}",
                        key.name,
                        problem.path.display(),
                        problem.message
                    );
                }
                exit = exit.max(Exit::KeyFailed);
            }
        }
    }
    exit
}

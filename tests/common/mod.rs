//! Shared harness of the integration tests: a temporary keyprov installation (config, manifests,
//! state) driven through the real binary.

#![allow(dead_code)]

pub mod count_proxy;
pub mod logged_daemon;
pub mod metric_list;
pub mod trust;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_lc_rs::signature::{self, KeyPair as _, UnparsedPublicKey};

/// A temporary installation: `<root>/keyprov.yaml`, `<root>/manifests.d/`, `<root>/state/`.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub extra_config: String,
    pub env: Vec<(String, String)>,
}

/// What a run of the binary printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Install {
    /// An installation on the local provider; `extra` is appended to the config.
    pub fn new(extra: &str) -> Self {
        let install = Install {
            dir: tempfile::tempdir().expect("tempdir"),
            extra_config: extra.to_string(),
            env: Vec::new(),
        };
        std::fs::create_dir_all(install.manifests()).unwrap();
        install.write_config();
        install
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.root().join("keyprov.yaml")
    }

    pub fn manifests(&self) -> PathBuf {
        self.root().join("manifests.d")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn key_dir(&self, name: &str) -> PathBuf {
        self.state().join("keys").join(name)
    }

    pub fn write_config(&self) {
        let text = format!(
            "manifests: [manifests.d]\nstateDir: state\nreconcile: {{concurrency: 4, maxRequestsPerSecond: 1000}}\n{}\n",
            self.extra_config
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// Writes a manifest file into manifests.d.
    pub fn manifest(&self, file: &str, text: &str) {
        std::fs::write(self.manifests().join(file), text).unwrap();
    }

    /// Runs `keyprov ARGS --config <config>` with a clean environment.
    pub fn keyprov(&self, args: &[&str]) -> Run {
        self.keyprov_env(args, &[])
    }

    /// [`Install::keyprov`] with extra environment variables.
    pub fn keyprov_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = self.command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().expect("keyprov runs").into()
    }

    /// `run --once`, asserting its exit code.
    pub fn run_once(&self, expected: i32) -> Run {
        let run = self.keyprov(&["run", "--once"]);
        assert_eq!(run.code, expected, "run --once: {}", run.all());
        run
    }
}

/// A KeyPair manifest with one default file output.
pub fn manifest(name: &str, spec: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: {name}\nspec:\n  keyPairSpec: {spec}\n  kmsKeyId: alias/test\n{extra_spec}  outputs:\n    - file: {{}}\n"
    )
}

/// Every file, directory and symlink below `root` with its contents, mode and mtime.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, i64, i64)> {
    let mut map = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".into()
            } else {
                hex(&std::fs::read(&path).unwrap())
            };
            map.insert(
                path,
                (
                    contents,
                    meta.permissions().mode(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                ),
            );
        }
    }
    map
}

/// [`snapshot`] of a stateDir without the stat fingerprints of derived public files
/// (`ledger/fingerprints.bin`, and so the ledger directory's own mtime): the no-op after
/// those files were written records them, at once or (racily clean) on the one after.
pub fn snapshot_without_fingerprints(state: &Path) -> BTreeMap<PathBuf, (String, u32, i64, i64)> {
    let ledger = state.join("ledger");
    let mut map = snapshot(state);
    map.retain(|path, _| {
        *path != ledger
            && !(path.parent() == Some(&ledger)
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("fingerprints")))
    });
    map
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a daemon's `log` shows a pass that ended (its summary line, `... next reconcile at`)
/// after the first line containing `marker` (e.g. `activated key=k generation=3`, or `copied as
/// current key=k generation=3` on a host that copies): the pass that did what `marker` tells
/// has finished all its steps, not just the one a test saw.
pub fn pass_ended_after(log: &str, marker: &str) -> bool {
    log.find(marker)
        .is_some_and(|at| log[at..].contains("next reconcile at"))
}

/// The target of a version link (`current`, `previous`, `next`), if present.
pub fn link(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_link(dir.join(name))
        .ok()
        .map(|t| t.display().to_string())
}

/// Versions present in a key directory.
pub fn versions(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('v'))
        .collect();
    names.sort();
    names
}

/// Parses the PEM at `path` and returns its DER contents.
pub fn pem_der(path: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

/// Reads the stored public key (pem or der) of the current version.
pub fn public_der(dir: &Path) -> Vec<u8> {
    let current = dir.join("current");
    if current.join("public.pem").exists() {
        pem_der(&current.join("public.pem"))
    } else {
        std::fs::read(current.join("public.der")).unwrap()
    }
}

/// Signs a message with the PKCS#8 private key and verifies it with the SPKI public key;
/// also checks the public key derived from the private key equals the stored one.
pub fn assert_pair_matches(spec: &str, pkcs8: &[u8], spki: &[u8]) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let message = b"keyprov integration test message";
    let (signature, derived, verify_alg): (
        Vec<u8>,
        Vec<u8>,
        &'static dyn signature::VerificationAlgorithm,
    ) = match spec {
        "RSA_2048" | "RSA_3072" | "RSA_4096" => {
            let pair = signature::RsaKeyPair::from_pkcs8(pkcs8).expect("RSA PKCS#8");
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                .unwrap();
            (
                sig,
                spki_of(pair.public_key()),
                &signature::RSA_PKCS1_2048_8192_SHA256,
            )
        }
        "ECC_NIST_EDWARDS25519" => {
            let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .expect("Ed25519 PKCS#8");
            (
                pair.sign(message).as_ref().to_vec(),
                spki_of(pair.public_key()),
                &signature::ED25519,
            )
        }
        ecc => {
            let (sign_alg, verify_alg): (_, &'static dyn signature::VerificationAlgorithm) =
                match ecc {
                    "ECC_NIST_P256" => (
                        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        &signature::ECDSA_P256_SHA256_ASN1,
                    ),
                    "ECC_NIST_P384" => (
                        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                        &signature::ECDSA_P384_SHA384_ASN1,
                    ),
                    "ECC_NIST_P521" => (
                        &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                        &signature::ECDSA_P521_SHA512_ASN1,
                    ),
                    "ECC_SECG_P256K1" => (
                        &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
                        &signature::ECDSA_P256K1_SHA256_ASN1,
                    ),
                    other => panic!("unexpected spec {other}"),
                };
            let pair = signature::EcdsaKeyPair::from_pkcs8(sign_alg, pkcs8).expect("EC PKCS#8");
            let sig = pair.sign(&rng, message).unwrap();
            (
                sig.as_ref().to_vec(),
                spki_of(pair.public_key()),
                verify_alg,
            )
        }
    };
    assert_eq!(
        derived, spki,
        "{spec}: public key derived from the private key differs from the stored one"
    );
    UnparsedPublicKey::new(verify_alg, spki)
        .verify(message, &signature)
        .unwrap_or_else(|_| panic!("{spec}: signature does not verify with the stored public key"));
}

fn spki_of<K: aws_lc_rs::encoding::AsDer<aws_lc_rs::encoding::PublicKeyX509Der<'static>>>(
    key: &K,
) -> Vec<u8> {
    key.as_der().unwrap().as_ref().to_vec()
}

/// Decrypts a key through `keyprov decrypt --out` and returns the DER PKCS#8.
pub fn decrypt(install: &Install, name: &str) -> Vec<u8> {
    let out = install.root().join(format!("{name}.key.pem"));
    let run = install.keyprov(&["decrypt", name, "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, 0, "decrypt {name}: {}", run.all());
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "decrypt --out writes 0600");
    let der = pem_der(&out);
    std::fs::remove_file(&out).unwrap();
    der
}

/// The LocalStack endpoint, or `None` (test skipped) when it is not reachable and skipping was
/// asked for.
/// Its absence is a failure, unless `KEYPROV_SKIP_LOCALSTACK=1` asks to skip (never under
/// `CI=true`).
pub fn localstack() -> Option<String> {
    let endpoint = std::env::var("KEYPROV_LOCALSTACK_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let address = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if std::net::TcpStream::connect(&address).is_ok() {
        return Some(endpoint);
    }
    let skip = std::env::var("KEYPROV_SKIP_LOCALSTACK").is_ok_and(|v| v == "1")
        && std::env::var("CI").map_or(true, |ci| ci != "true");
    if skip {
        eprintln!("skipping: LocalStack not reachable at {endpoint} (KEYPROV_SKIP_LOCALSTACK=1)");
        return None;
    }
    panic!(
        "LocalStack is required but not reachable at {endpoint}: start it with \
         `scripts/localstack start` (or skip these tests with KEYPROV_SKIP_LOCALSTACK=1)"
    )
}

/// The SDK configuration of the tests' own AWS clients, for LocalStack.
pub async fn localstack_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}

/// A KMS client of the tests themselves, for LocalStack.
pub async fn kms_client(endpoint: &str) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&localstack_sdk_config(endpoint).await)
}

/// The ARN of a new symmetric KMS key (a key of one test only).
pub async fn new_kms_key(kms: &aws_sdk_kms::Client) -> String {
    let created = kms.create_key().send().await.unwrap();
    created.key_metadata.unwrap().arn.unwrap()
}

impl Install {
    /// `keyprov ARGS --config <config>` as a command to spawn (for processes a test kills or
    /// runs side by side), with the same clean environment as [`Install::keyprov`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyprov"));
        command.args(args).arg("--config").arg(self.config());
        for (name, _) in std::env::vars() {
            if name.starts_with("AWS_") || name.starts_with("KEYPROV_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command.env("AWS_EC2_METADATA_DISABLED", "true");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command.current_dir(self.root());
        command
    }
}

/// The provider calls of a `keyprov: N keys, N changed, N failed, N provider calls` summary.
pub fn provider_calls(stdout: &str) -> Option<usize> {
    let line = stdout.lines().find(|l| l.starts_with("keyprov: "))?;
    let before = &line[..line.find(" provider call")?];
    before.rsplit(' ').next()?.parse().ok()
}

/// Lowercase hex SHA-256, as `meta.json`'s `publicKeySha256`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// A small deterministic PRNG (splitmix64) for harnesses that print their seed to be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `var` when set, else from the clock; returns the seed too.
    pub fn from_env(var: &str) -> (Rng, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Rng(seed), seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Every entry below `root` (symlinks not followed) whose name starts with `.tmp` or `.trash`.
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") || name.starts_with(".trash") {
                found.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// A key directory a [`Reader`] reads through `current`, as a service using the key would.
#[derive(Clone, Debug)]
pub struct ReadTarget {
    /// Key name, as meta.json must record it.
    pub name: String,
    /// The output directory holding `current`.
    pub dir: PathBuf,
    /// `format: der` (public.der / private.der) rather than pem.
    pub der: bool,
    /// includePlaintext: the version holds the private key file too.
    pub plaintext: bool,
}

/// One consistent read through `current`.
pub struct ReadPair {
    /// meta.json's generation.
    pub generation: u64,
    /// SHA-256 of the public key DER (equal to meta.json's publicKeySha256).
    pub public_sha: String,
    /// SHA-256 of the private key file, with includePlaintext.
    pub private_sha: Option<String>,
}

fn read_at(dir: &std::fs::File, name: &str) -> Result<Vec<u8>, String> {
    use nix::fcntl::{OFlag, openat};
    use std::io::Read as _;
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("{name}: empty"));
    }
    Ok(bytes)
}

/// Opens `<target.dir>/current` once as a directory and reads meta.json, the public key and
/// (includePlaintext) the private key file from it: the pair must be whole and consistent.
pub fn read_current(target: &ReadTarget) -> Result<ReadPair, String> {
    let current = target.dir.join("current");
    let dir = std::fs::File::open(&current).map_err(|e| format!("current: {e}"))?;
    let meta = read_at(&dir, "meta.json")?;
    let meta: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|e| format!("meta.json: {e}"))?;
    let ext = if target.der { "der" } else { "pem" };
    let public = read_at(&dir, &format!("public.{ext}"))?;
    let public = if target.der {
        public
    } else {
        pem::parse(&public)
            .map_err(|e| format!("public.pem: {e}"))?
            .into_contents()
    };
    let public_sha = sha256_hex(&public);
    if meta["publicKeySha256"].as_str() != Some(public_sha.as_str()) {
        return Err(format!(
            "meta.json publicKeySha256 {} but public.{ext} hashes to {public_sha}",
            meta["publicKeySha256"]
        ));
    }
    if meta["name"].as_str() != Some(target.name.as_str()) {
        return Err(format!("meta.json names {}", meta["name"]));
    }
    let private_sha = if target.plaintext {
        Some(sha256_hex(&read_at(&dir, &format!("private.{ext}"))?))
    } else {
        None
    };
    Ok(ReadPair {
        generation: meta["generation"]
            .as_u64()
            .ok_or("meta.json: no generation")?,
        public_sha,
        private_sha,
    })
}

/// What a [`Reader`] saw.
#[derive(Debug, Default)]
pub struct ReaderReport {
    /// Reads attempted.
    pub reads: u64,
    /// Reads that failed or saw a generation with other key material than before.
    pub failures: u64,
    /// The first few failures, for the message.
    pub first: Vec<String>,
}

/// A background thread reading random keys through `current` until finished; every read must
/// succeed, and a generation, once seen, must always hold the same key material.
pub struct Reader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<ReaderReport>,
}

impl Reader {
    /// Starts reading `targets` (chosen at random from `seed`).
    pub fn start(targets: Vec<ReadTarget>, seed: u64) -> Reader {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut report = ReaderReport::default();
            let mut seen: std::collections::HashMap<(usize, u64), (String, Option<String>)> =
                std::collections::HashMap::new();
            while !flag.load(Ordering::Relaxed) && !targets.is_empty() {
                let index = rng.below(targets.len() as u64) as usize;
                let target = &targets[index];
                report.reads += 1;
                let problem = match read_current(target) {
                    Err(err) => Some(err),
                    Ok(pair) => {
                        let material = (pair.public_sha, pair.private_sha);
                        match seen.entry((index, pair.generation)) {
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(material);
                                None
                            }
                            // Reported once per change, not on every read after it.
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                (o.insert(material.clone()) != material).then(|| {
                                    format!(
                                        "generation {} changed its key material",
                                        pair.generation
                                    )
                                })
                            }
                        }
                    }
                };
                if let Some(problem) = problem {
                    report.failures += 1;
                    if report.first.len() < 10 {
                        report
                            .first
                            .push(format!("{}: {problem}", target.dir.display()));
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            report
        });
        Reader { stop, handle }
    }

    /// Stops the reader and returns what it saw.
    pub fn finish(self) -> ReaderReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("reader thread")
    }
}

/// One entry of [`fingerprint`]: what an attacker-visible change to a file would alter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub inode: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub size: u64,
    /// SHA-256 of a regular file's contents, a symlink's target; empty otherwise.
    pub content: String,
}

/// Every entry below `root` (and `root` itself) with inode, type, mode, owner, mtime, ctime,
/// size and a hash of its contents: a create, write, chmod, chown, rename or delete anywhere
/// in the tree changes it. FIFOs and other special files are never opened.
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut map = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = meta.file_type();
        let (kind, content) = if file_type.is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            ("symlink", target.display().to_string())
        } else if file_type.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.map(|e| e.unwrap().path()));
            }
            ("dir", String::new())
        } else if file_type.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
            ("file", hex(digest.as_ref()))
        } else {
            ("special", String::new())
        };
        map.insert(
            path,
            Entry {
                kind,
                inode: meta.ino(),
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                size: meta.size(),
                content,
            },
        );
    }
    map
}

/// The differences between two [`fingerprint`]s, one line each (empty: identical).
pub fn fingerprint_diff(
    before: &BTreeMap<PathBuf, Entry>,
    after: &BTreeMap<PathBuf, Entry>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, old) in before {
        match after.get(path) {
            None => lines.push(format!("deleted  {}", path.display())),
            Some(new) if new != old => {
                lines.push(format!("changed  {}: {old:?} -> {new:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        lines.push(format!("created  {}", path.display()));
    }
    lines
}

/// Runs `command`, which could hang: killed (and reported as `None`) if it has not exited
/// after `deadline`.
pub fn run_with_deadline(mut command: Command, deadline: std::time::Duration) -> Option<Run> {
    use std::io::Read;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("keyprov starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    status.map(|status| Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    })
}

/// Whether this process may mount filesystems (root with CAP_SYS_ADMIN, as on the
/// development machines): tried once with a tiny tmpfs.
pub fn can_mount() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "keyprov-probe"])
        .arg(probe.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _ = Command::new("umount").arg(probe.path()).status();
    }
    mounted
}

/// A mount of the test, detached (`umount -l`) when dropped, also when the test panics.
pub struct Mount(pub PathBuf);

impl Mount {
    /// Mounts with `mount ARGS... <at>`; panics when mount fails.
    pub fn new(args: &[&str], at: &Path) -> Mount {
        let status = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(status.success(), "mount {args:?} {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The Python of the LocalStack virtualenv that `scripts/test` installs (it has `jsonschema`,
/// `yaml`, `cryptography` and `joserfc`): independent checkers of what keyprov writes.
pub fn python() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("KEYPROV_LOCALSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv-localstack"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `scripts/localstack install` (scripts/test does)",
        python.display()
    );
    python
}

/// Runs [`python`] with `args`; asserts it succeeds (saying `context`, its stdout and stderr
/// when not) and returns its stdout.
pub fn python_stdout<I, S>(args: I, context: &str) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(python()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{context}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Copies the keyprov binary to `to` (mode 0755) through a `cp` child process. Copying it in
/// this process would hold a write descriptor of `to` that a child forked by another test
/// thread meanwhile inherits until its own exec: executing `to` then fails with ETXTBSY ("Text
/// file busy"). `cp` holds that descriptor in its own process only, closed when it exits.
pub fn copy_binary(to: &Path) {
    let status = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_keyprov"))
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cp keyprov {}", to.display());
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An installation storing into LocalStack's Secrets Manager at `endpoint` (test credentials,
/// the local provider), with `extra` configuration lines.
pub fn secrets_install(endpoint: &str, extra: &str) -> Install {
    let mut install = Install::new(&format!(
        "provider: local\naws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 3}}\n{extra}"
    ));
    install.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ];
    install
}

/// A Secrets Manager client of LocalStack at `endpoint`.
pub async fn secrets_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&localstack_sdk_config(endpoint).await)
}

/// A host of a fleet: LocalStack at `endpoint`, the local provider with the fleet's `keyring`
/// (one keyring for every host, as one KMS key serves a fleet), `reconcile` settings added to
/// the usual ones (e.g. `", debounce: 100ms"`), and `extra` configuration lines.
pub fn fleet_host(endpoint: &str, keyring: &Path, reconcile: &str, extra: &str) -> Install {
    let install = secrets_install(endpoint, "");
    std::fs::write(
        install.config(),
        format!(
            "manifests: [manifests.d]\nstateDir: state\nprovider: local\n\
             local: {{keyring: \"{}\"}}\n\
             aws: {{region: us-east-1, endpointUrl: \"{endpoint}\", maxAttempts: 3}}\n\
             reconcile: {{concurrency: 4, maxRequestsPerSecond: 1000{reconcile}}}\n{extra}\n",
            keyring.display()
        ),
    )
    .unwrap();
    install
}

/// A KeyPair manifest ([`manifest`], ECC_NIST_P256) with a file output and the secret output
/// `secret`; `extra` spec lines.
pub fn file_and_secret(name: &str, secret: &str, extra: &str) -> String {
    manifest(name, "ECC_NIST_P256", extra).replace(
        "    - file: {}\n",
        &format!("    - file: {{}}\n    - secretsManager: {{secretId: \"{secret}\"}}\n"),
    )
}

/// Whether Secrets Manager has `secret` scheduled for deletion (DescribeSecret's
/// `DeletedDate`).
pub async fn secret_deleted(sm: &aws_sdk_secretsmanager::Client, secret: &str) -> bool {
    sm.describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap()
        .deleted_date()
        .is_some()
}

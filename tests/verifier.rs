//! The verifier's view of a reconcile, through the real binary: while keys are created,
//! rotated (with and without publishAhead, `rotate --now`), change spec, and meanwhile another
//! manifest is invalid and a sibling key fails, a reader polls the files (and one key's secret
//! on LocalStack) without pause. At every read, a JWT signed with the private key under
//! `current` (AWSCURRENT) must verify against the key's `jwks.json` and against the JWK Set
//! aggregate that selects it; every `activate` hook must find the new kid in both sets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;

/// A P-256 or P-384 key labelled `team: identity` with the plaintext private key and `jwk`;
/// `extra` goes into its spec, `outputs` replaces the default file output.
fn identity_key(name: &str, spec: &str, extra: &str, outputs: &str) -> String {
    manifest(name, spec, &format!("  includePlaintext: true\n{extra}"))
        .replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{team: identity}}\n"),
        )
        .replace("    - file: {}\n", outputs)
}

const FILE: &str = "    - file: {publicFormats: [jwk]}\n";

/// The curve of a JWK or SPKI, by name.
fn algorithms(
    crv: &str,
) -> Option<(
    &'static signature::EcdsaSigningAlgorithm,
    &'static signature::EcdsaVerificationAlgorithm,
    usize,
)> {
    match crv {
        "P-256" => Some((
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
            32,
        )),
        "P-384" => Some((
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED,
            48,
        )),
        _ => None,
    }
}

/// A compact JWS (a JWT) over a fixed payload, signed with the PKCS#8 `private` key of curve
/// `crv`, naming `kid`.
fn sign(private_pem: &[u8], crv: &str, kid: &str) -> Result<String, String> {
    let (signing, _, _) = algorithms(crv).ok_or(format!("curve {crv}"))?;
    let der = pem::parse(private_pem).map_err(|e| format!("private key PEM: {e}"))?;
    let pair = EcdsaKeyPair::from_pkcs8(signing, der.contents())
        .map_err(|e| format!("private key: {e}"))?;
    let alg = if crv == "P-256" { "ES256" } else { "ES384" };
    let header = B64.encode(serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string());
    let payload = B64.encode(br#"{"sub":"verifier"}"#);
    let input = format!("{header}.{payload}");
    let signature = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|e| format!("signing: {e}"))?;
    Ok(format!("{input}.{}", B64.encode(signature.as_ref())))
}

/// Verifies `jwt` against the JWK Set at `set`, the key picked by the JWT's kid.
fn verify(jwt: &str, set: &Path) -> Result<(), String> {
    let bytes = std::fs::read(set).map_err(|e| format!("{}: {e}", set.display()))?;
    let set: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", set.display()))?;
    let mut parts = jwt.split('.');
    let (header, payload, sig) = (parts.next(), parts.next(), parts.next());
    let (Some(header), Some(payload), Some(sig)) = (header, payload, sig) else {
        return Err("not a JWS".into());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(header).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let kid = header["kid"].as_str().unwrap_or_default();
    let jwk = set["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid)
        .ok_or(format!("kid {kid} is not in the set"))?;
    let (_, verifying, size) =
        algorithms(jwk["crv"].as_str().unwrap_or_default()).ok_or("unknown curve")?;
    let coordinate = |name: &str| {
        B64.decode(jwk[name].as_str().unwrap_or_default())
            .ok()
            .filter(|c| c.len() == size)
            .ok_or(format!("the set's {name} of kid {kid}"))
    };
    let mut point = vec![4u8];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    let sig = B64.decode(sig).map_err(|e| e.to_string())?;
    UnparsedPublicKey::new(verifying, point)
        .verify(
            format!("{}.{payload}", jwt.split('.').next().unwrap()).as_bytes(),
            &sig,
        )
        .map_err(|_| format!("the signature does not verify with kid {kid} of the set"))
}

/// The RFC 7638 thumbprint (kid) and curve of an EC public key PEM (SubjectPublicKeyInfo).
fn kid_of_public_pem(public_pem: &str) -> Result<(String, &'static str), String> {
    let der = pem::parse(public_pem).map_err(|e| e.to_string())?;
    let der = der.contents();
    let (crv, size) = match der.len() {
        91 => ("P-256", 32),
        120 => ("P-384", 48),
        n => return Err(format!("an SPKI of {n} bytes")),
    };
    let point = &der[der.len() - (1 + 2 * size)..];
    let canonical = format!(
        r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
        B64.encode(&point[1..1 + size]),
        B64.encode(&point[1 + size..])
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok((B64.encode(digest.as_ref()), crv))
}

/// What the reader found.
#[derive(Debug, Default)]
struct Tally {
    /// Reads that signed with a current key and checked it against its sets.
    reads: u64,
    /// Reads of the secret's AWSCURRENT among them.
    secret_reads: u64,
    /// Reads during which `current` moved (the check is repeated at the next read).
    raced: u64,
    /// Failures: a current key a set did not hold, or whose JWT did not verify.
    failures: Vec<String>,
}

/// One read of `current` of the key at `dir`: the JWT of its private key against `sets`.
/// `Ok(false)` when `current` moved meanwhile.
fn check_files(dir: &Path, sets: &[PathBuf]) -> Result<bool, String> {
    let Ok(version) = std::fs::read_link(dir.join("current")) else {
        return Ok(true); // not created yet
    };
    let attempt = || -> Result<(), String> {
        let version = dir.join(&version);
        let jwk: serde_json::Value = serde_json::from_slice(
            &std::fs::read(version.join("public.jwk")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let private = std::fs::read(version.join("private.pem")).map_err(|e| e.to_string())?;
        let (kid, crv) = (jwk["kid"].as_str(), jwk["crv"].as_str());
        let jwt = sign(&private, crv.unwrap_or_default(), kid.unwrap_or_default())?;
        for set in sets {
            verify(&jwt, set).map_err(|e| format!("{}: {e}", set.display()))?;
        }
        Ok(())
    };
    match attempt() {
        Ok(()) => Ok(true),
        // Only a failure if `current` still names the same version: the sets were read while
        // it was current.
        Err(err) if std::fs::read_link(dir.join("current")).ok() == Some(version.clone()) => Err(
            format!("{} current -> {}: {err}", dir.display(), version.display()),
        ),
        Err(_) => Ok(false),
    }
}

/// The secret's AWSCURRENT: its version id, public key PEM and private key PEM.
async fn secret_current(
    client: &aws_sdk_secretsmanager::Client,
    secret: &str,
) -> Result<(String, String, String), String> {
    let got = client
        .get_secret_value()
        .secret_id(secret)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| format!("GetSecretValue: {e:?}"))?;
    let value: serde_json::Value =
        serde_json::from_str(got.secret_string().unwrap_or_default()).map_err(|e| e.to_string())?;
    let field = |name: &str| value[name].as_str().unwrap_or_default().to_string();
    Ok((
        got.version_id().unwrap_or_default().to_string(),
        field("publicKeyPem"),
        field("privateKeyPem"),
    ))
}

/// One read of the secret's AWSCURRENT: its JWT against `sets`. `Ok(false)` when no secret
/// exists yet, or AWSCURRENT moved meanwhile.
async fn check_secret(
    client: &aws_sdk_secretsmanager::Client,
    secret: &str,
    sets: &[PathBuf],
) -> Result<bool, String> {
    let Ok((version, public, private)) = secret_current(client, secret).await else {
        return Ok(false);
    };
    let attempt = || -> Result<(), String> {
        let (kid, crv) = kid_of_public_pem(&public)?;
        let jwt = sign(private.as_bytes(), crv, &kid)?;
        for set in sets {
            verify(&jwt, set).map_err(|e| format!("{}: {e}", set.display()))?;
        }
        Ok(())
    };
    match attempt() {
        Ok(()) => Ok(true),
        Err(err) => match secret_current(client, secret).await {
            Ok((again, ..)) if again == version => Err(format!(
                "secret {secret} AWSCURRENT (version {version}): {err}"
            )),
            _ => Ok(false),
        },
    }
}

/// Polls every key's `current` (and the secret's AWSCURRENT) until `stop`.
fn reader(
    keys: Vec<(PathBuf, Vec<PathBuf>)>,
    secret: (String, String, Vec<PathBuf>),
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (endpoint, secret_id, secret_sets) = secret;
        let client = runtime.block_on(secrets_client(&endpoint));
        let mut tally = Tally::default();
        let note = |tally: &mut Tally, result: Result<bool, String>| match result {
            Ok(true) => tally.reads += 1,
            Ok(false) => tally.raced += 1,
            Err(err) => {
                tally.reads += 1;
                tally.failures.push(err);
            }
        };
        while !stop.load(Ordering::Relaxed) {
            for (dir, sets) in &keys {
                let result = check_files(dir, sets);
                note(&mut tally, result);
            }
            let result = runtime.block_on(check_secret(&client, &secret_id, &secret_sets));
            if result == Ok(true) || result.is_err() {
                tally.secret_reads += 1;
            }
            note(&mut tally, result);
        }
        tally
    })
}

#[test]
fn every_current_key_verifies_against_every_set_that_selects_it_at_every_instant() {
    let Some(endpoint) = localstack() else { return };
    let mut install = secrets_install(&endpoint, "");
    let hook_log = install.root().join("hooks.log");
    let script = install.root().join("saw-sets.sh");
    let aggregate = install.state().join("issuer/jwks.json");
    // The hook (a signer's reload) looks for the new kid in the key's jwks.json and in the
    // aggregate, and writes what it found.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             dir=\"{keys}/$KEYPROV_NAME\"\n\
             version=$(printf 'v%04d' \"$KEYPROV_GENERATION\")\n\
             kid=$(sed -n 's/.*\"kid\": *\"\\([^\"]*\\)\".*/\\1/p' \"$dir/$version/public.jwk\")\n\
             own=no; grep -q \"\\\"$kid\\\"\" \"$dir/jwks.json\" && own=yes\n\
             agg=no; grep -q \"\\\"$kid\\\"\" \"{aggregate}\" && agg=yes\n\
             echo \"$KEYPROV_EVENT $KEYPROV_NAME $version kid=${{kid:-none}} own=$own aggregate=$agg\" >> \"{log}\"\n",
            keys = install.state().join("keys").display(),
            aggregate = aggregate.display(),
            log = hook_log.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    install.extra_config.push_str(&format!(
        "hooks: {{allowed: [{}]}}\njwks:\n  - path: issuer/jwks.json\n    selector: {{labels: {{team: identity}}}}\n",
        script.display()
    ));
    install.write_config();
    let hook = format!("  onRotate:\n    - command: [\"{}\"]\n", script.display());
    let secret = format!("keyprov-test/verifier-{}", uuid::Uuid::new_v4());
    let with_secret = format!("{FILE}    - secretsManager: {{secretId: \"{secret}\"}}\n");
    let every = format!("  rotation: {{every: 30d}}\n{hook}");
    let staged = format!("  rotation: {{every: 30d, publishAhead: 7d}}\n{hook}");
    install.manifest(
        "plain.yaml",
        &identity_key("plain", "ECC_NIST_P256", &every, FILE),
    );
    install.manifest(
        "staged.yaml",
        &identity_key("staged", "ECC_NIST_P256", &staged, FILE),
    );
    install.manifest(
        "sec.yaml",
        &identity_key("sec", "ECC_NIST_P256", &every, &with_secret),
    );
    install.manifest(
        "broken.yaml",
        &identity_key("broken", "ECC_NIST_P256", &every, FILE),
    );
    install.run_once(0);

    let sets = |name: &str| vec![install.key_dir(name).join("jwks.json"), aggregate.clone()];
    let names = ["plain", "staged", "sec", "broken", "late"];
    // The broken sibling's own jwks.json is made unusable below: its verifiers have the
    // aggregate, which keeps its entries.
    let keys = names
        .iter()
        .map(|&n| match n {
            "broken" => (install.key_dir(n), vec![aggregate.clone()]),
            _ => (install.key_dir(n), sets(n)),
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(
        keys,
        (endpoint.clone(), secret.clone(), sets("sec")),
        stop.clone(),
    );

    // Another team's manifest is invalid, and a sibling key cannot write its jwks.json.
    install.manifest(
        "bad.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: ghost, labels: {team: identity}}\nspec: {bogus: 1}\n",
    );
    let broken = install.key_dir("broken").join("jwks.json");
    std::fs::remove_file(&broken).unwrap();
    std::fs::create_dir(&broken).unwrap();
    let mut steps = 0;
    let mut step = |args: &[&str]| {
        let run = install.keyprov(args);
        // 2: the invalid manifest outranks everything; never a crash or a usage error.
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        steps += 1;
    };
    step(&["rotate", "broken", "--now"]);
    for round in 0..3 {
        step(&["rotate", "plain"]);
        step(&["rotate", "plain", "--now"]);
        step(&["rotate", "staged"]);
        step(&["run", "--once"]);
        step(&["rotate", "staged", "--now"]);
        step(&["rotate", "sec"]);
        step(&["rotate", "sec", "--now"]);
        if round == 0 {
            install.manifest(
                "late.yaml",
                &identity_key("late", "ECC_NIST_P256", &every, FILE),
            );
        } else {
            step(&["rotate", "late", "--now"]);
        }
        let spec = ["ECC_NIST_P384", "ECC_NIST_P256", "ECC_NIST_P384"][round];
        install.manifest("plain.yaml", &identity_key("plain", spec, &every, FILE));
        install.manifest("sec.yaml", &identity_key("sec", spec, &every, &with_secret));
        step(&["run", "--once"]);
    }
    stop.store(true, Ordering::Relaxed);
    let tally = reading.join().unwrap();

    let log = std::fs::read_to_string(&hook_log).unwrap_or_default();
    let activations: Vec<&str> = log.lines().filter(|l| l.starts_with("activate ")).collect();
    let missed: Vec<&&str> = activations
        .iter()
        .filter(|l| !l.ends_with("own=yes aggregate=yes"))
        .collect();
    eprintln!(
        "verifier: {steps} keyprov runs; reader {} reads ({} of the secret), {} raced, {} \
         failures; {} activate hooks, {} missed the new kid",
        tally.reads,
        tally.secret_reads,
        tally.raced,
        tally.failures.len(),
        activations.len(),
        missed.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} failures, first: {:?}",
        tally.failures.len(),
        tally.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(missed.is_empty(), "{missed:#?}\n{log}");
    // Every kind of new generation was seen by a hook: new keys, rotations with and without
    // publishAhead, `rotate --now`, spec changes (4 keys × 4 generations at least).
    assert!(activations.len() >= 16, "{log}");
    assert!(tally.reads > 100 && tally.secret_reads > 10, "{tally:?}");
    // The sibling that cannot write its set never activated anything after it broke.
    assert_eq!(
        link(&install.key_dir("broken"), "current").as_deref(),
        Some("v0001")
    );
}

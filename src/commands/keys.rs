//! `keyprov decrypt` and `keyprov verify`: private keys back through the provider's Decrypt.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::Config;
use crate::exit::Exit;
use crate::manifest::{KeyPair, Output};
use crate::provider::{AnyProvider, DecryptRequest, PrivateKey, Provider, local};
use crate::store::{StoredVersion, file};

/// Reads `generation` (default: current) of `key` from its first file output holding it.
fn read_stored(key: &KeyPair, generation: Option<u32>) -> Result<StoredVersion, String> {
    let files = key.outputs.iter().filter_map(|o| match o {
        Output::File(f) => Some(f),
        Output::SecretsManager(_) => None,
    });
    let mut last_error = format!("key {:?} has no file output to read from", key.name);
    for output in files {
        let generation = match generation {
            Some(g) => g,
            None => match file::current_generation(output) {
                Ok(Some(g)) => g,
                Ok(None) => {
                    last_error = format!(
                        "key {:?} has no current generation yet (run keyprov run --once)",
                        key.name
                    );
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        match file::read_version(output, generation) {
            Ok(version) => return Ok(version),
            Err(e) => last_error = format!("key {:?}: {e}", key.name),
        }
    }
    Err(last_error)
}

async fn decrypt_stored(
    provider: &AnyProvider,
    key: &KeyPair,
    stored: &StoredVersion,
) -> Result<PrivateKey, String> {
    provider
        .decrypt(&DecryptRequest {
            name: &key.name,
            ciphertext: &stored.private_key_ciphertext,
            kms_key_arn: &stored.meta.kms_key_arn,
            encryption_context: &stored.meta.encryption_context,
            grant_tokens: &key.grant_tokens,
        })
        .await
        .map_err(|e| e.to_string())
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, fsync, rename).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".keyprov-decrypt-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// `keyprov decrypt NAME`: the private key as PEM on stdout, or into `out` (mode 0600).
pub async fn decrypt(
    config: &Config,
    name: &str,
    generation: Option<u32>,
    out: Option<&Path>,
) -> Exit {
    let loaded = super::load_manifests(config);
    let result = async {
        let key = super::find_key(&loaded, name)?;
        let stored = read_stored(key, generation)?;
        let provider = AnyProvider::from_config(config);
        let private = decrypt_stored(&provider, key, &stored).await?;
        let pem = private.to_pem();
        match out {
            Some(path) => write_private(path, pem.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display())),
            None => std::io::stdout()
                .write_all(pem.as_bytes())
                .map_err(|e| format!("cannot write to stdout: {e}")),
        }
    }
    .await;
    match result {
        Ok(()) => Exit::Ok,
        Err(err) => {
            eprintln!("error: {err}");
            Exit::KeyFailed
        }
    }
}

/// Checks that a stored pair's private key (decrypted) matches its public key.
async fn verify_key(provider: &AnyProvider, key: &KeyPair) -> Result<u32, String> {
    let stored = read_stored(key, None)?;
    let private = decrypt_stored(provider, key, &stored).await?;
    let spec = stored.meta.key_pair_spec.parse().map_err(|e: String| e)?;
    let derived = local::public_key_of(spec, private.der()).map_err(|e| e.to_string())?;
    if derived != stored.public_key_der {
        return Err("the private key does not match the stored public key".into());
    }
    if crate::store::public_key_sha256(&stored.public_key_der) != stored.meta.public_key_sha256 {
        return Err("meta.json publicKeySha256 does not match the public key".into());
    }
    Ok(stored.meta.generation)
}

/// `keyprov verify`: decrypt every current pair and check it against its public key.
pub async fn verify(config: &Config) -> Exit {
    let loaded = super::load_manifests(config);
    let provider = AnyProvider::from_config(config);
    let mut exit = if loaded.is_valid() {
        Exit::Ok
    } else {
        Exit::Invalid
    };
    for key in &loaded.keys {
        match verify_key(&provider, key).await {
            Ok(generation) => println!("ok      {} generation {generation}", key.name),
            Err(err) => {
                println!("FAILED  {}: {err}", key.name);
                exit = exit.max(Exit::KeyFailed);
            }
        }
    }
    exit
}

//! The embedded provider: a keyring file of 256-bit master keys (created 0600 on first use);
//! key pairs generated with aws-lc-rs; private keys sealed with AES-256-GCM, the canonical
//! encryption context as associated data. No AWS needed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    DecryptRequest, GenerateRequest, GeneratedPair, PrivateKey, Provider, ProviderError,
    canonical_context,
};
use crate::spec::KeyPairSpec;

const MAGIC: &[u8; 4] = b"KPL1";
const AAD_PREFIX: &[u8] = b"keyprov-local-v1\0";
const ARN_PREFIX: &str = "arn:keyprov:kms:local:keyring:key/";

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyringFile {
    keys: Vec<MasterKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MasterKey {
    key_id: String,
    #[serde(default)]
    aliases: Vec<String>,
    /// Base64 of 32 random bytes.
    material: String,
}

/// The local provider over one keyring file.
pub struct LocalProvider {
    path: PathBuf,
    keyring: Mutex<Option<KeyringFile>>,
}

impl LocalProvider {
    /// A provider over `path`; nothing is read until the first call.
    pub fn new(path: PathBuf) -> Self {
        LocalProvider {
            path,
            keyring: Mutex::new(None),
        }
    }

    fn error(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::Keyring {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Reads the keyring: a regular file (never blocking on a FIFO or reading a device), at
    /// most 1 MiB, readable by its owner only. Missing means empty.
    fn read_file(&self) -> Result<KeyringFile, ProviderError> {
        use std::io::Read;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&self.path);
        let file = match opened {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(KeyringFile::default());
            }
            Err(err) => return Err(self.error(err.to_string())),
        };
        let meta = file.metadata().map_err(|e| self.error(e.to_string()))?;
        if !meta.file_type().is_file() {
            let what = if meta.file_type().is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            };
            return Err(self.error(format!("is {what}; the keyring must be a regular file")));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(self.error(format!(
                "mode {:04o} lets others read master keys; run chmod 600 on it",
                meta.mode() & 0o7777
            )));
        }
        const MAX_KEYRING_BYTES: u64 = 1 << 20;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_KEYRING_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(e.to_string()))?;
        if bytes.len() as u64 > MAX_KEYRING_BYTES {
            return Err(self.error("is larger than 1 MiB; it is not a keyprov keyring"));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("corrupt keyring: {e}")))
    }

    /// Creates the keyring's directory (and parents) with mode 0700, whatever the umask.
    fn create_dir(&self, dir: &Path) -> Result<(), ProviderError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| self.error(format!("cannot create {}: {e}", dir.display())))
    }

    fn write_file(&self, keyring: &KeyringFile) -> Result<(), ProviderError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.create_dir(dir)?;
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let text = Zeroizing::new(
            serde_json::to_vec_pretty(keyring).map_err(|e| self.error(e.to_string()))?,
        );
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.error(format!("cannot create {}: {e}", tmp.display())))?;
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        let renamed = written.and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(err) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(err.to_string()));
        }
        crate::durable::sync_dir(dir).map_err(|e| self.error(e.to_string()))
    }

    /// Finds the master key named by `reference` (key id, alias or either's ARN), creating it
    /// on first use. Returns (ARN, key material).
    fn master_key(&self, reference: &str) -> Result<(String, Zeroizing<Vec<u8>>), ProviderError> {
        let wanted = wanted(reference);
        let mut guard = self
            .keyring
            .lock()
            .map_err(|_| self.error("keyring lock poisoned"))?;
        if let Some(found) = guard.as_ref().and_then(|k| find(k, &wanted)) {
            return self.decode(found);
        }
        // Re-read under an exclusive lock: another keyprov process may have added it.
        let _lock = self.lock_file()?;
        let mut keyring = self.read_file()?;
        if find(&keyring, &wanted).is_none() {
            let mut material = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(material.as_mut())
                .map_err(|_| ProviderError::Crypto("random generator failed".into()))?;
            let (key_id, aliases) = if wanted.starts_with("alias/") {
                (uuid::Uuid::new_v4().to_string(), vec![wanted.clone()])
            } else {
                (wanted.clone(), Vec::new())
            };
            tracing::info!(keyring = %self.path.display(), key = %wanted, "creating local master key");
            keyring.keys.push(MasterKey {
                key_id,
                aliases,
                material: BASE64.encode(material.as_ref()),
            });
            self.write_file(&keyring)?;
        }
        let result = self.decode(find(&keyring, &wanted).expect("key was just added"));
        *guard = Some(keyring);
        result
    }

    fn lock_file(&self) -> Result<nix::fcntl::Flock<fs::File>, ProviderError> {
        let path = self.path.with_extension("lock");
        if let Some(dir) = path.parent() {
            self.create_dir(dir)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.error(format!("cannot open {}: {e}", path.display())))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.error(format!("cannot lock {}: {e}", path.display())))
    }

    fn decode(&self, key: &MasterKey) -> Result<(String, Zeroizing<Vec<u8>>), ProviderError> {
        let material = Zeroizing::new(
            BASE64
                .decode(&key.material)
                .map_err(|e| self.error(format!("corrupt key {}: {e}", key.key_id)))?,
        );
        if material.len() != 32 {
            return Err(self.error(format!("key {} is not 256 bits", key.key_id)));
        }
        Ok((format!("{ARN_PREFIX}{}", key.key_id), material))
    }

    /// The key id of the existing master key `reference` names (key id, alias or either's
    /// ARN), as Decrypt's `KeyId` is resolved.
    fn key_id_of(&self, reference: &str) -> Result<String, ProviderError> {
        let wanted = wanted(reference);
        let mut guard = self
            .keyring
            .lock()
            .map_err(|_| self.error("keyring lock poisoned"))?;
        if guard.as_ref().and_then(|k| find(k, &wanted)).is_none() {
            *guard = Some(self.read_file()?);
        }
        guard
            .as_ref()
            .and_then(|k| find(k, &wanted))
            .map(|k| k.key_id.clone())
            .ok_or_else(|| self.error(format!("has no master key {wanted}")))
    }

    /// The material of an existing master key (decrypt never creates one).
    fn key_by_id(&self, key_id: &str) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let mut guard = self
            .keyring
            .lock()
            .map_err(|_| self.error("keyring lock poisoned"))?;
        if guard.as_ref().and_then(|k| find(k, key_id)).is_none() {
            *guard = Some(self.read_file()?);
        }
        let key = guard
            .as_ref()
            .and_then(|k| find(k, key_id))
            .ok_or_else(|| {
                self.error(format!(
                    "has no master key {key_id}; was the pair made with another keyring?"
                ))
            })?;
        Ok(self.decode(key)?.1)
    }
}

/// What a key reference (key id, alias, or either's ARN) looks up in the keyring.
fn wanted(reference: &str) -> String {
    reference
        .rsplit_once(":key/")
        .map(|(_, id)| id.to_string())
        .or_else(|| {
            reference
                .rsplit_once(":alias/")
                .map(|(_, a)| format!("alias/{a}"))
        })
        .unwrap_or_else(|| reference.to_string())
}

fn find<'k>(keyring: &'k KeyringFile, wanted: &str) -> Option<&'k MasterKey> {
    keyring
        .keys
        .iter()
        .find(|k| k.key_id == wanted || k.aliases.iter().any(|a| a == wanted))
}

fn aad(context: &std::collections::BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(canonical_context(context).as_bytes());
    aad
}

fn cipher(material: &[u8]) -> Result<LessSafeKey, ProviderError> {
    UnboundKey::new(&AES_256_GCM, material)
        .map(LessSafeKey::new)
        .map_err(|_| ProviderError::Crypto("invalid AES-256 key".into()))
}

/// Generates a pair of `spec` with aws-lc-rs: (DER SPKI public key, DER PKCS#8 private key).
pub fn generate_pair(spec: KeyPairSpec) -> Result<(Vec<u8>, PrivateKey), ProviderError> {
    let failed = |what: &str| ProviderError::Crypto(format!("{what} of a {spec} key pair failed"));
    let rsa = |size| -> Result<(Vec<u8>, PrivateKey), ProviderError> {
        let pair = signature::RsaKeyPair::generate(size).map_err(|_| failed("generation"))?;
        let private: Pkcs8V1Der = pair.as_der().map_err(|_| failed("encoding"))?;
        let public: PublicKeyX509Der =
            pair.public_key().as_der().map_err(|_| failed("encoding"))?;
        Ok((
            public.as_ref().to_vec(),
            PrivateKey::from_der(private.as_ref().to_vec()),
        ))
    };
    let ecdsa = |alg| -> Result<(Vec<u8>, PrivateKey), ProviderError> {
        let pair = EcdsaKeyPair::generate(alg).map_err(|_| failed("generation"))?;
        let private = pair.to_pkcs8v1().map_err(|_| failed("encoding"))?;
        let public: PublicKeyX509Der =
            pair.public_key().as_der().map_err(|_| failed("encoding"))?;
        Ok((
            public.as_ref().to_vec(),
            PrivateKey::from_der(private.as_ref().to_vec()),
        ))
    };
    use aws_lc_rs::rsa::KeySize;
    match spec {
        KeyPairSpec::Rsa2048 => rsa(KeySize::Rsa2048),
        KeyPairSpec::Rsa3072 => rsa(KeySize::Rsa3072),
        KeyPairSpec::Rsa4096 => rsa(KeySize::Rsa4096),
        KeyPairSpec::EccNistP256 => ecdsa(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyPairSpec::EccNistP384 => ecdsa(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        KeyPairSpec::EccNistP521 => ecdsa(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        KeyPairSpec::EccSecgP256k1 => ecdsa(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        KeyPairSpec::EccNistEdwards25519 => {
            let pair = Ed25519KeyPair::generate().map_err(|_| failed("generation"))?;
            let private = pair.to_pkcs8v1().map_err(|_| failed("encoding"))?;
            let public: PublicKeyX509Der = pair.public_key().as_der().map_err(|_| failed("encoding"))?;
            Ok((public.as_ref().to_vec(), PrivateKey::from_der(private.as_ref().to_vec())))
        }
        KeyPairSpec::Sm2 => Err(ProviderError::Unsupported {
            message: "SM2 key pairs need AWS KMS (China Regions); the local provider cannot make them: set provider: aws".into(),
        }),
    }
}

impl LocalProvider {
    fn generate_blocking(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        let (public_key_der, private_key) = generate_pair(request.spec)?;
        let (kms_key_arn, material) = self.master_key(request.kms_key_id)?;
        let key_id = kms_key_arn.trim_start_matches(ARN_PREFIX);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| ProviderError::Crypto("random generator failed".into()))?;
        let mut sealed = private_key.der().to_vec();
        cipher(&material)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(request.encryption_context)),
                &mut sealed,
            )
            .map_err(|_| ProviderError::Crypto("AES-256-GCM seal failed".into()))?;
        let mut ciphertext =
            Vec::with_capacity(MAGIC.len() + 1 + key_id.len() + NONCE_LEN + sealed.len());
        ciphertext.extend_from_slice(MAGIC);
        ciphertext.push(u8::try_from(key_id.len()).map_err(|_| self.error("key id too long"))?);
        ciphertext.extend_from_slice(key_id.as_bytes());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        Ok(GeneratedPair {
            public_key_der,
            private_key_ciphertext: ciphertext,
            private_key: request.include_plaintext.then_some(private_key),
            kms_key_arn,
        })
    }

    fn decrypt_blocking(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        let mismatch = || ProviderError::DecryptMismatch {
            name: request.name.to_string(),
            context: canonical_context(request.encryption_context),
            kms_key: request.kms_key_arn.to_string(),
            other_key: false,
        };
        let blob = request.ciphertext;
        let Some(rest) = blob.strip_prefix(MAGIC.as_slice()) else {
            return Err(ProviderError::Crypto(format!(
                "the ciphertext of {:?} was not made by the local provider",
                request.name
            )));
        };
        let (&id_len, rest) = rest.split_first().ok_or_else(mismatch)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(mismatch());
        }
        let (key_id, rest) = rest.split_at(id_len);
        let key_id = std::str::from_utf8(key_id).map_err(|_| mismatch())?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        // Pinned as KMS pins Decrypt's KeyId: a ciphertext of another master key fails.
        if self.key_id_of(request.kms_key_arn)? != key_id {
            return Err(mismatch());
        }
        let material = self.key_by_id(key_id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| mismatch())?;
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let plain = cipher(&material)?
            .open_in_place(
                nonce,
                Aad::from(aad(request.encryption_context)),
                &mut buffer,
            )
            .map_err(|_| mismatch())?;
        Ok(PrivateKey::from_der(plain.to_vec()))
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn generate(
        &self,
        request: &GenerateRequest<'_>,
    ) -> Result<GeneratedPair, ProviderError> {
        // RSA generation takes up to seconds: keep it off the async workers.
        tokio::task::block_in_place(|| self.generate_blocking(request))
    }

    async fn decrypt(&self, request: &DecryptRequest<'_>) -> Result<PrivateKey, ProviderError> {
        tokio::task::block_in_place(|| self.decrypt_blocking(request))
    }
}

/// Derives the DER SubjectPublicKeyInfo of a DER PKCS#8 private key of `spec`, so a stored
/// public key can be checked against its private key.
pub fn public_key_of(spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Vec<u8>, ProviderError> {
    let bad = || ProviderError::Crypto(format!("the private key is not a valid {spec} PKCS#8 key"));
    let ecdsa = |alg| -> Result<Vec<u8>, ProviderError> {
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| bad())?;
        let public: PublicKeyX509Der = pair.public_key().as_der().map_err(|_| bad())?;
        Ok(public.as_ref().to_vec())
    };
    match spec {
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
            let pair = signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| bad())?;
            let public: PublicKeyX509Der = pair.public_key().as_der().map_err(|_| bad())?;
            Ok(public.as_ref().to_vec())
        }
        KeyPairSpec::EccNistP256 => ecdsa(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyPairSpec::EccNistP384 => ecdsa(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        KeyPairSpec::EccNistP521 => ecdsa(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        KeyPairSpec::EccSecgP256k1 => ecdsa(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        KeyPairSpec::EccNistEdwards25519 => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| bad())?;
            let public: PublicKeyX509Der = pair.public_key().as_der().map_err(|_| bad())?;
            Ok(public.as_ref().to_vec())
        }
        KeyPairSpec::Sm2 => Err(ProviderError::Unsupported {
            message: "SM2 keys cannot be checked locally (aws-lc-rs has no SM2)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request<'a>(
        spec: KeyPairSpec,
        context: &'a BTreeMap<String, String>,
    ) -> GenerateRequest<'a> {
        GenerateRequest {
            name: "k",
            spec,
            kms_key_id: "alias/test",
            encryption_context: context,
            grant_tokens: &[],
            include_plaintext: true,
        }
    }

    #[test]
    fn seals_and_opens_with_the_same_context_only() {
        let tmp = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(tmp.path().join("kr"));
        let context = BTreeMap::from([("service".to_string(), "pay".to_string())]);
        let pair = provider
            .generate_blocking(&request(KeyPairSpec::EccNistP256, &context))
            .unwrap();
        assert!(pair.kms_key_arn.starts_with(ARN_PREFIX));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(tmp.path().join("kr")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let decrypt = |context| {
            provider.decrypt_blocking(&DecryptRequest {
                name: "k",
                ciphertext: &pair.private_key_ciphertext,
                kms_key_arn: &pair.kms_key_arn,
                encryption_context: context,
                grant_tokens: &[],
            })
        };
        let plain = decrypt(&context).unwrap();
        assert_eq!(plain.der(), pair.private_key.as_ref().unwrap().der());
        let other = BTreeMap::from([("service".to_string(), "evil".to_string())]);
        let err = decrypt(&other).unwrap_err().to_string();
        assert!(
            err.contains("encryption context {\"service\":\"evil\"}"),
            "{err}"
        );
    }

    #[test]
    fn a_ciphertext_opens_only_as_its_own_generation_and_under_the_pinned_key() {
        let tmp = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(tmp.path().join("kr"));
        let manifest = BTreeMap::from([("service".to_string(), "pay".to_string())]);
        let first = crate::binding::context(&manifest, "k", 1);
        let pair = provider
            .generate_blocking(&request(KeyPairSpec::EccNistP256, &first))
            .unwrap();
        // Another master key in the same keyring, as another KMS key in the same account.
        let mut other = request(KeyPairSpec::EccNistP256, &first);
        other.kms_key_id = "alias/other";
        provider.generate_blocking(&other).unwrap();
        let decrypt = |kms_key: &str, context: &BTreeMap<String, String>| {
            provider.decrypt_blocking(&DecryptRequest {
                name: "k",
                ciphertext: &pair.private_key_ciphertext,
                kms_key_arn: kms_key,
                encryption_context: context,
                grant_tokens: &[],
            })
        };
        assert!(decrypt("alias/test", &first).is_ok(), "by alias");
        assert!(decrypt(&pair.kms_key_arn, &first).is_ok(), "by ARN");
        let second = crate::binding::context(&manifest, "k", 2);
        let err = decrypt("alias/test", &second).unwrap_err().to_string();
        assert!(
            err.contains("\"keyprov:generation\":\"2\""),
            "generation 1 presented as generation 2: {err}"
        );
        let renamed = crate::binding::context(&manifest, "other-key", 1);
        assert!(decrypt("alias/test", &renamed).is_err(), "another key name");
        let err = decrypt("alias/other", &first).unwrap_err().to_string();
        assert!(err.contains("alias/other"), "another KMS key: {err}");
    }

    #[test]
    fn one_master_key_per_alias_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        let context = BTreeMap::new();
        let first = LocalProvider::new(tmp.path().join("kr"));
        let a = first
            .generate_blocking(&request(KeyPairSpec::EccNistP256, &context))
            .unwrap();
        let second = LocalProvider::new(tmp.path().join("kr"));
        let b = second
            .generate_blocking(&request(KeyPairSpec::EccNistP384, &context))
            .unwrap();
        assert_eq!(a.kms_key_arn, b.kms_key_arn);
    }

    #[test]
    fn sm2_needs_aws() {
        let err = generate_pair(KeyPairSpec::Sm2).unwrap_err().to_string();
        assert!(err.contains("SM2") && err.contains("AWS KMS"), "{err}");
    }
}

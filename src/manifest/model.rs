//! The validated model of a manifest: what the planner and executor work with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::spec::KeyPairSpec;

/// One desired key pair, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// `metadata.name`, unique across all manifests.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.keyPairSpec`.
    pub spec: KeyPairSpec,
    /// `spec.kmsKeyId` as written.
    pub kms_key_id: String,
    /// `spec.encryptionContext` (sorted: it is canonical).
    pub encryption_context: BTreeMap<String, String>,
    /// `spec.grantTokens`.
    pub grant_tokens: Vec<String>,
    /// `spec.includePlaintext`.
    pub include_plaintext: bool,
    /// `spec.rotation`.
    pub rotation: Rotation,
    /// `spec.outputs`, at least one.
    pub outputs: Vec<Output>,
    /// `spec.onRotate`.
    pub on_rotate: Vec<Hook>,
    /// The manifest file this key came from.
    pub source: PathBuf,
}

impl KeyPair {
    /// Fingerprint of what makes a generation stale when it changes: spec, KMS key, context.
    ///
    /// The digest is of the compact JSON `{"encryptionContext":{..},"keyPairSpec":..,
    /// "kmsKeyId":..}` (keys sorted), written directly rather than through a `serde_json::Value`:
    /// a no-op run asks for it several times per key.
    pub fn spec_fingerprint(&self) -> String {
        let mut canonical = Vec::with_capacity(128);
        canonical.extend_from_slice(b"{\"encryptionContext\":{");
        for (i, (key, value)) in self.encryption_context.iter().enumerate() {
            if i > 0 {
                canonical.push(b',');
            }
            json_string(&mut canonical, key);
            canonical.push(b':');
            json_string(&mut canonical, value);
        }
        canonical.extend_from_slice(b"},\"keyPairSpec\":");
        json_string(&mut canonical, self.spec.as_str());
        canonical.extend_from_slice(b",\"kmsKeyId\":");
        json_string(&mut canonical, &self.kms_key_id);
        canonical.push(b'}');
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        let mut fingerprint = String::with_capacity(39);
        fingerprint.push_str("sha256:");
        fingerprint.push_str(&hex::encode(&digest.as_ref()[..16]));
        fingerprint
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
}

/// When and how a key pair rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Rotation period; `None` never rotates.
    pub every: Option<Duration>,
    /// How long a new generation is published before it becomes current.
    pub publish_ahead: Option<Duration>,
    /// Previous versions kept.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            every: None,
            publish_ahead: None,
            keep: 1,
        }
    }
}

/// Where a key pair is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A directory of versions with `current`/`previous`/`next` links.
    File(FileOutput),
    /// One Secrets Manager secret with staging labels.
    SecretsManager(SecretsManagerOutput),
}

impl Output {
    /// `file` or `secretsManager`, as status prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::File(_) => "file",
            Output::SecretsManager(_) => "secretsManager",
        }
    }

    /// The directory or secret id.
    pub fn location(&self) -> String {
        match self {
            Output::File(file) => file.dir.display().to_string(),
            Output::SecretsManager(secret) => secret.secret_id.clone(),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.location())
    }
}

/// Encoding of the public (and plaintext private) key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PEM text: `public.pem`, `private.pem`.
    Pem,
    /// Raw DER: `public.der`, `private.der`.
    Der,
}

impl Format {
    /// File extension: `pem` or `der`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Pem => "pem",
            Format::Der => "der",
        }
    }
}

/// A file output, with its directory resolved and contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    /// The stateDir or outputRoot that contains `dir`.
    pub root: PathBuf,
    /// Absolute directory of the versions.
    pub dir: PathBuf,
    /// Encoding of public and plaintext private key.
    pub format: Format,
    /// Mode of public.* and private.enc and meta.json.
    pub mode: u32,
    /// Extra public key files of every version (sorted, each once).
    pub public_formats: Vec<crate::public_formats::PublicFormat>,
    /// Extra plaintext private key files of every version (sorted, each once; only with
    /// `includePlaintext`).
    pub private_formats: Vec<crate::private_formats::PrivateFormat>,
    /// Owning user name or numeric id.
    pub owner: Option<String>,
    /// Owning group name or numeric id.
    pub group: Option<String>,
}

/// A Secrets Manager output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsManagerOutput {
    /// Secret name or ARN.
    pub secret_id: String,
    /// KMS key that encrypts the secret.
    pub kms_key_id: Option<String>,
    /// The output's own tags (the secret also carries the manifest's labels and keyprov's tags).
    pub tags: BTreeMap<String, String>,
}

/// A command run on rotation events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Program (absolute, allowed by the config) and arguments.
    pub command: Vec<String>,
    /// Runs when a staged generation is published.
    pub on_publish: bool,
    /// Runs when a generation becomes current.
    pub on_activate: bool,
    /// Time limit.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint as it was first defined, through a `serde_json::Value`.
    fn through_value(key: &KeyPair) -> String {
        let canonical = serde_json::json!({
            "keyPairSpec": key.spec.as_str(),
            "kmsKeyId": key.kms_key_id,
            "encryptionContext": key.encryption_context,
        });
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.to_string().as_bytes());
        format!("sha256:{}", hex::encode(&digest.as_ref()[..16]))
    }

    #[test]
    fn the_fingerprint_is_that_of_the_canonical_json() {
        let mut key = KeyPair {
            name: "k".into(),
            labels: BTreeMap::new(),
            spec: KeyPairSpec::EccNistP256,
            kms_key_id: "alias/x".into(),
            encryption_context: BTreeMap::new(),
            grant_tokens: Vec::new(),
            include_plaintext: false,
            rotation: Rotation::default(),
            outputs: Vec::new(),
            on_rotate: Vec::new(),
            source: PathBuf::from("/m.yaml"),
        };
        assert_eq!(key.spec_fingerprint(), through_value(&key));
        key.spec = KeyPairSpec::Rsa4096;
        key.kms_key_id = "arn:aws:kms:eu-west-1:1:key/\"q\"\\\u{1}\u{7f}é\u{2028}".into();
        for (k, v) in [
            ("b", "2"),
            ("a", "x\ny\t\"z\""),
            ("é", "\u{0}\u{1f}"),
            ("", ""),
        ] {
            key.encryption_context.insert(k.into(), v.into());
        }
        assert_eq!(key.spec_fingerprint(), through_value(&key));
    }
}

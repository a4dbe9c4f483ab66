//! Plaintext private keys in formats beside PKCS#8 (`privateFormats`): the OpenSSH private-key
//! format (`openssh-key-v1`, unencrypted), which sshd's `HostKey` and `ssh -i` load where they
//! refuse a PKCS#8 Ed25519 key. A pure function of the DER PKCS#8 private key and the DER
//! SubjectPublicKeyInfo; every buffer holding key material is zeroized on drop.

use spki::der::asn1::{OctetStringRef, UintRef};
use spki::der::{Decode as _, Reader as _, SliceReader};
use zeroize::Zeroizing;

use crate::key_material::PrivateKey;
use crate::public_formats::{self, PublicFormat};
use crate::spec::KeyPairSpec;

/// A private key format a file output can add to every version that holds the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PrivateFormat {
    /// `private.ssh`, an unencrypted OpenSSH private key.
    Openssh,
}

impl PrivateFormat {
    /// Every format, in manifest spelling order.
    pub const ALL: [PrivateFormat; 1] = [PrivateFormat::Openssh];

    /// The manifest's spelling: `openssh`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrivateFormat::Openssh => "openssh",
        }
    }

    /// The format of a manifest value.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The file each version gets: `private.ssh`.
    pub fn file_name(self) -> &'static str {
        match self {
            PrivateFormat::Openssh => "private.ssh",
        }
    }

    /// Why keys of `spec` cannot be written in this format, if they cannot.
    pub fn unsupported(self, spec: KeyPairSpec) -> Option<&'static str> {
        match self {
            // The same key types as the public line.
            PrivateFormat::Openssh => PublicFormat::Openssh.unsupported(spec),
        }
    }

    /// The bytes of this format's file for a pair, in a zeroizing buffer.
    pub fn encode(
        self,
        public_der: &[u8],
        private: &PrivateKey,
        comment: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        match self {
            PrivateFormat::Openssh => openssh(public_der, private, comment),
        }
    }
}

/// Room for the largest key (RSA 4096: about 2.4 KB) so the buffers never reallocate and
/// leave unzeroized copies behind.
const CAPACITY: usize = 8192;

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// An SSH mpint (RFC 4251 §5) of a positive big-endian integer.
fn put_mpint(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    let pad = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    put_u32(out, (bytes.len() + usize::from(pad)) as u32);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(bytes);
}

/// The `privateKey` OCTET STRING of a DER PKCS#8 `PrivateKeyInfo` (RFC 5208, RFC 5958).
fn pkcs8_private_key(der: &[u8]) -> Result<&[u8], spki::der::Error> {
    let mut reader = SliceReader::new(der)?;
    reader.sequence(|r| {
        let _version = u8::decode(r)?;
        let _algorithm = r.tlv_bytes()?;
        let key = <&OctetStringRef>::decode(r)?;
        // Attributes and the v2 public key, if any, are not needed.
        let rest = r.remaining_len();
        r.read_slice(rest)?;
        Ok(key.as_bytes())
    })
}

/// The private scalar of a DER SEC1 `ECPrivateKey` (RFC 5915).
fn sec1_private_scalar(der: &[u8]) -> Result<&[u8], spki::der::Error> {
    let mut reader = SliceReader::new(der)?;
    reader.sequence(|r| {
        let _version = u8::decode(r)?;
        let scalar = <&OctetStringRef>::decode(r)?;
        let rest = r.remaining_len();
        r.read_slice(rest)?;
        Ok(scalar.as_bytes())
    })
}

/// The unencrypted OpenSSH private key (PROTOCOL.key, `openssh-key-v1`) of a pair, PEM-armoured
/// as `ssh-keygen` writes it.
fn openssh(
    public_der: &[u8],
    private: &PrivateKey,
    comment: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let (kind, blob) = public_formats::openssh_blob(public_der)?;
    let inner = pkcs8_private_key(private.der())
        .map_err(|e| format!("the private key is not DER PKCS#8: {e}"))?;
    let mut section = Zeroizing::new(Vec::with_capacity(CAPACITY));
    // The check integers only detect a wrong passphrase; derived from the public key so the
    // file is a function of the pair (repairs compare bytes).
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &blob);
    let check = u32::from_be_bytes(digest.as_ref()[..4].try_into().expect("4 bytes"));
    put_u32(&mut section, check);
    put_u32(&mut section, check);
    match kind {
        "ssh-rsa" => {
            let rsa = pkcs1::RsaPrivateKey::<UintRef<'_>>::from_der(inner)
                .map_err(|e| format!("not an RSA private key: {e}"))?;
            put_string(&mut section, kind.as_bytes());
            for part in [
                &rsa.modulus,
                &rsa.public_exponent,
                &rsa.private_exponent,
                &rsa.coefficient,
                &rsa.prime1,
                &rsa.prime2,
            ] {
                put_mpint(&mut section, part.as_bytes());
            }
        }
        "ssh-ed25519" => {
            let seed = <&OctetStringRef>::from_der(inner)
                .map_err(|e| format!("not an Ed25519 private key: {e}"))?
                .as_bytes();
            let public = blob.get(blob.len().saturating_sub(32)..).unwrap_or(&[]);
            if seed.len() != 32 || public.len() != 32 {
                return Err("an Ed25519 key is 32 bytes".into());
            }
            // The blob after the key type: string pk. OpenSSH's secret is seed || pk.
            section.extend_from_slice(&blob);
            let mut secret = Zeroizing::new(Vec::with_capacity(64));
            secret.extend_from_slice(seed);
            secret.extend_from_slice(public);
            put_string(&mut section, &secret);
        }
        _ => {
            // ecdsa-sha2-nistp*: the blob (key type, curve, point), then the scalar.
            let scalar =
                sec1_private_scalar(inner).map_err(|e| format!("not an EC private key: {e}"))?;
            section.extend_from_slice(&blob);
            put_mpint(&mut section, scalar);
        }
    }
    put_string(&mut section, comment.as_bytes());
    // Padded with 1, 2, 3, … to the block size of cipher "none" (8).
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }
    let mut body = Zeroizing::new(Vec::with_capacity(CAPACITY));
    body.extend_from_slice(b"openssh-key-v1\0");
    put_string(&mut body, b"none");
    put_string(&mut body, b"none");
    put_string(&mut body, b"");
    put_u32(&mut body, 1);
    put_string(&mut body, &blob);
    put_string(&mut body, &section);
    let block = pem::Pem::new("OPENSSH PRIVATE KEY", body.to_vec());
    let text = Zeroizing::new(
        pem::encode_config(
            &block,
            pem::EncodeConfig::new()
                .set_line_ending(pem::LineEnding::LF)
                .set_line_wrap(70),
        )
        .into_bytes(),
    );
    // `Pem` owns a copy of the key; wipe it before it is dropped.
    let mut contents = block.into_contents();
    zeroize::Zeroize::zeroize(&mut contents);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::local::generate_pair;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, KeyPair as _};

    fn decode(text: &[u8]) -> Vec<u8> {
        let block = pem::parse(text).unwrap();
        assert_eq!(block.tag(), "OPENSSH PRIVATE KEY");
        block.into_contents()
    }

    #[test]
    fn every_openssh_key_type_is_armoured_with_its_public_blob() {
        for spec in [
            KeyPairSpec::EccNistP256,
            KeyPairSpec::EccNistP384,
            KeyPairSpec::EccNistP521,
            KeyPairSpec::EccNistEdwards25519,
            KeyPairSpec::Rsa2048,
        ] {
            let (public, key) = generate_pair(spec).unwrap();
            let file = PrivateFormat::Openssh.encode(&public, &key, "c").unwrap();
            assert_eq!(
                file,
                PrivateFormat::Openssh.encode(&public, &key, "c").unwrap(),
                "{spec:?}: deterministic"
            );
            let body = decode(&file);
            let (_, blob) = public_formats::openssh_blob(&public).unwrap();
            let mut head = b"openssh-key-v1\0".to_vec();
            for s in [&b"none"[..], b"none", b""] {
                put_string(&mut head, s);
            }
            put_u32(&mut head, 1);
            put_string(&mut head, &blob);
            assert!(body.starts_with(&head), "{spec:?}");
            let section_len = u32::from_be_bytes(body[head.len()..][..4].try_into().unwrap());
            assert_eq!(section_len % 8, 0, "{spec:?}");
            assert_eq!(
                body.len(),
                head.len() + 4 + section_len as usize,
                "{spec:?}"
            );
        }
    }

    #[test]
    fn mpints_are_minimal_and_positive() {
        let mut out = Vec::new();
        put_mpint(&mut out, &[0, 0, 0x80, 1]);
        assert_eq!(out, [0, 0, 0, 3, 0, 0x80, 1]);
        out.clear();
        put_mpint(&mut out, &[0, 0x7f]);
        assert_eq!(out, [0, 0, 0, 1, 0x7f]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ed = signature::Ed25519KeyPair::generate().unwrap();
        let public = ed.public_key().as_der().unwrap().as_ref().to_vec();
        let bad = PrivateKey::from_der(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(PrivateFormat::Openssh.encode(&public, &bad, "c").is_err());
        assert!(
            PrivateFormat::Openssh
                .unsupported(KeyPairSpec::Sm2)
                .is_some()
        );
    }
}

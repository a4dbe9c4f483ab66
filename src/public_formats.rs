//! Public keys in the formats verifiers consume beside PEM/DER: JWK (RFC 7517, with the RFC 7638
//! thumbprint as `kid`), JWK Sets, and OpenSSH `authorized_keys` lines. Pure functions of the
//! DER SubjectPublicKeyInfo that KMS (or the local provider) returns.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use spki::der::Decode as _;
use spki::der::asn1::UintRef;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use ssh_encoding::Encode as _;

use crate::spec::KeyPairSpec;

/// A public key format a file output can add to every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PublicFormat {
    /// `public.jwk`, and `jwks.json` beside `current`.
    Jwk,
    /// `public.pub`, an OpenSSH public key line.
    Openssh,
}

impl PublicFormat {
    /// Every format, in manifest spelling order.
    pub const ALL: [PublicFormat; 2] = [PublicFormat::Jwk, PublicFormat::Openssh];

    /// The manifest's spelling: `jwk`, `openssh`.
    pub fn as_str(self) -> &'static str {
        match self {
            PublicFormat::Jwk => "jwk",
            PublicFormat::Openssh => "openssh",
        }
    }

    /// The format of a manifest value.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The file each version gets: `public.jwk`, `public.pub`.
    pub fn file_name(self) -> &'static str {
        match self {
            PublicFormat::Jwk => "public.jwk",
            PublicFormat::Openssh => "public.pub",
        }
    }

    /// Why keys of `spec` cannot be written in this format, if they cannot.
    pub fn unsupported(self, spec: KeyPairSpec) -> Option<&'static str> {
        match (self, spec) {
            (PublicFormat::Openssh, KeyPairSpec::EccSecgP256k1) => {
                Some("OpenSSH has no key type for secp256k1 (ECC_SECG_P256K1)")
            }
            (PublicFormat::Openssh, KeyPairSpec::Sm2) => Some("OpenSSH has no key type for SM2"),
            (PublicFormat::Jwk, KeyPairSpec::Sm2) => {
                Some("JOSE has no registered curve or algorithm for SM2")
            }
            _ => None,
        }
    }
}

/// The public key of a SubjectPublicKeyInfo, in the parts JWK and OpenSSH encode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// A point on a named curve, affine coordinates at the curve's full length.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// The 32-byte Ed25519 public key.
    Ed25519(Vec<u8>),
}

/// The named curves KMS makes keys on (SM2 excluded: no JWK or OpenSSH form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
}

impl Curve {
    fn from_oid(oid: ObjectIdentifier) -> Option<Self> {
        const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
        const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
        const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
        [
            (P256, Curve::P256),
            (P384, Curve::P384),
            (P521, Curve::P521),
            (SECP256K1, Curve::Secp256k1),
        ]
        .into_iter()
        .find_map(|(known, curve)| (known == oid).then_some(curve))
    }

    /// Bytes of one coordinate.
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// JWK `crv` (RFC 7518, RFC 8812).
    fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::Secp256k1 => "secp256k1",
        }
    }

    /// JWS `alg` for signatures on this curve.
    fn jws_alg(self) -> &'static str {
        match self {
            Curve::P256 => "ES256",
            Curve::P384 => "ES384",
            Curve::P521 => "ES512",
            Curve::Secp256k1 => "ES256K",
        }
    }

    /// The OpenSSH curve identifier (RFC 5656), when OpenSSH has one.
    fn ssh_name(self) -> Option<&'static str> {
        match self {
            Curve::P256 => Some("nistp256"),
            Curve::P384 => Some("nistp384"),
            Curve::P521 => Some("nistp521"),
            Curve::Secp256k1 => None,
        }
    }
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo.
    fn from_spki(der: &[u8]) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a DER SubjectPublicKeyInfo: {e}"))?;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or("the public key is not a whole number of bytes")?;
        let (algorithm, parameters) = spki
            .algorithm
            .oids()
            .map_err(|e| format!("unreadable key algorithm: {e}"))?;
        match algorithm {
            RSA_ENCRYPTION => {
                let rsa = pkcs1::RsaPublicKey::<UintRef<'_>>::from_der(key)
                    .map_err(|e| format!("not an RSA public key: {e}"))?;
                Ok(PublicKey::Rsa {
                    n: rsa.modulus.as_bytes().to_vec(),
                    e: rsa.public_exponent.as_bytes().to_vec(),
                })
            }
            EC_PUBLIC_KEY => {
                let curve = parameters
                    .and_then(Curve::from_oid)
                    .ok_or("an elliptic curve without a JWK or OpenSSH form (SM2?)")?;
                let size = curve.coordinate_len();
                match key.split_first() {
                    Some((0x04, point)) if point.len() == 2 * size => {
                        let (x, y) = point.split_at(size);
                        Ok(PublicKey::Ec {
                            curve,
                            x: x.to_vec(),
                            y: y.to_vec(),
                        })
                    }
                    _ => Err("the curve point is not uncompressed".into()),
                }
            }
            ED25519 if key.len() == 32 => Ok(PublicKey::Ed25519(key.to_vec())),
            ED25519 => Err("an Ed25519 key is 32 bytes".into()),
            other => Err(format!("unsupported key algorithm {other}")),
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK (RFC 7517) of a DER SubjectPublicKeyInfo, members sorted: `kid` is its RFC 7638
/// thumbprint, `alg` the JWS algorithm of its kind of key, `use` is `sig`.
pub fn jwk(der: &[u8]) -> Result<serde_json::Value, String> {
    let key = PublicKey::from_spki(der)?;
    let mut members: BTreeMap<&str, String> = BTreeMap::new();
    let alg = match &key {
        PublicKey::Rsa { n, e } => {
            members.insert("kty", "RSA".into());
            members.insert("n", b64url(n));
            members.insert("e", b64url(e));
            "RS256"
        }
        PublicKey::Ec { curve, x, y } => {
            members.insert("kty", "EC".into());
            members.insert("crv", curve.jwk_name().into());
            members.insert("x", b64url(x));
            members.insert("y", b64url(y));
            curve.jws_alg()
        }
        PublicKey::Ed25519(x) => {
            members.insert("kty", "OKP".into());
            members.insert("crv", "Ed25519".into());
            members.insert("x", b64url(x));
            "EdDSA"
        }
    };
    // RFC 7638: the required members only (exactly those above), sorted, no whitespace.
    let required = serde_json::to_string(&members).expect("strings serialize");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, required.as_bytes());
    members.insert("kid", b64url(digest.as_ref()));
    members.insert("alg", alg.into());
    members.insert("use", "sig".into());
    Ok(serde_json::to_value(members).expect("strings serialize"))
}

/// A JWK Set (RFC 7517 §5) of `keys`, in order, as the bytes of `jwks.json`.
pub fn jwks<K: serde::Serialize>(keys: &[K]) -> Vec<u8> {
    /// `{"keys": [...]}` without copying the keys into a JSON value first.
    #[derive(serde::Serialize)]
    struct Set<'a, K> {
        keys: &'a [K],
    }
    let mut text = serde_json::to_vec_pretty(&Set { keys }).expect("JSON values serialize");
    text.push(b'\n');
    text
}

/// The bytes of `public.jwk`.
pub fn jwk_file(der: &[u8]) -> Result<Vec<u8>, String> {
    Ok(jwk_file_of(&jwk(der)?))
}

/// The bytes of `public.jwk` holding `jwk` (made by [`jwk`]).
pub fn jwk_file_of(jwk: &serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(jwk).expect("JSON values serialize");
    text.push(b'\n');
    text
}

/// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`) of a DER SubjectPublicKeyInfo.
pub fn openssh(der: &[u8], comment: &str) -> Result<String, String> {
    let (kind, blob) = openssh_blob(der)?;
    Ok(format!("{kind} {} {comment}\n", STANDARD.encode(&blob)))
}

/// The OpenSSH key type and public key blob (RFC 4253 §6.6, RFC 5656 §3.1, RFC 8709 §4) of a
/// DER SubjectPublicKeyInfo.
pub fn openssh_blob(der: &[u8]) -> Result<(&'static str, Vec<u8>), String> {
    let key = PublicKey::from_spki(der)?;
    let mut blob = Vec::new();
    let encoded = match &key {
        PublicKey::Rsa { n, e } => {
            let kind = "ssh-rsa";
            (
                kind,
                kind.encode(&mut blob)
                    .and_then(|()| ssh_encoding::Mpint::from_positive_bytes(e).encode(&mut blob))
                    .and_then(|()| ssh_encoding::Mpint::from_positive_bytes(n).encode(&mut blob)),
            )
        }
        PublicKey::Ec { curve, x, y } => {
            let name = curve
                .ssh_name()
                .ok_or("OpenSSH has no key type for secp256k1")?;
            let kind = match name {
                "nistp256" => "ecdsa-sha2-nistp256",
                "nistp384" => "ecdsa-sha2-nistp384",
                _ => "ecdsa-sha2-nistp521",
            };
            let point = [&[0x04][..], x, y].concat();
            (
                kind,
                kind.encode(&mut blob)
                    .and_then(|()| name.encode(&mut blob))
                    .and_then(|()| point.encode(&mut blob)),
            )
        }
        PublicKey::Ed25519(x) => {
            let kind = "ssh-ed25519";
            (
                kind,
                kind.encode(&mut blob).and_then(|()| x.encode(&mut blob)),
            )
        }
    };
    let (kind, result) = encoded;
    result.map_err(|e| format!("cannot encode the OpenSSH key: {e}"))?;
    Ok((kind, blob))
}

/// The bytes of one public format's file of a version.
pub fn encode(format: PublicFormat, der: &[u8], comment: &str) -> Result<Vec<u8>, String> {
    match format {
        PublicFormat::Jwk => jwk_file(der),
        PublicFormat::Openssh => openssh(der, comment).map(String::into_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, KeyPair as _};

    /// A DER TLV with a definite length.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let len = value.len();
        let mut out = vec![tag];
        match len {
            0..=0x7f => out.push(len as u8),
            0x80..=0xff => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(value);
        out
    }

    fn ec_der(alg: &'static signature::EcdsaSigningAlgorithm) -> Vec<u8> {
        let pair = signature::EcdsaKeyPair::generate(alg).unwrap();
        pair.public_key().as_der().unwrap().as_ref().to_vec()
    }

    #[test]
    fn rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1: the thumbprint of the RFC 7517 example RSA key.
        let n = URL_SAFE_NO_PAD
            .decode(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            )
            .unwrap();
        let e = URL_SAFE_NO_PAD.decode("AQAB").unwrap();
        // SubjectPublicKeyInfo { {rsaEncryption, NULL}, BIT STRING { RSAPublicKey { n, e } } }
        // A positive INTEGER gets a leading zero only when its top bit is set.
        let int = |v: &[u8]| match v[0] & 0x80 {
            0 => tlv(0x02, v),
            _ => tlv(0x02, &[&[0u8][..], v].concat()),
        };
        let rsa = tlv(0x30, &[int(&n), int(&e)].concat());
        let algorithm = tlv(
            0x30,
            &[
                &b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"[..],
                &b"\x05\x00"[..],
            ]
            .concat(),
        );
        let bits = tlv(0x03, &[&[0u8][..], &rsa].concat());
        let der = tlv(0x30, &[algorithm, bits].concat());
        let jwk = jwk(&der).unwrap();
        assert_eq!(jwk["kid"], "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert!(
            openssh(&der, "c")
                .unwrap()
                .starts_with("ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB")
        );
    }

    #[test]
    fn ec_keys_have_full_length_coordinates_and_their_algorithm() {
        for (alg, crv, jws, len, ssh) in [
            (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                "P-256",
                "ES256",
                32,
                "ecdsa-sha2-nistp256 ",
            ),
            (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                "P-384",
                "ES384",
                48,
                "ecdsa-sha2-nistp384 ",
            ),
            (
                &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                "P-521",
                "ES512",
                66,
                "ecdsa-sha2-nistp521 ",
            ),
        ] {
            let der = ec_der(alg);
            let jwk = jwk(&der).unwrap();
            assert_eq!(jwk["crv"], crv);
            assert_eq!(jwk["alg"], jws);
            assert_eq!(jwk["kty"], "EC");
            for c in ["x", "y"] {
                let bytes = URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap();
                assert_eq!(bytes.len(), len, "{crv} {c}");
            }
            assert!(openssh(&der, "k").unwrap().starts_with(ssh));
        }
        let k1 = ec_der(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING);
        assert_eq!(jwk(&k1).unwrap()["alg"], "ES256K");
        assert_eq!(jwk(&k1).unwrap()["crv"], "secp256k1");
        assert!(openssh(&k1, "k").is_err());
    }

    #[test]
    fn coordinates_keep_their_leading_zero_bytes() {
        // RFC 7518 §6.2.1.2: the full length of the coordinate, even if it starts with zeros
        // (about 1 P-256 key in 256 has an x below 2^248).
        let der = (0..20_000)
            .map(|_| ec_der(&signature::ECDSA_P256_SHA256_ASN1_SIGNING))
            .find(|der| der[der.len() - 64] == 0)
            .expect("a key with a leading zero byte in x");
        let x = URL_SAFE_NO_PAD
            .decode(jwk(&der).unwrap()["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(x.len(), 32);
        assert_eq!(x[0], 0);
        assert_eq!(x, der[der.len() - 64..der.len() - 32]);
    }

    #[test]
    fn ed25519_is_an_okp_key() {
        let pair = signature::Ed25519KeyPair::generate().unwrap();
        let der = pair.public_key().as_der().unwrap().as_ref().to_vec();
        let jwk = jwk(&der).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .as_slice(),
            pair.public_key().as_ref()
        );
        let line = openssh(&der, "name v0001").unwrap();
        assert!(
            line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            "{line}"
        );
        assert!(line.ends_with(" name v0001\n"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(jwk(b"").is_err());
        assert!(jwk(b"\x30\x03\x02\x01\x01").is_err());
        assert!(openssh(&[0x30; 64], "x").is_err());
    }

    #[test]
    fn formats_refuse_specs_they_cannot_hold() {
        assert!(
            PublicFormat::Openssh
                .unsupported(KeyPairSpec::Sm2)
                .is_some()
        );
        assert!(
            PublicFormat::Openssh
                .unsupported(KeyPairSpec::EccSecgP256k1)
                .is_some()
        );
        assert!(PublicFormat::Jwk.unsupported(KeyPairSpec::Sm2).is_some());
        assert!(
            PublicFormat::Jwk
                .unsupported(KeyPairSpec::EccSecgP256k1)
                .is_none()
        );
        assert!(
            PublicFormat::Openssh
                .unsupported(KeyPairSpec::Rsa4096)
                .is_none()
        );
    }
}

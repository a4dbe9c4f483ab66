//! The key pair specs KMS `GenerateDataKeyPair` accepts.

use std::fmt;
use std::str::FromStr;

/// An asymmetric key pair spec, named as KMS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPairSpec {
    /// RSA, 2048-bit modulus.
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
    /// NIST P-256 (secp256r1).
    EccNistP256,
    /// NIST P-384 (secp384r1).
    EccNistP384,
    /// NIST P-521 (secp521r1).
    EccNistP521,
    /// SECG secp256k1.
    EccSecgP256k1,
    /// Ed25519.
    EccNistEdwards25519,
    /// Chinese SM2 (AWS KMS in China Regions only).
    Sm2,
}

impl KeyPairSpec {
    /// Every spec, in the order KMS documents them.
    pub const ALL: [KeyPairSpec; 9] = [
        KeyPairSpec::Rsa2048,
        KeyPairSpec::Rsa3072,
        KeyPairSpec::Rsa4096,
        KeyPairSpec::EccNistP256,
        KeyPairSpec::EccNistP384,
        KeyPairSpec::EccNistP521,
        KeyPairSpec::EccSecgP256k1,
        KeyPairSpec::EccNistEdwards25519,
        KeyPairSpec::Sm2,
    ];

    /// The KMS wire name, e.g. `ECC_NIST_P256`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPairSpec::Rsa2048 => "RSA_2048",
            KeyPairSpec::Rsa3072 => "RSA_3072",
            KeyPairSpec::Rsa4096 => "RSA_4096",
            KeyPairSpec::EccNistP256 => "ECC_NIST_P256",
            KeyPairSpec::EccNistP384 => "ECC_NIST_P384",
            KeyPairSpec::EccNistP521 => "ECC_NIST_P521",
            KeyPairSpec::EccSecgP256k1 => "ECC_SECG_P256K1",
            KeyPairSpec::EccNistEdwards25519 => "ECC_NIST_EDWARDS25519",
            KeyPairSpec::Sm2 => "SM2",
        }
    }

    /// The spec a name from elsewhere most likely means: a JOSE algorithm (`ES256`, `EdDSA`,
    /// `RS256`), a curve name (`P-256`, `secp256k1`, `Ed25519`), or a near miss of a wire name
    /// (`ECC_NIST_P265`, lowercase).
    pub fn likely_meant(name: &str) -> Option<KeyPairSpec> {
        let folded = name.to_ascii_uppercase().replace(['-', ' '], "_");
        let alias = match folded.as_str() {
            "ES256" | "P_256" | "P256" | "SECP256R1" | "PRIME256V1" | "EC" | "ECDSA" => {
                Some(KeyPairSpec::EccNistP256)
            }
            "ES384" | "P_384" | "P384" | "SECP384R1" => Some(KeyPairSpec::EccNistP384),
            "ES512" | "P_521" | "P521" | "SECP521R1" => Some(KeyPairSpec::EccNistP521),
            "ES256K" | "SECP256K1" | "P256K1" => Some(KeyPairSpec::EccSecgP256k1),
            "EDDSA" | "ED25519" | "ED_25519" => Some(KeyPairSpec::EccNistEdwards25519),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "RSA" => {
                Some(KeyPairSpec::Rsa2048)
            }
            _ => None,
        };
        alias.or_else(|| {
            Self::ALL
                .into_iter()
                .filter(|_| name.len() <= 64)
                .map(|spec| (strsim::levenshtein(&folded, spec.as_str()), spec))
                .min_by_key(|(distance, _)| *distance)
                .filter(|(distance, _)| *distance <= 2)
                .map(|(_, spec)| spec)
        })
    }

    /// The wire names of every spec, comma separated, for error messages.
    pub fn expected_list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for KeyPairSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyPairSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|spec| spec.as_str() == s)
            .ok_or_else(|| {
                let suggestion = Self::likely_meant(s)
                    .map(|spec| format!("; did you mean {spec}?"))
                    .unwrap_or_default();
                format!(
                    "unknown value {s:?}, expected one of {}{suggestion}",
                    Self::expected_list()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for spec in KeyPairSpec::ALL {
            assert_eq!(spec.as_str().parse::<KeyPairSpec>(), Ok(spec));
        }
    }

    #[test]
    fn unknown_name_lists_the_choices() {
        let err = "EC_P256".parse::<KeyPairSpec>().unwrap_err();
        assert!(err.starts_with("unknown value \"EC_P256\", expected one of RSA_2048, "));
        assert!(err.ends_with("SM2"));
    }

    #[test]
    fn names_from_jose_and_near_misses_are_suggested() {
        for (given, meant) in [
            ("ES256", "ECC_NIST_P256"),
            ("P-384", "ECC_NIST_P384"),
            ("ES256K", "ECC_SECG_P256K1"),
            ("EdDSA", "ECC_NIST_EDWARDS25519"),
            ("RS256", "RSA_2048"),
            ("ECC_NIST_P265", "ECC_NIST_P256"),
            ("rsa_4096", "RSA_4096"),
        ] {
            let err = given.parse::<KeyPairSpec>().unwrap_err();
            assert!(
                err.contains(&format!("; did you mean {meant}?")),
                "{given}: {err}"
            );
        }
        let err = "banana".parse::<KeyPairSpec>().unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
    }
}

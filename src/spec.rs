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
                format!(
                    "unknown value {s:?}, expected one of {}",
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
}

//! Key material shared by providers (which make it) and stores (which keep it): a generated
//! pair, and the plaintext private key, zeroized on drop and never printed.

use std::fmt;

use zeroize::Zeroizing;

/// A DER PKCS#8 private key. `Debug` prints `[redacted]`; the bytes are zeroized on drop.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    /// Takes ownership of DER PKCS#8 bytes.
    pub fn from_der(der: Vec<u8>) -> Self {
        PrivateKey(Zeroizing::new(der))
    }

    /// The DER PKCS#8 bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// PEM (`PRIVATE KEY`), in a zeroizing buffer.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.0.to_vec());
        let text = Zeroizing::new(pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        // `Pem` owns a copy of the key; wipe it before it is dropped.
        let mut contents = block.into_contents();
        zeroize::Zeroize::zeroize(&mut contents);
        text
    }
}

/// A freshly generated pair.
#[derive(Debug)]
pub struct GeneratedPair {
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Opaque ciphertext of the DER PKCS#8 private key.
    pub private_key_ciphertext: Vec<u8>,
    /// DER PKCS#8 private key, only when asked for.
    pub private_key: Option<PrivateKey>,
    /// ARN of the KMS key that encrypted the private key.
    pub kms_key_arn: String,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = PrivateKey::from_der(vec![0x30, 0x82, 0x01]);
        assert_eq!(format!("{key:?}"), "PrivateKey([redacted])");
        assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
}

//! The plaintext private key formats of a file output beyond PKCS#8 (`privateFormats`):
//! `private.ssh` in every version that holds the plaintext, derived from the pair and so
//! rewritten in place (from `private.pem`/`private.der`, no KMS call) when missing or altered.

use super::*;
use crate::private_formats::PrivateFormat;

/// The comment of a version's OpenSSH private key: the public line's, `keyprov:<name>:v0003`.
fn ssh_comment(meta: &VersionMeta) -> String {
    format!("keyprov:{}:{}", meta.name, version_name(meta.generation))
}

/// A derived private file: name and contents (wiped when dropped).
pub(super) type PrivateFile = (&'static str, zeroize::Zeroizing<Vec<u8>>);

/// The private format files `output` asks of a version holding `key`.
pub(super) fn format_files(
    output: &FileOutput,
    meta: &VersionMeta,
    public_der: &[u8],
    key: &PrivateKey,
) -> Result<Vec<PrivateFile>, StoreError> {
    output
        .private_formats
        .iter()
        .map(|&format| {
            format
                .encode(public_der, key, &ssh_comment(meta))
                .map(|bytes| (format.file_name(), bytes))
                .map_err(|message| StoreError::Corrupt {
                    path: version_dir(output, meta.generation).display().to_string(),
                    message: format!(
                        "cannot write its private key as {}: {message}",
                        format.as_str()
                    ),
                })
        })
        .collect()
}

/// Private format files a version must not hold: those not listed, and all of them without
/// `includePlaintext` (a stale plaintext key is a leak).
pub(super) fn unwanted_format_files(
    output: &FileOutput,
    include_plaintext: bool,
) -> impl Iterator<Item = &'static str> {
    PrivateFormat::ALL
        .into_iter()
        .filter(move |f| !include_plaintext || !output.private_formats.contains(f))
        .map(PrivateFormat::file_name)
}

/// The plaintext private key of a version, read from `private.pem`/`private.der`; `None`
/// when it is missing or unreadable (observation reports that; a decrypt restores it).
pub(super) fn read_private(version: &DirHandle, format: Format) -> Option<PrivateKey> {
    let bytes = zeroize::Zeroizing::new(version.read_file(&private_name(format)).ok()?);
    match format {
        Format::Der if bytes.is_empty() => None,
        Format::Der => Some(PrivateKey::from_der(bytes.to_vec())),
        Format::Pem => {
            let block = pem::parse(&*bytes).ok()?;
            if block.tag() != "PRIVATE KEY" {
                return None;
            }
            let mut contents = block.into_contents();
            let key = PrivateKey::from_der(contents.clone());
            zeroize::Zeroize::zeroize(&mut contents);
            Some(key)
        }
    }
}

/// The derived private files of a linked version as they should be, when its plaintext and
/// public key can be read: `(name, bytes)`.
pub(super) fn wanted_files(
    version: &DirHandle,
    output: &FileOutput,
    meta: &VersionMeta,
    key: Option<&PrivateKey>,
) -> Option<Vec<PrivateFile>> {
    if output.private_formats.is_empty() {
        return Some(Vec::new());
    }
    let read;
    let key = match key {
        Some(key) => key,
        None => {
            read = read_private(version, output.format)?;
            &read
        }
    };
    let der = public::read_public_der(version, output.format).ok()?;
    format_files(output, meta, &der, key).ok()
}

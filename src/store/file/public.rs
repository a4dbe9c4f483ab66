//! The public key formats of a file output beyond PEM/DER (`publicFormats`): `public.jwk` and
//! `public.pub` in every version, and `jwks.json` beside `current` holding next + current +
//! previous, rewritten atomically whenever the links move.

use super::*;
use crate::fingerprints::{Fingerprints, Stamp, Stamper};
use crate::observed::LinkedJwks;
use crate::public_formats::{self, PublicFormat};
use crate::store::dir::MAX_READ_BYTES;

/// The JWK Set beside `current`.
pub(super) const JWKS: &str = "jwks.json";

/// The comment of a version's OpenSSH key line: `keyprov:<name>:v0003`.
fn ssh_comment(meta: &VersionMeta) -> String {
    format!("keyprov:{}:{}", meta.name, version_name(meta.generation))
}

/// Files of a version: name and contents.
type Files = Vec<(&'static str, Vec<u8>)>;

/// The public format files `output` asks of a version: name and contents.
pub(super) fn format_files(
    output: &FileOutput,
    meta: &VersionMeta,
    der: &[u8],
) -> Result<Files, StoreError> {
    format_files_and_jwk(output, meta, der).map(|(files, _)| files)
}

/// [`format_files`], and the version's JWK when the output asks for `jwk` (made once, for
/// `public.jwk` and for `jwks.json`).
pub(super) fn format_files_and_jwk(
    output: &FileOutput,
    meta: &VersionMeta,
    der: &[u8],
) -> Result<(Files, Option<serde_json::Value>), StoreError> {
    let mut jwk = None;
    let files = output
        .public_formats
        .iter()
        .map(|&format| {
            let bytes = match format {
                PublicFormat::Jwk => public_formats::jwk(der).map(|value| {
                    let bytes = public_formats::jwk_file_of(&value);
                    jwk = Some(value);
                    bytes
                }),
                PublicFormat::Openssh => public_formats::encode(format, der, &ssh_comment(meta)),
            };
            bytes
                .map(|bytes| (format.file_name(), bytes))
                .map_err(|message| StoreError::Corrupt {
                    path: version_dir(output, meta.generation).display().to_string(),
                    message: format!(
                        "cannot write its public key as {}: {message}",
                        format.as_str()
                    ),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok((files, jwk))
}

/// Public format files a version must not hold: those the manifest no longer lists.
pub(super) fn unwanted_format_files(output: &FileOutput) -> impl Iterator<Item = &'static str> {
    PublicFormat::ALL
        .into_iter()
        .filter(|f| !output.public_formats.contains(f))
        .map(PublicFormat::file_name)
}

/// Reads a version's public key as DER, from the output's format or the other one.
pub(super) fn read_public_der(version: &DirHandle, format: Format) -> Result<Vec<u8>, StoreError> {
    let read = |format: Format| {
        let name = public_name(format);
        version
            .read_file(&name)
            .and_then(|bytes| decode_public(format, &bytes, &version.child_path(&name)))
    };
    read(format).or_else(|err| read(other_format(format)).map_err(|_| err))
}

/// The JWKs of the versions `next`, `current` and `previous` point at, in that order. Links
/// that point nowhere usable are left out (observation reports them).
pub(super) fn linked_jwks(
    dir: &DirHandle,
    format: Format,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let links =
        [NEXT, CURRENT, PREVIOUS].map(|link| read_link_generation(dir, link).ok().flatten());
    jwks_of(dir, format, links, &[])
}

/// A linked version's public key as observation read and verified it against its meta, and
/// its JWK when one was made from it.
pub(super) struct Verified {
    pub(super) generation: u32,
    pub(super) der: Vec<u8>,
    pub(super) jwk: Option<serde_json::Value>,
}

/// The JWKs of the generations `links` name (next, current, previous; none or repeated ones
/// left out), each taken from `known` (already made, or made from the public key already read
/// and verified against its meta) or made from the public key read from its version.
pub(super) fn jwks_of(
    dir: &DirHandle,
    format: Format,
    links: [Option<u32>; 3],
    known: &[Verified],
) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut keys = Vec::with_capacity(3);
    let mut seen = Vec::with_capacity(3);
    for generation in links.into_iter().flatten() {
        if seen.contains(&generation) {
            continue;
        }
        let known = known.iter().find(|k| k.generation == generation);
        if let Some(jwk) = known.and_then(|k| k.jwk.clone()) {
            seen.push(generation);
            keys.push(jwk);
            continue;
        }
        let path = dir.child_path(version_name(generation));
        let der = match known {
            Some(known) => std::borrow::Cow::Borrowed(&known.der),
            // A version observation did not verify (`previous`): its public key is checked
            // against its meta.json, so that a key planted there is never published. It is
            // left out rather than failing the key: a damaged `current` replaced by
            // `rotate --now` becomes `previous`, and that repair must go through.
            None => {
                let Some(version) = dir.open_dir(&version_name(generation))? else {
                    continue;
                };
                let der = read_public_der(&version, format)?;
                let meta = read_version_meta(&version, generation)?;
                if crate::store::public_key_sha256(&der) != meta.public_key_sha256 {
                    tracing::warn!(version = %path.display(),
                        "its public key does not match its {META} (publicKeySha256): left out of jwks.json");
                    continue;
                }
                std::borrow::Cow::Owned(der)
            }
        };
        seen.push(generation);
        let jwk = public_formats::jwk(&der).map_err(|message| StoreError::Corrupt {
            path: path.display().to_string(),
            message: format!("its public key has no JWK form: {message}"),
        })?;
        keys.push(jwk);
    }
    Ok(keys)
}

/// What `jwks.json` must hold now: [`linked_jwks`] as a set; `None` when the output does not
/// ask for `jwk`.
pub(super) fn expected_jwks(
    dir: &DirHandle,
    output: &FileOutput,
) -> Result<Option<Vec<u8>>, StoreError> {
    if !output.public_formats.contains(&PublicFormat::Jwk) {
        return Ok(None);
    }
    Ok(Some(public_formats::jwks(&linked_jwks(
        dir,
        output.format,
    )?)))
}

/// Makes `jwks.json` what the links say (or removes it when the output has no `jwk`):
/// written under a temporary name and renamed over the old one, so a verifier reads the old
/// set or the new one. The file and the directory go to `sync`.
pub(super) fn write_jwks(
    dir: &DirHandle,
    output: &FileOutput,
    sync: &mut SyncSet,
) -> Result<(), StoreError> {
    let Some(bytes) = expected_jwks(dir, output)? else {
        if dir.stat(JWKS).is_some() {
            dir.remove_file(JWKS)?;
            sync.add_dir(dir)?;
        }
        return Ok(());
    };
    replace_jwks(dir, output, &bytes, sync)
}

/// Before `current` moves to `generation`: puts its key first in `jwks.json` (beside the keys
/// already there), so that verifiers trust it before any signer reading `current` uses it,
/// also without `publishAhead`. [`write_jwks`] after the move gives the final set.
pub(super) fn trust_before_current(
    dir: &DirHandle,
    output: &FileOutput,
    generation: u32,
    sync: &mut SyncSet,
) -> Result<(), StoreError> {
    if !output.public_formats.contains(&PublicFormat::Jwk) {
        return Ok(());
    }
    let mut keys = linked_jwks(dir, output.format)?;
    let version = open_version(dir, generation)?;
    let der = read_public_der(&version, output.format)?;
    let jwk = public_formats::jwk(&der).map_err(|message| StoreError::Corrupt {
        path: version.path().display().to_string(),
        message: format!("its public key has no JWK form: {message}"),
    })?;
    if !keys.contains(&jwk) {
        keys.insert(0, jwk);
    }
    replace_jwks(dir, output, &public_formats::jwks(&keys), sync)
}

/// Replaces `jwks.json` with `bytes` ([`DirHandle::replace_file`]); nothing when it holds
/// them. The directory goes to `sync`.
fn replace_jwks(
    dir: &DirHandle,
    output: &FileOutput,
    bytes: &[u8],
    sync: &mut SyncSet,
) -> Result<(), StoreError> {
    if dir.read_file(JWKS).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    dir.replace_file(JWKS, bytes, output.mode, ownership(output)?)?;
    sync.add_dir(dir)
}

/// Drift of `jwks.json`: missing, out of date, unwanted, or with the wrong mode. `links` are
/// the generations observation found `next`, `current` and `previous` at, `known` the public
/// keys it already read and verified (not read again). Returns what those links hold, when
/// the output asks for `jwk` and their JWKs could be made. With `fingerprints`, a set whose
/// stamp (its stat, and what its keys are made from) is the one recorded is neither read nor
/// made (nor are the JWKs); one read and found right is recorded.
pub(super) fn jwks_drift(
    dir: &DirHandle,
    output: &FileOutput,
    links: [Option<u32>; 3],
    known: &[Verified],
    listed: &super::listed::Listed,
    fingerprints: Option<&Fingerprints>,
    drift: &mut Vec<String>,
) -> Option<LinkedJwks> {
    if !output.public_formats.contains(&PublicFormat::Jwk) {
        if listed.open(JWKS).0.is_some() {
            drift.push(format!("{JWKS} should not be there"));
        }
        return None;
    }
    let stamp = fingerprints.and_then(|_| linked_stamp(dir, output, links, known));
    if let (Some(f), Some(linked)) = (fingerprints, &stamp)
        && listed.has(JWKS)
        && let Some(stat) = dir.stat(JWKS)
        && jwks_stamp(dir, linked, Some(&stat)).is_some_and(|s| f.vouches(&s))
    {
        if stat.st_mode & 0o7777 != output.mode {
            drift.push(format!(
                "{JWKS} has mode {:04o}, want {:04o}",
                stat.st_mode & 0o7777,
                output.mode
            ));
        }
        return Some(LinkedJwks {
            keys: None,
            links,
            verified: known
                .iter()
                .map(|k| (k.generation, k.der.clone()))
                .collect(),
            stamp,
        });
    }
    let keys = match jwks_of(dir, output.format, links, known) {
        Ok(keys) => keys,
        Err(err) => {
            drift.push(format!("{JWKS} cannot be made: {err}"));
            return None;
        }
    };
    let bytes = public_formats::jwks(&keys);
    // Its pages written out before it is stat'ed and read (see `settle`).
    let settled = fingerprints.is_some_and(|_| crate::fingerprints::settle(dir, JWKS));
    let (stat, file) = listed.open(JWKS);
    let mut right = false;
    match &stat {
        None => drift.push(format!("{JWKS} is missing")),
        Some(stat) => {
            if stat.st_mode & 0o7777 != output.mode {
                drift.push(format!(
                    "{JWKS} has mode {:04o}, want {:04o}",
                    stat.st_mode & 0o7777,
                    output.mode
                ));
            }
            // `stat` was taken before the read (the open file's `fstat`, or `lstat`).
            let actual = match file {
                Some(file) => file.read(MAX_READ_BYTES),
                None => dir.read_file(JWKS),
            };
            right = actual.as_ref().ok() == Some(&bytes);
            if !right {
                drift.push(format!("{JWKS} does not hold next, current and previous"));
            }
        }
    }
    if let Some(f) = fingerprints {
        match stamp
            .as_ref()
            .and_then(|l| jwks_stamp(dir, l, stat.as_ref()))
        {
            Some(set) if right && settled => f.record(&set),
            _ => f.forget(JWKS_STAMP, dir.path()),
        }
    }
    Some(LinkedJwks {
        keys: Some(keys),
        links,
        verified: Vec::new(),
        stamp,
    })
}

/// The kind of a key's `jwks.json` stamp.
const JWKS_STAMP: &str = "jwks";

/// The stamp of what the JWKs of `links` are made from (see [`jwks_of`]): the output's format,
/// the links, the verified public key of each linked version in `known`, and the stat of the
/// public key files of the others (`previous`); `None` when `next` or `current` is not in
/// `known`, or a file cannot be stamped.
fn linked_stamp(
    dir: &DirHandle,
    output: &FileOutput,
    links: [Option<u32>; 3],
    known: &[Verified],
) -> Option<Stamp> {
    let mut stamper = Stamper::new("linked", dir.path());
    stamper.input(public_name(output.format).as_bytes());
    for (at, link) in links.iter().enumerate() {
        stamper.input(&link.map_or([0xff; 5], |g| {
            let mut bytes = [0; 5];
            bytes[..4].copy_from_slice(&g.to_le_bytes());
            bytes
        }));
        let Some(generation) = link else { continue };
        match known.iter().find(|k| k.generation == *generation) {
            Some(known) => {
                stamper.input(&known.der);
            }
            // `next` and `current` are read and verified by observation when they are usable.
            None if at < 2 => return None,
            None => {
                let version = version_name(*generation);
                stamper
                    .file(dir.stat(format!("{version}/{META}")).as_ref())
                    .file(
                        dir.stat(format!("{version}/{}", public_name(output.format)))
                            .as_ref(),
                    )
                    .file_or_none(
                        dir.stat(format!(
                            "{version}/{}",
                            public_name(other_format(output.format))
                        ))
                        .as_ref(),
                    );
            }
        }
    }
    stamper.finish()
}

/// The stamp of `jwks.json` holding the JWKs `linked` stamps, `stat` being its own.
fn jwks_stamp(dir: &DirHandle, linked: &Stamp, stat: Option<&FileStat>) -> Option<Stamp> {
    let mut stamper = Stamper::new(JWKS_STAMP, dir.path());
    stamper.stamp(linked).file(stat);
    stamper.finish()
}

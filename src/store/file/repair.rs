//! Repairing a key directory in place: modes, owners, formats, plaintext, damaged files,
//! the previous link.

use super::observe::{expected_files, unwanted_files};
use super::*;

/// Generations of kept versions (current, next, previous) that lack the plaintext private key.
pub fn missing_plaintext(output: &FileOutput) -> Result<Vec<u32>, StoreError> {
    let dir = existing_key_dir(output)?;
    let mut missing = Vec::new();
    for link in [CURRENT, NEXT, PREVIOUS] {
        if let Some(generation) = read_link_generation(&dir, link)? {
            let present = dir
                .open_dir(&version_name(generation))?
                .is_some_and(|v| v.stat(private_name(output.format)).is_some());
            if !present && !missing.contains(&generation) {
                missing.push(generation);
            }
        }
    }
    Ok(missing)
}

/// Makes a linked version's public format files what the manifest asks: missing or altered
/// ones rewritten from its public key, unlisted ones removed.
fn public_format_files(
    version: &DirHandle,
    output: &FileOutput,
    generation: u32,
    owner: Owner,
) -> Result<(), StoreError> {
    if !output.public_formats.is_empty() {
        let meta = read_version_meta(version, generation)?;
        // Never derived from a public key its meta.json does not vouch for: a damaged
        // `previous` (a damaged current replaced by `rotate --now`) keeps what it has, and
        // is not published (observation reports a damaged `current` or `next`).
        let der = match public::read_public_der(version, output.format) {
            Ok(der) if crate::store::public_key_sha256(&der) == meta.public_key_sha256 => der,
            _ => {
                tracing::warn!(version = %version.path().display(),
                    "its public key is unreadable or does not match its {META}: its public formats are not made");
                return Ok(());
            }
        };
        for (name, bytes) in public::format_files(output, &meta, &der)? {
            if version.read_file(name).ok().as_ref() != Some(&bytes) {
                version.replace_file(name, &bytes, output.mode, owner)?;
            } else {
                version.set_file_mode_and_owner(name, output.mode, owner)?;
            }
        }
    }
    for name in public::unwanted_format_files(output) {
        version.remove_file(name)?;
    }
    Ok(())
}

/// Makes a linked version's private format files what the manifest asks: missing or altered
/// ones derived again from its plaintext key (the one just decrypted, or its private.pem).
fn private_format_files(
    version: &DirHandle,
    output: &FileOutput,
    generation: u32,
    input: &RepairInput<'_>,
    owner: Owner,
) -> Result<(), StoreError> {
    let meta = read_version_meta(version, generation)?;
    let key = input.plaintext.get(&generation);
    // Without a readable plaintext key there is nothing to derive from; observation reports it.
    let Some(files) = private::wanted_files(version, output, &meta, key) else {
        return Ok(());
    };
    for (name, bytes) in files {
        let actual = version.read_file(name).ok().map(zeroize::Zeroizing::new);
        if actual.as_deref() != Some(&*bytes) {
            version.replace_file(name, &bytes, PLAINTEXT_MODE, owner)?;
        } else {
            version.set_file_mode_and_owner(name, PLAINTEXT_MODE, owner)?;
        }
    }
    Ok(())
}

/// Repairs an output in place: leftovers removed, modes and owners set, files of the right
/// format and plaintext presence, damaged files rewritten from intact copies, `previous` as
/// the plan says.
pub fn repair(output: &FileOutput, input: &RepairInput<'_>) -> Result<(), StoreError> {
    let owner = ownership(output)?;
    let dir = existing_key_dir(output)?;
    for raw in dir.names()? {
        let name = raw.to_string_lossy();
        if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
            dir.remove_tree(&raw)?;
        }
    }
    dir.set_mode_and_owner(dir_mode(output.mode), dir_owner(owner))?;
    let mut linked = Vec::new();
    for link in [CURRENT, NEXT, PREVIOUS] {
        match read_link_generation(&dir, link) {
            Ok(Some(g)) if dir.is_dir(version_name(g)) => linked.push(g),
            Ok(None) => {}
            // An unusable `current` is the operator's to fix (see `plan::unplannable`): which
            // version was in use is not known.
            _ if link == CURRENT => {}
            // Other links pointing nowhere usable are removed; the plan relinks what it must.
            _ => set_link(&dir, link, None)?,
        }
    }
    for &generation in &linked {
        let version = open_version(&dir, generation)?;
        if let Some(intact) = input
            .intact
            .iter()
            .find(|v| v.meta.generation == generation)
        {
            for (name, bytes, mode) in version_files(output, intact)? {
                version.replace_file(&name, &bytes, mode, owner)?;
            }
        }
        let public = public_name(output.format);
        if version.stat(&public).is_none() {
            let stored = read_version(output, generation)?;
            version.replace_file(
                &public,
                &encode_public(output.format, &stored.public_key_der),
                output.mode,
                owner,
            )?;
        }
        public_format_files(&version, output, generation, owner)?;
        let private = private_name(output.format);
        if let (true, None, Some(key)) = (
            input.include_plaintext,
            version.stat(&private),
            input.plaintext.get(&generation),
        ) {
            version.replace_file(
                &private,
                &encode_private(output.format, key),
                PLAINTEXT_MODE,
                owner,
            )?;
        }
        if input.include_plaintext && !output.private_formats.is_empty() {
            private_format_files(&version, output, generation, input, owner)?;
        }
        for name in unwanted_files(output, input.include_plaintext)
            .into_iter()
            .chain([public_name(other_format(output.format))])
        {
            version.remove_file(&name)?;
        }
        version.set_mode_and_owner(dir_mode(output.mode), dir_owner(owner))?;
        for (name, mode) in expected_files(output, input.include_plaintext) {
            if version.stat(&name).is_some() {
                version.set_file_mode_and_owner(&name, mode, owner)?;
            }
        }
        version.sync()?;
    }
    for generation in versions_present(&dir)?
        .into_iter()
        .filter(|g| !linked.contains(g))
    {
        let Some(version) = dir.open_dir(&version_name(generation))? else {
            continue;
        };
        for name in unwanted_files(output, input.include_plaintext) {
            version.remove_file(&name)?;
        }
        version.sync()?;
    }
    if read_link_generation(&dir, CURRENT)?.is_some() {
        let wanted = input.previous.filter(|&g| dir.is_dir(version_name(g)));
        if read_link_generation(&dir, PREVIOUS)? != wanted {
            set_link(&dir, PREVIOUS, wanted)?;
        }
    }
    let mut sync = SyncSet::default();
    public::write_jwks(&dir, output, &mut sync)?;
    if dir.stat(public::JWKS).is_some() {
        dir.set_file_mode_and_owner(public::JWKS, output.mode, owner)?;
    }
    sync.flush()?;
    dir.sync()
}

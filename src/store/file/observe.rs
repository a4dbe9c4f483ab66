//! Observing a key directory: links, versions, drift from the manifest, damaged files.

use super::listed::Listed;
use super::*;
use crate::fingerprints::Fingerprints;
use crate::store::dir::{EntryType, MAX_READ_BYTES, OpenFile};

/// Observes what the directory holds. A missing directory is an empty output.
pub fn observe(
    output: &FileOutput,
    key_name: &str,
    include_plaintext: bool,
) -> Result<ObservedOutput, StoreError> {
    observe_in(output, key_name, include_plaintext, None, None)
}

/// [`observe`], the key directory's parent taken from `parents` (one pass over many keys);
/// derived public files whose stat `fingerprints` vouches for are not read.
pub fn observe_in(
    output: &FileOutput,
    key_name: &str,
    include_plaintext: bool,
    parents: Option<&Parents>,
    fingerprints: Option<&Fingerprints>,
) -> Result<ObservedOutput, StoreError> {
    let mut observed = ObservedOutput {
        prunable: true,
        ..Default::default()
    };
    let Some(dir) = open_key_dir_in(output, parents)? else {
        return Ok(observed);
    };
    let mut links = Vec::with_capacity(3);
    // Public keys of linked versions read and verified here, for `jwks.json`'s check.
    let mut verified: Vec<public::Verified> = Vec::with_capacity(2);
    // What next, current and previous point at (for `jwks.json`'s check).
    let mut linked = [None; 3];
    let listing = dir.entries()?;
    for entry in &listing.0 {
        let raw = &entry.name;
        let name = raw.to_string_lossy();
        if let Some(generation) = parse_version_name(&name) {
            let is_dir = match entry.kind {
                EntryType::Dir => true,
                EntryType::Regular | EntryType::Other => false,
                EntryType::Unknown => dir.is_dir(raw),
            };
            if is_dir {
                observed.versions.push(generation);
            } else {
                // Not keyprov's: never linked, never deleted, and the key waits for it to go.
                return Err(StoreError::Unsafe {
                    path: dir.child_path(raw).display().to_string(),
                    message: "is named like a version but is not a directory: keyprov did not \
                              create it, and neither links nor deletes it. Move it away"
                        .into(),
                });
            }
        } else if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
            observed
                .drift
                .push(format!("leftover {name} from an interrupted write"));
        } else if let Some(link) = [CURRENT, NEXT, PREVIOUS].into_iter().find(|l| *l == name) {
            // Only links that exist are read: a converged key costs few system calls.
            links.push(link);
        }
    }
    observed.versions.sort_unstable();
    let owner = ownership(output).ok();
    for link in [CURRENT, NEXT, PREVIOUS] {
        if !links.contains(&link) {
            continue;
        }
        let generation = match read_link_generation(&dir, link) {
            Ok(Some(generation)) => generation,
            Ok(None) => continue,
            Err(err) => {
                observed.drift.push(format!("{link} is unusable ({err})"));
                continue;
            }
        };
        if !observed.versions.contains(&generation) {
            observed.drift.push(format!(
                "{link} points at missing {}",
                version_name(generation)
            ));
            continue;
        }
        linked[[NEXT, CURRENT, PREVIOUS]
            .iter()
            .position(|l| *l == link)
            .expect("one of the three links")] = Some(generation);
        if link == PREVIOUS {
            observed.previous = Some(generation);
            continue;
        }
        let checked = open_version(&dir, generation).and_then(|version| {
            let meta = read_version_meta(&version, generation)?;
            let (mut problems, known) = check_version_files(
                &version,
                output,
                &meta,
                include_plaintext,
                owner,
                fingerprints,
                &mut observed.drift,
            );
            verified.extend(known);
            if meta.name != key_name {
                problems.insert(
                    0,
                    format!(
                        "{}/{META} belongs to key {:?}, not to {key_name:?}",
                        version_name(generation),
                        meta.name
                    ),
                );
            }
            Ok((meta, problems))
        });
        let (meta, problems) = match checked {
            Ok(checked) => checked,
            Err(err) => {
                observed.damaged.push(Damage {
                    generation,
                    problems: vec![err.to_string()],
                });
                continue;
            }
        };
        if !problems.is_empty() {
            observed.damaged.push(Damage {
                generation,
                problems,
            });
        }
        let version = meta.observed().map_err(|message| StoreError::Corrupt {
            path: dir
                .child_path(version_name(generation))
                .join(META)
                .display()
                .to_string(),
            message,
        })?;
        if link == CURRENT {
            let mut version = version;
            // Activated before its planned time (`rotate --now`): the link was made then, and
            // the next rotation counts from it.
            if let Some(linked_at) = dir.stat(CURRENT).map(|stat| {
                std::time::UNIX_EPOCH
                    + std::time::Duration::new(
                        stat.st_mtime.max(0) as u64,
                        stat.st_mtime_nsec.clamp(0, 999_999_999) as u32,
                    )
            }) && linked_at < version.activates_at
                && linked_at >= version.created_at
            {
                version.activates_at = linked_at;
            }
            observed.current = Some(version);
        } else {
            observed.next = Some(version);
        }
    }
    observed.linked_jwks = public::jwks_drift(
        &dir,
        output,
        linked,
        &verified,
        &Listed {
            dir: &dir,
            listing: Some(listing),
        },
        fingerprints,
        &mut observed.drift,
    );
    // A plaintext key must not outlive `includePlaintext: false` in any version kept.
    let linked: Vec<u32> = [
        observed.current.as_ref().map(|c| c.generation),
        observed.next.as_ref().map(|n| n.generation),
    ]
    .into_iter()
    .flatten()
    .collect();
    for &generation in observed.versions.iter().filter(|g| !linked.contains(g)) {
        for name in unwanted_files(output, include_plaintext) {
            let path = format!("{}/{name}", version_name(generation));
            if dir.stat(&path).is_some() {
                observed.drift.push(format!("{path} should not be there"));
            }
        }
    }
    Ok(observed)
}

/// The files a version must hold for `output`, with their modes.
pub(super) fn expected_files(output: &FileOutput, include_plaintext: bool) -> Vec<(String, u32)> {
    let mut files = vec![
        (public_name(output.format), output.mode),
        (CIPHERTEXT.to_string(), output.mode),
        (META.to_string(), output.mode),
    ];
    if include_plaintext {
        files.push((private_name(output.format), PLAINTEXT_MODE));
    }
    files
}

/// Private key files that must not be there: the other format's, private formats not listed,
/// and any plaintext when the manifest does not ask for it (a stale plaintext key is a leak).
pub(super) fn unwanted_files(output: &FileOutput, include_plaintext: bool) -> Vec<String> {
    [Format::Pem, Format::Der]
        .into_iter()
        .filter(|&format| !include_plaintext || format != output.format)
        .map(private_name)
        .chain(private::unwanted_format_files(output, include_plaintext).map(String::from))
        .collect()
}

fn is_regular(stat: &FileStat) -> bool {
    use nix::sys::stat::SFlag;
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Checks what a linked version's readers rely on: the public key parses and matches
/// `publicKeySha256`, the ciphertext is there (and matches its recorded hash), the plaintext
/// key parses. Returns those problems (damage, repaired from another output) and the public
/// key when it matched its meta (with its JWK, when one was made from it); modes, owners and
/// files of the wrong format go to `drift` (repaired in place).
fn check_version_files(
    version: &DirHandle,
    output: &FileOutput,
    meta: &VersionMeta,
    include_plaintext: bool,
    owner: Option<Owner>,
    fingerprints: Option<&Fingerprints>,
    drift: &mut Vec<String>,
) -> (Vec<String>, Option<public::Verified>) {
    let vname = version_name(meta.generation);
    let mut problems = Vec::new();
    let mut present = Vec::new();
    // One listing says what is there (and what must not be); files it lists as regular are
    // opened once, `fstat`ed and read through that descriptor. Anything else, or a version
    // that cannot be listed, is looked at with `lstat` as before.
    let files = Listed::list(version);
    let mut opened: Vec<(String, OpenFile)> = Vec::new();
    for (name, mode) in expected_files(output, include_plaintext) {
        // meta.json was just read (so it is there, and a regular file), and it shares its
        // mode with public.*: a mode change shows there.
        if name == META {
            continue;
        }
        let (stat, file) = files.open(&name);
        let Some(stat) = stat else {
            let other_public = public_name(other_format(output.format));
            if name == public_name(output.format) && files.has(&other_public) {
                // A format change: rewritten from the other format's file.
                drift.push(format!("{vname}/{name} is missing"));
            } else {
                problems.push(format!("{vname}/{name} is missing"));
            }
            continue;
        };
        if !is_regular(&stat) {
            problems.push(format!("{vname}/{name} is not a regular file"));
            continue;
        }
        present.push(name.clone());
        if let Some(file) = file {
            opened.push((name.clone(), file));
        }
        let actual = stat.st_mode & 0o7777;
        if actual != mode {
            drift.push(format!(
                "{vname}/{name} has mode {actual:04o}, want {mode:04o}"
            ));
        }
        if let Some((uid, gid)) = owner
            && (uid.is_some_and(|u| u.as_raw() != stat.st_uid)
                || gid.is_some_and(|g| g.as_raw() != stat.st_gid))
        {
            drift.push(format!(
                "{vname}/{name} has owner {}:{}",
                stat.st_uid, stat.st_gid
            ));
        }
    }
    let public = public_name(output.format);
    // The verified public key, reused for the derived formats below.
    let mut public_der = None;
    if present.contains(&public) {
        match read_opened(version, &mut opened, &public)
            .and_then(|bytes| decode_public(output.format, &bytes, &version.child_path(&public)))
        {
            Ok(der) if public_key_sha256(&der) == meta.public_key_sha256 => public_der = Some(der),
            Ok(_) => problems.push(format!(
                "{vname}/{public} does not match publicKeySha256 of meta.json"
            )),
            Err(err) => problems.push(format!("{vname}/{public}: {err}")),
        }
    }
    if present.iter().any(|n| n == CIPHERTEXT) {
        match read_opened(version, &mut opened, CIPHERTEXT) {
            Ok(bytes) if bytes.is_empty() => {
                problems.push(format!("{vname}/{CIPHERTEXT} is empty"))
            }
            Ok(bytes) => {
                if let Some(expected) = &meta.private_key_ciphertext_sha256
                    && public_key_sha256(&bytes) != *expected
                {
                    problems.push(format!(
                        "{vname}/{CIPHERTEXT} does not match privateKeyCiphertextSha256 of meta.json"
                    ));
                }
            }
            Err(err) => problems.push(err.to_string()),
        }
    }
    let private = private_name(output.format);
    if include_plaintext && present.contains(&private) {
        let parsed = read_opened(version, &mut opened, &private)
            .map(zeroize::Zeroizing::new)
            .map(|bytes| match output.format {
                Format::Pem => pem::parse(&bytes).is_ok_and(|p| p.tag() == "PRIVATE KEY"),
                Format::Der => !bytes.is_empty(),
            });
        match parsed {
            Ok(true) => {}
            Ok(false) => problems.push(format!("{vname}/{private} is not a private key")),
            Err(err) => problems.push(err.to_string()),
        }
    }
    for name in unwanted_files(output, include_plaintext) {
        if files.has(&name) {
            drift.push(format!("{vname}/{name} should not be there"));
        }
    }
    let jwk = check_public_format_files(
        &files,
        output,
        meta,
        public_der.as_deref(),
        fingerprints,
        drift,
    );
    if include_plaintext {
        check_private_format_files(&files, output, meta, drift);
    }
    let verified = public_der.map(|der| public::Verified {
        generation: meta.generation,
        der,
        jwk,
    });
    (problems, verified)
}

/// Reads `name` through its descriptor in `opened` (taken out), or opens it again.
fn read_opened(
    version: &DirHandle,
    opened: &mut Vec<(String, OpenFile)>,
    name: &str,
) -> Result<Vec<u8>, StoreError> {
    match opened.iter().position(|(n, _)| n == name) {
        Some(at) => opened.swap_remove(at).1.read(MAX_READ_BYTES),
        None => version.read_file(name),
    }
}

/// Drift of a linked version's private format files (derived from its plaintext key, so
/// rewritten in place): missing, altered, or of another mode than 0600. A plaintext key that
/// cannot be read is reported above, as damage.
fn check_private_format_files(
    files: &Listed,
    output: &FileOutput,
    meta: &VersionMeta,
    drift: &mut Vec<String>,
) {
    let vname = version_name(meta.generation);
    let Some(wanted) = private::wanted_files(files.dir, output, meta, None) else {
        return;
    };
    for (name, bytes) in wanted {
        match files
            .read_with_mode(name)
            .map(|(actual, mode)| (zeroize::Zeroizing::new(actual), mode))
        {
            Ok((actual, mode)) if *actual == *bytes => {
                if let Some(mode) = mode.filter(|&m| m != PLAINTEXT_MODE) {
                    drift.push(format!(
                        "{vname}/{name} has mode {mode:04o}, want {PLAINTEXT_MODE:04o}"
                    ));
                }
            }
            Ok(_) => drift.push(format!("{vname}/{name} does not match its key pair")),
            Err(_) => drift.push(format!("{vname}/{name} is missing")),
        }
    }
}

/// Drift of a linked version's public format files (derived from its public key, so
/// rewritten in place): missing, altered, or no longer listed. `public_der` is the public key
/// already read and verified, if it was; the JWK made from it is returned (for `jwks.json`).
/// With `fingerprints`, the files of a verified version whose stamp (their stats, and what
/// they are made from) is the one recorded are neither read nor made (no JWK is returned);
/// files read and found right are recorded.
fn check_public_format_files(
    files: &Listed,
    output: &FileOutput,
    meta: &VersionMeta,
    public_der: Option<&[u8]>,
    fingerprints: Option<&Fingerprints>,
    drift: &mut Vec<String>,
) -> Option<serde_json::Value> {
    let vname = version_name(meta.generation);
    let mut verified_jwk = None;
    // Only a version whose public key matched its meta is stamped.
    let fingerprints = fingerprints.filter(|_| public_der.is_some());
    let mode_drift = |name: &str, mode: u32, drift: &mut Vec<String>| {
        if mode != output.mode {
            drift.push(format!(
                "{vname}/{name} has mode {mode:04o}, want {:04o}",
                output.mode
            ));
        }
    };
    let vouched = fingerprints.is_some_and(|f| {
        let stats: Vec<Option<FileStat>> = output
            .public_formats
            .iter()
            .map(|format| {
                let name = format.file_name();
                files.has(name).then(|| files.dir.stat(name)).flatten()
            })
            .collect();
        let vouched = !stats.is_empty()
            && version_stamp(files.dir, meta, output, &stats).is_some_and(|s| f.vouches(&s));
        if vouched {
            for (format, stat) in output.public_formats.iter().zip(stats.iter().flatten()) {
                mode_drift(format.file_name(), stat.st_mode & 0o7777, drift);
            }
        }
        vouched
    });
    if !output.public_formats.is_empty() && !vouched {
        let wanted = match public_der {
            Some(der) => public::format_files_and_jwk(output, meta, der).map(|(wanted, jwk)| {
                verified_jwk = jwk;
                wanted
            }),
            None => public::read_public_der(files.dir, output.format)
                .and_then(|der| public::format_files(output, meta, &der)),
        };
        // An unreadable public key is reported as damage.
        if let Ok(wanted) = wanted {
            // The stats of the files found right, taken before they were read.
            let mut right = Vec::with_capacity(wanted.len());
            // Their pages written out before they are stat'ed and read (see `settle`).
            let mut settled = true;
            for (name, bytes) in wanted {
                if fingerprints.is_some() {
                    settled &= crate::fingerprints::settle(files.dir, name);
                }
                match files.read_with_stat(name) {
                    Ok((actual, stat)) if actual == bytes => {
                        if let Some(stat) = &stat {
                            mode_drift(name, stat.st_mode & 0o7777, drift);
                        }
                        right.push(stat);
                    }
                    Ok(_) => drift.push(format!("{vname}/{name} does not match its public key")),
                    Err(_) => drift.push(format!("{vname}/{name} is missing")),
                }
            }
            if let Some(f) = fingerprints {
                let all_right = right.len() == output.public_formats.len();
                match version_stamp(files.dir, meta, output, &right) {
                    Some(stamp) if all_right && settled => f.record(&stamp),
                    _ => f.forget(VERSION_STAMP, files.dir.path()),
                }
            }
        }
    }
    for name in public::unwanted_format_files(output) {
        if files.has(name) {
            drift.push(format!("{vname}/{name} should not be there"));
        }
    }
    verified_jwk
}

/// The kind of a version's stamp.
const VERSION_STAMP: &str = "version";

/// The stamp of a version's public format files (`stats`, in the order of the output's
/// `publicFormats`) holding what its verified public key makes: their name depends on the
/// formats, their bytes on the key (`publicKeySha256`), the key's name and the generation.
fn version_stamp(
    version: &DirHandle,
    meta: &VersionMeta,
    output: &FileOutput,
    stats: &[Option<FileStat>],
) -> Option<crate::fingerprints::Stamp> {
    let mut stamper = crate::fingerprints::Stamper::new(VERSION_STAMP, version.path());
    stamper
        .input(meta.name.as_bytes())
        .input(&meta.generation.to_le_bytes())
        .input(meta.public_key_sha256.as_bytes());
    for (format, stat) in output.public_formats.iter().zip(stats) {
        stamper
            .input(format.as_str().as_bytes())
            .file(stat.as_ref());
    }
    stamper.finish()
}

//! The JWK Sets the daemon serves over HTTP (`jwks[].serve`), on the metrics endpoint's
//! bounded server: the bytes of each set's file as of the last reconcile, a strong `ETag` (of
//! those bytes), `304 Not Modified` on a matching `If-None-Match`, and a `Cache-Control:
//! max-age` that never reaches past the next scheduled rotation or activation (so a cache
//! cannot hide a published key from a verifier), at most [`MAX_AGE`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;

use crate::jwks_aggregate::JwksAggregate;

/// The longest a client may cache a set: a key published by hand (`keyprov rotate`) or by a
/// manifest change, which no schedule foresees, reaches verifiers within this.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// `Content-Type` of a JWK Set (RFC 7517 §8.5.1).
pub const CONTENT_TYPE: &str = "application/jwk-set+json";

/// One served set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    /// The file's bytes; `None` while it has not been written yet.
    bytes: Option<Bytes>,
    etag: String,
}

#[derive(Debug, Default)]
struct Snapshot {
    sets: BTreeMap<String, Served>,
    /// The earliest scheduled rotation or activation of the last reconcile, on the monotonic
    /// clock (requests then never read the wall clock).
    deadline: Option<Instant>,
}

static SERVED: Mutex<Snapshot> = Mutex::new(Snapshot {
    sets: BTreeMap::new(),
    deadline: None,
});

/// Refuses a `serve` path that is not a plain absolute URL path (or is `/metrics`).
pub fn check_serve_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} must start with / (like /.well-known/jwks.json)"
        ));
    }
    if path.len() > 256 {
        return Err(format!("{path:?} is longer than 256 characters"));
    }
    if let Some(bad) = path
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%'))
    {
        return Err(format!(
            "{path:?} holds {bad:?}: a plain URL path of printable ASCII, without ? # or %"
        ));
    }
    if path == "/metrics" {
        return Err("\"/metrics\" is the metrics endpoint's".into());
    }
    Ok(())
}

/// The strong entity tag of `bytes`: `"` base64url(SHA-256) `"`.
pub fn etag(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    format!(
        "\"{}\"",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    )
}

/// Re-reads the served sets of `aggregates` from their files after a reconcile; `next_event`
/// is its earliest scheduled rotation or activation. A set that cannot be read keeps what was
/// served (logged); one that does not exist yet is answered with 503.
pub fn refresh(aggregates: &[JwksAggregate], next_event: Option<SystemTime>) {
    let mut sets = BTreeMap::new();
    let old = SERVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sets
        .clone();
    for aggregate in aggregates {
        let Some(path) = &aggregate.serve else {
            continue;
        };
        let served = match crate::jwks_aggregate::read(aggregate) {
            Ok(Some(bytes)) => Served {
                etag: etag(&bytes),
                bytes: Some(Bytes::from(bytes)),
            },
            Ok(None) => Served {
                bytes: None,
                etag: String::new(),
            },
            Err(err) => {
                tracing::warn!(path = %aggregate.path().display(),
                    "cannot read the JWK Set to serve it at {path}: {err}; serving what was read before");
                match old.get(path) {
                    Some(served) => served.clone(),
                    None => continue,
                }
            }
        };
        sets.insert(path.clone(), served);
    }
    let until = next_event.map(|at| at.duration_since(crate::clock::now()).unwrap_or_default());
    let mut snapshot = SERVED.lock().unwrap_or_else(PoisonError::into_inner);
    snapshot.sets = sets;
    snapshot.deadline = until.map(|until| Instant::now() + until);
}

/// An HTTP answer for a served set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200, 304, 405 or 503.
    pub status: u16,
    /// Header name and value pairs.
    pub headers: Vec<(&'static str, String)>,
    /// The body (empty for 304).
    pub body: Bytes,
}

/// `max-age` at `now`: the whole seconds until `deadline`, at most [`MAX_AGE`].
pub fn max_age(now: Instant, deadline: Option<Instant>) -> u64 {
    let until = deadline.map_or(MAX_AGE, |at| at.saturating_duration_since(now));
    until.min(MAX_AGE).as_secs()
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The answer to `method path` with `if_none_match`; `None` when `path` is not served.
pub fn respond(method: &str, path: &str, if_none_match: Option<&str>) -> Option<Reply> {
    let now = Instant::now();
    let snapshot = SERVED.lock().unwrap_or_else(PoisonError::into_inner);
    let served = snapshot.sets.get(path)?;
    let text = |status: u16, body: &str| Reply {
        status,
        headers: vec![("content-type", "text/plain; charset=utf-8".into())],
        body: Bytes::from(body.to_string()),
    };
    if method != "GET" && method != "HEAD" {
        let mut reply = text(405, &format!("GET {path}\n"));
        reply.headers.push(("allow", "GET, HEAD".into()));
        return Some(reply);
    }
    let Some(bytes) = &served.bytes else {
        let mut reply = text(503, "the JWK Set has not been written yet\n");
        reply.headers.push(("retry-after", "5".into()));
        return Some(reply);
    };
    let cache = format!("public, max-age={}", max_age(now, snapshot.deadline));
    let mut headers = vec![("etag", served.etag.clone()), ("cache-control", cache)];
    if if_none_match.is_some_and(|h| none_match(h, &served.etag)) {
        return Some(Reply {
            status: 304,
            headers,
            body: Bytes::new(),
        });
    }
    headers.push(("content-type", CONTENT_TYPE.into()));
    Some(Reply {
        status: 200,
        headers,
        body: bytes.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_never_reaches_past_the_next_event() {
        let now = Instant::now();
        assert_eq!(max_age(now, None), 300);
        assert_eq!(max_age(now, Some(now + Duration::from_secs(3600))), 300);
        assert_eq!(max_age(now, Some(now + Duration::from_secs(42))), 42);
        assert_eq!(max_age(now, Some(now + Duration::from_millis(999))), 0);
        assert_eq!(max_age(now + Duration::from_secs(5), Some(now)), 0);
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = etag(b"{\"keys\":[]}");
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 45);
        assert!(none_match(&tag, &tag));
        assert!(none_match(&format!("W/{tag}"), &tag));
        assert!(none_match(&format!("\"x\", {tag}"), &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"x\"", &tag));
        assert!(!none_match("", &tag));
    }

    #[test]
    fn serve_paths_are_plain_absolute_url_paths() {
        assert!(check_serve_path("/.well-known/jwks.json").is_ok());
        for bad in [
            "jwks.json",
            "/a b",
            "/a?b",
            "/a#b",
            "/%2e",
            "/metrics",
            "/\u{e9}",
        ] {
            assert!(check_serve_path(bad).is_err(), "{bad}");
        }
    }
}

//! A `jwks:` aggregate served over HTTP by the daemon (`serve:`, on `metrics.listen`), used as a
//! JWT verifier uses it: Python's joserfc fetches the set and verifies tokens signed with the
//! decrypted private keys, through a staged rotation (before publication, published, activated).
//! The HTTP side: the bytes of the file, a strong ETag, 304 on a matching If-None-Match, a
//! max-age that stops at the next publication, 405 for other methods.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Install;

const PATIENCE: Duration = Duration::from_secs(30);
const PATH: &str = "/.well-known/jwks.json";
const T0: &str = "2030-01-01T00:00:00Z";

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
    address: String,
}

impl Daemon {
    /// Starts the daemon with the clock at `now`; waits for the endpoint.
    fn start(install: &Install, now: &str) -> Daemon {
        let log = install.root().join(format!("daemon-{now}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_keyprov"))
            .args(["run", "--config"])
            .arg(install.config())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("KEYPROV_LOG", "info")
            .env("KEYPROV_TEST_NOW", now)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            log,
            address: String::new(),
        };
        let marker = "serving metrics on http://";
        daemon.wait_until("the endpoint is up", |d| {
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let Some(at) = log.find(marker) else {
                return false;
            };
            let rest = &log[at + marker.len()..];
            d.address = rest[..rest.find("/metrics").unwrap()].to_string();
            true
        });
        daemon
    }

    fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&mut Daemon) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting until {what}\nlog:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Waits until the served set holds `count` keys (the reconcile at start-up has run).
    fn set_with(&mut self, count: usize) -> Response {
        let mut last = None;
        self.wait_until(&format!("the served set holds {count} keys"), |d| {
            let response = request(&d.address, "GET", PATH, &[]);
            let ok = response.status == 200 && kids(&response.body).len() == count;
            last = Some(response);
            ok
        });
        last.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn max_age(&self) -> u64 {
        let cache = self.header("cache-control");
        cache
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .unwrap_or_else(|| panic!("no max-age in {cache:?}"))
            .parse()
            .unwrap()
    }
}

/// One HTTP/1.1 request over plain TCP.
fn request(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status: status.parse().unwrap(),
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn kids(body: &[u8]) -> Vec<String> {
    let set: serde_json::Value = serde_json::from_slice(body).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The private key of generation `generation` of `signer`, decrypted to a PEM file.
fn private_key(install: &Install, generation: u32) -> std::path::PathBuf {
    let out = install.root().join(format!("signer-{generation}.pem"));
    let _ = std::fs::remove_file(&out);
    let run = install.keyprov(&[
        "decrypt",
        "signer",
        "--version",
        &generation.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    out
}

/// joserfc signs a token with each `(private key, kid)` and verifies it against the set
/// fetched from the daemon; returns the kids the set held.
fn verify_through_http(address: &str, signers: &[(&std::path::Path, &str)]) -> Vec<String> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/jwks_http_check.py");
    let url = format!("http://{address}{PATH}");
    let mut args = vec![
        OsStr::new("-W").to_os_string(),
        OsStr::new("ignore").to_os_string(),
        script.into_os_string(),
        url.into(),
    ];
    for (private, kid) in signers {
        args.push(private.as_os_str().to_os_string());
        args.push(OsStr::new(kid).to_os_string());
    }
    let out = common::python_stdout(&args, "jwks_http_check");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let verified: Vec<&str> = report["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        verified,
        signers.iter().map(|(_, kid)| *kid).collect::<Vec<_>>()
    );
    report["kids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn jwts_verify_through_the_served_set_across_a_staged_rotation() {
    let install = Install::new(&format!(
        "metrics: {{listen: \"127.0.0.1:0\"}}\njwks:\n  - path: issuer/jwks.json\n    selector: {{labels: {{team: identity}}}}\n    serve: {PATH}\n"
    ));
    install.manifest(
        "signer.yaml",
        "apiVersion: keyprov/v1\nkind: KeyPair\nmetadata:\n  name: signer\n  labels: {team: identity}\nspec:\n  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/test\n  rotation: {every: 30d, publishAhead: 7d}\n  outputs:\n    - file: {}\n",
    );
    let file = install.state().join("issuer/jwks.json");

    // Generation 1: the set holds it; a JWT it signs verifies through HTTP.
    let mut daemon = Daemon::start(&install, T0);
    let first = daemon.set_with(1);
    assert_eq!(
        first.body,
        std::fs::read(&file).unwrap(),
        "the file's bytes"
    );
    let kid1 = kids(&first.body)[0].clone();
    let key1 = private_key(&install, 1);
    let served = verify_through_http(&daemon.address, &[(&key1, &kid1)]);
    assert_eq!(served, [kid1.as_str()]);
    let etag1 = first.header("etag").to_string();
    assert!(etag1.starts_with('"') && etag1.len() > 40, "{etag1}");
    assert!((1..=300).contains(&first.max_age()), "{:?}", first.headers);
    let again = request(&daemon.address, "GET", PATH, &[("If-None-Match", &etag1)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), etag1);
    let other = request(
        &daemon.address,
        "GET",
        PATH,
        &[("If-None-Match", "\"nope\"")],
    );
    assert_eq!(other.status, 200);
    assert_eq!(request(&daemon.address, "POST", PATH, &[]).status, 405);
    assert_eq!(
        request(&daemon.address, "GET", "/other.json", &[]).status,
        404
    );
    drop(daemon);

    // 100 s before the next publication: the set may be cached for 100 s at most.
    let plan = install.keyprov_env(&["plan", "--json"], &[("KEYPROV_TEST_NOW", T0)]);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let publish = plan["nextRotations"][0]["publishAt"].as_str().unwrap();
    let publish = humantime::parse_rfc3339(publish).unwrap();
    let before = humantime::format_rfc3339_seconds(publish - Duration::from_secs(100));
    let mut daemon = Daemon::start(&install, &before.to_string());
    let near = daemon.set_with(1);
    assert_eq!(near.header("etag"), etag1, "nothing published yet");
    assert!(near.max_age() <= 100, "{:?}", near.headers);
    drop(daemon);

    // Published (a day later): generation 2 is in the set before it signs anything, and
    // tokens of both verify.
    let published = humantime::format_rfc3339_seconds(publish + Duration::from_secs(86_400));
    let mut daemon = Daemon::start(&install, &published.to_string());
    let second = daemon.set_with(2);
    assert_eq!(second.body, std::fs::read(&file).unwrap());
    assert_ne!(second.header("etag"), etag1);
    let stale = request(&daemon.address, "GET", PATH, &[("If-None-Match", &etag1)]);
    assert_eq!(stale.status, 200, "a changed set is sent again");
    let served = kids(&second.body);
    let kid2 = served.iter().find(|k| **k != kid1).unwrap().clone();
    assert_eq!(served, [kid2.clone(), kid1.clone()], "next first");
    let key2 = private_key(&install, 2);
    verify_through_http(&daemon.address, &[(&key1, &kid1), (&key2, &kid2)]);
    drop(daemon);

    // Activated (past the due time): generation 2 current, 1 previous; both still verify.
    let activated = humantime::format_rfc3339_seconds(publish + Duration::from_secs(8 * 86_400));
    let mut daemon = Daemon::start(&install, &activated.to_string());
    daemon.wait_until("generation 2 is current", |_| {
        common::link(&install.key_dir("signer"), "current").as_deref() == Some("v0002")
    });
    let third = daemon.set_with(2);
    assert_eq!(kids(&third.body), [kid2.clone(), kid1.clone()]);
    verify_through_http(&daemon.address, &[(&key2, &kid2), (&key1, &kid1)]);
}

#[test]
fn a_serve_path_needs_metrics_listen_and_a_plain_unique_path() {
    for (extra, expected) in [
        (
            "jwks: [{path: a.json, serve: /a.json}]\n",
            "jwks[0].serve: \"/a.json\" needs metrics.listen",
        ),
        (
            "metrics: {listen: \"127.0.0.1:0\"}\njwks: [{path: a.json, serve: a.json}]\n",
            "jwks[0].serve: \"a.json\" must start with /",
        ),
        (
            "metrics: {listen: \"127.0.0.1:0\"}\njwks: [{path: a.json, serve: /metrics}]\n",
            "jwks[0].serve: \"/metrics\" is the metrics endpoint's",
        ),
        (
            "metrics: {listen: \"127.0.0.1:0\"}\njwks: [{path: a.json, serve: /k.json}, {path: b.json, serve: /k.json}]\n",
            "jwks[1].serve: \"/k.json\" is served by another jwks entry",
        ),
    ] {
        let install = Install::new(extra);
        let run = install.keyprov(&["plan"]);
        assert_eq!(run.code, 2, "{extra}: {}", run.all());
        assert!(run.stderr.contains(expected), "{expected}: {}", run.all());
    }
}

//! Prometheus metrics, scraped from a running daemon (`metrics.listen`) and read from the
//! textfile `run --once --metrics-file` writes, each parsed by Prometheus's own Python client
//! (`prometheus_client`, both the text format and OpenMetrics): values after a creation, a
//! rotation, failures and a removal, not just names.

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Install, manifest};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(40);

/// One sample, as the Python parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses an exposition with tests/scripts/parse_metrics.py.
fn parse(text: &str, format: &str, dir: &Path) -> Vec<Sample> {
    let file = dir.join(format!("scrape.{format}"));
    std::fs::write(&file, text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/parse_metrics.py");
    let out = common::python_stdout(
        [
            script.as_os_str(),
            file.as_os_str(),
            std::ffi::OsStr::new(format),
        ],
        &format!("prometheus_client cannot parse the {format} exposition:\n{text}\n"),
    );
    let samples: Vec<Value> = serde_json::from_slice(&out).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The samples named `name` whose labels include every pair of `labels`.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample `name{labels}`, if there is one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = find(samples, name, labels);
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().map(|s| s.value)
}

/// `GET /metrics` over plain TCP; returns the body.
fn get(address: &str, accept: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Every family a scrape showed: its name as listed in `metric_list` (histograms by their
/// base name) and the label names of its samples (`le` aside).
fn families(samples: &[Sample]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut families = std::collections::BTreeMap::new();
    for sample in samples {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(&sample.name);
        let mut labels: Vec<String> = sample
            .labels
            .keys()
            .filter(|k| *k != "le")
            .cloned()
            .collect();
        labels.sort();
        families.insert(base.to_string(), labels);
    }
    families
}

struct Daemon {
    /// Every family seen by any scrape, for the check against `metric_list`.
    seen: std::collections::BTreeMap<String, Vec<String>>,
    child: Child,
    log: std::path::PathBuf,
    address: String,
    dir: std::path::PathBuf,
}

impl Daemon {
    fn start(install: &Install) -> Daemon {
        let log = install.root().join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_keyprov"))
            .args(["run", "--config"])
            .arg(install.config())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("KEYPROV_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            seen: Default::default(),
            child,
            log,
            address: String::new(),
            dir: install.root().to_path_buf(),
        };
        // Port 0 in the config: the daemon says which port it got.
        daemon.wait_until("the metrics endpoint is up", |d| {
            let log = d.log();
            let Some(at) = log.find("serving metrics on http://") else {
                return false;
            };
            let rest = &log[at + "serving metrics on http://".len()..];
            d.address = rest[..rest.find("/metrics").unwrap()].to_string();
            true
        });
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes in both formats, checks they agree (when nothing changed in between), returns
    /// the samples.
    fn scrape(&self) -> Vec<Sample> {
        let names = |s: &[Sample]| {
            let mut n: Vec<String> = s.iter().map(|s| s.name.clone()).collect();
            n.sort();
            n.dedup();
            n
        };
        let before = parse(&get(&self.address, "text/plain"), "text", &self.dir);
        let open = get(&self.address, "application/openmetrics-text; version=1.0.0");
        assert!(open.ends_with("# EOF\n"), "{open}");
        let openmetrics = parse(&open, "openmetrics", &self.dir);
        let after = parse(&get(&self.address, "text/plain"), "text", &self.dir);
        if names(&before) == names(&after) {
            assert_eq!(names(&after), names(&openmetrics));
        }
        after
    }

    fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&mut Daemon) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting until {what}\nlog:\n{}", self.log());
    }

    fn wait_for(&mut self, what: &str, condition: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let mut last = Vec::new();
        self.wait_until(what, |d| {
            last = d.scrape();
            d.seen.extend(families(&last));
            condition(&last)
        });
        last
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Passes of kind `pass` (`full`, `partial`) the daemon has finished. A pass sets the key
/// series first, one key after the other, and counts itself last: a scrape that shows a pass
/// counted shows every series that pass set, where one showing a key's new series may be
/// taken in the middle of the pass.
fn passes(samples: &[Sample], pass: &str) -> f64 {
    value(samples, "keyprov_reconciles_total", &[("pass", pass)]).unwrap_or(0.0)
}

fn key_manifest(name: &str, extra: &str) -> String {
    manifest(name, "ECC_NIST_P256", extra)
}

#[test]
fn the_endpoint_tells_creation_rotation_failures_and_removal_by_value() {
    let install = Install::new(
        "metrics: {listen: \"127.0.0.1:0\"}\nhooks: {allowed: [/bin/false]}\nreconcile: {retryBackoff: 1h}",
    );
    // The config's reconcile line above replaces the default one.
    let config = std::fs::read_to_string(install.config()).unwrap().replace(
        "reconcile: {concurrency: 4, maxRequestsPerSecond: 1000}\n",
        "",
    );
    std::fs::write(install.config(), config).unwrap();
    install.manifest("steady.yaml", &key_manifest("steady", ""));
    install.manifest(
        "staged.yaml",
        &key_manifest("staged", "  rotation: {every: 12s, publishAhead: 6s}\n"),
    );
    install.manifest(
        "hooked.yaml",
        &key_manifest("hooked", "  onRotate:\n    - command: [/bin/false]\n"),
    );
    std::fs::create_dir_all(install.state()).unwrap();
    std::fs::write(install.state().join("blocked-dir"), "not a directory").unwrap();
    install.manifest(
        "blocked.yaml",
        &key_manifest("blocked", "").replace("file: {}", "file: {dir: blocked-dir}"),
    );
    install.manifest("broken.yaml", &manifest("broken", "ECC_NIST_P999", ""));
    let mut daemon = Daemon::start(&install);

    // Created.
    let samples = daemon.wait_for("three keys are ready, the start-up pass over", |s| {
        ["steady", "staged", "hooked"]
            .iter()
            .all(|k| value(s, "keyprov_key_ready", &[("key", k)]) == Some(1.0))
            && passes(s, "full") >= 1.0
    });
    for key in ["steady", "staged", "hooked"] {
        let info = find(
            &samples,
            "keyprov_key_info",
            &[("key", key), ("state", "current"), ("generation", "1")],
        );
        assert_eq!(info.len(), 1, "{key}: {samples:?}");
        assert_eq!(info[0].value, 1.0);
        assert_eq!(info[0].labels["key_spec"], "ECC_NIST_P256");
        assert!(
            info[0].labels["kms_key"]
                .as_str()
                .unwrap()
                .starts_with("arn:"),
            "{info:?}"
        );
        assert_eq!(
            value(
                &samples,
                "keyprov_generations_total",
                &[("key", key), ("reason", "new_key")]
            ),
            Some(1.0)
        );
        let created = value(
            &samples,
            "keyprov_key_created_timestamp_seconds",
            &[("key", key), ("state", "current")],
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - created).abs() < 60.0, "{created} vs {now}");
        // Its hook failed: that key's reconcile did not succeed.
        assert_eq!(
            value(
                &samples,
                "keyprov_last_successful_reconcile_timestamp_seconds",
                &[("key", key)]
            )
            .is_some(),
            key != "hooked",
            "{key}"
        );
    }
    let due = value(
        &samples,
        "keyprov_key_rotation_due_timestamp_seconds",
        &[("key", "staged")],
    )
    .unwrap();
    let created = value(
        &samples,
        "keyprov_key_created_timestamp_seconds",
        &[("key", "staged"), ("state", "current")],
    )
    .unwrap();
    assert!(
        (12.0..12.2).contains(&(due - created)),
        "due {due} created {created}"
    );
    assert_eq!(
        value(
            &samples,
            "keyprov_key_rotation_due_timestamp_seconds",
            &[("key", "steady")]
        ),
        None,
        "a key that never rotates has no due time"
    );
    // Failures, each with its reason.
    assert_eq!(
        value(&samples, "keyprov_key_ready", &[("key", "blocked")]),
        Some(0.0)
    );
    assert!(
        value(
            &samples,
            "keyprov_failures_total",
            &[("key", "blocked"), ("reason", "output_write_failed")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &samples,
            "keyprov_failures_total",
            &[("key", "broken"), ("reason", "manifest_invalid")]
        )
        .unwrap()
            >= 1.0
    );
    let broken_file = install.manifests().join("broken.yaml");
    assert_eq!(
        value(
            &samples,
            "keyprov_manifest_valid",
            &[("file", broken_file.to_str().unwrap())]
        ),
        Some(0.0)
    );
    let steady_file = install.manifests().join("steady.yaml");
    assert_eq!(
        value(
            &samples,
            "keyprov_manifest_valid",
            &[("file", steady_file.to_str().unwrap())]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "keyprov_hook_runs_total",
            &[
                ("key", "hooked"),
                ("event", "activate"),
                ("result", "failure")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "keyprov_failures_total",
            &[("key", "hooked"), ("reason", "hook_failed")]
        ),
        Some(1.0)
    );
    // Provider requests match the generations made.
    let generations: f64 = find(&samples, "keyprov_generations_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    let requests = value(
        &samples,
        "keyprov_provider_requests_total",
        &[
            ("provider", "local"),
            ("operation", "GenerateDataKeyPairWithoutPlaintext"),
            ("code", "ok"),
        ],
    )
    .unwrap();
    assert_eq!(requests, generations);
    assert_eq!(
        value(
            &samples,
            "keyprov_provider_request_duration_seconds_count",
            &[
                ("provider", "local"),
                ("operation", "GenerateDataKeyPairWithoutPlaintext")
            ]
        ),
        Some(requests)
    );
    assert!(value(&samples, "keyprov_reconcile_duration_seconds_count", &[]).unwrap() >= 1.0);
    let build = find(&samples, "keyprov_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));

    // Staged rotation: published as next (with its activation time), then current.
    let before = passes(&samples, "partial");
    let samples = daemon.wait_for("staged publishes generation 2, that pass over", |s| {
        !find(
            s,
            "keyprov_key_info",
            &[("key", "staged"), ("state", "next"), ("generation", "2")],
        )
        .is_empty()
            && passes(s, "partial") > before
    });
    let activation = value(
        &samples,
        "keyprov_key_next_activation_timestamp_seconds",
        &[("key", "staged")],
    )
    .unwrap();
    assert!((activation - due).abs() < 0.5, "{activation} vs {due}");
    assert_eq!(
        value(
            &samples,
            "keyprov_generations_total",
            &[("key", "staged"), ("reason", "rotation")]
        ),
        Some(1.0)
    );
    let published = passes(&samples, "partial");
    let samples = daemon.wait_for("generation 2 becomes current, that pass over", |s| {
        !find(
            s,
            "keyprov_key_info",
            &[("key", "staged"), ("state", "current"), ("generation", "2")],
        )
        .is_empty()
            && passes(s, "partial") > published
    });
    let previous = find(
        &samples,
        "keyprov_key_info",
        &[
            ("key", "staged"),
            ("state", "previous"),
            ("generation", "1"),
        ],
    );
    assert_eq!(previous.len(), 1, "{samples:?}");
    assert_eq!(previous[0].labels["key_spec"], "ECC_NIST_P256");
    // Publication and activation came on due wakes over staged alone: the other keys' series
    // stayed.
    let partial = value(&samples, "keyprov_reconciles_total", &[("pass", "partial")]);
    assert!(partial.is_some_and(|n| n >= 2.0), "{partial:?}");
    assert!(value(&samples, "keyprov_reconciles_total", &[("pass", "full")]).is_some());
    assert_eq!(
        value(&samples, "keyprov_key_ready", &[("key", "steady")]),
        Some(1.0)
    );
    assert!(
        find(
            &samples,
            "keyprov_key_info",
            &[("key", "staged"), ("state", "next")]
        )
        .is_empty(),
        "no stale next"
    );
    assert_eq!(
        value(
            &samples,
            "keyprov_key_next_activation_timestamp_seconds",
            &[("key", "staged")]
        ),
        None
    );

    // Removal: every series of the key goes.
    let full = passes(&samples, "full");
    std::fs::remove_file(install.manifests().join("hooked.yaml")).unwrap();
    let samples = daemon.wait_for("hooked disappears, that pass over", |s| {
        find(s, "keyprov_key_info", &[("key", "hooked")]).is_empty() && passes(s, "full") > full
    });
    let stale: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.labels.get("key").and_then(Value::as_str) == Some("hooked"))
        .collect();
    assert!(stale.is_empty(), "stale series: {stale:?}");
    let hooked_file = install.manifests().join("hooked.yaml");
    assert_eq!(
        value(
            &samples,
            "keyprov_manifest_valid",
            &[("file", hooked_file.to_str().unwrap())]
        ),
        None
    );
    assert_eq!(
        value(&samples, "keyprov_key_ready", &[("key", "steady")]),
        Some(1.0)
    );

    // What the alerts and the dashboard are checked against is what keyprov exposes.
    let listed: std::collections::BTreeMap<String, Vec<String>> =
        common::metric_list::KEYPROV_METRICS
            .iter()
            .map(|(name, _, labels)| {
                let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
                labels.sort();
                (name.to_string(), labels)
            })
            .collect();
    assert_eq!(
        daemon.seen, listed,
        "tests/common/metric_list.rs vs a live scrape"
    );
}

#[test]
fn run_once_writes_a_textfile_for_node_exporter() {
    let install = Install::new("");
    install.manifest("a.yaml", &key_manifest("a", "  rotation: {every: 30d}\n"));
    install.manifest("b.yaml", &key_manifest("b", ""));
    let file = install.root().join("textfile/keyprov.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let run = install.keyprov(&["run", "--once", "--metrics-file", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    let mode = std::fs::metadata(&file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let samples = parse(&text, "text", install.root());
    for key in ["a", "b"] {
        assert_eq!(
            value(&samples, "keyprov_key_ready", &[("key", key)]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &samples,
                "keyprov_generations_total",
                &[("key", key), ("reason", "new_key")]
            ),
            Some(1.0)
        );
    }
    assert!(
        value(
            &samples,
            "keyprov_key_rotation_due_timestamp_seconds",
            &[("key", "a")]
        )
        .is_some()
    );
    // Nothing left beside it: written under a temporary name, renamed.
    let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keyprov.prom")]);
    // A converged run rewrites it: the keys are still there, nothing generated.
    std::fs::remove_file(install.manifests().join("b.yaml")).unwrap();
    let run = install.keyprov(&["run", "--once", "--metrics-file", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    let samples = parse(
        &std::fs::read_to_string(&file).unwrap(),
        "text",
        install.root(),
    );
    assert_eq!(
        value(&samples, "keyprov_key_ready", &[("key", "a")]),
        Some(1.0)
    );
    assert!(find(&samples, "keyprov_key_ready", &[("key", "b")]).is_empty());
    assert!(find(&samples, "keyprov_generations_total", &[]).is_empty());
    // An unwritable path is an error, after the reconcile.
    let run = install.keyprov(&["run", "--once", "--metrics-file", "/nonexistent/dir/k.prom"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("cannot write the metrics file /nonexistent/dir/k.prom"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_listen_address_is_a_configuration_error() {
    let install = Install::new("metrics: {listen: \"localhost\"}");
    let run = install.keyprov(&["validate"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("metrics.listen") && run.stderr.contains("\"localhost\""),
        "{}",
        run.stderr
    );
}

/// `time` as KEYPROV_TEST_NOW takes it, moved by `seconds`.
fn test_now(time: std::time::SystemTime, seconds: i64) -> String {
    let moved = if seconds < 0 {
        time - Duration::from_secs(seconds.unsigned_abs())
    } else {
        time + Duration::from_secs(seconds as u64)
    };
    keyprov::schedule::format_time(moved)
}

/// After a scheduled `keyprov rotate NAME` on a key with publishAhead, `status --json`, `plan
/// --json` and the rotation-due metric tell the same next publication and rotation, counted
/// from the staged generation's activation (not from the old generation's), and the daemon's
/// passes publish and activate at exactly those times.
#[test]
fn status_plan_and_metrics_agree_on_the_schedule_after_rotate() {
    use keyprov::schedule::{format_time, parse_time};
    let install = Install::new("");
    let name = "rotated-early";
    install.manifest(
        "r.yaml",
        &key_manifest(name, "  rotation: {every: 30d, publishAhead: 7d}\n"),
    );
    let dir = install.key_dir(name);
    let at = |now: &str, args: &[&str]| {
        let run = install.keyprov_env(args, &[("KEYPROV_TEST_NOW", now)]);
        assert!(
            run.code == 0 || (args[0] == "plan" && run.code == 3),
            "{args:?} at {now}: {}",
            run.all()
        );
        run
    };
    at("2030-01-01T00:00:00Z", &["run", "--once"]);
    // Rotated on day 5, staged: generation 2 activates on day 12.
    let rotated = "2030-01-05T00:00:00Z";
    at(rotated, &["rotate", name]);
    assert_eq!(common::link(&dir, "next").as_deref(), Some("v0002"));
    let activates = parse_time("2030-01-12T00:00:00Z").unwrap();
    let every = Duration::from_secs(30 * 86_400);
    let due = activates + every + keyprov::schedule::spread(name, every);
    let publish = due - Duration::from_secs(7 * 86_400);

    let status: Value = serde_json::from_str(&at(rotated, &["status", "--json"]).stdout).unwrap();
    let key = &status["keys"][0];
    assert_eq!(key["next"], 2);
    assert_eq!(key["nextActivatesAt"], format_time(activates));
    assert_eq!(key["nextRotation"], format_time(due), "{key}");
    assert_eq!(key["nextPublishAt"], format_time(publish), "{key}");
    let plan: Value = serde_json::from_str(&at(rotated, &["plan", "--json"]).stdout).unwrap();
    let next = &plan["nextRotations"][0];
    assert_eq!(next["key"], name);
    assert_eq!(next["dueAt"], key["nextRotation"], "{plan}");
    assert_eq!(next["publishAt"], key["nextPublishAt"], "{plan}");
    assert_eq!(next["staged"]["generation"], 2);
    assert_eq!(next["staged"]["activatesAt"], key["nextActivatesAt"]);
    let text = at(rotated, &["plan"]).stdout;
    assert!(
        text.contains(&format!(
            "generation 2 staged, activates 2030-01-12T00:00:00Z; next rotation due {}",
            humantime::format_rfc3339_seconds(due)
        )),
        "{text}"
    );
    let file = install.root().join("keyprov.prom");
    let scrape = |now: &str| {
        at(
            now,
            &["run", "--once", "--metrics-file", file.to_str().unwrap()],
        );
        parse(
            &std::fs::read_to_string(&file).unwrap(),
            "text",
            install.root(),
        )
    };
    let samples = scrape(rotated);
    let seconds = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let gauge = |name_: &str| value(&samples, name_, &[("key", name)]).unwrap();
    assert!(
        (gauge("keyprov_key_rotation_due_timestamp_seconds") - seconds(due)).abs() < 1e-3,
        "metric {} vs status {due:?}",
        gauge("keyprov_key_rotation_due_timestamp_seconds")
    );
    assert!(
        (gauge("keyprov_key_next_activation_timestamp_seconds") - seconds(activates)).abs() < 1e-3
    );

    // What the passes do: activate at nextActivatesAt, publish at nextPublishAt, and the new
    // generation activates at nextRotation.
    at(&test_now(activates, -1), &["run", "--once"]);
    assert_eq!(common::link(&dir, "current").as_deref(), Some("v0001"));
    let samples = scrape(&test_now(activates, 0));
    assert_eq!(common::link(&dir, "current").as_deref(), Some("v0002"));
    let after = value(
        &samples,
        "keyprov_key_rotation_due_timestamp_seconds",
        &[("key", name)],
    )
    .unwrap();
    assert!(
        (after - seconds(due)).abs() < 1e-3,
        "unchanged by the activation"
    );
    at(&test_now(publish, -1), &["run", "--once"]);
    assert_eq!(
        common::link(&dir, "next"),
        None,
        "not published before nextPublishAt"
    );
    at(&test_now(publish, 0), &["run", "--once"]);
    assert_eq!(common::link(&dir, "next").as_deref(), Some("v0003"));
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("next/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["activatesAt"], format_time(due));
}

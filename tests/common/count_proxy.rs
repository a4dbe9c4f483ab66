//! bench/count_proxy.py in front of LocalStack: counts every AWS request by operation, and
//! logs each with its secret id when asked.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A counting proxy (bench/count_proxy.py) in front of LocalStack on `port`.
pub struct Proxy {
    child: Child,
}

impl Proxy {
    pub fn start(port: u16, endpoint: &str) -> Proxy {
        Proxy::start_logged(port, endpoint, None)
    }

    /// [`Proxy::start`], each request also logged to `log` as `<unix time> <port> <target>`.
    pub fn start_logged(port: u16, endpoint: &str, log: Option<&Path>) -> Proxy {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/count_proxy.py");
        let mut command = Command::new("python3");
        if let Some(log) = log {
            command
                .env("COUNT_PROXY_LOG", log)
                .env("COUNT_PROXY_LOG_IDS", "1");
        }
        let mut child = command
            .arg(script)
            .arg(port.to_string())
            .arg(endpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        // "ready" on stderr once it listens.
        let mut stderr = child.stderr.take().unwrap();
        let mut byte = [0u8; 1];
        let mut seen = Vec::new();
        while !seen.ends_with(b"ready") {
            use std::io::Read;
            if stderr.read(&mut byte).unwrap_or(0) == 0 {
                panic!(
                    "the proxy did not start: {}",
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.push(byte[0]);
        }
        // Drained for as long as it runs: a closed pipe would fail its error reports.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            if !rest.trim().is_empty() {
                eprintln!("count_proxy.py: {rest}");
            }
        });
        Proxy { child }
    }

    /// Stops the proxy; returns its counts by operation (e.g. `secretsmanager.GetSecretValue`).
    pub fn stop(mut self) -> Vec<(String, u64)> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut out = String::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.child.wait();
        out.lines()
            .filter_map(|l| {
                let (n, op) = l.split_once(' ')?;
                Some((op.to_string(), n.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

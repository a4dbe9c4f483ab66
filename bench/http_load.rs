//! A minimal HTTP/1.1 load generator for `bench/jwks_http.sh`: C threads, each sending
//! `GET PATH` on a new connection (`Connection: close`, as both servers measured close after one
//! request) as fast as it can for S seconds; prints requests/s and the status codes seen.
//!
//!   cargo run --example http_load -- HOST:PORT PATH CONNECTIONS SECONDS [IF-NONE-MATCH]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, path, connections, seconds, rest @ ..] = args.as_slice() else {
        eprintln!("usage: http_load HOST:PORT PATH CONNECTIONS SECONDS [IF-NONE-MATCH]");
        std::process::exit(64);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS");
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let condition = rest
        .first()
        .map(|tag| format!("If-None-Match: {tag}\r\n"))
        .unwrap_or_default();
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{condition}Connection: close\r\n\r\n"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (address, request, stop) = (address.clone(), request.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut counts = std::collections::BTreeMap::<String, u64>::new();
                let mut buf = Vec::with_capacity(64 * 1024);
                while !stop.load(Ordering::Relaxed) {
                    let status = match TcpStream::connect(&address).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(request.as_bytes())?;
                        buf.clear();
                        s.read_to_end(&mut buf)?;
                        Ok(())
                    }) {
                        Ok(()) => {
                            String::from_utf8_lossy(buf.get(9..12).unwrap_or(b"???")).to_string()
                        }
                        Err(err) => format!("error: {}", err.kind()),
                    };
                    *counts.entry(status).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = std::collections::BTreeMap::<String, u64>::new();
    for worker in workers {
        for (status, n) in worker.join().expect("worker") {
            *total.entry(status).or_default() += n;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok: u64 = total
        .iter()
        .filter(|(s, _)| *s == "200" || *s == "304")
        .map(|(_, n)| n)
        .sum();
    println!("{:.0} req/s {total:?}", ok as f64 / elapsed);
}

//! The daemon's `/metrics` endpoint (`metrics.listen`), which also serves the JWK Sets that
//! have a `serve` path (see [`crate::jwks_served`]): HTTP/1.1 (hyper), GET only, bounded
//! (connections at once, time to send the request head, one request per connection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, CONTENT_TYPE, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a whole connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The listening endpoint; dropping it stops serving.
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    /// The address it listens on (the actual port when `listen` asked for port 0).
    pub address: SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves `/metrics` until the returned server is dropped.
pub async fn start(listen: SocketAddr) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!("metrics endpoint: cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(respond));
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                drop(permit);
            });
        }
    });
    Ok(MetricsServer { task, address })
}

/// `GET /metrics`: OpenMetrics when the client accepts it (Prometheus does), the Prometheus
/// text format otherwise.
async fn respond<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let if_none_match = request
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if let Some(set) = crate::jwks_served::respond(
        request.method().as_str(),
        request.uri().path(),
        if_none_match,
    ) {
        let mut response = Response::builder().status(set.status);
        for (name, value) in set.headers {
            response = response.header(name, value);
        }
        return Ok(response
            .body(Full::new(set.body))
            .expect("a valid response"));
    }
    if request.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "keyprov serves /metrics and the JWK Sets of jwks[].serve only\n".into(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ));
    }
    let openmetrics = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let metrics = super::global();
    Ok(if openmetrics {
        reply(StatusCode::OK, OPENMETRICS, metrics.openmetrics())
    } else {
        reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics.prometheus_text(),
        )
    })
}

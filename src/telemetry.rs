//! Prometheus metrics, served on their own port (`--metrics-listen`).
//!
//! The stages record what they do with the `metrics` crate's macros, which
//! cost nothing until a recorder is installed; [`serve`] installs the
//! Prometheus recorder and answers `GET /metrics` in the text format. The
//! state gauges (images, index points, store bytes) are read from the
//! engine at each scrape. Series, all prefixed `lookalike_`:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `requests_total`, `request_duration_seconds` | counter, histogram | `method`, `code` |
//! | `decode_seconds` | histogram | |
//! | `embed_batch_size`, `embed_forward_seconds` | histogram | |
//! | `inserts_in_flight` | gauge | |
//! | `pca_fits_total`, `index_builds_total`, `index_build_seconds` | counter, counter, histogram | `job` on the last two |
//! | `images`, `index_points`, `index_tombstones`, `index_graph` | gauge | |
//! | `store_disk_bytes` | gauge | |

use std::{net::SocketAddr, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Histogram buckets for durations, in seconds: 0.5 ms to 5 minutes.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Buckets for batch sizes (the batcher runs at most 16).
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 12.0, 16.0];
/// Longest request head read from a scraper.
const MAX_REQUEST: usize = 8 << 10;

/// Installs the Prometheus recorder for this process.
pub fn install() -> Result<PrometheusHandle> {
    let bad = |e: metrics_exporter_prometheus::BuildError| {
        Error::Internal(format!("cannot set up metrics: {e}"))
    };
    PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .map_err(bad)?
        .set_buckets_for_metric(Matcher::Full("lookalike_embed_batch_size".into()), BATCH)
        .map_err(bad)?
        .install_recorder()
        .map_err(bad)
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, engine: Engine) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (handle, engine) = (handle.clone(), engine.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &handle, &engine).await {
                tracing::debug!(%peer, error = %e, "metrics scrape failed");
            }
        });
    }
}

/// Answers one HTTP/1 request and closes the connection.
async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    engine: &Engine,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics") {
        record_state(engine);
        ("200 OK", handle.render())
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Sets the state gauges from the engine.
fn record_state(engine: &Engine) {
    let stats = engine.stats();
    metrics::gauge!("lookalike_images").set(stats.count as f64);
    metrics::gauge!("lookalike_index_points").set(stats.index_size as f64);
    metrics::gauge!("lookalike_index_tombstones").set(stats.index_tombstones as f64);
    metrics::gauge!("lookalike_index_graph")
        .set(f64::from(u8::from(stats.pca_dimensions.is_some())));
    match engine.store_disk_bytes() {
        Ok(bytes) => metrics::gauge!("lookalike_store_disk_bytes").set(bytes as f64),
        Err(e) => tracing::warn!(error = %e.chain(), "cannot read the store's size on disk"),
    }
}

/// Binds the metrics port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Records one finished gRPC call.
pub fn record_call(method: &'static str, code: tonic::Code, elapsed: Duration) {
    let code = format!("{code:?}");
    metrics::counter!("lookalike_requests_total", "method" => method, "code" => code.clone())
        .increment(1);
    metrics::histogram!("lookalike_request_duration_seconds", "method" => method, "code" => code)
        .record(elapsed.as_secs_f64());
}

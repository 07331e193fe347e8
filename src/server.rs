//! The daemon: binds the port, serves the `Lookalike` service with gRPC
//! reflection (v1 and v1alpha) and health (Check and Watch), loads the index
//! in the background, and shuts down cleanly.
//!
//! Health reports NOT_SERVING, for the whole server ("") and for
//! `lookalike.v1.Lookalike`, until the index is loaded; load balancers and
//! `grpc_health_probe` can wait on it.
//!
//! A graceful stop (when `shutdown` resolves: SIGTERM or SIGINT in the
//! binary): health turns NOT_SERVING at once, writes are refused
//! (UNAVAILABLE), open InsertStreams end with UNAVAILABLE, no new
//! connection is accepted, and requests in flight get up to
//! `--shutdown-timeout` to finish; then the store is flushed and the graph
//! saved, whether or not they did.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::server::NamedService;
use tonic_health::{server::HealthReporter, ServingStatus};
use tower::util::MapResponseLayer;

use crate::api::{
    auth::AuthLayer, proto, proto::lookalike_server::LookalikeServer, service::Service, status,
};
use crate::config::Config;
use crate::engine::{Engine, EngineGuard};
use crate::error::{Error, Result};

/// The line `lookalike serve` prints first, followed by the bound address:
/// scripts and tests read it to learn the port.
pub const LISTENING: &str = "lookalike listening on ";

/// The name health and reflection know the service by.
const SERVICE_NAME: &str = <LookalikeServer<Service> as NamedService>::NAME;

/// Runs the daemon until `shutdown` resolves. `on_listening` gets the bound
/// address (useful with port 0).
pub async fn run(
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("local address: {e}")))?;
    let keys = config.keys()?;
    let tls = config.tls()?;
    let (keys_on, tls_on) = (keys.enabled(), tls.is_some());
    if !keys.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening beyond loopback without an API key: anyone who can reach this port \
             can read and delete every image; set --api-key (or --api-key-file)"
        );
    }
    let metrics = match config.metrics_listen {
        Some(at) => Some((
            crate::telemetry::bind(at).await?,
            crate::telemetry::install()?,
        )),
        None => None,
    };
    let max_message = config.max_message_bytes;
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let guard = EngineGuard::new(
        tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??,
    );
    let engine = guard.engine();

    let metrics = metrics.map(|(listener, handle)| {
        if let Ok(at) = listener.local_addr() {
            tracing::info!(%at, "serving metrics at /metrics");
        }
        tokio::spawn(crate::telemetry::serve(listener, handle, engine.clone()))
    });
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let loader = tokio::spawn(load_then_serve(engine.clone(), reporter.clone()));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e| Error::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let (stopping_tx, stopping) = watch::channel(false);
    let lookalike = LookalikeServer::new(Service::new(engine.clone(), stopping.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    // Without TCP_NODELAY a small response waits on Nagle's algorithm and
    // the client's delayed ACK: about 40 ms per call on Linux.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    on_listening(addr);
    tracing::info!(%addr, tls = tls_on, api_keys = keys_on, "serving");
    let mut stop_accepting = stopping.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::InvalidArgument(format!("bad TLS settings: {e}")))?;
    }
    let server = builder
        .layer(MapResponseLayer::new(
            status::oversize_as_resource_exhausted,
        ))
        .layer(AuthLayer::new(keys))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(lookalike)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_accepting.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            tracing::info!(timeout = ?shutdown_timeout, "stopping: finishing requests in flight");
            loader.abort();
            set_health(&reporter, ServingStatus::NotServing).await;
            engine.refuse_writes();
            let _ = stopping_tx.send(true);
            match tokio::time::timeout(shutdown_timeout, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(
                        timeout = ?shutdown_timeout,
                        "requests still in flight at the shutdown timeout; closing their connections"
                    );
                    Ok(())
                }
            }
        }
    };
    loader.abort();
    set_health(&reporter, ServingStatus::NotServing).await;
    let closed = engine.close().await;
    if let Some(task) = metrics {
        task.abort();
    }
    served.map_err(|e| Error::Internal(format!("server failed: {e}")))?;
    closed
}

async fn load_then_serve(engine: Engine, reporter: HealthReporter) {
    match engine.load_index().await {
        Ok(()) => {
            engine.spawn_maintenance();
            set_health(&reporter, ServingStatus::Serving).await;
        }
        Err(e) => tracing::error!(error = %e, "cannot load the index; staying NOT_SERVING"),
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

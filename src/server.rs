//! Starting and stopping a server: a function of its configuration, listener and shutdown
//! signal, so tests run servers in-process on port 0.

mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use self::routes::FlightRoutes;
use crate::catalog::{Catalog, PostgresCatalog, SqliteCatalog};
use crate::config::{Config, TlsConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::service::QuiverService;
use crate::targets::registry::Targets;

/// Builds the service a configuration describes: opens the catalog and every target.
pub async fn build_service(config: &Config, metrics: Arc<Metrics>) -> Result<QuiverService> {
    let auth = config.validate()?;
    let catalog: Arc<dyn Catalog> = match &config.catalog.url {
        Some(url) => Arc::new(
            PostgresCatalog::open(
                url,
                &config.catalog.schema,
                config.catalog.ca_file.as_deref(),
                config.catalog.pool_size,
            )
            .await?,
        ),
        None => Arc::new(SqliteCatalog::open(&config.catalog_path())?),
    };
    let targets = Targets::from_config(&config.resolved_targets())?;
    // Puts interrupted between a target's commit and the catalog's first, then the leftovers
    // of puts that never reached their commit.
    crate::service::recovery::settle_all(&targets, catalog.as_ref()).await;
    targets.recover(config.replicas > 1).await;
    Ok(QuiverService::new(
        targets,
        catalog,
        metrics,
        auth,
        &config.limits,
        &config.sql,
    ))
}

/// How often target health is probed for the gRPC health service.
const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// Serves Flight (with `grpc.health.v1` and gRPC reflection) on `listener` until `shutdown`
/// resolves, then lets in-flight calls finish. Binds the metrics address from the
/// configuration, if any.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::config(format!("cannot listen for metrics on {addr}: {e}")))?,
        ),
        None => None,
    };
    serve_on(config, listener, metrics_listener, shutdown).await
}

/// [`serve`] with the metrics listener bound by the caller.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use_ring_for_tls();
    let metrics = Arc::new(Metrics::new());
    let service = build_service(&config, Arc::clone(&metrics)).await?;
    // One shutdown signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            info!(?addr, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(crate::metrics::serve_http(
                Arc::clone(&metrics),
                listener,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    let prober = tokio::spawn(report_health(
        reporter,
        service.targets().clone(),
        Arc::clone(&metrics),
    ));
    let flight = FlightRoutes::new(service, config.limits.max_message_bytes);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listen address: {e}")))?;
    info!(%addr, targets = ?config.resolved_targets().keys().collect::<Vec<_>>(), "quiver is serving Arrow Flight");
    let transport = &config.transport;
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(transport.stream_window_bytes))
        .initial_connection_window_size(Some(transport.connection_window_bytes))
        .max_frame_size(Some(transport.max_frame_bytes));
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .map_err(|e| Error::config(format!("[tls] {e}")))?;
    }
    let (reflection, reflection_alpha) = reflection_services()?;
    let served = builder
        .layer(tower::util::MapRequestLayer::new(cancel_is_an_error))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming(listener), stopped(stop_rx))
        .await;
    // Wait for the prober to be dropped: it holds the targets, and a DuckDB database is only
    // checkpointed and closed when the last handle goes, which should happen before this
    // returns (a caller may open the file next).
    prober.abort();
    let _ = prober.await;
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => warn!(error = %e, "the metrics server failed"),
            Err(e) => warn!(error = %e, "the metrics server task failed"),
            Ok(Ok(())) => {}
        }
    }
    served.map_err(|e| Error::internal(format!("the Flight server failed: {e}")))?;
    info!("quiver stopped");
    Ok(())
}

/// gRPC server reflection (`grpc.reflection.v1` and the `v1alpha` that older tools ask for)
/// describing Flight, `quiver.v1` and `grpc.health.v1`, so `grpcurl` and similar tools work
/// without proto files.
fn reflection_services() -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::protocol::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let failed = |e| Error::internal(format!("building the gRPC reflection service: {e}"));
    Ok((
        builder().build_v1().map_err(failed)?,
        builder().build_v1alpha().map_err(failed)?,
    ))
}

/// tonic's request streams end quietly, as if the client had finished, when the client resets
/// the stream with CANCEL (a cancelled call, a passed deadline). For a put that would commit
/// whatever arrived before the reset, so the reset becomes an error the put sees.
fn cancel_is_an_error(
    request: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    request.map(|body| tonic::body::Body::new(CancelIsAnError(body)))
}

struct CancelIsAnError(tonic::body::Body);

impl http_body::Body for CancelIsAnError {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        std::pin::Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(|status| match status.code() {
                tonic::Code::Cancelled => tonic::Status::aborted(format!(
                    "the client cancelled the stream before finishing it ({})",
                    status.message()
                )),
                _ => status,
            })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Accepted connections with `TCP_NODELAY` (without it, small frames such as window updates
/// and put results wait for Nagle's algorithm and stall streams) and TCP keepalive, so a
/// client that vanished without closing its connection is noticed.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// Makes ring the process's TLS crypto provider. Two providers are linked (object_store's S3
/// client brings aws-lc-rs), so rustls cannot pick one by itself; every TLS setup in Quiver
/// (Flight, PostgreSQL) uses ring.
pub fn use_ring_for_tls() {
    // Already installed (a second server in one process) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the certificate, key and client CA files.
fn tls_config(tls: &TlsConfig) -> Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::config(format!("[tls] cannot read {what} {}: {e}", path.display())))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&tls.cert_file, "cert_file")?,
        read(&tls.key_file, "key_file")?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client_ca_file",
        )?));
    }
    Ok(config)
}

/// Keeps `grpc.health.v1` current: `quiver.target.<name>` per target, and the whole server
/// (the empty service name and the Flight service) serving only while every target is healthy.
async fn report_health(reporter: HealthReporter, targets: Targets, metrics: Arc<Metrics>) {
    let mut interval = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        interval.tick().await;
        let mut healthy = true;
        let mut results = Vec::new();
        for target in targets.iter() {
            let status = match target.healthcheck().await {
                Ok(()) => ServingStatus::Serving,
                Err(e) => {
                    warn!(target = target.name(), error = %e, "target is unhealthy");
                    healthy = false;
                    ServingStatus::NotServing
                }
            };
            results.push((target.name().to_string(), status == ServingStatus::Serving));
            reporter
                .set_service_status(format!("quiver.target.{}", target.name()), status)
                .await;
        }
        let overall = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        metrics.health_checked(&results);
        reporter.set_service_status("", overall).await;
        reporter
            .set_service_status(
                <FlightServiceServer<QuiverService> as tonic::server::NamedService>::NAME,
                overall,
            )
            .await;
    }
}

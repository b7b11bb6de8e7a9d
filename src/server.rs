//! Starting and stopping a server: a function of its configuration, listener and shutdown
//! signal, so tests run servers in-process on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::catalog::SqliteCatalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::service::QuiverService;
use crate::targets::Targets;

/// Builds the service a configuration describes: opens the catalog and every target.
pub fn build_service(config: &Config) -> Result<QuiverService> {
    config.validate()?;
    let catalog = SqliteCatalog::open(&config.catalog_path())?;
    let targets = Targets::from_config(&config.resolved_targets())?;
    Ok(QuiverService::new(targets, Arc::new(catalog)))
}

/// How often target health is probed for the gRPC health service.
const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// Serves Flight (and `grpc.health.v1`) on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = build_service(&config)?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let prober = tokio::spawn(report_health(reporter, service.targets().clone()));
    let limit = config.limits.max_message_bytes;
    let flight = FlightServiceServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listen address: {e}")))?;
    info!(%addr, targets = ?config.resolved_targets().keys().collect::<Vec<_>>(), "quiver is serving Arrow Flight");
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(flight)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    prober.abort();
    served.map_err(|e| Error::internal(format!("the Flight server failed: {e}")))?;
    info!("quiver stopped");
    Ok(())
}

/// Keeps `grpc.health.v1` current: `quiver.target.<name>` per target, and the whole server
/// (the empty service name and the Flight service) serving only while every target is healthy.
async fn report_health(reporter: HealthReporter, targets: Targets) {
    let mut interval = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        interval.tick().await;
        let mut healthy = true;
        for target in targets.iter() {
            let status = match target.healthcheck().await {
                Ok(()) => ServingStatus::Serving,
                Err(e) => {
                    warn!(target = target.name(), error = %e, "target is unhealthy");
                    healthy = false;
                    ServingStatus::NotServing
                }
            };
            reporter
                .set_service_status(format!("quiver.target.{}", target.name()), status)
                .await;
        }
        let overall = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", overall).await;
        reporter
            .set_service_status(
                <FlightServiceServer<QuiverService> as tonic::server::NamedService>::NAME,
                overall,
            )
            .await;
    }
}

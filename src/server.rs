//! Starting and stopping a server: a function of its configuration, listener and shutdown
//! signal, so tests run servers in-process on port 0.

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

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

/// Serves Flight on `listener` until `shutdown` resolves, then lets in-flight calls finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = build_service(&config)?;
    let limit = config.limits.max_message_bytes;
    let flight = FlightServiceServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listen address: {e}")))?;
    info!(%addr, targets = ?config.resolved_targets().keys().collect::<Vec<_>>(), "quiver is serving Arrow Flight");
    tonic::transport::Server::builder()
        .add_service(flight)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::internal(format!("the Flight server failed: {e}")))?;
    info!("quiver stopped");
    Ok(())
}

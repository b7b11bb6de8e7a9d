//! The Arrow Flight service: DoPut streams into a target's writer, DoGet streams a stored
//! asset back, and the catalog answers ListFlights, GetFlightInfo, GetSchema and DoAction.
//!
//! This file is the Flight adapter: each handler authenticates, decodes the descriptor or
//! ticket, authorizes and calls the use case, which reads top-down in a file of its own:
//! `put.rs` (DoPut), `get.rs` (DoGet, GetFlightInfo, ListFlights) and `actions.rs` (DoAction).
//! `locks.rs` holds what puts and readers wait on; `recovery.rs` settles puts interrupted
//! between a target's commit and the catalog's.

mod actions;
mod get;
mod locks;
mod put;
mod records;
pub mod recovery;
mod sql;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Span, info};

use self::locks::{Locks, PutLimits};
use crate::auth::{Access, Authenticator};
use crate::catalog::Catalog;
use crate::config::{LimitsConfig, SqlConfig};
use crate::metrics::Metrics;
use crate::protocol;
use crate::targets::registry::Targets;
use crate::wire::get_encode::IpcMessage;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A DoPut request's messages, as tonic or the server's own DoPut route decoded them.
pub type PutStream = BoxStream<FlightData>;

/// The Quiver Flight service.
#[derive(Clone)]
pub struct QuiverService {
    inner: Arc<Inner>,
}

struct Inner {
    targets: Targets,
    catalog: Arc<dyn Catalog>,
    locks: Locks,
    metrics: Arc<Metrics>,
    auth: Authenticator,
    limits: PutLimits,
    sql: SqlConfig,
}

impl QuiverService {
    /// The configured targets.
    pub fn targets(&self) -> &Targets {
        &self.inner.targets
    }

    pub fn new(
        targets: Targets,
        catalog: Arc<dyn Catalog>,
        metrics: Arc<Metrics>,
        auth: Authenticator,
        limits: &LimitsConfig,
        sql: &SqlConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets,
                catalog,
                locks: Locks::default(),
                metrics,
                auth,
                limits: PutLimits::new(limits),
                sql: sql.clone(),
            }),
        }
    }
}

fn once<T: Send + 'static>(item: T) -> BoxStream<T> {
    futures::stream::once(async move { Ok(item) }).boxed()
}

#[tonic::async_trait]
impl FlightService for QuiverService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let auth = &self.inner.auth;
        if auth.is_open() {
            return Err(Status::unimplemented(
                "this server has no authentication configured; call it without a handshake",
            ));
        }
        let principal = auth.authenticate(request.metadata())?;
        let token = auth.issue_session(&principal);
        info!(user = %principal.name, "handshake: issued a session token");
        let mut response = Response::new(once(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        }));
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("a session token is not valid metadata"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(target, prefix))]
    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let criteria = protocol::parse_criteria(&request.into_inner().expression)?;
        let infos = self.inner.list_flights(&caller, &criteria).await?;
        let infos = infos.into_iter().map(|info| info.map_err(Status::from));
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    #[tracing::instrument(skip_all, fields(target, asset))]
    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let descriptor = request.into_inner();
        if let Some(command) = sql::command(&descriptor.cmd) {
            let info = self
                .inner
                .sql_flight_info(&caller, command?, descriptor)
                .await?;
            return Ok(Response::new(info));
        }
        let cmd = protocol::parse_descriptor(&descriptor)?;
        Span::current().record("target", cmd.target.as_str());
        Span::current().record("asset", cmd.asset.to_string());
        self.inner.targets.get(&cmd.target)?;
        caller.check(Access::Read, &cmd.target, &cmd.asset)?;
        Ok(Response::new(self.inner.flight_info_for(&cmd).await?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo is not supported; use GetFlightInfo, which answers at once",
        ))
    }

    #[tracing::instrument(skip_all, fields(target, asset))]
    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let descriptor = request.into_inner();
        let schema = if let Some(command) = sql::command(&descriptor.cmd) {
            let info = self
                .inner
                .sql_flight_info(&caller, command?, descriptor)
                .await?;
            return Ok(Response::new(SchemaResult {
                schema: info.schema,
            }));
        } else {
            let cmd = protocol::parse_descriptor(&descriptor)?;
            Span::current().record("target", cmd.target.as_str());
            Span::current().record("asset", cmd.asset.to_string());
            self.inner.targets.get(&cmd.target)?;
            caller.check(Access::Read, &cmd.target, &cmd.asset)?;
            self.inner.record(&cmd.target, &cmd.asset).await?.schema
        };
        let options = IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&schema, &options)
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let messages = self.read(request).await?;
        let stream = messages
            .map_ok(IpcMessage::into_flight_data)
            .map_err(Status::from);
        Ok(Response::new(stream.boxed()))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let (metadata, _, input) = request.into_parts();
        let result = self.put(&metadata, input.boxed()).await?;
        Ok(Response::new(once(result)))
    }

    #[tracing::instrument(skip_all, fields(action))]
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let action = request.into_inner();
        Span::current().record("action", action.r#type.as_str());
        if let Some(result) = self.inner.sql_act(&caller, &action).await {
            return Ok(Response::new(once(result?)));
        }
        let result = self.inner.act(&caller, action).await?;
        Ok(Response::new(once(result)))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.inner.auth.authenticate(request.metadata())?;
        let actions = self.inner.list_actions();
        Ok(Response::new(futures::stream::iter(actions).boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "DoExchange is not supported; write with DoPut and read with DoGet",
        ))
    }
}

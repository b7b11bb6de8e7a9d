//! The Arrow Flight service: DoPut streams into a target's writer, DoGet streams a stored
//! asset back, and the catalog answers ListFlights, GetFlightInfo, GetSchema and DoAction.
//!
//! Every handler reads top-down: decode the descriptor or ticket, find the target, do the work.

mod decode;
mod encode;
pub mod recovery;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, info, warn};

use self::decode::BatchDecoder;
pub use self::encode::IpcMessage;
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::auth::{Access, Authenticator, Principal};
use crate::catalog::{AssetRecord, Catalog, Commit, Layout, PendingPut};
use crate::config::LimitsConfig;
use crate::error::{Error, Result, echo};
use crate::metrics::{Metrics, status_label};
use crate::protocol::{self, AssetCommand, AssetTicket, Mode, PutSummary};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SchemaPolicy, SendableBatchStream, Target, Targets,
    WriteRequest, evolve,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A DoPut request's messages, as tonic or the server's own DoPut route decoded them.
pub type PutStream = BoxStream<FlightData>;

/// The actions DoAction understands, with the description ListActions gives.
const ACTIONS: [(&str, &str); 4] = [
    (
        "delete",
        "Delete an asset or one partition of it. Body: {\"target\": T, \"asset\": A, \"partition\": P?}",
    ),
    (
        "describe",
        "Catalog record and write history of an asset. Body: {\"target\": T, \"asset\": A}",
    ),
    (
        "list-targets",
        "The configured targets with their kind and supported modes. Body: empty",
    ),
    (
        "health",
        "Health of every target; status is \"ok\" or \"degraded\". Body: empty",
    ),
];

/// Per-asset locks: puts to one asset run one at a time, and the short commit step excludes
/// readers that are opening the asset, so a reader always pins one whole version.
/// Caps on puts running at once, for the server and per target.
struct PutLimits {
    /// How long a put waits for the client's next message.
    idle: std::time::Duration,
    /// The most bytes one batch may hold decoded (`limits.max_message_bytes`).
    batch_bytes: usize,
    all: Arc<tokio::sync::Semaphore>,
    max_all: usize,
    per_target: usize,
    by_target: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl PutLimits {
    fn new(limits: &LimitsConfig) -> Self {
        Self {
            idle: std::time::Duration::from_secs(limits.put_idle_timeout_secs),
            batch_bytes: limits.max_message_bytes,
            all: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_puts)),
            max_all: limits.max_concurrent_puts,
            per_target: limits.max_concurrent_puts_per_target,
            by_target: Mutex::default(),
        }
    }

    /// Admits a put into `target` now, or refuses it with RESOURCE_EXHAUSTED.
    fn admit(&self, target: &str) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let busy = |scope: String, limit: usize| Error::ResourceExhausted {
            message: format!(
                "{limit} puts are already running {scope}, the configured limit; retry shortly \
                 (limits.max_concurrent_puts / max_concurrent_puts_per_target)"
            ),
        };
        let target_semaphore = Arc::clone(
            self.by_target
                .lock()
                .expect("limits map")
                .entry(target.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_target))),
        );
        let one = target_semaphore
            .try_acquire_owned()
            .map_err(|_| busy(format!("into target '{target}'"), self.per_target))?;
        let all = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| busy("on this server".to_string(), self.max_all))?;
        Ok((one, all))
    }
}

#[derive(Default)]
struct Locks {
    by_asset: Mutex<HashMap<(String, String), Arc<AssetLock>>>,
}

#[derive(Default)]
struct AssetLock {
    put: tokio::sync::Mutex<()>,
    visible: tokio::sync::RwLock<()>,
}

impl Locks {
    fn get(&self, target: &str, asset: &AssetKey) -> Arc<AssetLock> {
        let mut map = self.by_asset.lock().expect("lock map");
        Arc::clone(
            map.entry((target.to_string(), asset.to_string()))
                .or_default(),
        )
    }
}

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
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets,
                catalog,
                locks: Locks::default(),
                metrics,
                auth,
                limits: PutLimits::new(limits),
            }),
        }
    }

    /// DoPut's work: streams the request's batches into the target and commits, answering
    /// with the put's summary. The server's own DoPut route (see `server::do_put`) and the
    /// `FlightService` method both call it.
    #[tracing::instrument(skip_all, fields(target, asset, rows))]
    pub async fn put(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        input: PutStream,
    ) -> Result<PutResult, Status> {
        // The put runs in its own task so that a client going away cannot drop it half-way:
        // the task sees the broken stream and aborts the writer.
        let caller = self.inner.auth.authenticate(metadata)?;
        let inner = Arc::clone(&self.inner);
        let span = Span::current();
        let started = Instant::now();
        let deadline = call_deadline(metadata, started);
        let seen = Arc::new(OnceLock::new());
        let task_seen = Arc::clone(&seen);
        // Dropped with this handler: tells the task the call is over.
        let (_call, alive) = oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                let mut call = Call {
                    handler: alive,
                    deadline,
                };
                inner.put(input, &caller, &task_seen, &mut call).await
            }
            .instrument(span),
        );
        let result = task.await.map_err(Error::from).and_then(|r| r);
        let (rows, bytes) = match &result {
            Ok(s) if !s.replayed => (s.rows, s.bytes),
            _ => (0, 0),
        };
        self.inner.metrics.put_finished(
            seen.get().map_or("unknown", String::as_str),
            status_label(&result),
            started.elapsed(),
            rows,
            bytes,
        );
        let summary = result?;
        let reply = serde_json::to_vec(&summary).map_err(|e| Status::internal(e.to_string()))?;
        Ok(PutResult {
            app_metadata: reply.into(),
        })
    }

    /// DoGet's work: the asset's Arrow IPC messages, whose bodies share the read batches'
    /// buffers. The server frames them itself (see `server::do_get`); the `FlightService`
    /// method copies each into one `FlightData`.
    #[tracing::instrument(skip_all, fields(target, asset))]
    pub async fn read(
        &self,
        request: Request<Ticket>,
    ) -> Result<futures::stream::BoxStream<'static, Result<IpcMessage>>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let ticket = protocol::parse_ticket(&request.into_inner().ticket)?;
        let seen = OnceLock::new();
        let opened = self.inner.open(ticket, &caller, &seen).await;
        self.inner.metrics.get_opened(
            seen.get().map_or("unknown", String::as_str),
            status_label(&opened),
        );
        let (schema, batches) = opened?;
        // Dictionaries are sent as dictionaries: a read returns exactly the types written.
        Ok(encode::encode(schema, batches))
    }
}

/// The put's error for a broken or undecodable request stream. The stream's own status
/// says whose fault it was: a message over the size limit or malformed is the client's, any
/// other break (a reset, a lost connection) means the client went away.
fn flight_error(err: FlightError) -> Error {
    match err {
        FlightError::Tonic(status) => {
            let message = status.message().to_string();
            match status.code() {
                tonic::Code::ResourceExhausted => Error::ResourceExhausted { message },
                tonic::Code::InvalidArgument => Error::invalid_data(message),
                _ => Error::Cancelled { message },
            }
        }
        other => Error::invalid_data(format!("the DoPut stream could not be decoded: {other}")),
    }
}

fn same_fields(a: &Schema, b: &Schema) -> bool {
    a.fields() == b.fields()
}

/// The DoPut call a put task serves. Once the client has given up on the call, a put must not
/// commit, even when its request stream looks finished: a client whose deadline passed may
/// still close the stream cleanly, and a reset stream can end like a finished one. The call is
/// over when tonic dropped its handler (the client cancelled or the connection broke) or when
/// the deadline the client sent in `grpc-timeout` has passed.
struct Call {
    handler: oneshot::Receiver<()>,
    deadline: Option<Instant>,
}

impl Call {
    /// Why the call is over, if it is.
    fn ended(&mut self) -> Option<Error> {
        if let Err(oneshot::error::TryRecvError::Closed) = self.handler.try_recv() {
            return Some(Error::Cancelled {
                message: "the call ended before the put finished; nothing was written".into(),
            });
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Error::Timeout {
                message: "the put's deadline (grpc-timeout) passed before it finished; \
                          nothing was written"
                    .into(),
            });
        }
        None
    }
}

/// The deadline a client sent as `grpc-timeout` (e.g. `500m`), from when the call arrived.
fn call_deadline(metadata: &tonic::metadata::MetadataMap, arrived: Instant) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

impl Inner {
    /// Runs one DoPut from the first message to the commit.
    async fn put(
        &self,
        mut input: PutStream,
        caller: &Principal,
        seen: &OnceLock<String>,
        call: &mut Call,
    ) -> Result<PutSummary> {
        let started = Instant::now();
        let first = match input.next().await {
            Some(Ok(first)) => first,
            None => {
                return Err(Error::invalid_request(
                    "the DoPut stream is empty; send a FlightDescriptor and a schema first",
                ));
            }
            Some(Err(status)) => return Err(flight_error(FlightError::Tonic(Box::new(status)))),
        };
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Error::invalid_request(
                "the first DoPut message has no FlightDescriptor; name the target and asset in it",
            )
        })?;
        let cmd = protocol::parse_descriptor(&descriptor)?;
        Span::current().record("target", cmd.target.as_str());
        Span::current().record("asset", cmd.asset.to_string());
        let target = Arc::clone(self.targets.get(&cmd.target)?);
        caller.check(Access::Write, &cmd.target, &cmd.asset)?;
        let _ = seen.set(cmd.target.clone());
        let _admitted = self.limits.admit(&cmd.target)?;
        let _running = self.metrics.put_running(&cmd.target);
        if !target.modes().contains(&cmd.mode) {
            return Err(Error::UnsupportedMode {
                target: cmd.target.clone(),
                mode: cmd.mode.to_string(),
                supported_by: self.targets.supporting(cmd.mode),
            });
        }

        let rest = input.map_err(|status| FlightError::Tonic(Box::new(status)));
        let mut decoder = BatchDecoder::new(
            futures::stream::once(async { Ok(first) }).chain(rest),
            self.limits.batch_bytes,
        );
        let schema = match decoder.next().await {
            Some(Ok(decoded)) => match decoded {
                DecodedPayload::Schema(schema) => schema,
                _ => {
                    return Err(Error::invalid_request(
                        "the first DoPut message carries no schema; send the schema before any batch",
                    ));
                }
            },
            Some(Err(FlightError::Tonic(status))) => {
                return Err(flight_error(FlightError::Tonic(status)));
            }
            Some(Err(e)) => {
                return Err(Error::invalid_data(format!(
                    "the DoPut stream does not start with an Arrow schema message ({e}); \
                     send the schema first, e.g. with the descriptor in the same message"
                )));
            }
            None => {
                return Err(Error::invalid_request(
                    "the DoPut stream ended before a schema was sent",
                ));
            }
        };
        check_columns(&cmd, &schema)?;

        let lock = self.locks.get(&cmd.target, &cmd.asset);
        let _put = lock.put.lock().await;
        // Other servers sharing the catalog write this asset one at a time too.
        let _shared = self.catalog.lock_asset(&cmd.target, &cmd.asset).await?;
        // A put to this asset that was interrupted between its target's commit and the
        // catalog's is settled first, so this one starts from what is really stored (and a retry of
        // it finds its idempotency key).
        self.settle_pending(target.as_ref(), &lock, &cmd.asset).await?;
        if let Some(key) = &cmd.idempotency_key
            && let Some(previous) = self.catalog.replay(&cmd.target, &cmd.asset, key).await?
        {
            drain(&mut decoder).await?;
            info!(version = previous.version, "replayed an idempotent put");
            return Ok(previous);
        }
        let existing = self.catalog.get(&cmd.target, &cmd.asset).await?;
        self.check_against_existing(&cmd, target.as_ref(), &schema, existing.as_ref())
            .await?;
        let partition_column = partition_columns_for(&cmd, existing.as_ref())?;
        let evolving = target.schema_policy() == SchemaPolicy::Evolve
            && (cmd.mode != Mode::Overwrite || cmd.partition.is_some());
        let schema_after = match &existing {
            Some(record) if evolving => evolve(&record.schema, &schema, &cmd.asset)?,
            _ => Arc::clone(&schema),
        };

        let put_id = uuid::Uuid::new_v4().to_string();
        let request = WriteRequest {
            asset: cmd.asset.clone(),
            mode: cmd.mode,
            partition: cmd.partition.clone(),
            partition_column: partition_column.clone(),
            key: cmd.key.clone(),
            options: cmd.options.clone(),
            schema: Arc::clone(&schema_after),
            existing: existing.as_ref().map(|r| Arc::clone(&r.schema)),
            put_id: put_id.clone(),
        };
        let mut writer = target.begin(&request, Arc::clone(&schema)).await?;
        let pumped = pump(&mut decoder, writer.as_mut(), self.limits.idle)
            .await
            .and_then(|rows| call.ended().map_or(Ok(rows), Err));
        let prepared = match pumped {
            Ok(rows) => writer.prepare().await.map(|mark| (rows, mark)),
            Err(e) => Err(e),
        };
        let (rows, mark) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    warn!(error = %abort, "aborting a failed put also failed");
                }
                return Err(e);
            }
        };

        // The commit protocol: the catalog holds the put as pending while the target commits,
        // so a crash between the two commits is settled later from what the target holds.
        let _visible = lock.visible.write().await;
        let mut commit = Commit {
            target: cmd.target.clone(),
            asset: cmd.asset.clone(),
            schema: schema_after,
            partition: cmd.partition.clone(),
            mode: cmd.mode,
            rows,
            bytes: 0,
            location: target.location(&cmd.asset, cmd.partition.as_ref()),
            asset_location: target.location(&cmd.asset, None),
            duration_ms: 0,
            idempotency_key: cmd.idempotency_key.clone(),
            total_rows: None,
            partition_columns: partition_column,
            put_id: Some(put_id.clone()),
        };
        let pending = PendingPut {
            id: put_id,
            commit: commit.clone(),
            mark,
            started_at: chrono::Utc::now(),
        };
        if let Err(e) = self.catalog.begin_put(&pending).await {
            if let Err(abort) = writer.abort().await {
                warn!(error = %abort, "aborting a failed put also failed");
            }
            return Err(e);
        }
        let written = match writer.commit().await {
            Ok(written) => written,
            Err(e) => {
                // The commit may have landed all the same (a connection lost on COMMIT).
                self.settle_now(target.as_ref(), pending).await;
                return Err(e);
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        commit.rows = written.rows;
        commit.bytes = written.bytes;
        commit.location = written.location.clone();
        commit.total_rows = written.total_rows;
        commit.duration_ms = duration_ms;
        let version = match self.catalog.commit(commit).await {
            Ok(version) => version,
            Err(e) => {
                self.settle_now(target.as_ref(), pending).await;
                return Err(e);
            }
        };
        Span::current().record("rows", written.rows);
        info!(
            version,
            rows = written.rows,
            bytes = written.bytes,
            "put committed"
        );
        Ok(PutSummary {
            asset: cmd.asset.to_string(),
            target: cmd.target,
            mode: cmd.mode,
            partition: cmd.partition.as_ref().map(Partition::to_json),
            rows: written.rows,
            bytes: written.bytes,
            location: written.location,
            version,
            duration_ms,
            idempotency_key: cmd.idempotency_key,
            replayed: false,
        })
    }

    /// Settles the asset's puts that were interrupted between their target's commit and the
    /// catalog's. The caller holds the asset's put locks.
    async fn settle_pending(
        &self,
        target: &dyn Target,
        lock: &AssetLock,
        asset: &AssetKey,
    ) -> Result<()> {
        let interrupted = self.catalog.pending_puts(target.name(), Some(asset)).await?;
        if !interrupted.is_empty() {
            let _visible = lock.visible.write().await;
            for put in interrupted {
                recovery::settle(target, self.catalog.as_ref(), put).await?;
            }
        }
        Ok(())
    }

    /// Settles a put whose commit failed half-way, while its locks are held; if that fails
    /// too, the put stays pending until the next start or the next put to the asset.
    async fn settle_now(&self, target: &dyn Target, pending: PendingPut) {
        let id = pending.id.clone();
        if let Err(e) = recovery::settle(target, self.catalog.as_ref(), pending).await {
            warn!(put = %id, error = %e, "could not settle a failed commit yet");
        }
    }

    /// Refuses a put that conflicts with the asset's layout, its other partitions' schema, or
    /// a neighbouring asset's files.
    async fn check_against_existing(
        &self,
        cmd: &AssetCommand,
        target: &dyn Target,
        schema: &Schema,
        existing: Option<&AssetRecord>,
    ) -> Result<()> {
        let layout = Layout::of(cmd.partition.as_ref());
        if let Some(record) = existing {
            if record.layout != layout {
                return Err(Error::failed_precondition(format!(
                    "asset '{}' in target '{}' is {}, but this put is {}; delete the asset first \
                     to change how it is partitioned",
                    cmd.asset,
                    cmd.target,
                    record.layout.describe(),
                    layout.describe()
                )));
            }
            let others = record
                .partitions
                .iter()
                .any(|p| Some(&p.partition) != cmd.partition.as_ref());
            if target.schema_policy() == SchemaPolicy::Exact
                && layout.is_partitioned()
                && others
                && !same_fields(&record.schema, schema)
            {
                return Err(Error::failed_precondition(format!(
                    "partition schema differs from the other partitions of asset '{}' in target \
                     '{}': stored {:?}, sent {:?}; every partition of an asset shares one schema",
                    cmd.asset,
                    cmd.target,
                    field_summary(&record.schema),
                    field_summary(schema)
                )));
            }
            return Ok(());
        }
        // A new asset must not share storage with another: the same table, or (for files)
        // a path inside a partitioned asset's directory.
        let name = cmd.asset.to_string();
        let storage = target.storage_id(&cmd.asset);
        let neighbours = self.catalog.list(Some(&cmd.target), None).await?;
        for other in neighbours {
            let other_name = other.asset.to_string();
            let inside_partitioned =
                other.layout.is_partitioned() && name.starts_with(&format!("{other_name}/"));
            let holds_others =
                layout.is_partitioned() && other_name.starts_with(&format!("{name}/"));
            let same_storage = target.storage_id(&other.asset) == storage;
            if inside_partitioned || holds_others || same_storage {
                return Err(Error::failed_precondition(format!(
                    "asset '{name}' would share storage with asset '{other_name}' in target '{}' \
                     (the same table, or a file under a partitioned asset's directory); choose another name",
                    cmd.target
                )));
            }
        }
        Ok(())
    }

    /// Opens an asset for DoGet.
    async fn open(
        &self,
        ticket: AssetTicket,
        caller: &Principal,
        seen: &OnceLock<String>,
    ) -> Result<(SchemaRef, SendableBatchStream)> {
        let target_name = self
            .resolve_target(ticket.target.as_deref(), &ticket.asset)
            .await?;
        caller.check(Access::Read, &target_name, &ticket.asset)?;
        Span::current().record("target", target_name.as_str());
        Span::current().record("asset", ticket.asset.to_string());
        let target = Arc::clone(self.targets.get(&target_name)?);
        let _ = seen.set(target_name.clone());
        let lock = self.locks.get(&target_name, &ticket.asset);
        let _visible = lock.visible.read().await;
        let record = self.record(&target_name, &ticket.asset).await?;
        if let Some(version) = ticket.version
            && version != record.version
        {
            return Err(Error::failed_precondition(format!(
                "the ticket is for version {version} of asset '{}' in target '{target_name}', \
                 but the current version is {}; get a new ticket with GetFlightInfo",
                ticket.asset, record.version
            )));
        }
        let partitions = select_partitions(&record, &ticket.partitions)?;
        let projection = match &ticket.columns {
            None => None,
            Some(columns) => Some(project(&record, columns)?),
        };
        let schema = match &projection {
            Some(indices) => Arc::new(
                record
                    .schema
                    .project(indices)
                    .map_err(|e| Error::internal(e.to_string()))?,
            ),
            None => Arc::clone(&record.schema),
        };
        let batches = target
            .read(&ReadRequest {
                asset: ticket.asset.clone(),
                schema: Arc::clone(&record.schema),
                partitions,
                projection,
                partition_columns: record.partition_columns.clone(),
            })
            .await?;
        // Batches carry exactly the recorded schema, metadata included, whatever the reader
        // attached to them.
        let exact = Arc::clone(&schema);
        let metrics = Arc::clone(&self.metrics);
        let stream = batches.map(move |batch| {
            let batch = batch?;
            metrics.batch_read(
                &target_name,
                batch.num_rows() as u64,
                batch.get_array_memory_size() as u64,
            );
            RecordBatch::try_new(Arc::clone(&exact), batch.columns().to_vec()).map_err(|e| {
                Error::internal(format!(
                    "a stored batch does not match the catalog schema: {e}"
                ))
            })
        });
        Ok((schema, Box::pin(stream)))
    }

    async fn record(&self, target: &str, asset: &AssetKey) -> Result<AssetRecord> {
        self.catalog
            .get(target, asset)
            .await?
            .ok_or_else(|| Error::AssetNotFound {
                target: target.to_string(),
                asset: asset.to_string(),
                partition: None,
            })
    }

    /// The target a ticket means: the one it names, or the only one holding the asset.
    async fn resolve_target(&self, target: Option<&str>, asset: &AssetKey) -> Result<String> {
        if let Some(target) = target {
            return Ok(target.to_string());
        }
        let name = asset.to_string();
        let holders: Vec<String> = self
            .catalog
            .list(None, Some(&name))
            .await?
            .into_iter()
            .filter(|r| r.asset == *asset)
            .map(|r| r.target)
            .collect();
        match holders.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::AssetNotFound {
                target: "any".to_string(),
                asset: name,
                partition: None,
            }),
            many => Err(Error::invalid_request(format!(
                "asset '{name}' exists in targets {}; name one with \"target\"",
                many.join(", ")
            ))),
        }
    }

    fn flight_info(&self, record: &AssetRecord, partitions: Vec<Partition>) -> Result<FlightInfo> {
        let (rows, bytes) = if partitions.is_empty() {
            (record.rows, record.bytes)
        } else {
            record
                .partitions
                .iter()
                .filter(|p| partitions.contains(&p.partition))
                .fold((0, 0), |(r, b), p| (r + p.rows, b + p.bytes))
        };
        let ticket = protocol::encode_ticket(&AssetTicket {
            target: Some(record.target.clone()),
            asset: record.asset.clone(),
            partitions,
            columns: None,
            version: Some(record.version),
        });
        let kind = self
            .targets
            .get(&record.target)
            .map(|t| t.kind())
            .unwrap_or("unconfigured");
        FlightInfo::new()
            .try_with_schema(&record.schema)
            .map_err(|e| Error::internal(format!("encoding a schema: {e}")))
            .map(|info| {
                info.with_descriptor(protocol::path_descriptor(&record.target, &record.asset))
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_total_records(rows as i64)
                    .with_total_bytes(bytes as i64)
                    .with_ordered(true)
                    .with_app_metadata(describe_record(record, kind).to_string())
            })
    }

    async fn delete(&self, action: protocol::AssetAction) -> Result<serde_json::Value> {
        let target = Arc::clone(self.targets.get(&action.target)?);
        let lock = self.locks.get(&action.target, &action.asset);
        let _put = lock.put.lock().await;
        // Other servers sharing the catalog write this asset one at a time too.
        let _shared = self
            .catalog
            .lock_asset(&action.target, &action.asset)
            .await?;
        self.settle_pending(target.as_ref(), &lock, &action.asset)
            .await?;
        let _visible = lock.visible.write().await;
        let record = self.record(&action.target, &action.asset).await?;
        let partitions: Vec<Partition> = match &action.partition {
            None => record
                .partitions
                .iter()
                .map(|p| p.partition.clone())
                .collect(),
            Some(_) if !record.layout.is_partitioned() => {
                return Err(Error::invalid_request(format!(
                    "asset '{}' in target '{}' is not partitioned; delete it without \"partition\"",
                    action.asset, action.target
                )));
            }
            Some(p) => {
                if !record.partitions.iter().any(|r| &r.partition == p) {
                    return Err(Error::AssetNotFound {
                        target: action.target.clone(),
                        asset: action.asset.to_string(),
                        partition: Some(p.to_string()),
                    });
                }
                vec![p.clone()]
            }
        };
        let whole = action.partition.is_none();
        // The catalog goes first: once it forgets the data, no reader can open it.
        let forget: &[Partition] = if whole { &[] } else { &partitions };
        self.catalog
            .delete(&action.target, &action.asset, forget)
            .await?;
        target
            .delete(&DeleteRequest {
                asset: action.asset.clone(),
                whole,
                partitions,
                partition_columns: record.partition_columns.clone(),
            })
            .await?;
        info!(target = %action.target, asset = %action.asset, "deleted");
        Ok(json!({
            "deleted": action.asset.to_string(),
            "target": action.target,
            "partition": action.partition.as_ref().map(Partition::to_json),
        }))
    }

    async fn describe(&self, action: protocol::AssetAction) -> Result<serde_json::Value> {
        let target = self.targets.get(&action.target)?;
        let record = self.record(&action.target, &action.asset).await?;
        let history = self.catalog.history(&action.target, &action.asset).await?;
        let mut value = describe_record(&record, target.kind());
        value["schema"] = schema_json(&record.schema);
        value["history"] =
            serde_json::to_value(history).map_err(|e| Error::internal(e.to_string()))?;
        Ok(value)
    }

    fn list_targets(&self) -> serde_json::Value {
        let targets: Vec<_> = self
            .targets
            .iter()
            .map(|t| {
                json!({
                    "name": t.name(),
                    "kind": t.kind(),
                    "modes": t.modes().iter().map(Mode::as_str).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!(targets)
    }

    async fn health(&self) -> serde_json::Value {
        let mut targets = serde_json::Map::new();
        let mut healthy = true;
        for target in self.targets.iter() {
            let state = match target.healthcheck().await {
                Ok(()) => json!({"ok": true}),
                Err(e) => {
                    healthy = false;
                    json!({"ok": false, "error": e.to_string()})
                }
            };
            targets.insert(target.name().to_string(), state);
        }
        json!({"status": if healthy { "ok" } else { "degraded" }, "targets": targets})
    }
}

/// Feeds every decoded batch to the writer; returns the rows fed.
async fn pump(
    decoder: &mut BatchDecoder,
    writer: &mut dyn AssetWriter,
    idle: std::time::Duration,
) -> Result<u64> {
    let mut rows = 0;
    loop {
        let Ok(next) = tokio::time::timeout(idle, decoder.next()).await else {
            return Err(Error::Timeout {
                message: format!(
                    "the client sent nothing for {} s in the middle of a put, which was aborted \
                     (limits.put_idle_timeout_secs)",
                    idle.as_secs()
                ),
            });
        };
        let Some(item) = next else { break };
        match item.map_err(flight_error)? {
            DecodedPayload::RecordBatch(batch) => {
                rows += batch.num_rows() as u64;
                writer.write(batch).await?
            }
            DecodedPayload::Schema(_) => {
                return Err(Error::invalid_data(
                    "the DoPut stream sent a second schema; one put carries one schema",
                ));
            }
            DecodedPayload::None => {}
        }
    }
    Ok(rows)
}

/// Reads and discards the rest of a stream (an idempotent replay still consumes its input).
async fn drain(decoder: &mut BatchDecoder) -> Result<()> {
    while let Some(item) = decoder.next().await {
        item.map_err(flight_error)?;
    }
    Ok(())
}

/// The partition columns a put uses: the ones it names, which must match those recorded for
/// the asset, or else the recorded ones.
fn partition_columns_for(
    cmd: &AssetCommand,
    existing: Option<&AssetRecord>,
) -> Result<Option<PartitionColumns>> {
    let recorded = existing.and_then(|r| r.partition_columns.as_ref());
    match (&cmd.partition_column, recorded) {
        (Some(named), Some(recorded)) if named != recorded => {
            Err(Error::failed_precondition(format!(
                "asset '{}' in target '{}' is partitioned on {:?}, not {:?}; delete the asset \
                 first to partition it differently",
                cmd.asset,
                cmd.target,
                recorded.columns(),
                named.columns()
            )))
        }
        (Some(named), _) => Ok(Some(named.clone())),
        (None, recorded) if cmd.partition.is_some() => Ok(recorded.cloned()),
        (None, _) => Ok(None),
    }
}

fn check_columns(cmd: &AssetCommand, schema: &Schema) -> Result<()> {
    if schema.fields().is_empty() {
        return Err(Error::invalid_request(format!(
            "the schema sent for asset '{}' has no columns; an asset needs at least one column",
            cmd.asset
        )));
    }
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let missing = |column: &str| {
        Error::invalid_request(format!(
            "column '{}' named in the descriptor is not in the schema of asset '{}'; \
             columns: {}",
            echo(column),
            cmd.asset,
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let partition_columns = cmd
        .partition_column
        .as_ref()
        .map(|p| p.columns())
        .unwrap_or_default();
    for column in cmd.key.iter().map(String::as_str).chain(partition_columns) {
        if schema.field_with_name(column).is_err() {
            return Err(missing(column));
        }
    }
    Ok(())
}

fn select_partitions(record: &AssetRecord, wanted: &[Partition]) -> Result<Option<Vec<Partition>>> {
    if !record.layout.is_partitioned() {
        if !wanted.is_empty() {
            return Err(Error::invalid_request(format!(
                "asset '{}' in target '{}' is not partitioned; read it without \"partition\"",
                record.asset, record.target
            )));
        }
        return Ok(None);
    }
    if wanted.is_empty() {
        return Ok(Some(
            record
                .partitions
                .iter()
                .map(|p| p.partition.clone())
                .collect(),
        ));
    }
    for p in wanted {
        if !record.partitions.iter().any(|r| &r.partition == p) {
            return Err(Error::AssetNotFound {
                target: record.target.clone(),
                asset: record.asset.to_string(),
                partition: Some(p.to_string()),
            });
        }
    }
    Ok(Some(wanted.to_vec()))
}

fn project(record: &AssetRecord, columns: &[String]) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            record.schema.index_of(c).map_err(|_| {
                Error::invalid_request(format!(
                    "column '{}' is not in asset '{}'; columns: {}",
                    echo(c),
                    record.asset,
                    field_summary(&record.schema)
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .collect()
}

fn field_summary(schema: &Schema) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}

fn schema_json(schema: &Schema) -> serde_json::Value {
    json!(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect::<Vec<_>>()
    )
}

fn describe_record(record: &AssetRecord, kind: &str) -> serde_json::Value {
    let partitions: Vec<_> = record
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition.to_json(),
                "rows": p.rows,
                "bytes": p.bytes,
                "location": p.location,
                "version": p.version,
                "updated_at": p.updated_at.to_rfc3339(),
            })
        })
        .collect();
    json!({
        "target": record.target,
        "kind": kind,
        "asset": record.asset.to_string(),
        "version": record.version,
        "rows": record.rows,
        "bytes": record.bytes,
        "location": record.location,
        "created_at": record.created_at.to_rfc3339(),
        "updated_at": record.updated_at.to_rfc3339(),
        "partitioned": record.layout.is_partitioned(),
        "partitions": partitions,
    })
}

fn json_result(value: &impl Serialize) -> Result<arrow_flight::Result, Status> {
    let body = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(arrow_flight::Result::new(body))
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
        let records = self
            .inner
            .catalog
            .list(criteria.target.as_deref(), criteria.prefix.as_deref())
            .await?;
        // Only what the caller may read is listed.
        let infos = records
            .iter()
            .filter(|r| caller.may(Access::Read, &r.target, &r.asset))
            .map(|r| self.inner.flight_info(r, Vec::new()).map_err(Status::from))
            .collect::<Vec<_>>();
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    #[tracing::instrument(skip_all, fields(target, asset))]
    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let cmd = protocol::parse_descriptor(&request.into_inner())?;
        Span::current().record("target", cmd.target.as_str());
        Span::current().record("asset", cmd.asset.to_string());
        self.inner.targets.get(&cmd.target)?;
        caller.check(Access::Read, &cmd.target, &cmd.asset)?;
        let record = self.inner.record(&cmd.target, &cmd.asset).await?;
        let partitions = select_partitions(&record, cmd.partition.as_slice())?
            .filter(|_| cmd.partition.is_some())
            .unwrap_or_default();
        Ok(Response::new(self.inner.flight_info(&record, partitions)?))
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
        let cmd = protocol::parse_descriptor(&request.into_inner())?;
        Span::current().record("target", cmd.target.as_str());
        Span::current().record("asset", cmd.asset.to_string());
        self.inner.targets.get(&cmd.target)?;
        caller.check(Access::Read, &cmd.target, &cmd.asset)?;
        let record = self.inner.record(&cmd.target, &cmd.asset).await?;
        let options = IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&record.schema, &options)
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
        let value = match action.r#type.as_str() {
            "delete" => {
                let action = protocol::parse_asset_action("delete", &action.body)?;
                caller.check(Access::Write, &action.target, &action.asset)?;
                self.inner.delete(action).await?
            }
            "describe" => {
                let action = protocol::parse_asset_action("describe", &action.body)?;
                caller.check(Access::Read, &action.target, &action.asset)?;
                self.inner.describe(action).await?
            }
            "list-targets" => self.inner.list_targets(),
            "health" => self.inner.health().await,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action '{other}'; actions: {}",
                    ACTIONS.map(|(name, _)| name).join(", ")
                )));
            }
        };
        Ok(Response::new(once(json_result(&value)?)))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.inner.auth.authenticate(request.metadata())?;
        let actions = ACTIONS.map(|(name, description)| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: description.to_string(),
            })
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_become_deadlines() {
        let now = Instant::now();
        let deadline = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            call_deadline(&metadata, now).map(|d| d - now)
        };
        assert_eq!(deadline("500m"), Some(Duration::from_millis(500)));
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline("30u"), Some(Duration::from_micros(30)));
        assert_eq!(deadline("12x"), None);
        assert_eq!(deadline("m"), None);
        assert_eq!(
            call_deadline(&tonic::metadata::MetadataMap::new(), now),
            None
        );
    }
}

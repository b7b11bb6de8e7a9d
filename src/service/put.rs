//! DoPut: a put from its first message to the commit, and the checks that refuse it before
//! any data moves.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow_flight::PutResult;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_flight::sql::Command;
use arrow_schema::Schema;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::oneshot;
use tonic::Status;
use tracing::{Instrument, Span, info, warn};

use super::locks::{AssetLock, Call, call_deadline};
use super::records::field_summary;
use super::{Inner, PutStream, QuiverService, recovery};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::auth::{Access, Principal};
use crate::catalog::{AssetRecord, Commit, Layout, PendingPut};
use crate::error::{Error, Result, echo};
use crate::metrics::status_label;
use crate::protocol::{self, AssetCommand, Mode, PutSummary};
use crate::targets::{AssetWriter, SchemaPolicy, Target, WriteRequest, evolve};
use crate::wire::put_decode::BatchDecoder;

impl QuiverService {
    /// DoPut's work: streams the request's batches into the target and commits, answering
    /// with the put's summary. The server's own DoPut route (see `server::routes`) and the
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
        let mut input = input;
        let mut first = input.next().await;
        // A Flight SQL ingest is a put whose descriptor the ingest command stands for; other
        // Flight SQL commands bind a prepared statement's parameters.
        let mut ingest = false;
        if let Some(Ok(message)) = &mut first
            && let Some(command) = message
                .flight_descriptor
                .as_ref()
                .and_then(|d| super::sql::command(&d.cmd))
        {
            match command? {
                Command::CommandStatementIngest(cmd) => {
                    message.flight_descriptor =
                        Some(self.inner.ingest_descriptor(&caller, &cmd).await?);
                    ingest = true;
                }
                command => {
                    let first = first.and_then(Result::ok).expect("checked above");
                    return Ok(self.inner.sql_put(command, first, input).await?);
                }
            }
        }
        let input: PutStream = futures::stream::iter(first).chain(input).boxed();
        let inner = Arc::clone(&self.inner);
        let span = Span::current();
        let started = Instant::now();
        let deadline = call_deadline(metadata, started);
        let seen = Arc::new(OnceLock::new());
        let task_seen = Arc::clone(&seen);
        // Dropped with this handler: tells the task the call is over.
        let (_call, alive) = oneshot::channel::<()>();
        let metrics = Arc::clone(&self.inner.metrics);
        // The task counts the put: a client that goes away drops this handler before the put
        // ends, and its put must be counted all the same.
        let task = tokio::spawn(
            async move {
                let mut call = Call {
                    handler: alive,
                    deadline,
                };
                let result = inner.put(input, &caller, &task_seen, &mut call).await;
                let (rows, bytes) = match &result {
                    Ok(s) if !s.replayed => (s.rows, s.bytes),
                    _ => (0, 0),
                };
                inner.metrics.put_finished(
                    task_seen.get().map_or("unknown", String::as_str),
                    status_label(&result),
                    started.elapsed(),
                    rows,
                    bytes,
                );
                result
            }
            .instrument(span),
        );
        let result = match task.await {
            Ok(result) => result,
            Err(panicked) => {
                let result = Err(Error::from(panicked));
                metrics.put_finished(
                    seen.get().map_or("unknown", String::as_str),
                    status_label(&result),
                    started.elapsed(),
                    0,
                    0,
                );
                result
            }
        };
        let summary = result?;
        if ingest {
            return Ok(super::sql::ingested(&summary));
        }
        let reply = serde_json::to_vec(&summary).map_err(|e| Status::internal(e.to_string()))?;
        Ok(PutResult {
            app_metadata: reply.into(),
        })
    }
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
        self.settle_pending(target.as_ref(), &lock, &cmd.asset)
            .await?;
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
                abort_quietly(writer).await;
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
            abort_quietly(writer).await;
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
    pub(super) async fn settle_pending(
        &self,
        target: &dyn Target,
        lock: &AssetLock,
        asset: &AssetKey,
    ) -> Result<()> {
        let interrupted = self
            .catalog
            .pending_puts(target.name(), Some(asset))
            .await?;
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
}

/// Aborts the writer of a put that failed; the put's own error is the one to report.
async fn abort_quietly(writer: Box<dyn AssetWriter>) {
    if let Err(abort) = writer.abort().await {
        warn!(error = %abort, "aborting a failed put also failed");
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

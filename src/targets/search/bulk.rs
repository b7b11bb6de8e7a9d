//! Streaming puts: rows are encoded off the runtime into `_bulk` bodies of a set size, several
//! bodies in flight; rejected documents are counted and reported at commit.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use bytes::Bytes;
use elasticsearch::http::Method;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::warn;

use super::cluster::{Cluster, error_reason};
use super::mapping::RowSource;
use crate::error::{Error, Result, echo_list};
use crate::protocol::Mode;
use crate::targets::util::first_non_finite;
use crate::targets::{AssetWriter, SendableBatchStream, WriteRequest, WriteSummary};

/// Attempts of one `_bulk` body the cluster answers with 429 or 5xx, or does not answer.
const BULK_ATTEMPTS: u32 = 8;
/// First wait before a retry; doubled each time, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Rejected documents whose reasons a failed put reports.
const REPORTED_REASONS: usize = 3;

/// Where a put's documents go.
#[derive(Debug, Clone)]
pub(super) struct Destination {
    pub alias: String,
    pub partition_alias: Option<String>,
    /// The index written to.
    pub index: String,
    /// Whether `index` was created by this put (and is deleted if it fails).
    pub created: bool,
    /// Indices the new one replaces at commit.
    pub replaces: Vec<String>,
}

/// The bulk action a row becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// A new document, or the whole of the one with the same `_id`.
    Index,
    /// `update` + `doc_as_upsert`: the row's fields replace those of the document with the
    /// same `_id`, or make a new one.
    Update,
    /// A copied document (`index` when it has no `_id`): a second one with the same `_id` is a
    /// conflict, reported rather than applied.
    Create,
}

/// Where a document's read order comes from.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Microseconds since the epoch when the put began, then the row's number in the put.
    Put(i64),
    /// The batch's last column: the order the document was given when first written.
    Recorded,
}

/// How each row becomes a bulk action.
struct Actions {
    index: String,
    key: Vec<String>,
    verb: Verb,
    order: Order,
}

/// One `_bulk` body and where each action starts in it.
#[derive(Default)]
struct Body {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl Body {
    fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn freeze(self) -> FrozenBody {
        FrozenBody {
            bytes: Bytes::from(self.bytes),
            starts: self.starts,
        }
    }
}

struct FrozenBody {
    bytes: Bytes,
    starts: Vec<usize>,
}

impl FrozenBody {
    fn action(&self, i: usize) -> &[u8] {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        &self.bytes[self.starts[i]..end]
    }

    /// A body of only the actions `items`.
    fn select(&self, items: &[usize]) -> FrozenBody {
        let mut body = Body::default();
        for &i in items {
            body.starts.push(body.bytes.len());
            body.bytes.extend_from_slice(self.action(i));
        }
        body.freeze()
    }
}

/// What the cluster did with one body.
#[derive(Default)]
struct Outcome {
    rejected: u64,
    reasons: Vec<String>,
    /// `create` actions refused because a document with their `_id` exists.
    conflicts: u64,
    /// The first of those `_id`s.
    conflicting: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.rejected += other.rejected;
        self.conflicts += other.conflicts;
        for reason in other.reasons {
            if self.reasons.len() < REPORTED_REASONS {
                self.reasons.push(reason);
            }
        }
        for id in other.conflicting {
            if self.conflicting.len() < REPORTED_REASONS {
                self.conflicting.push(id);
            }
        }
    }
}

pub(super) struct SearchWriter {
    cluster: Arc<Cluster>,
    asset: String,
    destination: Destination,
    actions: Arc<Actions>,
    refresh: bool,
    location: String,
    bulk_bytes: usize,
    concurrency: usize,
    open: Body,
    in_flight: JoinSet<Result<Outcome>>,
    outcome: Outcome,
    rows: u64,
    bytes: u64,
    /// Set once commit or abort ran; a writer dropped before that deletes its new index.
    finished: bool,
}

impl SearchWriter {
    pub fn new(
        cluster: Arc<Cluster>,
        destination: Destination,
        req: &WriteRequest,
        refresh: bool,
        location: String,
    ) -> Self {
        let put = chrono::Utc::now().timestamp_micros();
        let actions = Arc::new(Actions {
            index: destination.index.clone(),
            key: req.key.clone(),
            verb: match req.mode {
                Mode::Upsert => Verb::Update,
                _ => Verb::Index,
            },
            order: Order::Put(put),
        });
        let (bulk_bytes, concurrency) = cluster.bulk_limits();
        Self {
            cluster,
            asset: req.asset.to_string(),
            destination,
            actions,
            refresh,
            location,
            bulk_bytes,
            concurrency,
            open: Body::default(),
            in_flight: JoinSet::new(),
            outcome: Outcome::default(),
            rows: 0,
            bytes: 0,
            finished: false,
        }
    }

    /// Sends a full body, first waiting for a slot.
    async fn send(&mut self, body: Body) -> Result<()> {
        while self.in_flight.len() >= self.concurrency {
            self.collect_one().await?;
        }
        let body = body.freeze();
        self.bytes += body.bytes.len() as u64;
        let cluster = Arc::clone(&self.cluster);
        self.in_flight
            .spawn(async move { send_bulk(&cluster, body).await });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<()> {
        if let Some(done) = self.in_flight.join_next().await {
            self.outcome.merge(done??);
        }
        Ok(())
    }

    /// Encodes a batch off the runtime and sends the bodies it fills.
    async fn encode_and_send(
        &mut self,
        actions: &Arc<Actions>,
        batch: RecordBatch,
        first_row: u64,
    ) -> Result<()> {
        let actions = Arc::clone(actions);
        let open = std::mem::take(&mut self.open);
        let limit = self.bulk_bytes;
        let (open, full) =
            tokio::task::spawn_blocking(move || encode(&actions, &batch, first_row, open, limit))
                .await??;
        self.open = open;
        for body in full {
            self.send(body).await?;
        }
        Ok(())
    }

    /// Sends the open body and waits for every body in flight.
    async fn flush(&mut self) -> Result<()> {
        let open = std::mem::take(&mut self.open);
        if !open.is_empty() {
            self.send(open).await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Copies documents read from the index this put replaces, each read with its order
    /// field as the last column, into the new index with `_id`s from the put's key; the put's
    /// own rows come after them. Two documents with the same key fail the put: a keyed index
    /// holds one document per key.
    pub async fn copy(&mut self, mut documents: SendableBatchStream) -> Result<()> {
        let actions = Arc::new(Actions {
            index: self.destination.index.clone(),
            key: self.actions.key.clone(),
            verb: Verb::Create,
            order: Order::Recorded,
        });
        while let Some(batch) = documents.next().await {
            self.encode_and_send(&actions, batch?, 0).await?;
        }
        self.flush().await?;
        let outcome = std::mem::take(&mut self.outcome);
        if outcome.conflicts > 0 {
            let key = echo_list(self.actions.key.iter().map(String::as_str));
            return Err(Error::failed_precondition(format!(
                "asset '{}' in {} target '{}' cannot be upserted by key {key:?}: {} of its \
                 documents repeat the key of an earlier one (e.g. {}), and an upsert keeps one \
                 document per key; nothing was changed. Overwrite the asset without the \
                 duplicates (a put with this \"key\" stores one document per key), then upsert",
                self.asset,
                self.cluster.flavour.kind(),
                self.cluster.target(),
                outcome.conflicts,
                echo_list(outcome.conflicting.iter().map(String::as_str)),
            )));
        }
        if outcome.rejected > 0 {
            return Err(Error::storage(
                self.cluster.target(),
                "copying documents into an index keyed by the upsert's key",
                format!(
                    "{} documents of asset '{}' were rejected; first reasons: {}",
                    outcome.rejected,
                    self.asset,
                    outcome.reasons.join("; ")
                ),
            ));
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<WriteSummary> {
        self.flush().await?;
        if self.outcome.rejected > 0 {
            let kept = if self.destination.created {
                "nothing was stored"
            } else {
                "the documents accepted before the failure stay in the index"
            };
            return Err(Error::invalid_data(format!(
                "{} of {} documents were rejected by {} target '{}' ({kept}); first reasons: {}",
                self.outcome.rejected,
                self.rows,
                self.cluster.flavour.kind(),
                self.cluster.target(),
                self.outcome.reasons.join("; ")
            )));
        }
        let d = &self.destination;
        let mut visible = true;
        if d.created {
            self.cluster.finish_load(&d.index).await?;
            let mut actions = vec![json!({"add": {"index": d.index, "alias": d.alias}})];
            if let Some(p) = &d.partition_alias {
                actions.push(json!({"add": {"index": d.index, "alias": p}}));
            }
            actions.extend(
                d.replaces
                    .iter()
                    .map(|old| json!({"remove_index": {"index": old}})),
            );
            self.cluster.update_aliases(actions).await?;
        } else if self.refresh {
            self.cluster.refresh(&d.index).await?;
        } else {
            visible = false;
        }
        let total_rows = if visible {
            Some(self.cluster.count(&d.alias).await?)
        } else {
            None
        };
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: self.location.clone(),
            total_rows,
        })
    }

    async fn discard(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if self.destination.created
            && let Err(e) = self
                .cluster
                .delete_indices(std::slice::from_ref(&self.destination.index))
                .await
        {
            warn!(index = %self.destination.index, error = %e, "could not delete the index of a failed put");
        }
    }
}

#[async_trait]
impl AssetWriter for SearchWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
            if let Some(value) = first_non_finite(column) {
                return Err(Error::invalid_data(format!(
                    "column '{}' holds {value}, which JSON documents cannot represent; \
                     replace it with null or store the asset in the parquet or arrow target",
                    field.name()
                )));
            }
        }
        let actions = Arc::clone(&self.actions);
        let first_row = self.rows;
        self.rows += batch.num_rows() as u64;
        self.encode_and_send(&actions, batch, first_row).await
    }

    /// Waits for every `_bulk` request to be answered before the put becomes pending: a request
    /// still in flight when the server dies would, once the cluster runs it, create the put's
    /// index again after the next start has settled the put and deleted that index.
    async fn prepare(&mut self) -> Result<String> {
        if let Err(e) = self.flush().await {
            self.discard().await;
            self.finished = true;
            return Err(e);
        }
        Ok(String::new())
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        let result = self.finish().await;
        if result.is_err() {
            self.discard().await;
        }
        self.finished = true;
        result
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await;
        self.finished = true;
        Ok(())
    }
}

impl Drop for SearchWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.in_flight.abort_all();
        if self.destination.created
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let cluster = Arc::clone(&self.cluster);
            let index = self.destination.index.clone();
            handle.spawn(async move {
                if let Err(e) = cluster.delete_indices(std::slice::from_ref(&index)).await {
                    warn!(%index, error = %e, "could not delete the index of an abandoned put");
                }
            });
        }
    }
}

/// Appends the batch's actions to `open`, cutting off bodies of `limit` bytes.
fn encode(
    actions: &Actions,
    batch: &RecordBatch,
    first_row: u64,
    mut open: Body,
    limit: usize,
) -> Result<(Body, Vec<Body>)> {
    let (batch, order) = match actions.order {
        Order::Put(put) => {
            let rows = first_row..first_row + batch.num_rows() as u64;
            (batch.clone(), rows.map(|row| (put, row)).collect())
        }
        Order::Recorded => split_order(batch)?,
    };
    let source = RowSource::new(&batch);
    let mut rows = source
        .encoder()
        .map_err(|e| Error::invalid_data(format!("cannot encode a batch as documents: {e}")))?;
    let ids = document_ids(&actions.key, &batch, actions.verb == Verb::Create)?;
    let index = serde_json::to_string(&actions.index).expect("a string serializes");
    let mut full = Vec::new();
    for i in 0..batch.num_rows() {
        let out = &mut open.bytes;
        open.starts.push(out.len());
        let id = ids.as_ref().and_then(|ids| ids[i].as_ref());
        let verb = match (actions.verb, id) {
            (Verb::Update, _) => "update",
            (Verb::Create, Some(_)) => "create",
            (Verb::Index | Verb::Create, _) => "index",
        };
        out.extend_from_slice(format!("{{\"{verb}\":{{\"_index\":{index}").as_bytes());
        if let Some(id) = id {
            out.extend_from_slice(b",\"_id\":");
            out.extend_from_slice(
                serde_json::to_string(id)
                    .expect("a string serializes")
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b"}}\n");
        let update = actions.verb == Verb::Update;
        if update {
            out.extend_from_slice(b"{\"doc\":");
        }
        let (put, row) = order[i];
        rows.encode(i, put, row, out);
        if update {
            out.extend_from_slice(b",\"doc_as_upsert\":true}");
        }
        out.push(b'\n');
        if out.len() >= limit {
            full.push(std::mem::take(&mut open));
        }
    }
    Ok((open, full))
}

/// The batch without its last column, the order field, and the order each row had.
fn split_order(batch: &RecordBatch) -> Result<(RecordBatch, Vec<(i64, u64)>)> {
    let last = batch.num_columns() - 1;
    let order = batch.column(last).as_struct();
    let (puts, rows) = (
        order.column(0).as_primitive::<Int64Type>(),
        order.column(1).as_primitive::<Int64Type>(),
    );
    // A document written by another tool may lack the field: it sorts first.
    let value = |column: &arrow_array::Int64Array, i: usize| {
        if column.is_valid(i) {
            column.value(i)
        } else {
            0
        }
    };
    let order = (0..batch.num_rows())
        .map(|i| (value(puts, i), value(rows, i) as u64))
        .collect();
    let fields: Vec<usize> = (0..last).collect();
    let rest = batch
        .project(&fields)
        .map_err(|e| Error::internal(format!("cannot drop the order column: {e}")))?;
    Ok((rest, order))
}

/// `_id`s from the key columns: the value itself for one column, a JSON array of the values
/// for several. `None` without a key (the cluster assigns ids). A null in a key column is
/// refused unless `nulls` allows it; such a row then has no `_id` (no upsert can name it).
fn document_ids(
    key: &[String],
    batch: &RecordBatch,
    nulls: bool,
) -> Result<Option<Vec<Option<String>>>> {
    if key.is_empty() {
        return Ok(None);
    }
    let options = FormatOptions::default();
    let mut columns = Vec::new();
    for name in key {
        let column = match batch.column_by_name(name) {
            Some(column) => column,
            // A key column the copied documents do not have yet: none of them has a key.
            None if nulls => return Ok(Some(vec![None; batch.num_rows()])),
            None => {
                return Err(Error::invalid_data(format!(
                    "key column '{name}' is missing from a batch"
                )));
            }
        };
        if column.null_count() > 0 && !nulls {
            return Err(Error::invalid_data(format!(
                "key column '{name}' holds nulls; every document needs a key to be upserted"
            )));
        }
        columns.push(column);
    }
    let formatters = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid_data(format!("cannot format a key column: {e}")))?;
    let ids = (0..batch.num_rows())
        .map(|row| {
            if columns.iter().any(|c| c.is_null(row)) {
                return None;
            }
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            Some(match values.as_slice() {
                [one] => one.clone(),
                _ => serde_json::to_string(&values).expect("strings serialize"),
            })
        })
        .collect();
    Ok(Some(ids))
}

#[derive(Deserialize)]
struct BulkReply {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default, rename = "_id")]
    id: Option<String>,
}

fn transient(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Sleeps `backoff`, then doubles it up to [`MAX_BACKOFF`].
async fn wait(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Sends one body, retrying what the cluster could not take yet.
async fn send_bulk(cluster: &Cluster, mut body: FrozenBody) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=BULK_ATTEMPTS {
        let last = attempt == BULK_ATTEMPTS;
        let sent = cluster
            .send(
                Method::Post,
                "/_bulk?filter_path=errors,items.*.status,items.*.error,items.*._id",
                Some(body.bytes.clone()),
                true,
                "loading documents",
            )
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) if last => return Err(e),
            Err(e) => {
                warn!(error = %e, attempt, "bulk request failed; retrying");
                wait(&mut backoff).await;
                continue;
            }
        };
        let status = reply.status.as_u16();
        if transient(status) && !last {
            wait(&mut backoff).await;
            continue;
        }
        if reply.status.as_u16() == 400 {
            // The request as a whole was refused for what it holds (an id too long, say).
            let refused = cluster.refused("a bulk request", &reply);
            return Err(Error::invalid_data(refused.to_string()));
        }
        if !reply.status.is_success() {
            return Err(cluster.refused("a bulk request", &reply));
        }
        let parsed: BulkReply = serde_json::from_slice(&reply.body).map_err(|e| {
            Error::storage(
                cluster.target(),
                "loading documents",
                format!("unreadable bulk reply: {e}"),
            )
        })?;
        if !parsed.errors {
            return Ok(outcome);
        }
        let mut retry = Vec::new();
        for (i, item) in parsed.items.iter().enumerate() {
            let Some((verb, item)) = item.iter().next() else {
                continue;
            };
            if item.status < 300 {
                continue;
            }
            if verb == "create" && item.status == 409 {
                outcome.conflicts += 1;
                if outcome.conflicting.len() < REPORTED_REASONS {
                    outcome
                        .conflicting
                        .push(item.id.clone().unwrap_or_default());
                }
                continue;
            }
            if transient(item.status) && !last {
                retry.push(i);
                continue;
            }
            outcome.rejected += 1;
            if outcome.reasons.len() < REPORTED_REASONS {
                let reason = item
                    .error
                    .as_ref()
                    .and_then(|e| error_reason(&json!({ "error": e })))
                    .unwrap_or_else(|| format!("status {}", item.status));
                outcome.reasons.push(reason);
            }
        }
        if retry.is_empty() {
            return Ok(outcome);
        }
        body = body.select(&retry);
        wait(&mut backoff).await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::super::mapping::ORDER_FIELD;
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn upserts_carry_ids_and_bodies_are_cut_at_the_limit() {
        let actions = Actions {
            index: "sales.quiver-1".into(),
            key: vec!["id".into()],
            verb: Verb::Update,
            order: Order::Put(5),
        };
        let (open, full) = encode(&actions, &batch(), 10, Body::default(), 150).unwrap();
        let all: Vec<Body> = full.into_iter().chain([open]).collect();
        assert!(all.len() >= 2, "a small limit cuts several bodies");
        assert_eq!(all.iter().map(|b| b.starts.len()).sum::<usize>(), 3);
        let text = String::from_utf8(all[0].bytes.clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"update": {"_index": "sales.quiver-1", "_id": "1"}})
        );
        assert_eq!(
            lines[1],
            json!({"doc": {"id": 1, "name": "a", "__quiver": {"put": 5, "row": 10}},
                   "doc_as_upsert": true})
        );
    }

    #[test]
    fn composite_keys_are_json_arrays_and_null_keys_are_refused() {
        let ids = document_ids(&["id".into(), "name".into()], &batch(), false)
            .unwrap()
            .unwrap();
        assert_eq!(ids[0].as_deref(), Some(r#"["1","a"]"#));
        let nulls = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let err = document_ids(&["id".into()], &nulls, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'id' holds nulls"), "{err}");
        let copied = document_ids(&["id".into()], &nulls, true).unwrap().unwrap();
        assert_eq!(copied, [Some("1".to_string()), None]);
    }

    /// Copied documents keep their order and get `_id`s from the key; one without a key value
    /// is indexed with an `_id` the cluster picks.
    #[test]
    fn copies_are_created_with_their_recorded_order() {
        let order = StructArray::from(vec![
            (
                Arc::new(Field::new("put", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(7), Some(7), None])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("row", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(0), Some(1), None])) as ArrayRef,
            ),
        ]);
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(ORDER_FIELD, order.data_type().clone(), true),
        ]);
        let documents = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(3), Some(4), None])),
                Arc::new(order),
            ],
        )
        .unwrap();
        let actions = Actions {
            index: "i".into(),
            key: vec!["id".into()],
            verb: Verb::Create,
            order: Order::Recorded,
        };
        let (open, _) = encode(&actions, &documents, 0, Body::default(), usize::MAX).unwrap();
        let lines: Vec<Value> = String::from_utf8(open.bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                json!({"create": {"_index": "i", "_id": "3"}}),
                json!({"id": 3, "__quiver": {"put": 7, "row": 0}}),
                json!({"create": {"_index": "i", "_id": "4"}}),
                json!({"id": 4, "__quiver": {"put": 7, "row": 1}}),
                json!({"index": {"_index": "i"}}),
                json!({"__quiver": {"put": 0, "row": 0}}),
            ]
        );
    }

    #[test]
    fn a_body_keeps_only_the_selected_actions() {
        let actions = Actions {
            index: "i".into(),
            key: vec![],
            verb: Verb::Index,
            order: Order::Put(1),
        };
        let (open, _) = encode(&actions, &batch(), 0, Body::default(), usize::MAX).unwrap();
        let frozen = open.freeze();
        let selected = frozen.select(&[2]);
        assert_eq!(selected.starts, vec![0]);
        let text = String::from_utf8(selected.bytes.to_vec()).unwrap();
        assert!(text.contains("\"name\":\"c\""), "{text}");
        assert!(!text.contains("\"name\":\"a\""), "{text}");
    }
}

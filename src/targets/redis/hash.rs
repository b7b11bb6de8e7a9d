//! The hash layout: one Redis hash per row at `<pointer>:g<N>:<key values>`, one field per
//! non-null column in the string forms of `values`.
//!
//! An overwrite writes a new generation and swaps the pointer to it. An upsert writes its rows
//! into a staging generation, then its commit renames each staged hash onto the live
//! generation's key in the same MULTI/EXEC as the pointer update, so readers see all of an
//! upsert or none of it. Rows go out in pipelines of `pipeline` commands, a few in flight.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::LargeBinaryBuilder;
use arrow_array::{Array, LargeBinaryArray, RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use redis::Pipeline;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::Layout;
use super::keys::{Version, push_key_value};
use super::stage::{Stage, common_fields};
use super::store::{Pointer, PointerState, Store, field, ints};
use super::values;
use crate::error::{Error, Result};
use crate::targets::{AssetWriter, SendableBatchStream, WriteSummary};

/// Pipelines in flight per put.
const IN_FLIGHT: usize = 4;
/// Rows per batch a read returns.
const READ_BATCH_ROWS: usize = 8192;

/// What one encoded batch sends.
struct Encoded {
    pipelines: Vec<Pipeline>,
    /// The row keys after the generation prefix, for an upsert's renames.
    suffixes: Vec<Vec<u8>>,
    bytes: u64,
}

/// Writes a put's rows as hashes of the staged generation.
pub(super) struct HashWriter {
    stage: Stage,
    schema: SchemaRef,
    key_columns: Vec<String>,
    key_indices: Vec<usize>,
    /// Commands per pipeline.
    pipeline: usize,
    /// For an upsert: the live generation its rows are renamed into, and the staged keys.
    upsert: Option<(Version, HashSet<Vec<u8>>)>,
    /// Pipelines sent and not yet answered; each answers how many rows replaced a row of the
    /// same key sent earlier in the put.
    in_flight: VecDeque<JoinHandle<Result<u64>>>,
    rows: u64,
    bytes: u64,
    repeated: u64,
    /// Upsert: how many staged rows replace a live row.
    replacing: u64,
    first_write: Option<Instant>,
    partitioned: bool,
}

impl HashWriter {
    pub fn new(
        stage: Stage,
        schema: SchemaRef,
        key_columns: Vec<String>,
        pipeline: usize,
        upsert_into: Option<Version>,
        partitioned: bool,
    ) -> Result<Self> {
        let key_indices = key_columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    Error::invalid_request(format!("key column '{c}' is not in the schema"))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            stage,
            schema,
            key_columns,
            key_indices,
            pipeline,
            upsert: upsert_into.map(|live| (live, HashSet::new())),
            in_flight: VecDeque::new(),
            rows: 0,
            bytes: 0,
            repeated: 0,
            replacing: 0,
            first_write: None,
            partitioned,
        })
    }

    /// Waits for the oldest pipeline in flight.
    async fn settle_one(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            self.repeated += task.await??;
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Checks that no row has expired before the commit could make it visible.
    fn check_ttl(&self) -> Result<()> {
        if let (Some(ttl), Some(first)) = (self.stage.ttl, self.first_write)
            && first.elapsed().as_secs() >= ttl
        {
            return Err(Error::failed_precondition(format!(
                "this put took longer than its ttl of {ttl} s, so its first rows have expired \
                 already; put with a longer ttl (option `ttl`) or in smaller puts"
            )));
        }
        Ok(())
    }
}

/// Builds the pipelines for one batch: per row `DEL`, `HSET` with every non-null column and,
/// with a ttl, `EXPIRE`.
fn encode_batch(
    batch: &RecordBatch,
    key_indices: &[usize],
    prefix: &str,
    ttl: Option<u64>,
    commands: usize,
    keep_suffixes: bool,
) -> Result<Encoded> {
    let schema = batch.schema();
    let columns: Vec<LargeBinaryArray> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| values::encode(f, a).map_err(Error::invalid_data))
        .collect::<Result<_>>()?;
    for &k in key_indices {
        if let Some(row) = (0..batch.num_rows()).find(|&r| columns[k].is_null(r)) {
            return Err(Error::invalid_data(format!(
                "key column '{}' holds nulls (row {row} of a batch); every row of the hash \
                 layout needs a key",
                schema.field(k).name()
            )));
        }
    }
    let names: Vec<&[u8]> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_bytes())
        .collect();
    let per_row = if ttl.is_some() { 3 } else { 2 };
    let rows_per_pipeline = (commands / per_row).max(1);
    let mut encoded = Encoded {
        pipelines: Vec::new(),
        suffixes: Vec::new(),
        bytes: 0,
    };
    let mut pipe = redis::pipe();
    let mut key = Vec::new();
    for row in 0..batch.num_rows() {
        key.clear();
        key.extend_from_slice(prefix.as_bytes());
        key.push(b':');
        let start = key.len();
        for (i, &k) in key_indices.iter().enumerate() {
            if i > 0 {
                key.push(b':');
            }
            push_key_value(columns[k].value(row), &mut key);
        }
        if keep_suffixes {
            encoded.suffixes.push(key[start..].to_vec());
        }
        pipe.cmd("DEL").arg(&key);
        let hset = pipe.cmd("HSET").arg(&key);
        for (name, column) in names.iter().zip(&columns) {
            if column.is_valid(row) {
                let value = column.value(row);
                encoded.bytes += (name.len() + value.len()) as u64;
                hset.arg(*name).arg(value);
            }
        }
        hset.ignore();
        if let Some(seconds) = ttl {
            pipe.cmd("EXPIRE").arg(&key).arg(seconds).ignore();
        }
        if (row + 1) % rows_per_pipeline == 0 {
            encoded
                .pipelines
                .push(std::mem::replace(&mut pipe, redis::pipe()));
        }
    }
    if !pipe.is_empty() {
        encoded.pipelines.push(pipe);
    }
    Ok(encoded)
}

#[async_trait]
impl AssetWriter for HashWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.first_write.get_or_insert_with(Instant::now);
        self.rows += batch.num_rows() as u64;
        let key_indices = self.key_indices.clone();
        let prefix = self.stage.version.prefix();
        let (ttl, commands, keep) = (self.stage.ttl, self.pipeline, self.upsert.is_some());
        let encoded = tokio::task::spawn_blocking(move || {
            encode_batch(&batch, &key_indices, &prefix, ttl, commands, keep)
        })
        .await??;
        self.bytes += encoded.bytes;
        if let Some((_, staged)) = &mut self.upsert {
            staged.extend(encoded.suffixes);
        }
        for pipe in encoded.pipelines {
            if self.in_flight.len() >= IN_FLIGHT {
                self.settle_one().await?;
            }
            let store = Arc::clone(&self.stage.store);
            self.in_flight.push_back(tokio::spawn(async move {
                let deleted: Vec<redis::Value> = store.pipe("writing rows", &pipe).await?;
                Ok(ints(deleted))
            }));
        }
        Ok(())
    }

    /// Waits for every row to be stored; an upsert also counts the live rows it replaces.
    async fn prepare(&mut self) -> Result<String> {
        self.settle_all().await?;
        self.check_ttl()?;
        if let Some((live, staged)) = &self.upsert {
            let live_prefix = live.prefix();
            let keys: Vec<Vec<u8>> = staged.iter().cloned().collect();
            for batch in keys.chunks(self.pipeline) {
                let mut pipe = redis::pipe();
                for suffix in batch {
                    pipe.cmd("EXISTS")
                        .arg([live_prefix.as_bytes(), b":", suffix].concat());
                }
                let found: Vec<redis::Value> = self
                    .stage
                    .store
                    .pipe("counting the rows an upsert replaces", &pipe)
                    .await?;
                self.replacing += ints(found);
            }
        }
        Ok(self.stage.mark())
    }

    /// One MULTI/EXEC: an overwrite points the pointer at its generation; an upsert renames
    /// each staged hash onto the live generation and updates the pointer's counts.
    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        self.settle_all().await?;
        self.check_ttl()?;
        let stage = &self.stage;
        let pointer = stage.pointer_key();
        let distinct = self.rows - self.repeated;
        let mut tx = stage.transaction();
        let (total, retire) = match (&self.upsert, &stage.previous) {
            (Some((live, staged)), Some(previous)) => {
                let (from, to) = (stage.version.prefix(), live.prefix());
                for suffix in staged {
                    tx.cmd("RENAME")
                        .arg([from.as_bytes(), b":", suffix].concat())
                        .arg([to.as_bytes(), b":", suffix].concat())
                        .ignore();
                }
                let rows = previous.rows + distinct - self.replacing;
                let fields = vec![
                    (field::ROWS, rows.to_string()),
                    (field::BYTES, (previous.bytes + self.bytes).to_string()),
                    (field::PUT, stage.put_id.clone()),
                ];
                tx.cmd("HSET").arg(pointer).arg(&fields).ignore();
                (rows, Vec::new())
            }
            _ => {
                let mut fields = common_fields(
                    Layout::Hash,
                    distinct,
                    self.bytes,
                    &stage.put_id,
                    &self.schema,
                );
                fields.push((field::GENERATION, stage.version.number.to_string()));
                fields.push((
                    field::KEY,
                    serde_json::to_string(&self.key_columns).expect("strings serialize"),
                ));
                tx.cmd("DEL").arg(pointer).ignore();
                tx.cmd("HSET").arg(pointer).arg(&fields).ignore();
                let retire = stage
                    .previous
                    .as_ref()
                    .map(Pointer::versions)
                    .unwrap_or_default();
                (distinct, retire)
            }
        };
        stage.expiry(&mut tx, pointer);
        stage.commit(tx, &retire).await?;
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: stage.location.clone(),
            total_rows: (!self.partitioned).then_some(total),
        })
    }

    /// Waits for the pipelines in flight (a late one would write after the delete), then
    /// deletes the staged generation.
    async fn abort(mut self: Box<Self>) -> Result<()> {
        while let Some(task) = self.in_flight.pop_front() {
            let _ = task.await;
        }
        self.stage.abort().await
    }
}

/// What a hash-layout read needs besides the store.
pub(super) struct HashRead {
    pub pointer: Pointer,
    /// The columns the read returns, with their stored types.
    pub schema: SchemaRef,
    pub asset: String,
}

/// Streams a generation's rows in SCAN order. The read pins the pointer's put: if another put
/// committed meanwhile, the stream ends with [`Error::ReadConflict`].
pub(super) fn read(store: Arc<Store>, read: HashRead) -> SendableBatchStream {
    let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
    tokio::spawn(async move {
        if let Err(e) = scan_rows(&store, &read, &tx).await
            && !matches!(e, Error::Cancelled { .. })
        {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn scan_rows(
    store: &Store,
    read: &HashRead,
    tx: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let generation = read.pointer.generation();
    let prefix = format!("{}:", generation.prefix());
    // The key columns come first: a row whose key fields are all missing has expired.
    let mut fields: Vec<String> = read.pointer.key_columns.clone();
    fields.extend(read.schema.fields().iter().map(|f| f.name().clone()));
    let keys_count = read.pointer.key_columns.len();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut rows = Rows::new(read.schema.fields().len());
    let pattern = generation.pattern();
    let mut cursor = 0;
    loop {
        let (next, keys) = store.scan(&pattern, cursor).await?;
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| k.starts_with(prefix.as_bytes()) && seen.insert(k.clone()))
            .collect();
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HMGET").arg(key).arg(&fields);
            }
            let answers: Vec<Vec<Option<Vec<u8>>>> = store.pipe("reading rows", &pipe).await?;
            for values in answers {
                if values[..keys_count].iter().all(Option::is_none) {
                    continue;
                }
                rows.push(&values[keys_count..]);
                if rows.len() >= READ_BATCH_ROWS {
                    let batch = rows.finish(&read.schema, store.target())?;
                    tx.send(Ok(batch)).await.map_err(|_| gone())?;
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if rows.len() > 0 {
        let batch = rows.finish(&read.schema, store.target())?;
        tx.send(Ok(batch)).await.map_err(|_| gone())?;
    }
    match store.pointer(&read.pointer.key).await? {
        PointerState::Quiver(now) if now.put == read.pointer.put => Ok(()),
        _ => Err(Error::ReadConflict {
            target: store.target().to_string(),
            asset: read.asset.clone(),
        }),
    }
}

/// The reader went away.
fn gone() -> Error {
    Error::Cancelled {
        message: "the reader went away".into(),
    }
}

/// Rows read and not yet returned, column by column in their stored form.
struct Rows {
    columns: Vec<LargeBinaryBuilder>,
    len: usize,
}

impl Rows {
    fn new(columns: usize) -> Self {
        Self {
            columns: (0..columns).map(|_| LargeBinaryBuilder::new()).collect(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, values: &[Option<Vec<u8>>]) {
        for (builder, value) in self.columns.iter_mut().zip(values) {
            builder.append_option(value.as_deref());
        }
        self.len += 1;
    }

    /// The buffered rows as a batch of `schema`'s exact types.
    fn finish(&mut self, schema: &SchemaRef, target: &str) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.len);
        let columns = self
            .columns
            .iter_mut()
            .zip(schema.fields())
            .map(|(builder, field)| values::decode(field, &builder.finish()))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| Error::format(target, "rebuild stored rows", e))?;
        RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| Error::format(target, "rebuild stored rows", e))
    }
}

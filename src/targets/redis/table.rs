//! The table layout: an asset as Arrow IPC streams (zstd) in string keys of at most
//! `chunk_bytes` each, written as batches arrive. Every chunk is a whole IPC stream (schema,
//! batches, end of stream), so an application can decode any chunk on its own; the pointer
//! lists the chunks in order.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{DictionaryHandling, IpcWriteOptions, StreamWriter};
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::config::Layout;
use super::stage::{Stage, common_fields};
use super::store::{Pointer, PointerState, Store, field};
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::{AssetWriter, SendableBatchStream, WriteSummary};

/// What the pointer's `format` field says a chunk holds.
const FORMAT: &str = "arrow-ipc-stream;compression=zstd";
/// Largest value Redis accepts (`proto-max-bulk-len`'s default).
const REDIS_MAX_VALUE: usize = 512 << 20;

/// Writes a put's batches into chunks of the staged version.
pub(super) struct TableWriter {
    stage: Stage,
    mode: Mode,
    schema: SchemaRef,
    chunk_bytes: usize,
    /// The chunk being filled; `None` between chunks.
    encoder: Option<StreamWriter<Vec<u8>>>,
    chunks: Vec<String>,
    rows: u64,
    bytes: u64,
    partitioned: bool,
}

impl TableWriter {
    pub fn new(
        stage: Stage,
        mode: Mode,
        schema: SchemaRef,
        chunk_bytes: usize,
        partitioned: bool,
    ) -> Self {
        Self {
            stage,
            mode,
            schema,
            chunk_bytes,
            encoder: None,
            chunks: Vec::new(),
            rows: 0,
            bytes: 0,
            partitioned,
        }
    }

    fn new_encoder(&self) -> Result<StreamWriter<Vec<u8>>> {
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::ZSTD))
            .map_err(|e| Error::internal(format!("zstd IPC compression: {e}")))?
            .with_dictionary_handling(DictionaryHandling::Delta);
        StreamWriter::try_new_with_options(Vec::new(), &self.schema, options)
            .map_err(|e| Error::invalid_data(format!("cannot write this schema as Arrow IPC: {e}")))
    }

    /// Encodes `piece` on the blocking pool, then stores the chunk if it is full.
    async fn encode(&mut self, piece: RecordBatch) -> Result<()> {
        let mut encoder = match self.encoder.take() {
            Some(encoder) => encoder,
            None => self.new_encoder()?,
        };
        let (encoder, written) = tokio::task::spawn_blocking(move || {
            let written = encoder.write(&piece);
            (encoder, written)
        })
        .await?;
        written.map_err(|e| {
            Error::format(self.stage.store.target(), "encode a batch as Arrow IPC", e)
        })?;
        if encoder.get_ref().len() >= self.chunk_bytes {
            self.store_chunk(encoder).await
        } else {
            self.encoder = Some(encoder);
            Ok(())
        }
    }

    /// Ends the chunk's stream and stores it under the next chunk key.
    async fn store_chunk(&mut self, mut encoder: StreamWriter<Vec<u8>>) -> Result<()> {
        let target = self.stage.store.target().to_string();
        let bytes = tokio::task::spawn_blocking(move || {
            encoder.finish()?;
            encoder.into_inner()
        })
        .await?
        .map_err(|e| Error::format(&target, "finish an Arrow IPC chunk", e))?;
        if bytes.len() > REDIS_MAX_VALUE {
            return Err(Error::invalid_data(format!(
                "one row of this put is larger than Redis' 512 MiB value limit ({} bytes in one \
                 chunk); store it in a file target",
                bytes.len()
            )));
        }
        let key = self.stage.version.chunk(self.chunks.len());
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(&bytes);
        self.stage
            .store
            .query::<()>("writing a chunk", &cmd)
            .await?;
        self.bytes += bytes.len() as u64;
        self.chunks.push(key);
        Ok(())
    }
}

/// Splits `batch` into slices of about `bytes` in memory each, so a chunk never grows far
/// past its size, however large the batches a client sends.
fn pieces(batch: &RecordBatch, bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Vec::new();
    }
    let size = batch.get_array_memory_size().max(1) as u128;
    let per_piece = ((bytes as u128 * rows as u128) / size).clamp(1, rows as u128) as usize;
    (0..rows)
        .step_by(per_piece)
        .map(|start| batch.slice(start, per_piece.min(rows - start)))
        .collect()
}

#[async_trait]
impl AssetWriter for TableWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        for piece in pieces(&batch, self.chunk_bytes / 4) {
            self.encode(piece).await?;
        }
        Ok(())
    }

    /// Stores the last chunk; the mark is the staged version.
    async fn prepare(&mut self) -> Result<String> {
        if let Some(encoder) = self.encoder.take() {
            self.store_chunk(encoder).await?;
        }
        Ok(self.stage.mark())
    }

    /// Points the pointer at the chunks in one MULTI/EXEC: this put's alone (overwrite) or
    /// after the current ones (append). Expiry is set on every chunk the pointer lists.
    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        if let Some(encoder) = self.encoder.take() {
            self.store_chunk(encoder).await?;
        }
        let stage = &self.stage;
        let previous = stage.previous.as_ref();
        let (chunks, rows, bytes, retire) = match previous {
            Some(p) if self.mode == Mode::Append && p.layout == Layout::Table => (
                [p.chunks.clone(), self.chunks.clone()].concat(),
                p.rows + self.rows,
                p.bytes + self.bytes,
                Vec::new(),
            ),
            Some(p) => (self.chunks.clone(), self.rows, self.bytes, p.versions()),
            None => (self.chunks.clone(), self.rows, self.bytes, Vec::new()),
        };
        let pointer = stage.pointer_key();
        let mut fields = common_fields(Layout::Table, rows, bytes, &stage.put_id, &self.schema);
        fields.push((field::VERSION, stage.version.number.to_string()));
        fields.push((
            field::CHUNKS,
            serde_json::to_string(&chunks).expect("strings serialize"),
        ));
        fields.push((field::FORMAT, FORMAT.to_string()));
        let mut tx = stage.transaction();
        tx.cmd("DEL").arg(pointer).ignore();
        tx.cmd("HSET").arg(pointer).arg(&fields).ignore();
        stage.expiry(&mut tx, pointer);
        for chunk in &chunks {
            stage.expiry(&mut tx, chunk);
        }
        stage.commit(tx, &retire).await?;
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: stage.location.clone(),
            total_rows: (!self.partitioned).then_some(rows),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.encoder.take();
        self.stage.abort().await
    }
}

/// Streams the chunks in order, decoding one while the next is fetched. A chunk that is gone
/// fails the read: with [`Error::ReadConflict`] if a commit replaced the version meanwhile,
/// else as expired.
pub(super) fn read(
    store: Arc<Store>,
    pointer: Pointer,
    projection: Option<Vec<usize>>,
    asset: String,
) -> SendableBatchStream {
    let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
    tokio::spawn(async move {
        let Pointer {
            key: pointer_key,
            put,
            chunks,
            ..
        } = pointer;
        let fetch = |key: String| fetch_chunk(&store, &pointer_key, &put, &asset, key);
        let mut next = match chunks.first() {
            Some(key) => Some(fetch(key.clone()).await),
            None => None,
        };
        for index in 0..chunks.len() {
            let bytes = match next.take().expect("the chunk was fetched") {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let decoding = tokio::task::spawn_blocking({
                let tx = tx.clone();
                let projection = projection.clone();
                let target = store.target().to_string();
                move || decode(bytes, projection, &tx, &target)
            });
            if let Some(key) = chunks.get(index + 1) {
                next = Some(fetch(key.clone()).await);
            }
            match decoding.await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// One chunk's bytes; a missing chunk is a read conflict if another put replaced the version
/// the read pinned, else an expired or foreign deletion.
async fn fetch_chunk(
    store: &Store,
    pointer_key: &str,
    put: &str,
    asset: &str,
    key: String,
) -> Result<Vec<u8>> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(&key);
    if let Some(bytes) = store
        .query::<Option<Vec<u8>>>("reading a chunk", &cmd)
        .await?
    {
        return Ok(bytes);
    }
    Err(match store.pointer(pointer_key).await? {
        PointerState::Quiver(p) if p.put != put => Error::ReadConflict {
            target: store.target().to_string(),
            asset: asset.to_string(),
        },
        _ => Error::failed_precondition(format!(
            "chunk {key} of asset '{asset}' in redis target '{}' is gone: it expired (ttl) or \
             was deleted outside Quiver; put the asset again",
            store.target()
        )),
    })
}

/// Decodes one chunk into `tx`; false once the reader is gone or the chunk failed.
fn decode(
    bytes: Vec<u8>,
    projection: Option<Vec<usize>>,
    tx: &mpsc::Sender<Result<RecordBatch>>,
    target: &str,
) -> bool {
    let fail = |e| Error::format(target, "decode a stored Arrow IPC chunk", e);
    let reader = match StreamReader::try_new(Cursor::new(bytes), projection) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.blocking_send(Err(fail(e)));
            return false;
        }
    };
    for batch in reader {
        let failed = batch.is_err();
        if tx.blocking_send(batch.map_err(fail)).is_err() || failed {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn pieces_cover_every_row_in_order() {
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from_iter_values(0..10_000)) as _),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..10_000).map(|i| format!("row {i}")),
                )) as _,
            ),
        ])
        .unwrap();
        let parts = pieces(&batch, 4096);
        assert!(parts.len() > 10, "{}", parts.len());
        let rows: usize = parts.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 10_000);
        assert_eq!(pieces(&batch, usize::MAX).len(), 1);
        assert!(pieces(&batch.slice(0, 0), 10).is_empty());
    }
}

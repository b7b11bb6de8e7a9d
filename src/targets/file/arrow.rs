//! Arrow IPC files (Feather v2): the batches as they arrived, with optional buffer compression.

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::{DictionaryHandling, FileWriter, IpcWriteOptions};
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::StreamExt;

use super::ArrowConfig;
use super::{Encoder, Format, PinnedObject, SharedBuffer, async_stream_batches, refuse_options};
use crate::error::{Error, Result};
use crate::protocol::Options;
use crate::targets::SendableBatchStream;

/// `ARROW1` at the start of an IPC file; zero padding follows up to the first message.
const MAGIC_LEN: u64 = 6;
/// How far into the file the first message may start (writers pad to at most 64 bytes).
const MAX_HEADER_LEN: u64 = 64;
/// Footer length (i32) plus `ARROW1` at the end of an IPC file.
const TRAILER_LEN: u64 = 10;

pub(crate) struct ArrowFormat {
    compression: Option<CompressionType>,
}

impl ArrowFormat {
    pub(crate) fn new(config: &ArrowConfig) -> Result<Self> {
        Ok(Self {
            compression: compression(&config.compression).map_err(Error::config)?,
        })
    }
}

/// Parses the `compression` setting of an arrow target.
pub fn compression(name: &str) -> Result<Option<CompressionType>, String> {
    match name {
        "none" => Ok(None),
        "lz4" => Ok(Some(CompressionType::LZ4_FRAME)),
        "zstd" => Ok(Some(CompressionType::ZSTD)),
        other => Err(format!(
            "compression {other:?} is not supported; use none, lz4 or zstd"
        )),
    }
}

#[async_trait]
impl Format for ArrowFormat {
    fn kind(&self) -> &'static str {
        "arrow"
    }

    fn extension(&self) -> &'static str {
        "arrow"
    }

    fn check_schema(&self, schema: &Schema) -> Result<(), String> {
        let _ = schema;
        Ok(())
    }

    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>> {
        refuse_options("arrow", options, &[])?;
        let write_options = IpcWriteOptions::default()
            .try_with_compression(self.compression)
            .map_err(|e| Error::config(format!("arrow target compression: {e}")))?
            .with_dictionary_handling(DictionaryHandling::Delta);
        let writer =
            FileWriter::try_new_with_options(out, &schema, write_options).map_err(|e| {
                Error::invalid_data(format!("cannot write this schema as Arrow IPC: {e}"))
            })?;
        Ok(Box::new(ArrowEncoder { writer }))
    }

    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream> {
        // The message stream sits between the header and the footer; reading exactly that range
        // lets a streaming decoder consume the file front to back in bounded memory.
        let target = object.target.clone();
        let size = object.size();
        let bad = |what: &str| Error::format(&target, "read an Arrow IPC file", what.to_string());
        if size < MAGIC_LEN + TRAILER_LEN {
            return Err(bad("the file is truncated"));
        }
        let head = object.bytes(0..size.min(MAX_HEADER_LEN)).await?;
        let padding = head[MAGIC_LEN as usize..]
            .iter()
            .take_while(|b| **b == 0)
            .count() as u64;
        let start = MAGIC_LEN + padding;
        let trailer = object.bytes(size - TRAILER_LEN..size).await?;
        let footer_len = i32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let end = u64::try_from(footer_len)
            .ok()
            .and_then(|len| size.checked_sub(TRAILER_LEN + len))
            .filter(|end| *end >= start)
            .ok_or_else(|| bad("the footer length is out of range"))?;
        let mut bytes = object.stream(Some(start..end)).await?;
        let stream = async_stream_batches(move |tx| async move {
            let fail = |e| Err(Error::format(&target, "read an Arrow IPC file", e));
            let mut decoder = StreamDecoder::new();
            while let Some(chunk) = bytes.next().await {
                let mut buffer = match chunk {
                    Ok(chunk) => Buffer::from(chunk),
                    Err(e) => return tx.send(Err(e)).await,
                };
                while !buffer.is_empty() {
                    match decoder.decode(&mut buffer) {
                        Ok(Some(batch)) => {
                            let batch =
                                batch
                                    .with_schema(schema.clone())
                                    .and_then(|b| match &projection {
                                        Some(p) => b.project(p),
                                        None => Ok(b),
                                    });
                            match batch {
                                Ok(batch) => tx.send(Ok(batch)).await?,
                                Err(e) => return tx.send(fail(e)).await,
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return tx.send(fail(e)).await,
                    }
                }
            }
            match decoder.finish() {
                Ok(()) => Ok(()),
                Err(e) => tx.send(fail(e)).await,
            }
        });
        Ok(Box::pin(stream))
    }
}

struct ArrowEncoder {
    writer: FileWriter<SharedBuffer>,
}

impl Encoder for ArrowEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| {
            Error::invalid_data(format!(
                "cannot encode a batch as Arrow IPC: {e}. A dictionary column must keep one \
                 dictionary (new values may only be appended) across the whole put; unify the \
                 dictionaries first (pyarrow: table.unify_dictionaries()) or use the parquet target"
            ))
        })
    }

    fn finish(&mut self) -> Result<()> {
        self.writer
            .finish()
            .map_err(|e| Error::invalid_data(format!("cannot finish the Arrow IPC file: {e}")))
    }
}

//! Parquet files, written with the Arrow schema embedded so every Arrow type reads back exactly.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;

use super::ParquetConfig;
use super::{Encoder, Format, PinnedObject, SharedBuffer, refuse_options};
use crate::error::{Error, Result};
use crate::protocol::Options;
use crate::targets::SendableBatchStream;

mod decode;
mod encode;

use encode::ParallelEncoder;

/// Rows per batch when reading back.
const READ_BATCH_ROWS: usize = 64 * 1024;

pub(crate) struct ParquetFormat {
    properties: WriterProperties,
    /// Threads sharing the columns of one file.
    threads: usize,
}

impl ParquetFormat {
    pub(crate) fn new(config: &ParquetConfig) -> Result<Self> {
        Ok(Self {
            properties: writer_properties(config).map_err(Error::config)?,
            threads: super::parallel::threads(config.threads).map_err(Error::config)?,
        })
    }
}

/// Writer settings from a target's config; the error names the bad setting.
pub fn writer_properties(config: &ParquetConfig) -> Result<WriterProperties, String> {
    let level = config.compression_level;
    let bad_level = |e: ParquetError| format!("compression_level {level:?}: {e}");
    let compression = match config.compression.as_str() {
        "none" | "uncompressed" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "lz4" => Compression::LZ4_RAW,
        "zstd" => Compression::ZSTD(match level {
            Some(l) => ZstdLevel::try_new(l as i32).map_err(bad_level)?,
            None => ZstdLevel::default(),
        }),
        "gzip" => Compression::GZIP(match level {
            Some(l) => GzipLevel::try_new(l).map_err(bad_level)?,
            None => GzipLevel::default(),
        }),
        "brotli" => Compression::BROTLI(match level {
            Some(l) => BrotliLevel::try_new(l).map_err(bad_level)?,
            None => BrotliLevel::default(),
        }),
        other => {
            return Err(format!(
                "compression {other:?} is not supported; use none, snappy, lz4, zstd, gzip or brotli"
            ));
        }
    };
    if config.row_group_size == 0 {
        return Err("row_group_size must be at least 1".to_string());
    }
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(config.row_group_size))
        .build())
}

#[async_trait]
impl Format for ParquetFormat {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    fn extension(&self) -> &'static str {
        "parquet"
    }

    fn check_schema(&self, schema: &Schema) -> Result<(), String> {
        // The embedded Arrow schema restores every type Parquet cannot name itself.
        let _ = schema;
        Ok(())
    }

    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>> {
        refuse_options("parquet", options, &[])?;
        let writer = ParallelEncoder::try_new(out, schema, self.properties.clone(), self.threads)
            .map_err(|e| {
            Error::invalid_data(format!("cannot write this schema as Parquet: {e}"))
        })?;
        Ok(Box::new(writer))
    }

    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream> {
        let reader = PinnedParquetReader { object };
        decode::read(reader, schema, projection, self.threads).await
    }
}

/// Pinned reads surface as [`Error::ReadConflict`] through ParquetError::External.
fn parquet_read_error(target: &str, err: ParquetError) -> Error {
    if let ParquetError::External(inner) = err {
        return match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::format(target, "read a Parquet file", other),
        };
    }
    Error::format(target, "read a Parquet file", err)
}

impl Encoder for ParallelEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        ParallelEncoder::write(self, batch)
            .map_err(|e| Error::invalid_data(format!("cannot encode a batch as Parquet: {e}")))
    }

    fn finish(&mut self) -> Result<()> {
        ParallelEncoder::finish(self)
            .map_err(|e| Error::invalid_data(format!("cannot finish the Parquet file: {e}")))
    }
}

/// Reads a Parquet file through a [`PinnedObject`], so every range is of one version.
#[derive(Clone)]
struct PinnedParquetReader {
    object: PinnedObject,
}

impl AsyncFileReader for PinnedParquetReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.object
                .bytes(range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.object.size();
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

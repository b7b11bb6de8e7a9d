//! The attachment, encoded while the put streams: CSV (a header line, then one line per row)
//! or one Parquet file. It grows in memory; the writer refuses the put once it passes
//! `max_bytes`.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::config::Attach;

pub enum Attachment {
    None,
    /// The CSV so far; the header goes before the first batch.
    Csv(Vec<u8>, bool),
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    /// Finished, with its bytes.
    Done(Vec<u8>),
    /// Handed to the message.
    Sent,
}

impl Attachment {
    pub fn new(kind: Attach, schema: &SchemaRef) -> Result<Self, String> {
        Ok(match kind {
            Attach::None => Self::None,
            Attach::Csv => {
                crate::targets::util::find_unsupported(schema, csv_supported)?;
                Self::Csv(Vec::new(), true)
            }
            Attach::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                Self::Parquet(Box::new(
                    ArrowWriter::try_new(Vec::new(), SchemaRef::clone(schema), Some(properties))
                        .map_err(|e| e.to_string())?,
                ))
            }
            Attach::Xlsx => return Err("xlsx attachments are not available".into()),
        })
    }

    /// Adds rows; returns the attachment's size so far (for Parquet, the rows not yet flushed
    /// to a row group count at their in-memory size).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<usize, String> {
        match self {
            Self::None | Self::Done(_) | Self::Sent => Ok(0),
            Self::Csv(out, header) => {
                let mut writer = arrow_csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(std::mem::take(out));
                writer.write(batch).map_err(|e| e.to_string())?;
                *out = writer.into_inner();
                *header = false;
                Ok(out.len())
            }
            Self::Parquet(writer) => {
                writer.write(batch).map_err(|e| e.to_string())?;
                Ok(writer.bytes_written() + writer.in_progress_size())
            }
        }
    }

    pub fn finish(&mut self, schema: &SchemaRef) -> Result<(), String> {
        let done = match std::mem::replace(self, Self::Sent) {
            Self::None => Self::None,
            Self::Csv(out, true) => {
                // No rows came: the header alone.
                let mut writer = arrow_csv::WriterBuilder::new().with_header(true).build(out);
                writer
                    .write(&RecordBatch::new_empty(SchemaRef::clone(schema)))
                    .map_err(|e| e.to_string())?;
                Self::Done(writer.into_inner())
            }
            Self::Csv(out, false) => Self::Done(out),
            Self::Parquet(writer) => Self::Done(
                writer
                    .into_inner()
                    .map_err(|e: parquet::errors::ParquetError| e.to_string())?,
            ),
            other => other,
        };
        *self = done;
        Ok(())
    }

    pub fn size(&self) -> usize {
        match self {
            Self::Done(bytes) => bytes.len(),
            _ => 0,
        }
    }

    /// The finished bytes; `None` without an attachment.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Self::Done(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// Types arrow-csv writes as one field.
fn csv_supported(data_type: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType::*;
    !matches!(
        data_type,
        List(_) | LargeList(_) | FixedSizeList(_, _) | Struct(_) | Map(_, _) | Union(_, _)
    )
}

//! CSV files with a header row. Nulls are written as `\N` (the PostgreSQL and MySQL
//! convention) so they stay distinct from empty strings; a string that is exactly `\N` is
//! refused rather than silently turned into a null. Nested types are refused.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_csv::WriterBuilder;
use arrow_schema::{DataType, Schema, SchemaRef};
use async_trait::async_trait;

use super::parallel::encode_row_slices;
use super::{
    Encoder, Format, PinnedObject, SharedBuffer, read_text, refuse_options, text_dictionary_ok,
    wire_schema,
};
use crate::error::{Error, Result};
use crate::protocol::Options;
use crate::targets::SendableBatchStream;

/// How a null is written.
pub const NULL_MARKER: &str = "\\N";
/// Rows per batch when reading back.
const READ_BATCH_ROWS: usize = 16 * 1024;

pub(crate) struct CsvFormat {
    /// Threads encoding slices of one batch.
    pub(crate) threads: usize,
}

#[async_trait]
impl Format for CsvFormat {
    fn kind(&self) -> &'static str {
        "csv"
    }

    fn extension(&self) -> &'static str {
        "csv"
    }

    fn check_schema(&self, schema: &Schema) -> Result<(), String> {
        for field in schema.fields() {
            if !supported(field.data_type()) || !text_dictionary_ok(field.data_type(), true) {
                let hint = if field.data_type().is_nested() {
                    "CSV cannot hold nested values; use the json, parquet or arrow target"
                } else {
                    "CSV cannot hold it exactly; use the parquet or arrow target"
                };
                return Err(format!(
                    "column '{}' has type {}: {hint}",
                    field.name(),
                    field.data_type()
                ));
            }
        }
        Ok(())
    }

    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>> {
        refuse_options("csv", options, &[])?;
        Ok(Box::new(CsvEncoder {
            out,
            schema,
            threads: self.threads,
            started: false,
        }))
    }

    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream> {
        let null = regex::Regex::new(r"^\\N$").expect("a valid regex");
        let decoder = arrow_csv::ReaderBuilder::new(wire_schema(&schema, wire_type))
            .with_header(true)
            .with_null_regex(null)
            .with_batch_size(READ_BATCH_ROWS)
            .build_decoder();
        read_text(object, schema, projection, "read a CSV file", decoder).await
    }
}

/// What arrow-csv decodes in place of types it cannot build.
fn wire_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::LargeUtf8 => Some(DataType::Utf8),
        DataType::Dictionary(_, value) => Some(wire_type(value).unwrap_or(value.as_ref().clone())),
        _ => None,
    }
}

/// Types arrow-csv writes and parses back to the same values.
fn supported(data_type: &DataType) -> bool {
    use DataType::*;
    match data_type {
        Null
        | Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Float32
        | Float64
        | Utf8
        | LargeUtf8
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _) => true,
        Dictionary(_, value) => supported(value),
        _ => false,
    }
}

struct CsvEncoder {
    out: SharedBuffer,
    schema: SchemaRef,
    threads: usize,
    /// Whether the header has been written (it goes out with the first batch).
    started: bool,
}

impl Encoder for CsvEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            if holds_null_marker(column) {
                return Err(Error::invalid_data(format!(
                    "column '{}' holds the string \"\\N\", which the csv target uses for null; \
                     store it in the json, parquet or arrow target",
                    field.name()
                )));
            }
        }
        self.encode(batch)
            .map_err(|e| Error::invalid_data(format!("cannot encode a batch as CSV: {e}")))
    }

    fn finish(&mut self) -> Result<()> {
        // An empty asset still gets its header, so the file reads back as zero rows.
        if !self.started {
            self.encode(&RecordBatch::new_empty(self.schema.clone()))
                .map_err(|e| Error::invalid_data(format!("cannot write the CSV header: {e}")))?;
        }
        Ok(())
    }
}

impl CsvEncoder {
    /// Encodes row slices of `batch` at once; the header goes out with the file's first rows.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), arrow_schema::ArrowError> {
        let header = !self.started;
        let parts = encode_row_slices(batch, self.threads, |slice, first| {
            let mut writer = WriterBuilder::new()
                .with_header(header && first)
                .with_null(NULL_MARKER.to_string())
                .build(Vec::new());
            writer.write(slice)?;
            Ok::<_, arrow_schema::ArrowError>(writer.into_inner())
        })?;
        self.started = true;
        for part in parts {
            self.out.append(&part);
        }
        Ok(())
    }
}

fn holds_null_marker(array: &ArrayRef) -> bool {
    match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .flatten()
            .any(|s| s == NULL_MARKER),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .flatten()
            .any(|s| s == NULL_MARKER),
        DataType::Dictionary(_, _) => array
            .as_any_dictionary_opt()
            .is_some_and(|d| holds_null_marker(d.values())),
        _ => false,
    }
}

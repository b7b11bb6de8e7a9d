//! Newline-delimited JSON files. Read back with the catalog's schema, so types round-trip.

use arrow_array::RecordBatch;
use arrow_json::WriterBuilder;
use arrow_json::writer::LineDelimited;
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
pub(crate) use crate::targets::util::{first_non_finite, json_supported as supported};

/// Rows per batch when reading back.
const READ_BATCH_ROWS: usize = 16 * 1024;

pub(crate) struct JsonFormat {
    /// Threads encoding slices of one batch.
    pub(crate) threads: usize,
}

#[async_trait]
impl Format for JsonFormat {
    fn kind(&self) -> &'static str {
        "json"
    }

    fn extension(&self) -> &'static str {
        "json"
    }

    fn check_schema(&self, schema: &Schema) -> Result<(), String> {
        super::find_unsupported(schema, |t| supported(t) && text_dictionary_ok(t, true))
    }

    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>> {
        refuse_options("json", options, &[])?;
        Ok(Box::new(JsonEncoder {
            out,
            schema,
            threads: self.threads,
        }))
    }

    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream> {
        let decoder = arrow_json::ReaderBuilder::new(wire_schema(&schema, wire_type))
            .with_batch_size(READ_BATCH_ROWS)
            .build_decoder()
            .map_err(|e| Error::format(&object.target, "read an NDJSON file", e))?;
        read_text(object, schema, projection, "read an NDJSON file", decoder).await
    }
}

/// What arrow-json decodes in place of types it cannot build.
fn wire_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
        _ => None,
    }
}

struct JsonEncoder {
    out: SharedBuffer,
    schema: SchemaRef,
    threads: usize,
}

impl Encoder for JsonEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            if let Some(value) = first_non_finite(column) {
                return Err(Error::invalid_data(format!(
                    "column '{}' holds {value}, which JSON cannot represent; \
                     store it in the parquet or arrow target, or replace it with null",
                    field.name()
                )));
            }
        }
        // Every line stands alone, so row slices encode independently.
        let parts = encode_row_slices(batch, self.threads, |slice, _| {
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(false)
                .build::<_, LineDelimited>(Vec::new());
            writer.write(slice)?;
            writer.finish()?;
            Ok(writer.into_inner())
        })
        .map_err(|e: arrow_schema::ArrowError| {
            Error::invalid_data(format!("cannot encode a batch as JSON: {e}"))
        })?;
        for part in parts {
            self.out.append(&part);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

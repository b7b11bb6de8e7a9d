//! Helpers several targets share: option refusal, schema checks and rewrites for text
//! formats, JSON value checks, and a channel-backed batch stream. No target borrows from
//! another; what two of them need lives here.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::protocol::Options;

/// Names the first column whose type (at any depth) fails `supported`.
pub(crate) fn find_unsupported(
    schema: &Schema,
    supported: impl Fn(&arrow_schema::DataType) -> bool,
) -> Result<(), String> {
    for field in schema.fields() {
        if !supported(field.data_type()) {
            return Err(format!(
                "column '{}' has type {} which this format cannot hold exactly",
                field.name(),
                field.data_type()
            ));
        }
    }
    Ok(())
}

/// A root under `data_dir` named for the target, when none is set (the file kinds).
pub(crate) fn default_root(root: &mut Option<String>, data_dir: &Path, name: &str) {
    if root.is_none() {
        *root = Some(data_dir.join(name).to_string_lossy().into_owned());
    }
}

/// Why replicas cannot share a file kind's root: only an object store root is visible to
/// every replica.
pub(crate) fn unshareable_root(root: Option<&str>) -> Option<String> {
    let shared = root.is_some_and(|r| r.starts_with("s3://"));
    (!shared).then(|| {
        "it keeps files on a local path, which other replicas cannot see; give it an s3:// \
         root or run one replica"
            .to_string()
    })
}

/// Refuses per-put options; the file formats take their settings from the target config.
pub(crate) fn refuse_options(kind: &str, options: &Options, accepted: &[&str]) -> Result<()> {
    if let Some(key) = options.keys().find(|k| !accepted.contains(&k.as_str())) {
        return Err(Error::invalid_request(format!(
            "option '{key}' is not understood by {kind} targets; accepted options: {}",
            if accepted.is_empty() {
                "none".to_string()
            } else {
                accepted.join(", ")
            }
        )));
    }
    Ok(())
}

/// A minimal channel-backed stream generator, so decoding loops read top-down.
pub(crate) fn async_stream_batches<F, Fut>(
    body: F,
) -> impl futures::Stream<Item = Result<RecordBatch>>
where
    F: FnOnce(Sender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Closed>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = body(Sender(tx)).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The sending half given to [`async_stream_batches`] bodies.
pub(crate) struct Sender(tokio::sync::mpsc::Sender<Result<RecordBatch>>);

/// The reader went away; the producing task stops.
pub(crate) struct Closed;

impl Sender {
    pub(crate) async fn send(&self, item: Result<RecordBatch>) -> Result<(), Closed> {
        self.0.send(item).await.map_err(|_| Closed)
    }
}

/// The schema a text decoder is asked for: each column's type passes through `wire`, which
/// names a type the decoder can build (say `Utf8` for a dictionary of strings).
/// [`restore_types`] casts the decoded columns back.
pub(crate) fn wire_schema(
    schema: &Schema,
    wire: impl Fn(&arrow_schema::DataType) -> Option<arrow_schema::DataType>,
) -> SchemaRef {
    let fields: Vec<arrow_schema::FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match wire(f.data_type()) {
            Some(t) => Arc::new(f.as_ref().clone().with_data_type(t)),
            None => Arc::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Casts a batch decoded with [`wire_schema`] back to the stored schema, then projects it.
pub(crate) fn restore_types(
    batch: RecordBatch,
    schema: &SchemaRef,
    projection: Option<&[usize]>,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow_cast::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
    match projection {
        Some(indices) => batch.project(indices),
        None => Ok(batch),
    }
}

/// Whether every dictionary in `schema` sits at the top level with string values, the only
/// dictionaries the text formats can restore.
pub(crate) fn text_dictionary_ok(data_type: &arrow_schema::DataType, top_level: bool) -> bool {
    use arrow_schema::DataType;
    match data_type {
        DataType::Dictionary(_, value) => {
            top_level && matches!(value.as_ref(), DataType::Utf8 | DataType::LargeUtf8)
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            text_dictionary_ok(f.data_type(), false)
        }
        DataType::Struct(fields) => fields
            .iter()
            .all(|f| text_dictionary_ok(f.data_type(), false)),
        DataType::Map(f, _) => text_dictionary_ok(f.data_type(), false),
        _ => true,
    }
}

/// Types arrow-json writes and reads back to the same values.
pub(crate) fn json_supported(data_type: &DataType) -> bool {
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
        | Float16
        | Float32
        | Float64
        | Utf8
        | LargeUtf8
        | Binary
        | LargeBinary
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _)
        | Duration(_) => true,
        Dictionary(_, value) => json_supported(value),
        List(f) | LargeList(f) => json_supported(f.data_type()),
        Struct(fields) => fields.iter().all(|f| json_supported(f.data_type())),
        _ => false,
    }
}

/// The first NaN or infinity in a float column, at any depth.
pub(crate) fn first_non_finite(array: &ArrayRef) -> Option<String> {
    match array.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let as_f64 = arrow_cast::cast(array, &DataType::Float64).ok()?;
            as_f64
                .as_primitive::<arrow_array::types::Float64Type>()
                .iter()
                .flatten()
                .find(|v| !v.is_finite())
                .map(|v| v.to_string())
        }
        DataType::List(_) => first_non_finite(array.as_list::<i32>().values()),
        DataType::LargeList(_) => first_non_finite(array.as_list::<i64>().values()),
        DataType::Struct(_) => array
            .as_struct()
            .columns()
            .iter()
            .find_map(first_non_finite),
        _ => None,
    }
}

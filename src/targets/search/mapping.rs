//! Index mappings from Arrow schemas, Arrow rows as JSON documents, and documents back.
//!
//! Documents are arrow-json's encoding of a row, with two changes: top-level binary columns are
//! base64 (what the `binary` field type takes), and decimals with more than
//! [`DECIMAL_NUMBER_DIGITS`] digits or a negative scale are strings (so no JSON parser on the
//! way rounds them); shorter decimals are plain JSON numbers, indexed as `double`, which holds
//! every such value exactly. Reading decodes `_source` with the schema the catalog recorded, so
//! the types come back exactly; the mapping only decides how the cluster indexes the fields.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BinaryArray, LargeBinaryArray, RecordBatch, StructArray};
use arrow_json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder, make_encoder};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::targets::util::json_supported;

/// The object every document carries for read order: `{"put": …, "row": …}`.
pub(super) const ORDER_FIELD: &str = "__quiver";

/// Where the mapping's `_meta.quiver` records the key columns the index's `_id`s come from:
/// set when a put with a key creates the index, cleared when a put without that key adds
/// documents. Only an index keyed by an upsert's key lets the upsert find documents by `_id`.
const KEY_META: &str = "key";

/// The `_meta.quiver.key` of an index created by a put with `key`.
pub(super) fn key_meta(key: &[String]) -> Value {
    if key.is_empty() {
        Value::Null
    } else {
        json!(key)
    }
}

/// The key columns every document's `_id` in an index mapped as `mapping` comes from, if any.
pub(super) fn keyed_by(mapping: &Value) -> Option<Vec<String>> {
    serde_json::from_value(mapping["_meta"]["quiver"][KEY_META].clone()).ok()
}

/// `mapping`'s `_meta` with the key forgotten, for an index that gets documents whose `_id`s
/// come from another key or from the cluster.
pub(super) fn without_key(mapping: &Value) -> Value {
    let mut meta = mapping["_meta"].clone();
    meta["quiver"][KEY_META] = Value::Null;
    meta
}

/// The fields of `wanted` that `current` does not map.
pub(super) fn missing_fields(current: &Value, wanted: &Value) -> serde_json::Map<String, Value> {
    let known = &current["properties"];
    wanted["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| known.get(name.as_str()).is_none())
        .map(|(name, m)| (name.clone(), m.clone()))
        .collect()
}

/// The mapping of an index replacing one mapped as `current`: its fields (and how they are
/// indexed) kept, the fields of `wanted` it lacks added.
pub(super) fn extended(current: &Value, wanted: &Value) -> Value {
    let mut mapping = current.clone();
    let missing = missing_fields(current, wanted);
    match mapping["properties"].as_object_mut() {
        Some(properties) => properties.extend(missing),
        None => mapping["properties"] = Value::Object(missing),
    }
    mapping
}

/// `schema` with the order field as its last column: documents read this way can be written
/// again in the order they had.
pub(super) fn with_order_field(schema: &Schema) -> SchemaRef {
    let order = Fields::from(vec![
        Field::new("put", DataType::Int64, true),
        Field::new("row", DataType::Int64, true),
    ]);
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        ORDER_FIELD,
        DataType::Struct(order),
        true,
    )));
    Arc::new(Schema::new(fields))
}

/// Decimals of at most this precision (and a scale of 0 or more) are JSON numbers mapped as
/// `double`: a double represents every decimal of 15 significant digits exactly, so range
/// queries and sorting on them are exact. Wider decimals are keyword strings.
pub(super) const DECIMAL_NUMBER_DIGITS: u8 = 15;

/// Whether a decimal column is written as a JSON number (else as a string).
fn decimal_as_number(data_type: &DataType) -> bool {
    match data_type {
        DataType::Decimal128(precision, scale) | DataType::Decimal256(precision, scale) => {
            *precision <= DECIMAL_NUMBER_DIGITS && *scale >= 0
        }
        _ => false,
    }
}

/// Longest keyword indexed; longer values are kept in `_source` but not indexed (a term may
/// not exceed 32766 bytes).
const KEYWORD_IGNORE_ABOVE: u32 = 8191;

/// The `mappings` of an index holding `schema`.
pub(super) fn mappings(schema: &Schema, text: &[String]) -> Result<Value, String> {
    for column in text {
        match schema.field_with_name(column) {
            Ok(f) if matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8) => {}
            Ok(f) => {
                return Err(format!(
                    "option 'text' names column '{column}' of type {}; only string columns can be text",
                    f.data_type()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "option 'text' names column '{column}', which the schema lacks"
                ));
            }
        }
    }
    let mut properties = serde_json::Map::new();
    for field in schema.fields() {
        if field.name() == ORDER_FIELD {
            return Err(format!(
                "column name '{ORDER_FIELD}' is reserved for read order; rename the column"
            ));
        }
        if field.name().is_empty() || field.name().starts_with('_') {
            return Err(format!(
                "column '{}' cannot be a field: field names may not be empty or start with '_'",
                field.name()
            ));
        }
        let as_text = text.contains(field.name());
        if let Some(m) = field_mapping(field, true, as_text)? {
            properties.insert(field.name().clone(), m);
        }
    }
    // Only sorted on, never searched: doc values without an index.
    let order = json!({"type": "long", "index": false});
    properties.insert(
        ORDER_FIELD.to_string(),
        json!({"properties": {"put": order, "row": order}}),
    );
    Ok(json!({ "dynamic": "strict", "properties": properties }))
}

fn field_mapping(field: &Field, top_level: bool, text: bool) -> Result<Option<Value>, String> {
    use DataType::*;
    let data_type = field.data_type();
    let unsupported = || {
        format!(
            "column '{}' has type {data_type}, which search targets cannot hold exactly; \
             use the parquet or arrow target",
            field.name()
        )
    };
    if !json_supported(data_type) {
        return Err(unsupported());
    }
    let keyword = json!({"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE});
    Ok(Some(match data_type {
        Null => return Ok(None),
        Boolean => json!({"type": "boolean"}),
        Int8 => json!({"type": "byte"}),
        Int16 | UInt8 => json!({"type": "short"}),
        Int32 | UInt16 => json!({"type": "integer"}),
        Int64 | UInt32 => json!({"type": "long"}),
        UInt64 => json!({"type": "unsigned_long"}),
        Float16 => json!({"type": "half_float"}),
        Float32 => json!({"type": "float"}),
        Float64 => json!({"type": "double"}),
        Utf8 | LargeUtf8 if text => json!({"type": "text"}),
        Utf8 | LargeUtf8 => keyword,
        Binary | LargeBinary if top_level => json!({"type": "binary"}),
        Binary | LargeBinary => {
            return Err(format!(
                "column '{}' holds binary inside a list or struct, which search targets cannot \
                 hold; make it a top-level column",
                field.name()
            ));
        }
        Decimal128(_, _) | Decimal256(_, _) if decimal_as_number(data_type) => {
            json!({"type": "double"})
        }
        Decimal128(_, _) | Decimal256(_, _) | Time32(_) | Time64(_) | Duration(_) => keyword,
        Date32 => json!({"type": "date", "format": "strict_date"}),
        Date64 | Timestamp(_, _) => {
            json!({"type": "date", "format": "strict_date_optional_time||epoch_millis"})
        }
        Dictionary(_, value) if top_level && matches!(value.as_ref(), Utf8 | LargeUtf8) => keyword,
        List(item) | LargeList(item) => return field_mapping(item, false, false),
        Struct(fields) => {
            let mut properties = serde_json::Map::new();
            for f in fields {
                if let Some(m) = field_mapping(f, false, false)? {
                    properties.insert(f.name().clone(), m);
                }
            }
            json!({ "properties": properties })
        }
        _ => return Err(unsupported()),
    }))
}

/// Writes decimals as JSON numbers or strings (see [`DECIMAL_NUMBER_DIGITS`]) and top-level
/// binary as base64.
#[derive(Debug)]
struct SearchEncoders;

impl EncoderFactory for SearchEncoders {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let nulls = array.nulls().cloned();
        let encoder: Box<dyn Encoder + 'a> = match array.data_type() {
            DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Box::new(DecimalText {
                formatter: arrow_cast::display::ArrayFormatter::try_new(
                    array,
                    &Default::default(),
                )?,
                quoted: !decimal_as_number(array.data_type()),
            }),
            DataType::Binary => Box::new(Base64(array.as_binary::<i32>())),
            DataType::LargeBinary => Box::new(Base64Large(array.as_binary::<i64>())),
            _ => return Ok(None),
        };
        Ok(Some(NullableEncoder::new(encoder, nulls)))
    }
}

/// A decimal's exact text: digits, a sign and a point (nothing to escape).
struct DecimalText<'a> {
    formatter: arrow_cast::display::ArrayFormatter<'a>,
    quoted: bool,
}

impl Encoder for DecimalText<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        if self.quoted {
            out.push(b'"');
        }
        let _ = write!(out, "{}", self.formatter.value(idx));
        if self.quoted {
            out.push(b'"');
        }
    }
}

struct Base64<'a>(&'a BinaryArray);

impl Encoder for Base64<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        push_base64(self.0.value(idx), out);
    }
}

struct Base64Large<'a>(&'a LargeBinaryArray);

impl Encoder for Base64Large<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        push_base64(self.0.value(idx), out);
    }
}

fn push_base64(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Encodes the rows of one batch as JSON objects.
pub(super) struct RowEncoder<'a> {
    encoder: NullableEncoder<'a>,
}

/// Owns what a [`RowEncoder`] borrows.
pub(super) struct RowSource {
    field: FieldRef,
    array: StructArray,
    options: EncoderOptions,
}

impl RowSource {
    pub fn new(batch: &RecordBatch) -> Self {
        let array = StructArray::from(batch.clone());
        let field = Arc::new(Field::new("row", array.data_type().clone(), false));
        let options = EncoderOptions::default()
            .with_explicit_nulls(false)
            .with_encoder_factory(Arc::new(SearchEncoders));
        Self {
            field,
            array,
            options,
        }
    }

    pub fn encoder(&self) -> Result<RowEncoder<'_>, ArrowError> {
        Ok(RowEncoder {
            encoder: make_encoder(&self.field, &self.array, &self.options)?,
        })
    }
}

impl RowEncoder<'_> {
    /// Appends row `idx` as a JSON object carrying its read order.
    pub fn encode(&mut self, idx: usize, put: i64, row: u64, out: &mut Vec<u8>) {
        self.encoder.encode(idx, out);
        // Reopen the object to add the order field.
        out.pop();
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        use std::io::Write;
        let _ = write!(out, "\"{ORDER_FIELD}\":{{\"put\":{put},\"row\":{row}}}}}");
    }
}

/// The schema `_source` is decoded with: binary as its base64 text, dictionaries as values.
pub(super) fn wire_schema(schema: &Schema) -> SchemaRef {
    crate::targets::util::wire_schema(schema, |t| match t {
        DataType::Binary | DataType::LargeBinary => Some(DataType::Utf8),
        DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
        _ => None,
    })
}

/// Turns a batch decoded with [`wire_schema`] into `schema`.
pub(super) fn restore(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| restore_column(column, field))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

fn restore_column(column: &ArrayRef, field: &Field) -> Result<ArrayRef, String> {
    match field.data_type() {
        t if t == column.data_type() => Ok(Arc::clone(column)),
        DataType::Binary | DataType::LargeBinary => {
            let text = column.as_string::<i32>();
            let decoded = text
                .iter()
                .map(|v| {
                    v.map(|s| STANDARD.decode(s))
                        .transpose()
                        .map_err(|e| format!("column '{}' holds invalid base64: {e}", field.name()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let array: ArrayRef = match field.data_type() {
                DataType::Binary => Arc::new(BinaryArray::from_iter(decoded)),
                _ => Arc::new(LargeBinaryArray::from_iter(decoded)),
            };
            Ok(array)
        }
        other => arrow_cast::cast(column, other).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Decimal128Array, Int64Array, StringArray};

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("blob", DataType::Binary, true),
            Field::new("price", DataType::Decimal128(20, 2), true),
            Field::new("cost", DataType::Decimal128(15, 3), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(BinaryArray::from(vec![Some(b"\x00\xff".as_slice()), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), None])
                        .with_precision_and_scale(20, 2)
                        .unwrap(),
                ),
                Arc::new(
                    Decimal128Array::from(vec![Some(-999_999_999_999_999), Some(1)])
                        .with_precision_and_scale(15, 3)
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_become_documents_with_their_order() {
        let batch = batch();
        let source = RowSource::new(&batch);
        let mut encoder = source.encoder().unwrap();
        let mut out = Vec::new();
        encoder.encode(0, 7, 0, &mut out);
        out.push(b'\n');
        encoder.encode(1, 7, 1, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"id": 1, "name": "a", "blob": "AP8=", "price": "123.45",
                   "cost": -999_999_999_999.999, "__quiver": {"put": 7, "row": 0}})
        );
        assert!(text.contains(r#""cost":-999999999999.999,"#), "{text}");
        assert_eq!(
            lines[1],
            json!({"id": 2, "cost": 0.001, "__quiver": {"put": 7, "row": 1}})
        );
    }

    #[test]
    fn documents_decode_back_to_the_same_batch() {
        let batch = batch();
        let source = RowSource::new(&batch);
        let mut encoder = source.encoder().unwrap();
        let mut out = Vec::new();
        for i in 0..batch.num_rows() {
            encoder.encode(i, 1, i as u64, &mut out);
            out.push(b'\n');
        }
        let mut decoder = arrow_json::ReaderBuilder::new(wire_schema(&batch.schema()))
            .build_decoder()
            .unwrap();
        decoder.decode(&out).unwrap();
        let decoded = decoder.flush().unwrap().unwrap();
        assert_eq!(restore(decoded, &batch.schema()).unwrap(), batch);
    }

    #[test]
    fn mappings_follow_the_types() {
        let m = mappings(&batch().schema(), &["name".to_string()]).unwrap();
        assert_eq!(m["dynamic"], "strict");
        assert_eq!(m["properties"]["id"]["type"], "long");
        assert_eq!(m["properties"]["name"]["type"], "text");
        assert_eq!(m["properties"]["blob"]["type"], "binary");
        assert_eq!(m["properties"]["price"]["type"], "keyword");
        assert_eq!(m["properties"]["cost"]["type"], "double");
        assert_eq!(
            m["properties"][ORDER_FIELD]["properties"]["row"]["type"],
            "long"
        );
        let reserved = Schema::new(vec![Field::new("_id", DataType::Int64, true)]);
        assert!(mappings(&reserved, &[]).unwrap_err().contains("'_id'"));
        let err = mappings(&batch().schema(), &["id".to_string()]).unwrap_err();
        assert!(err.contains("only string columns"), "{err}");
    }
}

//! Arrow types as Delta stores them. Delta's type system is smaller than Arrow's: each Arrow
//! type is written as the Delta type that holds all of its values, and a read casts back to
//! the type the catalog recorded, so every accepted type round-trips exactly.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};

/// Characters Delta refuses in a column name unless column mapping is on.
const BAD_NAME_CHARS: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// The type Delta stores for `data_type`, or `None` when Delta has no type holding its values.
pub(crate) fn stored_type(data_type: &DataType, top_level: bool) -> Option<DataType> {
    use DataType::*;
    Some(match data_type {
        Boolean | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Utf8 | Binary | Date32 => {
            data_type.clone()
        }
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 => Int64,
        UInt64 => Decimal128(20, 0),
        Float16 => Float32,
        LargeUtf8 | Utf8View => Utf8,
        LargeBinary | BinaryView => Binary,
        // Nanoseconds are checked value by value at the top level; nested ones cannot be.
        Timestamp(TimeUnit::Nanosecond, _) if !top_level => return None,
        Timestamp(_, tz) => Timestamp(
            TimeUnit::Microsecond,
            tz.as_ref().map(|_| Arc::<str>::from("UTC")),
        ),
        Decimal32(p, s) | Decimal64(p, s) => Decimal128(*p, *s),
        Decimal128(p, s) if *p <= 38 && *s >= 0 => data_type.clone(),
        Dictionary(_, value) => stored_type(value, top_level)?,
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) => List(stored_field(f)?),
        Struct(fields) if !fields.is_empty() => Struct(
            fields
                .iter()
                .map(stored_field)
                .collect::<Option<Vec<_>>>()?
                .into(),
        ),
        Map(entries, sorted) => Map(stored_field(entries)?, *sorted),
        _ => return None,
    })
}

fn stored_field(field: &FieldRef) -> Option<FieldRef> {
    Some(Arc::new(
        field
            .as_ref()
            .clone()
            .with_data_type(stored_type(field.data_type(), false)?),
    ))
}

/// The schema Delta stores for `schema`, or why it cannot.
pub(crate) fn stored_schema(schema: &Schema) -> Result<SchemaRef, String> {
    let mut fields = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if let Some(c) = field.name().chars().find(|c| BAD_NAME_CHARS.contains(c)) {
            return Err(format!(
                "column name '{}' holds {c:?}, which Delta column names cannot hold; rename the \
                 column",
                field.name()
            ));
        }
        let Some(stored) = stored_type(field.data_type(), true) else {
            return Err(format!(
                "column '{}' has type {} which Delta has no type for (see docs/types.md); cast \
                 it first, e.g. a time of day to a string or microseconds",
                field.name(),
                field.data_type()
            ));
        };
        fields.push(Field::new(field.name(), stored, field.is_nullable()));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Casts a batch to the stored schema, refusing values the cast would change.
pub(crate) fn to_stored(batch: &RecordBatch, stored: &SchemaRef) -> Result<RecordBatch, String> {
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (column, field) in batch.columns().iter().zip(stored.fields()) {
        if let DataType::Timestamp(TimeUnit::Nanosecond, _) = column.data_type() {
            let values = column.as_primitive::<TimestampNanosecondType>();
            if let Some(v) = values.iter().flatten().find(|v| v % 1000 != 0) {
                return Err(format!(
                    "column '{}' holds the timestamp {v} ns, which has nanoseconds; Delta \
                     timestamps are microseconds: round the column to microseconds first",
                    field.name()
                ));
            }
        }
        columns.push(cast(column, field.data_type()).map_err(|e| {
            format!(
                "column '{}' cannot be stored as Delta type {}: {e}",
                field.name(),
                field.data_type()
            )
        })?);
    }
    RecordBatch::try_new(Arc::clone(stored), columns).map_err(|e| e.to_string())
}

/// Casts a column read from Delta back to the type the catalog recorded.
pub(crate) fn cast(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, arrow_schema::ArrowError> {
    if column.data_type() == to {
        return Ok(Arc::clone(column));
    }
    // Casting a struct through arrow-cast matches fields by position; the stored struct keeps
    // the catalog's field order, so casting child by child keeps names and nullability.
    if let (DataType::Struct(_), DataType::Struct(to_fields)) = (column.data_type(), to) {
        let array = column.as_struct();
        let children = array
            .columns()
            .iter()
            .zip(to_fields.iter())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Arc::new(arrow_array::StructArray::try_new(
            Fields::from(to_fields.iter().cloned().collect::<Vec<_>>()),
            children,
            array.nulls().cloned(),
        )?));
    }
    arrow_cast::cast(column, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_and_wide_types_widen() {
        assert_eq!(stored_type(&DataType::UInt8, true), Some(DataType::Int16));
        assert_eq!(
            stored_type(&DataType::UInt64, true),
            Some(DataType::Decimal128(20, 0))
        );
        assert_eq!(
            stored_type(&DataType::LargeUtf8, true),
            Some(DataType::Utf8)
        );
        assert_eq!(
            stored_type(
                &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true
            ),
            Some(DataType::Utf8)
        );
    }

    #[test]
    fn types_delta_lacks_are_refused_by_name() {
        let schema = Schema::new(vec![Field::new(
            "t",
            DataType::Time64(TimeUnit::Microsecond),
            true,
        )]);
        let err = stored_schema(&schema).unwrap_err();
        assert!(err.contains("'t'") && err.contains("Time64"), "{err}");
        let schema = Schema::new(vec![Field::new("a b", DataType::Int32, true)]);
        assert!(stored_schema(&schema).unwrap_err().contains("rename"));
    }

    #[test]
    fn nanoseconds_below_a_microsecond_are_refused() {
        let stored = stored_schema(&Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]))
        .unwrap();
        let batch = |v: i64| {
            RecordBatch::try_from_iter([(
                "ts",
                Arc::new(arrow_array::TimestampNanosecondArray::from(vec![v])) as ArrayRef,
            )])
            .unwrap()
        };
        assert!(to_stored(&batch(1_000), &stored).is_ok());
        assert!(
            to_stored(&batch(1_001), &stored)
                .unwrap_err()
                .contains("1001")
        );
    }
}

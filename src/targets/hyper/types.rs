//! How Arrow types are stored in a Hyper table, and how they come back.
//!
//! Each column gets a Hyper SQL type and a "wire" Arrow type: the type the batch is cast to
//! before it goes into `COPY … WITH (FORMAT arrowstream)`, one that hyperd reads. A read
//! casts what hyperd sends back (its own Arrow types: `date64`, `timestamp[us, tz=Utc]`, …)
//! to the catalog's types, so a round trip returns the exact types that were put.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::targets::sql::quote;

/// Hyper keeps at most this many decimal digits in a NUMERIC.
const MAX_PRECISION: u8 = 38;

/// A column as Hyper stores it: its SQL type, and the Arrow type hyperd is sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Column {
    pub sql: String,
    pub wire: DataType,
}

/// The Hyper column for an Arrow type, or why it has none.
pub(crate) fn column(data_type: &DataType) -> Result<Column, String> {
    use DataType::*;
    let (sql, wire) = match data_type {
        Boolean => ("BOOL".to_string(), Boolean),
        Int8 | UInt8 | Int16 => ("SMALLINT".to_string(), Int16),
        UInt16 | Int32 => ("INTEGER".to_string(), Int32),
        UInt32 | Int64 => ("BIGINT".to_string(), Int64),
        UInt64 => ("NUMERIC(20,0)".to_string(), Decimal128(20, 0)),
        Float16 | Float32 => ("REAL".to_string(), Float32),
        Float64 => ("DOUBLE PRECISION".to_string(), Float64),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            if *p > MAX_PRECISION {
                return Err(format!(
                    "Hyper's NUMERIC holds at most {MAX_PRECISION} digits (this column has {p})"
                ));
            }
            if *s < 0 || *s as u8 > *p {
                return Err(format!(
                    "Hyper's NUMERIC needs a scale between 0 and the precision (this column has \
                     scale {s})"
                ));
            }
            (format!("NUMERIC({p},{s})"), Decimal128(*p, *s))
        }
        Utf8 | LargeUtf8 | Utf8View => ("TEXT".to_string(), Utf8),
        Dictionary(_, value) if matches!(value.as_ref(), Utf8 | LargeUtf8 | Utf8View) => {
            ("TEXT".to_string(), Utf8)
        }
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => ("BYTEA".to_string(), Binary),
        Date32 | Date64 => ("DATE".to_string(), Date32),
        Time32(_) | Time64(TimeUnit::Microsecond) => {
            ("TIME".to_string(), Time64(TimeUnit::Microsecond))
        }
        Timestamp(TimeUnit::Nanosecond, _) | Time64(_) => {
            return Err(
                "Hyper keeps microseconds, and nanoseconds would be lost; cast the column to \
                 microseconds (pyarrow: timestamp('us') / time64('us')) first"
                    .to_string(),
            );
        }
        Timestamp(_, None) => (
            "TIMESTAMP".to_string(),
            Timestamp(TimeUnit::Microsecond, None),
        ),
        Timestamp(_, Some(tz)) => (
            "TIMESTAMPTZ".to_string(),
            Timestamp(TimeUnit::Microsecond, Some(Arc::clone(tz))),
        ),
        other => {
            return Err(format!(
                "Hyper has no column type that holds {other} exactly (no lists, structs, maps, \
                 intervals, durations or null-typed columns in a Hyper table)"
            ));
        }
    };
    Ok(Column { sql, wire })
}

/// The Hyper columns of a schema, or the first column Hyper cannot hold, named.
pub(crate) fn columns(schema: &Schema) -> Result<Vec<Column>, String> {
    schema
        .fields()
        .iter()
        .map(|f| column(f.data_type()).map_err(|why| format!("column '{}': {why}", f.name())))
        .collect()
}

/// `CREATE TABLE <table> (…)` for a schema whose columns are `columns`.
pub(crate) fn create_table(table: &str, schema: &Schema, columns: &[Column]) -> String {
    let list: Vec<String> = schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(f, c)| {
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            format!("{} {}{null}", quote(f.name()), c.sql)
        })
        .collect();
    format!("CREATE TABLE {table} ({})", list.join(", "))
}

/// The schema of the stream hyperd is sent.
pub(crate) fn wire_schema(schema: &Schema, columns: &[Column]) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(f, c)| Field::new(f.name(), c.wire.clone(), f.is_nullable()))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Casts a value that does not fit rather than turning it into a null.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow_cast::display::FormatOptions::new(),
};

/// Casts every column of `batch` to the type `schema` gives it.
pub(crate) fn cast_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast_with_options(column, field.data_type(), &STRICT)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_widen_to_the_next_signed_type() {
        assert_eq!(column(&DataType::UInt8).unwrap().sql, "SMALLINT");
        assert_eq!(column(&DataType::UInt16).unwrap().wire, DataType::Int32);
        assert_eq!(column(&DataType::UInt32).unwrap().sql, "BIGINT");
        assert_eq!(column(&DataType::UInt64).unwrap().sql, "NUMERIC(20,0)");
    }

    #[test]
    fn what_hyper_cannot_hold_is_refused_by_column_name() {
        let schema = Schema::new(vec![
            Field::new("ok", DataType::Int64, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]);
        let err = columns(&schema).unwrap_err();
        assert!(err.starts_with("column 'tags'"), "{err}");
        let nanos = column(&DataType::Timestamp(TimeUnit::Nanosecond, None)).unwrap_err();
        assert!(nanos.contains("microseconds"), "{nanos}");
        assert!(column(&DataType::Decimal256(40, 2)).is_err());
    }

    #[test]
    fn the_table_names_every_column_quoted_with_its_nullability() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("na\"me", DataType::LargeUtf8, true),
        ]);
        let sql = create_table("t", &schema, &columns(&schema).unwrap());
        assert_eq!(
            sql,
            "CREATE TABLE t (\"id\" INTEGER NOT NULL, \"na\"\"me\" TEXT)"
        );
    }

    #[test]
    fn a_value_that_does_not_fit_fails_the_cast() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int8, true)]));
        let wide = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int16, true)])),
            vec![Arc::new(arrow_array::Int16Array::from(vec![1000]))],
        )
        .unwrap();
        assert!(cast_batch(&wide, &schema).is_err());
    }
}

//! How Arrow types are stored in DuckDB columns, and restored on read.
//!
//! Each Arrow type maps to a *storage type* DuckDB's Arrow scan reads exactly, and a SQL type for
//! `CREATE TABLE`. On read, DuckDB's Arrow output is cast back to the catalog's Arrow type, so
//! a round trip is exact.

use std::sync::Arc;

use crate::targets::sql::quote;
use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};

/// The type a column is appended to DuckDB as, or why it cannot be stored exactly.
pub fn storage_type(data_type: &DataType) -> Result<DataType, String> {
    use DataType::*;
    Ok(match data_type {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32
        | Float64 | Utf8 | Utf8View | Binary | BinaryView | Date32 => data_type.clone(),
        LargeUtf8 => Utf8,
        LargeBinary => Binary,
        Float16 => Float32,
        Date64 => Date32,
        Null => Int32,
        // DuckDB's TIMESTAMPTZ holds microseconds: second and millisecond instants fit exactly,
        // nanosecond ones are kept as TIMESTAMP_NS in UTC (Arrow stores UTC either way).
        Timestamp(TimeUnit::Nanosecond, Some(_)) => Timestamp(TimeUnit::Nanosecond, None),
        Timestamp(_, Some(_)) => Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Timestamp(_, None) => data_type.clone(),
        Time32(_) | Time64(TimeUnit::Microsecond) => Time64(TimeUnit::Microsecond),
        Time64(_) => return Err("DuckDB's TIME holds microseconds, not nanoseconds".into()),
        Decimal128(p, s) if *p <= 38 => Decimal128(*p, *s),
        Decimal32(p, s) | Decimal64(p, s) => Decimal128(*p, *s),
        Dictionary(_, value) => storage_type(value)?,
        List(f) | LargeList(f) => List(storage_field(f)?),
        Struct(fields) => Struct(
            fields
                .iter()
                .map(storage_field)
                .collect::<Result<Fields, _>>()?,
        ),
        other => return Err(format!("DuckDB cannot store {other} exactly")),
    })
}

fn storage_field(field: &FieldRef) -> Result<FieldRef, String> {
    Ok(Arc::new(Field::new(
        field.name(),
        storage_type(field.data_type())?,
        field.is_nullable(),
    )))
}

/// The DuckDB SQL type of a storage type.
pub fn sql_type(data_type: &DataType) -> Result<String, String> {
    use DataType::*;
    Ok(match data_type {
        Boolean => "BOOLEAN".into(),
        Int8 => "TINYINT".into(),
        Int16 => "SMALLINT".into(),
        Int32 => "INTEGER".into(),
        Int64 => "BIGINT".into(),
        UInt8 => "UTINYINT".into(),
        UInt16 => "USMALLINT".into(),
        UInt32 => "UINTEGER".into(),
        UInt64 => "UBIGINT".into(),
        Float32 => "FLOAT".into(),
        Float64 => "DOUBLE".into(),
        Utf8 | Utf8View => "VARCHAR".into(),
        Binary | BinaryView => "BLOB".into(),
        Date32 => "DATE".into(),
        Time64(TimeUnit::Microsecond) => "TIME".into(),
        Timestamp(TimeUnit::Second, None) => "TIMESTAMP_S".into(),
        Timestamp(TimeUnit::Millisecond, None) => "TIMESTAMP_MS".into(),
        Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP".into(),
        Timestamp(TimeUnit::Nanosecond, None) => "TIMESTAMP_NS".into(),
        Timestamp(TimeUnit::Microsecond, Some(_)) => "TIMESTAMPTZ".into(),
        Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        List(f) => format!("{}[]", sql_type(f.data_type())?),
        Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| Ok(format!("{} {}", quote(f.name()), sql_type(f.data_type())?)))
                .collect::<Result<Vec<_>, String>>()?
                .join(", ")
        ),
        other => return Err(format!("no DuckDB type for {other}")),
    })
}

/// The column definition of `field` for `CREATE TABLE` / `ALTER TABLE ADD COLUMN`.
pub fn column_definition(field: &Field) -> Result<String, String> {
    let storage = storage_type(field.data_type()).map_err(|reason| {
        format!(
            "column '{}' ({}): {reason}",
            field.name(),
            field.data_type()
        )
    })?;
    let sql = sql_type(&storage).map_err(|reason| {
        format!(
            "column '{}' ({}): {reason}",
            field.name(),
            field.data_type()
        )
    })?;
    let null = if field.is_nullable() { "" } else { " NOT NULL" };
    Ok(format!("{} {sql}{null}", quote(field.name())))
}

/// The schema of `schema`'s batches after [`to_storage`]: every column nullable (the table's
/// own constraints check the values).
pub fn storage_schema(schema: &Schema) -> Result<SchemaRef, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| Ok(Field::new(f.name(), storage_type(f.data_type())?, true)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Casts a batch to `storage`, its schema's [`storage_schema`].
pub fn to_storage(batch: &RecordBatch, storage: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = storage
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let to = field.data_type();
            Ok(if column.data_type() == &DataType::Null {
                new_null_array(to, column.len())
            } else if column.data_type() == to {
                Arc::clone(column)
            } else if let Some(naive) = retag_timestamp(column, to) {
                naive
            } else {
                arrow_cast::cast(column, to)?
            })
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    RecordBatch::try_new(Arc::clone(storage), columns)
}

/// Casts DuckDB's Arrow output back to the catalog's types.
pub fn restore(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| restore_column(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

fn restore_column(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if column.data_type() == to {
        Ok(Arc::clone(column))
    } else if to == &DataType::Null {
        Ok(new_null_array(to, column.len()))
    } else if let Some(tagged) = retag_timestamp(column, to) {
        Ok(tagged)
    } else {
        arrow_cast::cast(column, to)
    }
}

/// Changes only the time zone of a timestamp column whose unit already matches: Arrow keeps
/// UTC instants either way, whereas a cast to or from a naive timestamp shifts values to
/// local time.
fn retag_timestamp(column: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let (DataType::Timestamp(from_unit, _), DataType::Timestamp(to_unit, tz)) =
        (column.data_type(), to)
    else {
        return None;
    };
    if from_unit != to_unit {
        return None;
    }
    let tz = tz.clone();
    Some(match to_unit {
        TimeUnit::Second => Arc::new(
            column
                .as_primitive::<TimestampSecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Millisecond => Arc::new(
            column
                .as_primitive::<TimestampMillisecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Microsecond => Arc::new(
            column
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
        TimeUnit::Nanosecond => Arc::new(
            column
                .as_primitive::<TimestampNanosecondType>()
                .clone()
                .with_timezone_opt(tz),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_types_for_common_columns() {
        let cases = [
            (DataType::UInt64, "UBIGINT"),
            (DataType::Decimal128(38, 10), "DECIMAL(38, 10)"),
            (
                DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into())),
                "TIMESTAMPTZ",
            ),
            (
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                "TIMESTAMP_NS",
            ),
            (
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::LargeUtf8)),
                "VARCHAR",
            ),
            (DataType::new_list(DataType::Int32, true), "INTEGER[]"),
        ];
        for (arrow, sql) in cases {
            assert_eq!(
                sql_type(&storage_type(&arrow).unwrap()).unwrap(),
                sql,
                "{arrow}"
            );
        }
    }

    #[test]
    fn refuses_what_duckdb_cannot_hold() {
        assert!(storage_type(&DataType::Time64(TimeUnit::Nanosecond)).is_err());
        assert!(storage_type(&DataType::Duration(TimeUnit::Second)).is_err());
        assert!(storage_type(&DataType::Decimal256(50, 2)).is_err());
        let err = column_definition(&Field::new(
            "t",
            DataType::Time64(TimeUnit::Nanosecond),
            true,
        ))
        .unwrap_err();
        assert!(err.contains("column 't'"), "{err}");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}

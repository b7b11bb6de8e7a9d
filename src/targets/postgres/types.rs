//! How Arrow columns are stored in PostgreSQL.
//!
//! Each Arrow type maps to one PostgreSQL column type ([`PgType`]). Values travel in
//! PostgreSQL's binary COPY format (see [`super::copy`]); on read, the catalog's Arrow schema
//! says which Arrow type each column goes back to, so a round trip is exact.

use arrow_schema::{DataType, Field};

use crate::targets::sql::quote;

/// A PostgreSQL column type Quiver writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(precision, scale)`.
    Numeric {
        precision: u8,
        scale: u8,
    },
    Text,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Interval,
    Jsonb,
}

impl PgType {
    /// The column type an Arrow type is stored as, or why it cannot be stored exactly.
    pub fn of(data_type: &DataType) -> Result<Self, String> {
        use DataType::*;
        Ok(match data_type {
            Boolean => Self::Bool,
            Int8 | Int16 | UInt8 => Self::Int2,
            Int32 | UInt16 => Self::Int4,
            Int64 | UInt32 => Self::Int8,
            UInt64 => Self::Numeric {
                precision: 20,
                scale: 0,
            },
            Float16 | Float32 => Self::Float4,
            Float64 => Self::Float8,
            Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
                if *s < 0 {
                    return Err(format!(
                        "{data_type} has a negative scale; PostgreSQL numeric columns need a scale >= 0"
                    ));
                }
                if *s as u8 > *p {
                    return Err(format!("{data_type} does not fit a PostgreSQL numeric"));
                }
                Self::Numeric {
                    precision: *p,
                    scale: *s as u8,
                }
            }
            Utf8 | LargeUtf8 | Utf8View | Null => Self::Text,
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Self::Bytea,
            Date32 | Date64 => Self::Date,
            Timestamp(_, None) => Self::Timestamp,
            Timestamp(_, Some(_)) => Self::Timestamptz,
            Time32(_) | Time64(_) => Self::Time,
            Duration(_) => Self::Interval,
            List(_) | LargeList(_) | FixedSizeList(_, _) | Struct(_) | Map(_, _) => Self::Jsonb,
            Dictionary(_, value) => Self::of(value)?,
            other => return Err(format!("PostgreSQL has no exact type for {other}")),
        })
    }

    /// The type in SQL.
    pub fn sql(&self) -> String {
        match self {
            Self::Bool => "boolean".into(),
            Self::Int2 => "smallint".into(),
            Self::Int4 => "integer".into(),
            Self::Int8 => "bigint".into(),
            Self::Float4 => "real".into(),
            Self::Float8 => "double precision".into(),
            Self::Numeric { precision, scale } => format!("numeric({precision}, {scale})"),
            Self::Text => "text".into(),
            Self::Bytea => "bytea".into(),
            Self::Date => "date".into(),
            Self::Timestamp => "timestamp".into(),
            Self::Timestamptz => "timestamptz".into(),
            Self::Time => "time".into(),
            Self::Interval => "interval".into(),
            Self::Jsonb => "jsonb".into(),
        }
    }
}

/// The column definition of `field` for `CREATE TABLE` / `ALTER TABLE ADD COLUMN`.
pub fn column_definition(field: &Field) -> Result<String, String> {
    let pg = PgType::of(field.data_type())
        .map_err(|reason| format!("column '{}': {reason}", field.name()))?;
    let null = if field.is_nullable() { "" } else { " NOT NULL" };
    Ok(format!("{} {}{null}", quote(field.name()), pg.sql()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::TimeUnit;
    use std::sync::Arc;

    #[test]
    fn maps_the_documented_types() {
        let cases = [
            (DataType::Int8, "smallint"),
            (DataType::UInt16, "integer"),
            (DataType::UInt32, "bigint"),
            (DataType::UInt64, "numeric(20, 0)"),
            (DataType::Decimal128(38, 10), "numeric(38, 10)"),
            (DataType::Decimal256(76, 0), "numeric(76, 0)"),
            (DataType::Utf8View, "text"),
            (
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                "timestamptz",
            ),
            (DataType::Duration(TimeUnit::Second), "interval"),
            (
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                "jsonb",
            ),
            (
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                "text",
            ),
        ];
        for (arrow, sql) in cases {
            assert_eq!(PgType::of(&arrow).unwrap().sql(), sql, "{arrow}");
        }
        assert!(PgType::of(&DataType::Decimal128(10, -2)).is_err());
        assert!(
            PgType::of(&DataType::Interval(
                arrow_schema::IntervalUnit::MonthDayNano
            ))
            .is_err()
        );
    }

    #[test]
    fn column_definitions_quote_names() {
        let field = Field::new("we\"ird", DataType::Int64, false);
        assert_eq!(
            column_definition(&field).unwrap(),
            "\"we\"\"ird\" bigint NOT NULL"
        );
    }
}

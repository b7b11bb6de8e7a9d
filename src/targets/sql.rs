//! SQL naming shared by the table targets (DuckDB, PostgreSQL).

use crate::asset::AssetKey;

/// Quotes an identifier: `a"b` → `"a""b"`. Every name Quiver puts in SQL goes through this,
/// so no asset or column name can change a statement's meaning.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal: `it's` → `'it''s'`. Standard SQL: backslashes are not escapes.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A table's schema-qualified name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// The table of an asset, as Dagster's database IO managers name it: the last segment is
    /// the table, the one before it the schema, else `default_schema`.
    pub fn of(asset: &AssetKey, default_schema: &str) -> Self {
        let segments = asset.segments();
        let table = segments[segments.len() - 1].clone();
        let schema = if segments.len() > 1 {
            segments[segments.len() - 2].clone()
        } else {
            default_schema.to_string()
        };
        Self { schema, table }
    }

    /// `"schema"."table"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dagster() {
        let key = |s: &str| AssetKey::parse(s).unwrap();
        assert_eq!(
            TableName::of(&key("a/b/orders"), "main").sql(),
            "\"b\".\"orders\""
        );
        assert_eq!(
            TableName::of(&key("orders"), "public").sql(),
            "\"public\".\"orders\""
        );
        assert_eq!(quote("x\"y"), "\"x\"\"y\"");
        assert_eq!(literal("it's \\n"), "'it''s \\n'");
    }
}

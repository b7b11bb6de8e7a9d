//! SQL naming, and the commit markers, shared by the table targets (DuckDB, PostgreSQL).

use crate::asset::AssetKey;
use crate::error::{Error, Result};

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

/// The table in which a table target's put records its id, in the transaction that commits
/// its data, so that [`crate::targets::Target::resolve`] can tell after a crash whether that
/// commit landed. The put also removes its asset's earlier rows: one row per asset remains,
/// its last committed put's. It lives in the target's default schema, so no asset whose
/// table it would be may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMarkers {
    pub table: TableName,
}

impl CommitMarkers {
    pub const TABLE: &'static str = "quiver_commits";

    pub fn in_schema(schema: &str) -> Self {
        Self {
            table: TableName {
                schema: schema.to_string(),
                table: Self::TABLE.to_string(),
            },
        }
    }

    /// Refuses an asset whose table would be the markers' own; `fold_case` for a database
    /// whose quoted names ignore case (DuckDB).
    pub fn check_asset(
        &self,
        target: &str,
        asset: &AssetKey,
        table: &TableName,
        fold_case: bool,
    ) -> Result<()> {
        let same = if fold_case {
            table.schema.to_lowercase() == self.table.schema.to_lowercase()
                && table.table.to_lowercase() == self.table.table.to_lowercase()
        } else {
            *table == self.table
        };
        if same {
            return Err(Error::invalid_request(format!(
                "asset '{asset}' would be table {}, where target '{target}' records its \
                 commits; name the asset differently",
                table.sql()
            )));
        }
        Ok(())
    }

    pub fn create(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (put_id TEXT PRIMARY KEY, asset TEXT NOT NULL, \
             committed_at TIMESTAMPTZ NOT NULL)",
            self.table.sql()
        )
    }

    /// The statements recording `put` as `asset`'s last commit, now; `put` and `asset` are SQL
    /// expressions (literals or parameters). The time is the caller's clock: the databases'
    /// `now()` is when the transaction began.
    pub fn record(&self, put: &str, asset: &str) -> [String; 2] {
        let table = self.table.sql();
        let at = literal(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        [
            format!(
                "INSERT INTO {table} (put_id, asset, committed_at) \
                 VALUES ({put}, {asset}, CAST({at} AS TIMESTAMPTZ))"
            ),
            format!("DELETE FROM {table} WHERE asset = {asset} AND put_id <> {put}"),
        ]
    }

    /// A query counting the rows of `put` (0 or 1).
    pub fn find(&self, put: &str) -> String {
        format!(
            "SELECT count(*) FROM {} WHERE put_id = {put}",
            self.table.sql()
        )
    }

    /// A statement removing `asset`'s row, for when its table is dropped.
    pub fn forget(&self, asset: &str) -> String {
        format!("DELETE FROM {} WHERE asset = {asset}", self.table.sql())
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

    #[test]
    fn no_asset_is_the_commit_markers() {
        let markers = CommitMarkers::in_schema("main");
        let check = |asset: &str, fold_case| {
            let asset = AssetKey::parse(asset).unwrap();
            markers.check_asset("t", &asset, &TableName::of(&asset, "main"), fold_case)
        };
        assert!(check("quiver_commits", false).is_err());
        assert!(check("main/quiver_commits", false).is_err());
        assert!(check("Quiver_Commits", false).is_ok());
        assert!(check("Quiver_Commits", true).is_err());
        assert!(check("other/quiver_commits", true).is_ok());
    }
}

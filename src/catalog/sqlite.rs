//! The embedded catalog, in one SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Params, Transaction, params};

use super::bookkeeping::{self, AssetRow, Ledger, PartitionRow, Totals};
use super::{
    AssetRecord, Catalog, Commit, HistoryEntry, Layout, PartitionRecord, PendingPut, PendingRow,
    decode_schema, parse_mode,
};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::error::{Error, Result};
use crate::protocol::PutSummary;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS assets (
    target      TEXT    NOT NULL,
    asset       TEXT    NOT NULL,
    schema      BLOB    NOT NULL,
    layout      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    location    TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    partition_columns TEXT,
    PRIMARY KEY (target, asset)
);
CREATE TABLE IF NOT EXISTS partitions (
    target      TEXT    NOT NULL,
    asset       TEXT    NOT NULL,
    partition   TEXT    NOT NULL,
    rows        INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    location    TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (target, asset, partition)
);
CREATE TABLE IF NOT EXISTS history (
    target          TEXT    NOT NULL,
    asset           TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    mode            TEXT    NOT NULL,
    partition       TEXT,
    rows            INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    location        TEXT    NOT NULL,
    duration_ms     INTEGER NOT NULL,
    written_at      TEXT    NOT NULL,
    idempotency_key TEXT,
    PRIMARY KEY (target, asset, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS history_idempotency
    ON history (target, asset, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending_puts (
    put_id      TEXT    NOT NULL PRIMARY KEY,
    target      TEXT    NOT NULL,
    asset       TEXT    NOT NULL,
    schema      BLOB    NOT NULL,
    fields      TEXT    NOT NULL,
    started_at  TEXT    NOT NULL
);
";

/// A catalog kept in one SQLite file; calls run on the blocking pool.
#[derive(Clone)]
pub struct SqliteCatalog {
    conn: Arc<Mutex<Connection>>,
}

fn db_err(action: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::catalog(action, e)
}

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create catalog directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::config(format!("cannot open catalog {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err("setting synchronous"))?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("creating tables"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| Error::internal("catalog lock poisoned"))?;
            work(&mut conn)
        })
        .await?
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::catalog("reading a timestamp", e))
}

fn load(conn: &Connection, target: &str, asset: &str) -> Result<Option<AssetRecord>> {
    let row = conn
        .query_row(
            "SELECT schema, layout, version, rows, bytes, location, created_at, updated_at,
                    partition_columns
             FROM assets WHERE target = ?1 AND asset = ?2",
            params![target, asset],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            },
        )
        .optional()
        .map_err(db_err("reading an asset"))?;
    let Some((schema, layout, version, rows, bytes, location, created, updated, columns)) = row
    else {
        return Ok(None);
    };
    let partition_columns = columns
        .map(|text| serde_json::from_str::<PartitionColumns>(&text))
        .transpose()
        .map_err(|e| Error::catalog("reading partition columns", e))?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT partition, rows, bytes, location, version, updated_at FROM partitions
             WHERE target = ?1 AND asset = ?2 ORDER BY partition",
        )
        .map_err(db_err("reading partitions"))?;
    let partitions = stmt
        .query_map(params![target, asset], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(db_err("reading partitions"))?
        .map(|row| {
            let (id, rows, bytes, location, version, updated) =
                row.map_err(db_err("reading partitions"))?;
            Ok(PartitionRecord {
                partition: Partition::from_id(&id)?,
                rows: rows as u64,
                bytes: bytes as u64,
                location,
                version: version as u64,
                updated_at: parse_time(&updated)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(AssetRecord {
        target: target.to_string(),
        asset: AssetKey::parse(asset)?,
        schema: decode_schema(&schema)?,
        layout: Layout::decode(&layout)?,
        version: version as u64,
        rows: rows as u64,
        bytes: bytes as u64,
        location,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
        partitions,
        partition_columns,
    }))
}

/// A commit's or a delete's statements, in one SQLite transaction.
struct SqliteLedger<'a>(&'a Transaction<'a>);

impl SqliteLedger<'_> {
    fn execute(&self, action: &'static str, statement: &str, params: impl Params) -> Result<()> {
        self.0.execute(statement, params).map_err(db_err(action))?;
        Ok(())
    }
}

fn totals(r: &rusqlite::Row<'_>, rows: usize) -> rusqlite::Result<Totals> {
    Ok(Totals {
        rows: r.get(rows)?,
        bytes: r.get(rows + 1)?,
    })
}

impl Ledger for SqliteLedger<'_> {
    async fn asset(&mut self, target: &str, asset: &str) -> Result<Option<(i64, Totals)>> {
        self.0
            .query_row(
                "SELECT version, rows, bytes FROM assets WHERE target = ?1 AND asset = ?2",
                params![target, asset],
                |r| Ok((r.get(0)?, totals(r, 1)?)),
            )
            .optional()
            .map_err(db_err("reading an asset"))
    }

    async fn partition(
        &mut self,
        target: &str,
        asset: &str,
        partition: &str,
    ) -> Result<Option<Totals>> {
        self.0
            .query_row(
                "SELECT rows, bytes FROM partitions WHERE target = ?1 AND asset = ?2 AND partition = ?3",
                params![target, asset, partition],
                |r| totals(r, 0),
            )
            .optional()
            .map_err(db_err("reading a partition"))
    }

    async fn partition_sums(&mut self, target: &str, asset: &str) -> Result<(i64, Totals)> {
        self.0
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(rows), 0), COALESCE(SUM(bytes), 0) FROM partitions
                 WHERE target = ?1 AND asset = ?2",
                params![target, asset],
                |r| Ok((r.get(0)?, totals(r, 1)?)),
            )
            .map_err(db_err("summing partitions"))
    }

    async fn put_partition(&mut self, p: &PartitionRow<'_>) -> Result<()> {
        self.execute(
            "recording a partition",
            "INSERT INTO partitions (target, asset, partition, rows, bytes, location, version, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (target, asset, partition) DO UPDATE SET
                rows = excluded.rows, bytes = excluded.bytes, location = excluded.location,
                version = excluded.version, updated_at = excluded.updated_at",
            params![
                p.target,
                p.asset,
                p.partition,
                p.totals.rows,
                p.totals.bytes,
                p.location,
                p.version,
                p.at.to_rfc3339()
            ],
        )
    }

    async fn put_asset(&mut self, a: &AssetRow<'_>) -> Result<()> {
        self.execute(
            "recording an asset",
            "INSERT INTO assets (target, asset, schema, layout, version, rows, bytes, location, created_at, updated_at, partition_columns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
             ON CONFLICT (target, asset) DO UPDATE SET
                schema = excluded.schema, layout = excluded.layout, version = excluded.version,
                rows = excluded.rows, bytes = excluded.bytes, location = excluded.location,
                updated_at = excluded.updated_at, partition_columns = excluded.partition_columns",
            params![
                a.target,
                a.asset,
                a.schema,
                a.layout,
                a.version,
                a.totals.rows,
                a.totals.bytes,
                a.location,
                a.at.to_rfc3339(),
                a.partition_columns
            ],
        )
    }

    async fn update_asset(
        &mut self,
        target: &str,
        asset: &str,
        version: i64,
        totals: Totals,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.execute(
            "updating an asset",
            "UPDATE assets SET version = ?3, rows = ?4, bytes = ?5, updated_at = ?6
             WHERE target = ?1 AND asset = ?2",
            params![
                target,
                asset,
                version,
                totals.rows,
                totals.bytes,
                at.to_rfc3339()
            ],
        )
    }

    async fn add_history(&mut self, h: &bookkeeping::HistoryRow<'_>) -> Result<()> {
        self.execute(
            "recording history",
            "INSERT INTO history (target, asset, version, mode, partition, rows, bytes, location, duration_ms, written_at, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                h.target,
                h.asset,
                h.version,
                h.mode,
                h.partition,
                h.written.rows,
                h.written.bytes,
                h.location,
                h.duration_ms,
                h.at.to_rfc3339(),
                h.idempotency_key
            ],
        )
    }

    async fn delete_partitions(&mut self, target: &str, asset: &str, ids: &[String]) -> Result<()> {
        for id in ids {
            self.execute(
                "deleting a partition",
                "DELETE FROM partitions WHERE target = ?1 AND asset = ?2 AND partition = ?3",
                params![target, asset, id],
            )?;
        }
        Ok(())
    }

    async fn delete_asset(&mut self, target: &str, asset: &str) -> Result<()> {
        for table in ["partitions", "history", "assets"] {
            self.execute(
                "deleting an asset",
                &format!("DELETE FROM {table} WHERE target = ?1 AND asset = ?2"),
                params![target, asset],
            )?;
        }
        Ok(())
    }

    async fn forget_put(&mut self, id: &str) -> Result<()> {
        self.execute(
            "finishing a pending put",
            "DELETE FROM pending_puts WHERE put_id = ?1",
            params![id],
        )
    }
}

/// Runs the shared bookkeeping on SQLite's synchronous connection: each statement runs when
/// it is called, so the work is done at the first poll.
fn now_or_never<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    futures::FutureExt::now_or_never(std::pin::pin!(work))
        .ok_or_else(|| Error::internal("a SQLite statement did not finish at once"))?
}

type HistoryRow = (
    i64,
    String,
    Option<String>,
    i64,
    i64,
    String,
    i64,
    String,
    Option<String>,
);

fn history_entry(row: HistoryRow) -> Result<HistoryEntry> {
    let (version, mode, partition, rows, bytes, location, duration_ms, written_at, key) = row;
    Ok(HistoryEntry {
        version: version as u64,
        mode: parse_mode(&mode)?,
        partition: partition
            .map(|id| Partition::from_id(&id).map(|p| p.to_json()))
            .transpose()?,
        rows: rows as u64,
        bytes: bytes as u64,
        location,
        duration_ms: duration_ms as u64,
        written_at: parse_time(&written_at)?,
        idempotency_key: key,
    })
}

const HISTORY_COLUMNS: &str =
    "version, mode, partition, rows, bytes, location, duration_ms, written_at, idempotency_key";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn get(&self, target: &str, asset: &AssetKey) -> Result<Option<AssetRecord>> {
        let (target, asset) = (target.to_string(), asset.to_string());
        self.run(move |conn| load(conn, &target, &asset)).await
    }

    async fn list(&self, target: Option<&str>, prefix: Option<&str>) -> Result<Vec<AssetRecord>> {
        let target = target.map(str::to_string);
        let prefix = prefix.map(str::to_string);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT target, asset FROM assets
                     WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR substr(asset, 1, length(?2)) = ?2)
                     ORDER BY target, asset",
                )
                .map_err(db_err("listing assets"))?;
            let keys = stmt
                .query_map(params![target, prefix], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(db_err("listing assets"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("listing assets"))?;
            drop(stmt);
            let mut records = Vec::with_capacity(keys.len());
            for (target, asset) in keys {
                if let Some(record) = load(conn, &target, &asset)? {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<u64> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(db_err("starting a commit"))?;
            let version = now_or_never(bookkeeping::commit(&mut SqliteLedger(&tx), &commit))?;
            tx.commit().map_err(db_err("committing"))?;
            Ok(version)
        })
        .await
    }

    async fn replay(
        &self,
        target: &str,
        asset: &AssetKey,
        idempotency_key: &str,
    ) -> Result<Option<PutSummary>> {
        let (target, asset, key) = (
            target.to_string(),
            asset.to_string(),
            idempotency_key.to_string(),
        );
        self.run(move |conn| {
            let row = conn
                .query_row(
                    &format!(
                        "SELECT {HISTORY_COLUMNS} FROM history
                         WHERE target = ?1 AND asset = ?2 AND idempotency_key = ?3"
                    ),
                    params![target, asset, key],
                    history_row,
                )
                .optional()
                .map_err(db_err("looking up an idempotency key"))?;
            row.map(|row| Ok(history_entry(row)?.replayed(&target, &asset)))
                .transpose()
        })
        .await
    }

    async fn delete(&self, target: &str, asset: &AssetKey, partitions: &[Partition]) -> Result<()> {
        let (target, asset) = (target.to_string(), asset.to_string());
        let partitions = partitions.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(db_err("starting a delete"))?;
            now_or_never(bookkeeping::delete(
                &mut SqliteLedger(&tx),
                &target,
                &asset,
                &partitions,
            ))?;
            tx.commit().map_err(db_err("committing a delete"))
        })
        .await
    }

    async fn history(&self, target: &str, asset: &AssetKey) -> Result<Vec<HistoryEntry>> {
        let (target, asset) = (target.to_string(), asset.to_string());
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {HISTORY_COLUMNS} FROM history WHERE target = ?1 AND asset = ?2
                     ORDER BY version DESC"
                ))
                .map_err(db_err("reading history"))?;
            let rows = stmt
                .query_map(params![target, asset], history_row)
                .map_err(db_err("reading history"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("reading history"))?;
            rows.into_iter().map(history_entry).collect()
        })
        .await
    }

    async fn begin_put(&self, put: &PendingPut) -> Result<()> {
        let row = put.encode()?;
        self.run(move |conn| {
            let (id, target, asset, schema, fields, started_at) = row;
            conn.execute(
                "INSERT INTO pending_puts (put_id, target, asset, schema, fields, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, target, asset, schema, fields, started_at],
            )
            .map_err(db_err("recording a pending put"))?;
            Ok(())
        })
        .await
    }

    async fn abandon_put(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.run(move |conn| {
            conn.execute("DELETE FROM pending_puts WHERE put_id = ?1", params![id])
                .map_err(db_err("forgetting a pending put"))?;
            Ok(())
        })
        .await
    }

    async fn pending_puts(
        &self,
        target: &str,
        asset: Option<&AssetKey>,
    ) -> Result<Vec<PendingPut>> {
        let target = target.to_string();
        let asset = asset.map(AssetKey::to_string);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT put_id, target, asset, schema, fields, started_at FROM pending_puts
                     WHERE target = ?1 AND (?2 IS NULL OR asset = ?2) ORDER BY started_at",
                )
                .map_err(db_err("reading pending puts"))?;
            let rows = stmt
                .query_map(params![target, asset], |r| {
                    Ok::<PendingRow, _>((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(db_err("reading pending puts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("reading pending puts"))?;
            rows.into_iter().map(PendingPut::decode).collect()
        })
        .await
    }
}

//! The embedded catalog, in one SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    AssetRecord, Catalog, Commit, HistoryEntry, Layout, PartitionRecord, PendingPut,
    PendingRow, decode_schema, encode_schema, parse_mode, unpartitioned_totals,
};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::error::{Error, Result};
use crate::protocol::{Mode, PutSummary};

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

fn now() -> DateTime<Utc> {
    Utc::now()
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

fn record_commit(tx: &Transaction<'_>, c: &Commit) -> Result<u64> {
    let asset = c.asset.to_string();
    let at = now().to_rfc3339();
    let previous: Option<(i64, i64, i64)> = tx
        .query_row(
            "SELECT version, rows, bytes FROM assets WHERE target = ?1 AND asset = ?2",
            params![c.target, asset],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db_err("reading an asset"))?;
    let version = previous.map_or(1, |(v, _, _)| v + 1);
    let (rows, bytes) = match &c.partition {
        Some(partition) => {
            let (part_rows, part_bytes) = if c.mode == Mode::Overwrite {
                (c.rows as i64, c.bytes as i64)
            } else {
                let before: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT rows, bytes FROM partitions WHERE target = ?1 AND asset = ?2 AND partition = ?3",
                        params![c.target, asset, partition.id()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db_err("reading a partition"))?;
                let (r, b) = before.unwrap_or((0, 0));
                (r + c.rows as i64, b + c.bytes as i64)
            };
            tx.execute(
                "INSERT INTO partitions (target, asset, partition, rows, bytes, location, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (target, asset, partition) DO UPDATE SET
                    rows = excluded.rows, bytes = excluded.bytes, location = excluded.location,
                    version = excluded.version, updated_at = excluded.updated_at",
                params![
                    c.target,
                    asset,
                    partition.id(),
                    part_rows,
                    part_bytes,
                    c.location,
                    version,
                    at
                ],
            )
            .map_err(db_err("recording a partition"))?;
            tx.query_row(
                "SELECT SUM(rows), SUM(bytes) FROM partitions WHERE target = ?1 AND asset = ?2",
                params![c.target, asset],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(db_err("summing partitions"))?
        }
        None => unpartitioned_totals(
            c.mode,
            previous.map(|(_, rows, bytes)| (rows, bytes)),
            c.rows as i64,
            c.bytes as i64,
        ),
    };
    // A table target counts its rows itself: upserts replace rather than add.
    let rows = c.total_rows.map_or(rows, |total| total as i64);
    let columns = c
        .partition_columns
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| Error::catalog("recording partition columns", e))?;
    tx.execute(
        "INSERT INTO assets (target, asset, schema, layout, version, rows, bytes, location, created_at, updated_at, partition_columns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
         ON CONFLICT (target, asset) DO UPDATE SET
            schema = excluded.schema, layout = excluded.layout, version = excluded.version,
            rows = excluded.rows, bytes = excluded.bytes, location = excluded.location,
            updated_at = excluded.updated_at, partition_columns = excluded.partition_columns",
        params![
            c.target,
            asset,
            encode_schema(&c.schema)?,
            Layout::of(c.partition.as_ref()).encode(),
            version,
            rows,
            bytes,
            c.asset_location,
            at,
            columns
        ],
    )
    .map_err(db_err("recording an asset"))?;
    tx.execute(
        "INSERT INTO history (target, asset, version, mode, partition, rows, bytes, location, duration_ms, written_at, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            c.target,
            asset,
            version,
            c.mode.as_str(),
            c.partition.as_ref().map(Partition::id),
            c.rows as i64,
            c.bytes as i64,
            c.location,
            c.duration_ms as i64,
            at,
            c.idempotency_key
        ],
    )
    .map_err(db_err("recording history"))?;
    if let Some(id) = &c.put_id {
        tx.execute("DELETE FROM pending_puts WHERE put_id = ?1", params![id])
            .map_err(db_err("finishing a pending put"))?;
    }
    Ok(version as u64)
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
            let version = record_commit(&tx, &commit)?;
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
        let ids: Vec<String> = partitions.iter().map(Partition::id).collect();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(db_err("starting a delete"))?;
            let whole = if ids.is_empty() {
                true
            } else {
                for id in &ids {
                    tx.execute(
                        "DELETE FROM partitions WHERE target = ?1 AND asset = ?2 AND partition = ?3",
                        params![target, asset, id],
                    )
                    .map_err(db_err("deleting a partition"))?;
                }
                let left: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM partitions WHERE target = ?1 AND asset = ?2",
                        params![target, asset],
                        |r| r.get(0),
                    )
                    .map_err(db_err("counting partitions"))?;
                if left > 0 {
                    tx.execute(
                        "UPDATE assets SET
                            rows = (SELECT SUM(rows) FROM partitions WHERE target = ?1 AND asset = ?2),
                            bytes = (SELECT SUM(bytes) FROM partitions WHERE target = ?1 AND asset = ?2),
                            version = version + 1, updated_at = ?3
                         WHERE target = ?1 AND asset = ?2",
                        params![target, asset, now().to_rfc3339()],
                    )
                    .map_err(db_err("updating an asset"))?;
                }
                left == 0
            };
            if whole {
                for table in ["partitions", "history", "assets"] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE target = ?1 AND asset = ?2"),
                        params![target, asset],
                    )
                    .map_err(db_err("deleting an asset"))?;
                }
            }
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

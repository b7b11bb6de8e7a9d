//! The shared catalog, in PostgreSQL: several Quiver servers (replicas) use one.
//!
//! Each commit is one PostgreSQL transaction that locks the asset's row, so versions never
//! repeat. Writers of one asset are serialized across servers by a session advisory lock keyed
//! by target and asset ([`Catalog::lock_asset`]), held from before the data is written until
//! the catalog records it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::bookkeeping::{self, AssetRow, HistoryRow, Ledger, PartitionRow, Totals};
use super::{
    AssetGuard, AssetRecord, Catalog, Commit, HistoryEntry, Layout, PartitionRecord, PendingPut,
    decode_schema, parse_mode,
};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::error::{Error, Result};
use crate::pg;
use crate::protocol::PutSummary;
use crate::targets::sql::quote;

/// Tables of the catalog; `{schema}` is replaced by the quoted schema name.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS {schema}.assets (
    target      text    NOT NULL,
    asset       text    NOT NULL,
    schema      bytea   NOT NULL,
    layout      text    NOT NULL,
    version     bigint  NOT NULL,
    rows        bigint  NOT NULL,
    bytes       bigint  NOT NULL,
    location    text    NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    partition_columns text,
    PRIMARY KEY (target, asset)
);
CREATE TABLE IF NOT EXISTS {schema}.partitions (
    target      text    NOT NULL,
    asset       text    NOT NULL,
    partition   text    NOT NULL,
    rows        bigint  NOT NULL,
    bytes       bigint  NOT NULL,
    location    text    NOT NULL,
    version     bigint  NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (target, asset, partition)
);
CREATE TABLE IF NOT EXISTS {schema}.history (
    target          text    NOT NULL,
    asset           text    NOT NULL,
    version         bigint  NOT NULL,
    mode            text    NOT NULL,
    partition       text,
    rows            bigint  NOT NULL,
    bytes           bigint  NOT NULL,
    location        text    NOT NULL,
    duration_ms     bigint  NOT NULL,
    written_at      timestamptz NOT NULL,
    idempotency_key text,
    PRIMARY KEY (target, asset, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS history_idempotency
    ON {schema}.history (target, asset, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.pending_puts (
    put_id      text    NOT NULL PRIMARY KEY,
    target      text    NOT NULL,
    asset       text    NOT NULL,
    schema      bytea   NOT NULL,
    fields      text    NOT NULL,
    started_at  text    NOT NULL
);
";

/// Advisory lock id under which servers create the catalog tables one at a time.
const SETUP_LOCK: i64 = 0x5155_4956_4552_0001;

/// A catalog kept in PostgreSQL tables under one schema.
pub struct PostgresCatalog {
    pool: Pool,
    /// The quoted schema name.
    schema: String,
    display: String,
}

fn db_err(action: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| Error::catalog(action, e)
}

impl PostgresCatalog {
    /// Connects, and creates the catalog's schema and tables when missing.
    pub async fn open(
        url: &str,
        schema: &str,
        ca_file: Option<&std::path::Path>,
        pool_size: usize,
    ) -> Result<Self> {
        let (pool, display) = pg::pool(url, ca_file, pool_size)
            .map_err(|e| Error::config(format!("[catalog] {e}")))?;
        let catalog = Self {
            pool,
            schema: quote(schema),
            display,
        };
        let mut conn = catalog.connect().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db_err("creating the catalog tables"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK])
            .await
            .map_err(db_err("creating the catalog tables"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; {}",
            catalog.schema,
            TABLES.replace("{schema}", &catalog.schema)
        ))
        .await
        .map_err(db_err("creating the catalog tables"))?;
        tx.commit()
            .await
            .map_err(db_err("creating the catalog tables"))?;
        Ok(catalog)
    }

    async fn connect(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            Error::catalog(
                "connecting",
                format!("cannot reach the catalog at {}: {e}", self.display),
            )
        })
    }

    fn sql(&self, statement: &str) -> String {
        statement.replace("{schema}", &self.schema)
    }
}

/// The advisory lock id of an asset: the same in every server.
fn lock_id(target: &str, asset: &AssetKey) -> i64 {
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("quiver\0{target}\0{asset}").as_bytes(),
    );
    let bytes: [u8; 8] = id.as_bytes()[..8].try_into().expect("16 bytes");
    i64::from_be_bytes(bytes)
}

async fn load<C: tokio_postgres::GenericClient>(
    conn: &C,
    schema: &str,
    target: &str,
    asset: &str,
) -> Result<Option<AssetRecord>> {
    let Some(row) = conn
        .query_opt(
            &format!(
                "SELECT schema, layout, version, rows, bytes, location, created_at, updated_at,
                        partition_columns
                 FROM {schema}.assets WHERE target = $1 AND asset = $2"
            ),
            &[&target, &asset],
        )
        .await
        .map_err(db_err("reading an asset"))?
    else {
        return Ok(None);
    };
    let partitions = conn
        .query(
            &format!(
                "SELECT partition, rows, bytes, location, version, updated_at
                 FROM {schema}.partitions WHERE target = $1 AND asset = $2
                 ORDER BY partition COLLATE \"C\""
            ),
            &[&target, &asset],
        )
        .await
        .map_err(db_err("reading partitions"))?
        .iter()
        .map(|r| {
            Ok(PartitionRecord {
                partition: Partition::from_id(r.get::<_, &str>(0))?,
                rows: r.get::<_, i64>(1) as u64,
                bytes: r.get::<_, i64>(2) as u64,
                location: r.get(3),
                version: r.get::<_, i64>(4) as u64,
                updated_at: r.get(5),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let partition_columns = row
        .get::<_, Option<&str>>(8)
        .map(serde_json::from_str::<PartitionColumns>)
        .transpose()
        .map_err(|e| Error::catalog("reading partition columns", e))?;
    Ok(Some(AssetRecord {
        target: target.to_string(),
        asset: AssetKey::parse(asset)?,
        schema: decode_schema(row.get::<_, &[u8]>(0))?,
        layout: Layout::decode(row.get(1))?,
        version: row.get::<_, i64>(2) as u64,
        rows: row.get::<_, i64>(3) as u64,
        bytes: row.get::<_, i64>(4) as u64,
        location: row.get(5),
        created_at: row.get(6),
        updated_at: row.get(7),
        partitions,
        partition_columns,
    }))
}

const HISTORY_COLUMNS: &str =
    "version, mode, partition, rows, bytes, location, duration_ms, written_at, idempotency_key";

fn history_entry(r: &Row) -> Result<HistoryEntry> {
    Ok(HistoryEntry {
        version: r.get::<_, i64>(0) as u64,
        mode: parse_mode(r.get(1))?,
        partition: r
            .get::<_, Option<&str>>(2)
            .map(|id| Partition::from_id(id).map(|p| p.to_json()))
            .transpose()?,
        rows: r.get::<_, i64>(3) as u64,
        bytes: r.get::<_, i64>(4) as u64,
        location: r.get(5),
        duration_ms: r.get::<_, i64>(6) as u64,
        written_at: r.get(7),
        idempotency_key: r.get(8),
    })
}

/// Holds an asset's advisory lock on its own connection.
struct AdvisoryLock {
    conn: Option<Object>,
    id: i64,
    held: bool,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.held {
            // The lock request may still be queued on the server: closing the connection
            // withdraws it (and would release it).
            drop(Object::take(conn));
            return;
        }
        let id = self.id;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if conn
                        .execute("SELECT pg_advisory_unlock($1)", &[&id])
                        .await
                        .is_err()
                    {
                        drop(Object::take(conn));
                    }
                });
            }
            Err(_) => drop(Object::take(conn)),
        }
    }
}

/// A commit's or a delete's statements, in one PostgreSQL transaction.
struct PgLedger<'a> {
    tx: &'a Transaction<'a>,
    catalog: &'a PostgresCatalog,
}

impl PostgresCatalog {
    fn ledger<'a>(&'a self, tx: &'a Transaction<'a>) -> PgLedger<'a> {
        PgLedger { tx, catalog: self }
    }
}

impl PgLedger<'_> {
    async fn execute(
        &self,
        action: &'static str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<()> {
        self.tx
            .execute(&self.catalog.sql(statement), params)
            .await
            .map_err(db_err(action))?;
        Ok(())
    }
}

fn totals(r: &Row, rows: usize) -> Totals {
    Totals {
        rows: r.get(rows),
        bytes: r.get(rows + 1),
    }
}

impl Ledger for PgLedger<'_> {
    async fn asset(&mut self, target: &str, asset: &str) -> Result<Option<(i64, Totals)>> {
        Ok(self
            .tx
            .query_opt(
                &self.catalog.sql(
                    "SELECT version, rows, bytes FROM {schema}.assets
                     WHERE target = $1 AND asset = $2 FOR UPDATE",
                ),
                &[&target, &asset],
            )
            .await
            .map_err(db_err("reading an asset"))?
            .map(|r| (r.get(0), totals(&r, 1))))
    }

    async fn partition(
        &mut self,
        target: &str,
        asset: &str,
        partition: &str,
    ) -> Result<Option<Totals>> {
        Ok(self
            .tx
            .query_opt(
                &self.catalog.sql(
                    "SELECT rows, bytes FROM {schema}.partitions
                     WHERE target = $1 AND asset = $2 AND partition = $3",
                ),
                &[&target, &asset, &partition],
            )
            .await
            .map_err(db_err("reading a partition"))?
            .map(|r| totals(&r, 0)))
    }

    async fn partition_sums(&mut self, target: &str, asset: &str) -> Result<(i64, Totals)> {
        let r = self
            .tx
            .query_one(
                &self.catalog.sql(
                    "SELECT count(*), COALESCE(SUM(rows), 0)::bigint, COALESCE(SUM(bytes), 0)::bigint
                     FROM {schema}.partitions WHERE target = $1 AND asset = $2",
                ),
                &[&target, &asset],
            )
            .await
            .map_err(db_err("summing partitions"))?;
        Ok((r.get(0), totals(&r, 1)))
    }

    async fn put_partition(&mut self, p: &PartitionRow<'_>) -> Result<()> {
        self.execute(
            "recording a partition",
            "INSERT INTO {schema}.partitions
                (target, asset, partition, rows, bytes, location, version, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (target, asset, partition) DO UPDATE SET
                rows = excluded.rows, bytes = excluded.bytes,
                location = excluded.location, version = excluded.version,
                updated_at = excluded.updated_at",
            &[
                &p.target,
                &p.asset,
                &p.partition,
                &p.totals.rows,
                &p.totals.bytes,
                &p.location,
                &p.version,
                &p.at,
            ],
        )
        .await
    }

    async fn put_asset(&mut self, a: &AssetRow<'_>) -> Result<()> {
        self.execute(
            "recording an asset",
            "INSERT INTO {schema}.assets (target, asset, schema, layout, version, rows, bytes,
                location, created_at, updated_at, partition_columns)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
             ON CONFLICT (target, asset) DO UPDATE SET
                schema = excluded.schema, layout = excluded.layout, version = excluded.version,
                rows = excluded.rows, bytes = excluded.bytes, location = excluded.location,
                updated_at = excluded.updated_at, partition_columns = excluded.partition_columns",
            &[
                &a.target,
                &a.asset,
                &a.schema,
                &a.layout,
                &a.version,
                &a.totals.rows,
                &a.totals.bytes,
                &a.location,
                &a.at,
                &a.partition_columns,
            ],
        )
        .await
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
            "UPDATE {schema}.assets SET version = $3, rows = $4, bytes = $5, updated_at = $6
             WHERE target = $1 AND asset = $2",
            &[&target, &asset, &version, &totals.rows, &totals.bytes, &at],
        )
        .await
    }

    async fn add_history(&mut self, h: &HistoryRow<'_>) -> Result<()> {
        self.execute(
            "recording history",
            "INSERT INTO {schema}.history (target, asset, version, mode, partition, rows, bytes,
                location, duration_ms, written_at, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &h.target,
                &h.asset,
                &h.version,
                &h.mode,
                &h.partition,
                &h.written.rows,
                &h.written.bytes,
                &h.location,
                &h.duration_ms,
                &h.at,
                &h.idempotency_key,
            ],
        )
        .await
    }

    async fn delete_partitions(&mut self, target: &str, asset: &str, ids: &[String]) -> Result<()> {
        self.execute(
            "deleting a partition",
            "DELETE FROM {schema}.partitions
             WHERE target = $1 AND asset = $2 AND partition = ANY($3)",
            &[&target, &asset, &ids],
        )
        .await
    }

    async fn delete_asset(&mut self, target: &str, asset: &str) -> Result<()> {
        for table in ["partitions", "history", "assets"] {
            self.execute(
                "deleting an asset",
                &format!("DELETE FROM {{schema}}.{table} WHERE target = $1 AND asset = $2"),
                &[&target, &asset],
            )
            .await?;
        }
        Ok(())
    }

    async fn forget_put(&mut self, id: &str) -> Result<()> {
        self.execute(
            "finishing a pending put",
            "DELETE FROM {schema}.pending_puts WHERE put_id = $1",
            &[&id],
        )
        .await
    }
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn get(&self, target: &str, asset: &AssetKey) -> Result<Option<AssetRecord>> {
        let conn = self.connect().await?;
        load(&**conn, &self.schema, target, &asset.to_string()).await
    }

    async fn list(&self, target: Option<&str>, prefix: Option<&str>) -> Result<Vec<AssetRecord>> {
        let conn = self.connect().await?;
        let keys = conn
            .query(
                &self.sql(
                    "SELECT target, asset FROM {schema}.assets
                     WHERE ($1::text IS NULL OR target = $1)
                       AND ($2::text IS NULL OR left(asset, length($2)) = $2)
                     ORDER BY target COLLATE \"C\", asset COLLATE \"C\"",
                ),
                &[&target, &prefix],
            )
            .await
            .map_err(db_err("listing assets"))?;
        let mut records = Vec::with_capacity(keys.len());
        for row in keys {
            if let Some(record) = load(&**conn, &self.schema, row.get(0), row.get(1)).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn commit(&self, c: Commit) -> Result<u64> {
        let mut conn = self.connect().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db_err("starting a commit"))?;
        let version = bookkeeping::commit(&mut self.ledger(&tx), &c).await?;
        tx.commit().await.map_err(db_err("committing"))?;
        Ok(version)
    }

    async fn replay(
        &self,
        target: &str,
        asset: &AssetKey,
        idempotency_key: &str,
    ) -> Result<Option<PutSummary>> {
        let conn = self.connect().await?;
        let asset = asset.to_string();
        let row = conn
            .query_opt(
                &self.sql(&format!(
                    "SELECT {HISTORY_COLUMNS} FROM {{schema}}.history
                     WHERE target = $1 AND asset = $2 AND idempotency_key = $3"
                )),
                &[&target, &asset, &idempotency_key],
            )
            .await
            .map_err(db_err("looking up an idempotency key"))?;
        row.map(|r| Ok(history_entry(&r)?.replayed(target, &asset)))
            .transpose()
    }

    async fn delete(&self, target: &str, asset: &AssetKey, partitions: &[Partition]) -> Result<()> {
        let mut conn = self.connect().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db_err("starting a delete"))?;
        bookkeeping::delete(
            &mut self.ledger(&tx),
            target,
            &asset.to_string(),
            partitions,
        )
        .await?;
        tx.commit().await.map_err(db_err("committing a delete"))
    }

    async fn history(&self, target: &str, asset: &AssetKey) -> Result<Vec<HistoryEntry>> {
        let conn = self.connect().await?;
        conn.query(
            &self.sql(&format!(
                "SELECT {HISTORY_COLUMNS} FROM {{schema}}.history
                 WHERE target = $1 AND asset = $2 ORDER BY version DESC"
            )),
            &[&target, &asset.to_string()],
        )
        .await
        .map_err(db_err("reading history"))?
        .iter()
        .map(history_entry)
        .collect()
    }

    async fn lock_asset(&self, target: &str, asset: &AssetKey) -> Result<AssetGuard> {
        let id = lock_id(target, asset);
        let mut lock = AdvisoryLock {
            conn: Some(self.connect().await?),
            id,
            held: false,
        };
        // Waits while another server writes the asset. If this future is dropped first,
        // the guard closes the connection and the queued request goes with it.
        lock.conn
            .as_ref()
            .expect("just set")
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .await
            .map_err(db_err("locking an asset"))?;
        lock.held = true;
        Ok(Box::new(lock))
    }

    async fn begin_put(&self, put: &PendingPut) -> Result<()> {
        let (id, target, asset, schema, fields, started_at) = put.encode()?;
        self.connect()
            .await?
            .execute(
                &self.sql(
                    "INSERT INTO {schema}.pending_puts (put_id, target, asset, schema, fields, started_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                ),
                &[&id, &target, &asset, &schema, &fields, &started_at],
            )
            .await
            .map_err(db_err("recording a pending put"))?;
        Ok(())
    }

    async fn abandon_put(&self, id: &str) -> Result<()> {
        self.connect()
            .await?
            .execute(
                &self.sql("DELETE FROM {schema}.pending_puts WHERE put_id = $1"),
                &[&id],
            )
            .await
            .map_err(db_err("forgetting a pending put"))?;
        Ok(())
    }

    async fn pending_puts(
        &self,
        target: &str,
        asset: Option<&AssetKey>,
    ) -> Result<Vec<PendingPut>> {
        let asset = asset.map(AssetKey::to_string);
        // `started_at` is RFC 3339 text in UTC: byte order is time order, a language's is not.
        let rows = self
            .connect()
            .await?
            .query(
                &self.sql(
                    "SELECT put_id, target, asset, schema, fields, started_at FROM {schema}.pending_puts
                     WHERE target = $1 AND ($2::text IS NULL OR asset = $2)
                     ORDER BY started_at COLLATE \"C\"",
                ),
                &[&target, &asset],
            )
            .await
            .map_err(db_err("reading pending puts"))?;
        rows.iter()
            .map(|r| {
                PendingPut::decode((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_are_stable_and_distinct() {
        let a = AssetKey::parse("sales/daily").unwrap();
        let b = AssetKey::parse("sales/weekly").unwrap();
        assert_eq!(lock_id("parquet", &a), lock_id("parquet", &a));
        assert_ne!(lock_id("parquet", &a), lock_id("parquet", &b));
        assert_ne!(lock_id("parquet", &a), lock_id("csv", &a));
    }
}

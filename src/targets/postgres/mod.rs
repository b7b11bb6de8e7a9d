//! PostgreSQL: each asset is a table, each put one transaction fed by binary `COPY`.
//!
//! Asset keys map to tables as for DuckDB: the last segment is the table, the one before it
//! the schema (created when missing), else the configured schema. Batches are encoded into
//! PostgreSQL's binary COPY format on blocking threads (one batch ahead of the connection)
//! and streamed into `COPY … FROM STDIN` while they arrive, so a put never holds the asset
//! in memory.
//!
//! - overwrite: a new table is created and loaded inside the transaction; the commit drops
//!   the old table and renames the new one, so readers see the old rows until the commit;
//! - append: `COPY` into the table;
//! - upsert: `COPY` into a temporary staging table, then `INSERT … ON CONFLICT (key) DO
//!   UPDATE`, backed by a unique index on the key columns created on first use;
//! - partition replace: `DELETE` the partition's rows, then `COPY`.
//!
//! A connection whose put did not finish cleanly is closed rather than returned to the pool,
//! so PostgreSQL rolls its transaction back and no staging table outlives it. Every table a
//! put creates (the overwrite's new table included) is created in its transaction, so a put
//! that dies before COMMIT leaves none either.
//!
//! The put's id goes into `quiver_commits` in the configured schema, in the put's transaction
//! (see [`CommitMarkers`]), so [`Target::resolve`] can read whether an interrupted put
//! committed.

pub mod config;
pub mod copy;
pub mod types;

use std::pin::Pin;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use futures::{SinkExt, StreamExt};
use tokio_postgres::CopyInSink;
use tokio_postgres::error::SqlState;

use self::types::{PgType, column_definition};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::sql::{CommitMarkers, TableName, quote};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SchemaPolicy, SendableBatchStream, Target,
    WriteRequest, WriteSummary,
};
pub use config::{Postgres, PostgresConfig};

/// PostgreSQL truncates longer identifiers, which would make two names one.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Rows per batch a read sends.
const READ_BATCH_ROWS: usize = 65_536;

pub struct PostgresTarget {
    name: String,
    pool: Pool,
    default_schema: String,
    /// `postgres://host:port/database`.
    display: String,
    /// Held while creating a schema: concurrent `CREATE SCHEMA IF NOT EXISTS` of one name can
    /// fail with a unique violation.
    schema_lock: tokio::sync::Mutex<()>,
    /// In the default schema; created on first use.
    markers: CommitMarkers,
    markers_created: tokio::sync::OnceCell<()>,
}

impl PostgresTarget {
    /// Builds the target and its connection pool; nothing connects until first use.
    pub fn open(name: &str, config: &PostgresConfig) -> Result<Self> {
        let (pool, display) =
            crate::pg::pool(&config.url, config.ca_file.as_deref(), config.pool_size)
                .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
        Ok(Self {
            name: name.to_string(),
            pool,
            default_schema: config.schema.clone(),
            display,
            schema_lock: tokio::sync::Mutex::new(()),
            markers: CommitMarkers::in_schema(&config.schema),
            markers_created: tokio::sync::OnceCell::new(),
        })
    }

    fn table(&self, asset: &AssetKey) -> TableName {
        TableName::of(asset, &self.default_schema)
    }

    async fn connect(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            Error::storage(
                &self.name,
                format!("connecting to {}", self.display),
                e.to_string(),
            )
        })
    }

    async fn create_schema(&self, conn: &Object, schema: &str) -> Result<()> {
        let _guard = self.schema_lock.lock().await;
        match conn
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)))
            .await
        {
            // Another process created it at the same moment.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(()),
            other => other.map_err(pg_error(&self.name, "creating a schema")),
        }
    }

    /// Creates the commit markers' table once per server. Servers sharing the database create
    /// it one at a time: concurrent `CREATE TABLE IF NOT EXISTS` of one name can fail.
    async fn create_markers(&self, conn: &Object) -> Result<()> {
        self.markers_created
            .get_or_try_init(|| async {
                self.create_schema(conn, &self.markers.table.schema).await?;
                // One statement string: one implicit transaction, holding the lock to its end.
                conn.batch_execute(&format!(
                    "SELECT pg_advisory_xact_lock(hashtext({})); {}",
                    literal(&self.markers.table.sql()),
                    self.markers.create()
                ))
                .await
                .map_err(pg_error(&self.name, "creating the commit markers' table"))
            })
            .await
            .map(|_| ())
    }
}

/// Maps a PostgreSQL error to the status a client should see.
fn pg_error(target: &str, action: &str) -> impl Fn(tokio_postgres::Error) -> Error {
    let (target, action) = (target.to_string(), action.to_string());
    move |e| {
        let Some(db) = e.as_db_error() else {
            return Error::storage(&target, &action, e);
        };
        let message = format!(
            "target '{target}' (postgres) refused the data while {action}: {}{}",
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        );
        let code = db.code().code();
        if code.starts_with("22") {
            Error::invalid_data(message)
        } else if code.starts_with("23")
            || code.starts_with("42")
            || code.starts_with("2B")
            || code == SqlState::LOCK_NOT_AVAILABLE.code()
        {
            Error::failed_precondition(message)
        } else {
            Error::storage(&target, &action, e)
        }
    }
}

/// An SQL string literal; `E''` so backslashes mean the same whatever the server settings.
fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// ` WHERE (a = CAST(… AS type) AND …) OR (…)` selecting the given partitions.
fn partition_filter(
    partitions: Option<&[Partition]>,
    columns: Option<&PartitionColumns>,
    schema: &Schema,
) -> Result<String> {
    let Some(partitions) = partitions else {
        return Ok(String::new());
    };
    let columns = columns.ok_or_else(|| {
        Error::internal("a partitioned postgres asset has no partition columns in the catalog")
    })?;
    let mut clauses = Vec::new();
    for partition in partitions {
        columns.check(partition)?;
        let mut terms = Vec::new();
        for (column, value) in columns.filter(partition) {
            let field = schema.field_with_name(column).map_err(|_| {
                Error::invalid_request(format!(
                    "partition column '{column}' is not a column of the asset"
                ))
            })?;
            let pg = PgType::of(field.data_type()).map_err(Error::invalid_data)?;
            terms.push(format!(
                "{} = CAST({} AS {})",
                quote(column),
                literal(value),
                pg.sql()
            ));
        }
        clauses.push(format!("({})", terms.join(" AND ")));
    }
    if clauses.is_empty() {
        return Ok(" WHERE false".to_string());
    }
    Ok(format!(" WHERE {}", clauses.join(" OR ")))
}

fn check_identifier(kind: &str, name: &str) -> Result<()> {
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::invalid_request(format!(
            "{kind} name '{name}' is {} bytes; PostgreSQL names hold at most \
             {MAX_IDENTIFIER_BYTES}; use a shorter name",
            name.len()
        )));
    }
    Ok(())
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_table(table: &str, schema: &Schema) -> Result<String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| column_definition(f))
        .collect::<Result<Vec<_>, String>>()
        .map_err(Error::invalid_data)?;
    Ok(format!("CREATE TABLE {table} ({})", columns.join(", ")))
}

#[async_trait]
impl Target for PostgresTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn modes(&self) -> &'static [Mode] {
        &Mode::ALL
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        let table = self.table(asset);
        let base = format!("{}#{}.{}", self.display, table.schema, table.table);
        crate::targets::partition_location(base, partition)
    }

    fn schema_policy(&self) -> SchemaPolicy {
        SchemaPolicy::Evolve
    }

    fn storage_id(&self, asset: &AssetKey) -> String {
        // Quoted PostgreSQL identifiers are case-sensitive.
        let table = self.table(asset);
        format!("{}.{}", table.schema, table.table)
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        crate::targets::util::refuse_options("postgres", &req.options, &[])?;
        for field in req.schema.fields() {
            column_definition(field).map_err(|reason| {
                Error::invalid_data(format!(
                    "target '{}' (postgres) cannot store asset '{}': {reason}; use the parquet or arrow target",
                    self.name, req.asset
                ))
            })?;
            check_identifier("column", field.name())?;
        }
        let table = self.table(&req.asset);
        check_identifier("schema", &table.schema)?;
        check_identifier("table", &table.table)?;
        self.markers
            .check_asset(&self.name, &req.asset, &table, false)?;
        if req.partition.is_some() && req.partition_column.is_none() {
            return Err(Error::invalid_request(format!(
                "target '{}' (postgres) stores partitions as rows of one table: name the column \
                 holding the partition key with \"partition_column\"",
                self.name
            )));
        }
        let conn = self.connect().await?;
        self.create_markers(&conn).await?;
        self.create_schema(&conn, &table.schema).await?;
        let plan = Plan {
            target: self.name.clone(),
            table,
            markers: self.markers.clone(),
            request: req.clone(),
            incoming: schema,
            location: self.location(&req.asset, req.partition.as_ref()),
        };
        let mut writer = PostgresWriter {
            plan,
            conn: Some(conn),
            sink: None,
            pending: None,
            loading: None,
            staging: None,
            rows: 0,
            prepared: None,
        };
        match writer.start().await {
            Ok(()) => Ok(Box::new(writer)),
            Err(e) => {
                writer.rollback().await;
                Err(e)
            }
        }
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let table = self.table(&req.asset);
        let schema = req.output_schema()?;
        let filter = partition_filter(
            req.partitions.as_deref(),
            req.partition_columns.as_ref(),
            &req.schema,
        )?;
        let sql = format!(
            "COPY (SELECT {} FROM {}{filter}) TO STDOUT (FORMAT binary)",
            column_list(&schema),
            table.sql()
        );
        let target = self.name.clone();
        let decoder = copy::Decoder::new(Arc::clone(&schema))
            .map_err(|e| Error::format(&target, "read a table", e))?;
        let conn = self.connect().await?;
        // The statement's snapshot is taken once the server starts the COPY.
        let rows = conn
            .copy_out(&sql)
            .await
            .map_err(pg_error(&target, "reading a table"))?;
        let reader = Reader {
            target,
            conn: Some(conn),
            rows: Box::pin(rows),
            decoder: Some(decoder),
            header: false,
            done: false,
        };
        Ok(Box::pin(futures::stream::try_unfold(
            reader,
            |mut reader| async move {
                let batch = reader.next_batch().await?;
                Ok(batch.map(|b| (b, reader)))
            },
        )))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let table = self.table(&req.asset);
        let conn = self.connect().await?;
        if req.whole {
            // The asset's commit marker goes with its table, in one implicit transaction.
            self.create_markers(&conn).await?;
            return conn
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}; {}",
                    table.sql(),
                    self.markers.forget(&literal(&req.asset.to_string()))
                ))
                .await
                .map_err(pg_error(&self.name, "dropping a table"));
        }
        // The partition columns' types come from the table itself.
        let types = conn
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table.sql()],
            )
            .await
            .map_err(pg_error(&self.name, "reading a table's columns"))?;
        let columns = req.partition_columns.as_ref().ok_or_else(|| {
            Error::internal("a partitioned postgres asset has no partition columns in the catalog")
        })?;
        let mut clauses = Vec::new();
        for partition in &req.partitions {
            columns.check(partition)?;
            let mut terms = Vec::new();
            for (column, value) in columns.filter(partition) {
                let sql_type: String = types
                    .iter()
                    .find(|r| r.get::<_, String>(0) == column)
                    .map(|r| r.get(1))
                    .ok_or_else(|| {
                        Error::failed_precondition(format!(
                            "table {} has no partition column '{column}'",
                            table.sql()
                        ))
                    })?;
                terms.push(format!(
                    "{} = CAST({} AS {sql_type})",
                    quote(column),
                    literal(value)
                ));
            }
            clauses.push(format!("({})", terms.join(" AND ")));
        }
        if clauses.is_empty() {
            return Ok(());
        }
        conn.batch_execute(&format!(
            "DELETE FROM {} WHERE {}",
            table.sql(),
            clauses.join(" OR ")
        ))
        .await
        .map_err(pg_error(&self.name, "deleting partition rows"))
    }

    async fn healthcheck(&self) -> Result<()> {
        let conn = self.connect().await?;
        conn.batch_execute("SELECT 1")
            .await
            .map_err(pg_error(&self.name, "running a health query"))
    }

    /// The put committed if its id is in the commit markers. If it is not, its transaction
    /// was rolled back with every table it created (an overwrite's new table, an upsert's
    /// temporary staging table): there is nothing to remove.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let conn = self.connect().await?;
        self.create_markers(&conn).await?;
        let fail = pg_error(&self.name, "reading the commit markers");
        let landed: i64 = conn
            .query_one(&self.markers.find("$1"), &[&put.id])
            .await
            .map_err(&fail)?
            .get(0);
        if landed == 0 {
            return Ok(None);
        }
        let table = self.table(&c.asset);
        let present: bool = conn
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql()])
            .await
            .map_err(&fail)?
            .get(0);
        if !present {
            // Quiver's own delete forgets the marker with the table: it was dropped by hand.
            tracing::warn!(
                target = %self.name,
                table = %table.sql(),
                "an interrupted put committed, but its table has been dropped since"
            );
            return Ok(None);
        }
        let total: i64 = conn
            .query_one(&format!("SELECT count(*) FROM {}", table.sql()), &[])
            .await
            .map_err(&fail)?
            .get(0);
        Ok(Some(WriteSummary {
            rows: c.rows,
            bytes: 0,
            location: self.location(&c.asset, c.partition.as_ref()),
            total_rows: Some(total as u64),
        }))
    }
}

/// A `COPY … TO STDOUT` being decoded into batches.
struct Reader {
    target: String,
    /// Closed instead of pooled if the stream is dropped early, so the server stops sending.
    conn: Option<Object>,
    rows: Pin<Box<tokio_postgres::CopyOutStream>>,
    decoder: Option<copy::Decoder>,
    header: bool,
    done: bool,
}

impl Reader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut chunk: Vec<Bytes> = Vec::new();
        while chunk.len() < READ_BATCH_ROWS {
            match self.rows.next().await {
                Some(Ok(row)) => chunk.push(row),
                Some(Err(e)) => return Err(pg_error(&self.target, "reading a table")(e)),
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        let mut decoder = self
            .decoder
            .take()
            .ok_or_else(|| Error::internal("postgres reader used after an error"))?;
        let first = !self.header;
        self.header = true;
        let (decoder, batch) = tokio::task::spawn_blocking(move || {
            let result = decode(&mut decoder, &chunk, first);
            (decoder, result)
        })
        .await?;
        self.decoder = Some(decoder);
        let batch = batch.map_err(|e| Error::format(&self.target, "decode COPY rows", e))?;
        if self.done {
            // Every row arrived: the connection is idle again and can go back to the pool.
            self.conn.take();
        }
        Ok((batch.num_rows() > 0 || !self.done).then_some(batch))
    }
}

fn decode(
    decoder: &mut copy::Decoder,
    chunk: &[Bytes],
    first: bool,
) -> Result<RecordBatch, String> {
    for (i, message) in chunk.iter().enumerate() {
        let row = if first && i == 0 {
            copy::strip_header(message)?
        } else {
            message
        };
        // A message may hold the trailer alone (or after the last row's fields).
        if row.is_empty() {
            continue;
        }
        decoder.push_row(row)?;
    }
    decoder.finish()
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}

/// What one put does.
struct Plan {
    target: String,
    table: TableName,
    markers: CommitMarkers,
    request: WriteRequest,
    /// The schema of the batches arriving.
    incoming: SchemaRef,
    location: String,
}

impl Plan {
    fn fail(&self, action: &str) -> impl Fn(tokio_postgres::Error) -> Error {
        pg_error(&self.target, action)
    }

    fn replaces_table(&self) -> bool {
        self.request.mode == Mode::Overwrite && self.request.partition.is_none()
    }

    fn partition_filter(&self) -> Result<String> {
        partition_filter(
            self.request.partition.as_ref().map(std::slice::from_ref),
            self.request.partition_column.as_ref(),
            &self.request.schema,
        )
    }
}

/// Feeds one put's rows to PostgreSQL inside one transaction.
struct PostgresWriter {
    plan: Plan,
    /// `None` once the transaction is finished and the connection is back in the pool.
    conn: Option<Object>,
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// The next batch, being encoded on a blocking thread.
    pending: Option<tokio::task::JoinHandle<Result<Vec<u8>, String>>>,
    /// For an overwrite: the new table being loaded, renamed at commit.
    loading: Option<TableName>,
    /// For an upsert: the temporary staging table.
    staging: Option<String>,
    rows: u64,
    /// What the COMMIT will have stored, once everything before it is done.
    prepared: Option<WriteSummary>,
}

impl PostgresWriter {
    fn conn(&self) -> Result<&Object> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::internal("the postgres writer was already finished"))
    }

    async fn execute(&self, sql: &str, action: &str) -> Result<()> {
        self.conn()?
            .batch_execute(sql)
            .await
            .map_err(self.plan.fail(action))
    }

    /// Opens the transaction, prepares the table and starts the COPY.
    async fn start(&mut self) -> Result<()> {
        self.execute("BEGIN", "starting a transaction").await?;
        let plan = &self.plan;
        let req = &plan.request;
        let table = plan.table.sql();
        let destination = if plan.replaces_table() {
            let new = TableName {
                schema: plan.table.schema.clone(),
                table: format!("__quiver_new_{}", uuid::Uuid::new_v4().simple()),
            };
            self.execute(
                &create_table(&new.sql(), &req.schema)?,
                "creating the new table",
            )
            .await?;
            let sql = new.sql();
            self.loading = Some(new);
            sql
        } else {
            match &req.existing {
                None => match self
                    .execute(&create_table(&table, &req.schema)?, "creating the table")
                    .await
                {
                    Err(Error::FailedPrecondition { message }) => {
                        return Err(Error::failed_precondition(format!(
                            "{message}; the table was not written through this catalog: \
                             overwrite the asset to replace it, or drop the table"
                        )));
                    }
                    other => other?,
                },
                Some(existing) => {
                    for field in req.schema.fields() {
                        if existing.field_with_name(field.name()).is_err() {
                            let column = column_definition(field).map_err(Error::invalid_data)?;
                            self.execute(
                                &format!("ALTER TABLE {table} ADD COLUMN {column}"),
                                "adding a column",
                            )
                            .await?;
                        }
                    }
                }
            }
            if req.partition.is_some() && req.mode == Mode::Overwrite {
                let filter = plan.partition_filter()?;
                self.execute(
                    &format!("DELETE FROM {table}{filter}"),
                    "replacing a partition",
                )
                .await?;
            }
            if req.mode == Mode::Upsert {
                self.prepare_upsert().await?
            } else {
                table
            }
        };
        let options = if self.loading.is_some() {
            // The table is new in this transaction: its rows can be written frozen.
            "FORMAT binary, FREEZE"
        } else {
            "FORMAT binary"
        };
        let copy = format!(
            "COPY {destination} ({}) FROM STDIN ({options})",
            column_list(&self.plan.incoming)
        );
        let sink = self
            .conn()?
            .copy_in::<_, Bytes>(&copy)
            .await
            .map_err(self.plan.fail("starting COPY"))?;
        let mut sink = Box::pin(sink);
        sink.feed(Bytes::from_static(copy::HEADER))
            .await
            .map_err(self.plan.fail("starting COPY"))?;
        self.sink = Some(sink);
        Ok(())
    }

    /// Creates the key's unique index (first upsert) and the staging table; returns the
    /// staging table's name.
    async fn prepare_upsert(&mut self) -> Result<String> {
        let plan = &self.plan;
        let keys = &plan.request.key;
        let index = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}\0{}", plan.table.sql(), keys.join("\0")).as_bytes(),
        )
        .simple()
        .to_string();
        let key_list = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        self.execute(
            &format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({key_list})",
                quote(&format!("quiver_key_{}", &index[..24])),
                plan.table.sql()
            ),
            "creating the unique index on the upsert key",
        )
        .await
        .map_err(|e| match e {
            Error::FailedPrecondition { message } => Error::failed_precondition(format!(
                "{message}; the table already holds several rows for one key, so it cannot \
                 be upserted on ({}): overwrite it first",
                keys.join(", ")
            )),
            other => other,
        })?;
        let staging = quote(&format!("quiver_stage_{}", uuid::Uuid::new_v4().simple()));
        self.execute(
            &format!(
                "CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
                column_list(&plan.incoming),
                plan.table.sql()
            ),
            "creating the staging table",
        )
        .await?;
        self.staging = Some(staging.clone());
        Ok(staging)
    }

    /// Sends the batch that finished encoding.
    async fn flush_pending(&mut self) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let bytes = pending.await?.map_err(|reason| {
            Error::invalid_data(format!(
                "target '{}' (postgres) cannot store a batch of asset '{}': {reason}",
                self.plan.target, self.plan.request.asset
            ))
        })?;
        let sink = self
            .sink
            .as_mut()
            .ok_or_else(|| Error::internal("the postgres COPY is not running"))?;
        sink.feed(Bytes::from(bytes))
            .await
            .map_err(pg_error(&self.plan.target, "writing rows"))
    }

    /// Everything after the last row but the COMMIT: merge, checks, rename, commit marker.
    async fn finish(&mut self) -> Result<WriteSummary> {
        self.flush_pending().await?;
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| Error::internal("the postgres COPY is not running"))?;
        sink.feed(Bytes::from_static(copy::TRAILER))
            .await
            .map_err(self.plan.fail("writing rows"))?;
        let copied = sink
            .as_mut()
            .finish()
            .await
            .map_err(self.plan.fail("writing rows"))?;
        if copied != self.rows {
            return Err(Error::internal(format!(
                "PostgreSQL stored {copied} rows of the {} sent",
                self.rows
            )));
        }
        let table = self.plan.table.sql();
        if let Some(staging) = self.staging.clone() {
            self.merge(&staging).await?;
        }
        self.check_partition().await?;
        if let Some(new) = self.loading.take() {
            self.execute(
                &format!(
                    "DROP TABLE IF EXISTS {table}; ALTER TABLE {} RENAME TO {}",
                    new.sql(),
                    quote(&self.plan.table.table)
                ),
                "replacing the table",
            )
            .await?;
        }
        let total: i64 = if self.plan.replaces_table() {
            self.rows as i64
        } else {
            self.conn()?
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .map_err(self.plan.fail("counting rows"))?
                .get(0)
        };
        let [record, earlier] = self.plan.markers.record("$1", "$2");
        let asset = self.plan.request.asset.to_string();
        for statement in [record, earlier] {
            self.conn()?
                .execute(&statement, &[&self.plan.request.put_id, &asset])
                .await
                .map_err(self.plan.fail("recording the commit"))?;
        }
        Ok(WriteSummary {
            rows: self.rows,
            bytes: 0,
            location: self.plan.location.clone(),
            total_rows: Some(total as u64),
        })
    }

    /// Upsert: the last staged row per key is inserted, or updates the row with that key.
    async fn merge(&self, staging: &str) -> Result<()> {
        let keys = &self.plan.request.key;
        let key_list = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let columns = column_list(&self.plan.incoming);
        let updates = self
            .plan
            .incoming
            .fields()
            .iter()
            .filter(|f| !keys.contains(f.name()))
            .map(|f| format!("{0} = EXCLUDED.{0}", quote(f.name())))
            .collect::<Vec<_>>();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // A fresh staging table filled by one COPY keeps rows in arrival order: the highest
        // ctid per key is the last row sent.
        self.execute(
            &format!(
                "INSERT INTO {} ({columns}) SELECT DISTINCT ON ({key_list}) {columns} FROM {staging} \
                 ORDER BY {key_list}, ctid DESC ON CONFLICT ({key_list}) {action}",
                self.plan.table.sql()
            ),
            "merging upserted rows",
        )
        .await
    }

    /// A partition put may only hold rows of its partition.
    async fn check_partition(&self) -> Result<()> {
        let req = &self.plan.request;
        let (Some(partition), Some(columns)) = (&req.partition, &req.partition_column) else {
            return Ok(());
        };
        if req.mode != Mode::Overwrite {
            return Ok(());
        }
        let filter = self.plan.partition_filter()?;
        let inside: i64 = self
            .conn()?
            .query_one(
                &format!("SELECT count(*) FROM {}{filter}", self.plan.table.sql()),
                &[],
            )
            .await
            .map_err(self.plan.fail("checking partition rows"))?
            .get(0);
        if inside as u64 != self.rows {
            return Err(Error::invalid_data(format!(
                "{} of {} rows sent for partition '{partition}' do not have that key in {:?}; \
                 every row of a partition put must belong to the partition",
                self.rows.saturating_sub(inside as u64),
                self.rows,
                columns.columns()
            )));
        }
        Ok(())
    }

    /// Ends the transaction without a trace: the COPY is cancelled and rolled back; if the
    /// connection cannot confirm that, it is closed, which rolls back on the server.
    async fn rollback(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
        drop(self.sink.take());
        let Some(conn) = self.conn.take() else {
            return;
        };
        if let Err(e) = conn.batch_execute("ROLLBACK").await {
            tracing::warn!(target = %self.plan.target, error = %e, "postgres rollback failed; closing the connection");
            drop(Object::take(conn));
        }
    }

    fn check_keys(&self, batch: &RecordBatch) -> Result<()> {
        for key in &self.plan.request.key {
            if let Some(column) = batch.column_by_name(key)
                && column.null_count() > 0
            {
                return Err(Error::invalid_data(format!(
                    "key column '{key}' holds nulls; every row of an upsert needs a key"
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AssetWriter for PostgresWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.check_keys(&batch)?;
        self.rows += batch.num_rows() as u64;
        let next = tokio::task::spawn_blocking(move || copy::encode_batch(&batch));
        self.flush_pending().await?;
        self.pending = Some(next);
        Ok(())
    }

    /// The commit marker is the put id, so there is no mark.
    async fn prepare(&mut self) -> Result<String> {
        match self.finish().await {
            Ok(summary) => {
                self.prepared = Some(summary);
                Ok(String::new())
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        if self.prepared.is_none() {
            self.prepare().await?;
        }
        let summary = self
            .prepared
            .take()
            .ok_or_else(|| Error::internal("the postgres writer was not prepared"))?;
        match self.execute("COMMIT", "committing").await {
            Ok(()) => {
                // Committed: the connection is clean.
                self.conn.take();
                Ok(summary)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.rollback().await;
        Ok(())
    }
}

impl Drop for PostgresWriter {
    fn drop(&mut self) {
        // Dropped mid-put (the request was cancelled): close the connection, never pool it
        // with an open transaction.
        if let Some(conn) = self.conn.take() {
            drop(self.sink.take());
            drop(Object::take(conn));
        }
    }
}

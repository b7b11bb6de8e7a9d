//! DuckDB: each asset is a table, each put one DuckDB transaction.
//!
//! Asset keys map to tables as Dagster's DuckDB IO manager does: the last segment is the
//! table, the one before it the schema (created when missing), else `main`. All DuckDB work
//! runs on blocking threads: a writer is a thread fed batches through a bounded channel, so at
//! most a few batches wait in memory, and the async runtime never blocks on DuckDB. The writer
//! hands the channel to DuckDB as an Arrow stream (`INSERT … SELECT` over DuckDB's Arrow
//! scan), so DuckDB converts and compresses the batches with all its threads, in order.
//!
//! The put's id goes into `main.quiver_commits` in the put's transaction (see
//! [`CommitMarkers`]), so [`Target::resolve`] can read whether an interrupted put committed.

mod config;
pub mod types;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, Schema, SchemaRef};
use async_trait::async_trait;
use duckdb::Connection;
use quiver_duckdb::{Database, RawConnection};
use tokio::sync::{mpsc, oneshot};

use self::types::{column_definition, restore, storage_schema, to_storage};
use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::sql::{CommitMarkers, TableName as Table, literal, quote};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SchemaPolicy, SendableBatchStream, Target,
    WriteRequest, WriteSummary, lock,
};
pub use config::{DuckDb, DuckDbConfig};

/// Batches waiting for the writer thread.
const WRITE_QUEUE: usize = 2;
/// The schema of single-segment asset keys, and of the commit markers.
const DEFAULT_SCHEMA: &str = "main";
/// The schema holding staging tables; they only ever exist inside a put's transaction.
const STAGING_SCHEMA: &str = "__quiver";

pub struct DuckDbTarget {
    name: String,
    path: PathBuf,
    /// The database; every operation works on a connection of its own.
    database: Arc<Database>,
    /// Held while creating a schema: DuckDB reports concurrent `CREATE SCHEMA IF NOT EXISTS`
    /// of one name as a write-write conflict.
    schema_lock: Arc<Mutex<()>>,
}

/// A DuckDB error's class: the prefix of its message, as `Conversion` in
/// `Conversion Error: …`.
fn error_class(text: &str) -> &str {
    text.split_once(" Error:").map_or("", |(class, _)| class)
}

/// Classes of errors about the data itself: values DuckDB cannot convert or hold.
fn is_data_error(class: &str) -> bool {
    matches!(
        class,
        "Conversion" | "Invalid Input" | "Out of Range" | "Mismatch Type"
    )
}

/// Maps a DuckDB error by its class: data DuckDB cannot convert is the caller's to fix, a constraint or catalog conflict is the asset's state, the rest is
/// the storage failing.
fn db_error<E>(target: &str, action: &str) -> impl Fn(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let (target, action) = (target.to_string(), action.to_string());
    move |e| {
        let text = e.to_string();
        match error_class(&text) {
            class if is_data_error(class) => Error::invalid_data(format!(
                "target '{target}' (duckdb) refused the data while {action}: {text}"
            )),
            "Constraint" | "Binder" | "Catalog" | "Dependency" => Error::failed_precondition(
                format!("target '{target}' (duckdb) cannot do this while {action}: {text}"),
            ),
            _ => Error::storage(&target, &action, e),
        }
    }
}

impl DuckDbTarget {
    pub fn open(name: &str, config: &DuckDbConfig) -> Result<Self> {
        let path = config.path.clone().ok_or_else(|| {
            Error::config(format!(
                "[targets.{name}] has no path; set path = \"<file>\""
            ))
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "[targets.{name}] cannot create {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let open_error = |e: &dyn std::fmt::Display| {
            Error::config(format!(
                "[targets.{name}] cannot open DuckDB database {}: {e}",
                path.display()
            ))
        };
        let database = Database::open(&path).map_err(|e| open_error(&e))?;
        let conn = database.connect().map_err(|e| open_error(&e))?;
        let mut setup = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; {};",
            quote(STAGING_SCHEMA),
            markers().create()
        );
        if let Some(threads) = config.threads {
            setup.push_str(&format!("SET threads = {threads};"));
        }
        if let Some(limit) = &config.memory_limit {
            setup.push_str(&format!(
                "SET memory_limit = '{}';",
                limit.replace('\'', "''")
            ));
        }
        conn.execute_batch(&setup)
            .map_err(|e| Error::config(format!("[targets.{name}] DuckDB setup failed: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            path,
            database,
            schema_lock: Arc::new(Mutex::new(())),
        })
    }

    fn connect(&self) -> Result<Connection> {
        self.database
            .connect()
            .map_err(db_error(&self.name, "opening a connection"))
    }

    /// Runs `work` on a blocking thread with a fresh connection.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.connect()?;
        tokio::task::spawn_blocking(move || work(&conn)).await?
    }
}

#[async_trait]
impl Target for DuckDbTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "duckdb"
    }

    fn modes(&self) -> &'static [Mode] {
        &Mode::ALL
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        let table = Table::of(asset, DEFAULT_SCHEMA);
        let base = format!(
            "duckdb://{}#{}.{}",
            self.path.display(),
            table.schema,
            table.table
        );
        crate::targets::partition_location(base, partition)
    }

    fn schema_policy(&self) -> SchemaPolicy {
        SchemaPolicy::Evolve
    }

    fn storage_id(&self, asset: &AssetKey) -> String {
        // DuckDB identifiers are case-insensitive, quoted or not.
        let table = Table::of(asset, DEFAULT_SCHEMA);
        format!("{}.{}", table.schema, table.table).to_lowercase()
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        crate::targets::util::refuse_options("duckdb", &req.options, &[])?;
        for field in req.schema.fields() {
            column_definition(field).map_err(|reason| {
                Error::invalid_data(format!(
                    "target '{}' (duckdb) cannot store asset '{}': {reason}; use the parquet or arrow target",
                    self.name, req.asset
                ))
            })?;
        }
        if req.partition.is_some() && req.partition_column.is_none() {
            return Err(Error::invalid_request(format!(
                "target '{}' (duckdb) stores partitions as rows of one table: name the column \
                 holding the partition key with \"partition_column\"",
                self.name
            )));
        }
        let table = Table::of(&req.asset, DEFAULT_SCHEMA);
        markers().check_asset(&self.name, &req.asset, &table, true)?;
        let plan = Plan {
            target: self.name.clone(),
            table,
            request: req.clone(),
            incoming: schema,
            location: self.location(&req.asset, req.partition.as_ref()),
        };
        // Schemas are created outside the put's transaction: two puts creating the same schema
        // would otherwise conflict, and an empty schema left by an aborted put is harmless.
        let create_schema = format!("CREATE SCHEMA IF NOT EXISTS {}", quote(&plan.table.schema));
        let conn = self
            .database
            .raw_connection()
            .map_err(db_error(&self.name, "opening a connection"))?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (prepared_tx, prepared_rx) = oneshot::channel();
        let (decision_tx, decision_rx) = oneshot::channel();
        let handshake = Handshake {
            ready: ready_tx,
            prepared: prepared_tx,
            decision: decision_rx,
        };
        let schema_lock = Arc::clone(&self.schema_lock);
        let worker = tokio::task::spawn_blocking(move || {
            let created = {
                let _guard = lock(&schema_lock);
                conn.execute(&create_schema)
            };
            if let Err(e) = created {
                let err = Error::storage(&plan.target, "creating a schema", e);
                let _ = handshake.ready.send(Err(err.to_string()));
                return Err(err);
            }
            plan.run(&conn, rx, handshake)
        });
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                return Err(worker.await?.err().unwrap_or_else(|| {
                    Error::internal("the duckdb writer stopped before it started")
                }));
            }
        }
        Ok(Box::new(DuckDbWriter {
            tx: Some(tx),
            prepared: Some(prepared_rx),
            decision: Some(decision_tx),
            worker: Some(worker),
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let table = Table::of(&req.asset, DEFAULT_SCHEMA);
        let schema = req.output_schema()?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = partition_filter(req.partitions.as_deref(), req.partition_columns.as_ref())?;
        let sql = format!("SELECT {columns} FROM {}{filter}", table.sql());
        let conn = self.connect()?;
        let target = self.name.clone();
        let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
        let (started_tx, started_rx) = oneshot::channel::<Result<()>>();
        tokio::task::spawn_blocking(move || {
            let fail = db_error(&target, "reading a table");
            let mut stmt = match conn.prepare(&sql) {
                Ok(stmt) => stmt,
                Err(e) => {
                    let _ = started_tx.send(Err(fail(e)));
                    return;
                }
            };
            let stream = match stmt.stream_arrow([]) {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = started_tx.send(Err(fail(e)));
                    return;
                }
            };
            // The query's snapshot is taken: the caller may let commits proceed.
            if started_tx.send(Ok(())).is_err() {
                return;
            }
            for batch in stream {
                let item = batch.map_err(&fail).and_then(|b| {
                    restore(&b, &schema)
                        .map_err(|e| Error::format(&target, "restore column types", e))
                });
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        });
        started_rx
            .await
            .map_err(|_| Error::internal("the duckdb reader stopped before it started"))??;
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let table = Table::of(&req.asset, DEFAULT_SCHEMA);
        let target = self.name.clone();
        if req.whole {
            // The asset's commit marker goes with its table.
            let forget = markers().forget(&literal(&req.asset.to_string()));
            return self
                .blocking(move |conn| {
                    conn.execute_batch(&format!(
                        "BEGIN TRANSACTION; DROP TABLE IF EXISTS {}; {forget}; COMMIT",
                        table.sql()
                    ))
                    .map_err(db_error(&target, "dropping a table"))
                })
                .await;
        }
        let filter = partition_filter(
            Some(req.partitions.as_slice()),
            req.partition_columns.as_ref(),
        )?;
        self.blocking(move |conn| {
            conn.execute(&format!("DELETE FROM {}{filter}", table.sql()), [])
                .map(|_| ())
                .map_err(db_error(&target, "deleting partition rows"))
        })
        .await
    }

    async fn healthcheck(&self) -> Result<()> {
        let target = self.name.clone();
        self.blocking(move |conn| {
            conn.execute_batch("SELECT 1")
                .map_err(db_error(&target, "running a health query"))
        })
        .await
    }

    /// The put committed if its id is in the commit markers. If it is not, its transaction
    /// was rolled back with everything it created (DuckDB's DDL is transactional, and an
    /// uncommitted transaction never reaches the WAL): there is nothing to remove.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let summary = WriteSummary {
            rows: c.rows,
            bytes: 0,
            location: self.location(&c.asset, c.partition.as_ref()),
            total_rows: None,
        };
        let (id, table) = (put.id.clone(), Table::of(&c.asset, DEFAULT_SCHEMA));
        let target = self.name.clone();
        self.blocking(move |conn| {
            let total = rows_after(conn, &id, &table)
                .map_err(db_error(&target, "reading the commit markers"))?;
            Ok(total.map(|total| WriteSummary {
                total_rows: Some(total),
                ..summary
            }))
        })
        .await
    }
}

/// The rows of `table` if put `id` committed; `None` if it did not (or if the table has been
/// dropped since, which leaves nothing of it to record).
fn rows_after(conn: &Connection, id: &str, table: &Table) -> duckdb::Result<Option<u64>> {
    let landed: i64 = conn.query_row(&markers().find(&literal(id)), [], |r| r.get(0))?;
    if landed == 0 {
        return Ok(None);
    }
    let present: i64 = conn.query_row(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() \
         AND lower(schema_name) = lower(?) AND lower(table_name) = lower(?)",
        [&table.schema, &table.table],
        |r| r.get(0),
    )?;
    if present == 0 {
        // Quiver's own delete forgets the marker with the table: it was dropped by hand.
        tracing::warn!(
            table = %table.sql(),
            "an interrupted put committed, but its table has been dropped since"
        );
        return Ok(None);
    }
    let total: i64 = conn.query_row(&format!("SELECT count(*) FROM {}", table.sql()), [], |r| {
        r.get(0)
    })?;
    Ok(Some(total as u64))
}

/// The commit markers, in the default schema.
fn markers() -> CommitMarkers {
    CommitMarkers::in_schema(DEFAULT_SCHEMA)
}

/// ` WHERE (a = '1' AND b = 'x') OR (...)` selecting the given partitions. DuckDB casts each
/// string literal to its column's type, as it would a parameter.
fn partition_filter(
    partitions: Option<&[Partition]>,
    columns: Option<&PartitionColumns>,
) -> Result<String> {
    let Some(partitions) = partitions else {
        return Ok(String::new());
    };
    let columns = columns.ok_or_else(|| {
        Error::internal("a partitioned duckdb asset has no partition columns in the catalog")
    })?;
    let mut clauses = Vec::new();
    for partition in partitions {
        columns.check(partition)?;
        let pairs = columns.filter(partition);
        clauses.push(format!(
            "({})",
            pairs
                .iter()
                .map(|(c, v)| format!("{} = {}", quote(c), literal(v)))
                .collect::<Vec<_>>()
                .join(" AND ")
        ));
    }
    if clauses.is_empty() {
        return Ok(" WHERE false".to_string());
    }
    Ok(format!(" WHERE {}", clauses.join(" OR ")))
}

/// What one put does, run on the writer thread.
struct Plan {
    target: String,
    table: Table,
    request: WriteRequest,
    /// The schema of the batches arriving.
    incoming: SchemaRef,
    location: String,
}

enum Message {
    Batch(RecordBatch),
    /// The last batch was sent.
    End,
}

/// The writer thread's side of its hand-offs with the writer.
struct Handshake {
    /// The table is ready for rows, or why not.
    ready: oneshot::Sender<Result<(), String>>,
    /// Everything but the COMMIT is done.
    prepared: oneshot::Sender<()>,
    /// A message commits; the sender dropped without one rolls back.
    decision: oneshot::Receiver<()>,
}

impl Plan {
    fn fail(&self, action: &str) -> impl Fn(quiver_duckdb::Error) -> Error {
        db_error(&self.target, action)
    }

    /// Runs the whole put in one transaction; anything but the writer's word to commit, once
    /// the put is prepared, rolls it back.
    fn run(
        &self,
        conn: &RawConnection,
        rx: mpsc::Receiver<Message>,
        handshake: Handshake,
    ) -> Result<WriteSummary> {
        let Handshake {
            ready,
            prepared,
            decision,
        } = handshake;
        let failure = Arc::new(Mutex::new(None));
        // The batches become a view before the transaction begins: registering it is not
        // part of the put.
        let view = storage_schema(&self.incoming)
            .map_err(Error::invalid_data)
            .and_then(|schema| {
                let incoming = Incoming {
                    rx,
                    schema,
                    key: self.request.key.clone(),
                    failure: Arc::clone(&failure),
                    done: false,
                };
                conn.register_stream(Box::new(incoming))
                    .map_err(self.fail("reading the batches"))
            });
        let view = match view {
            Ok(view) => view,
            Err(err) => {
                let _ = ready.send(Err(err.to_string()));
                return Err(err);
            }
        };
        if let Err(e) = conn.execute("BEGIN TRANSACTION") {
            let err = self.fail("starting a transaction")(e);
            let _ = ready.send(Err(err.to_string()));
            return Err(err);
        }
        let result = self
            .run_in_transaction(conn, view.name(), &failure, ready)
            .and_then(|summary| {
                // The writer may be gone already; then the wait ends at once.
                let _ = prepared.send(());
                decision
                    .blocking_recv()
                    .map(|()| summary)
                    .map_err(|_| Error::Cancelled {
                        message: "the put was abandoned before it committed".to_string(),
                    })
            });
        match &result {
            Ok(_) => conn
                .execute("COMMIT")
                .map_err(self.fail("committing"))
                .and(result),
            Err(_) => {
                if let Err(e) = conn.execute("ROLLBACK") {
                    tracing::warn!(error = %e, "duckdb rollback failed");
                }
                result
            }
        }
    }

    fn run_in_transaction(
        &self,
        conn: &RawConnection,
        view: &str,
        failure: &Mutex<Option<Error>>,
        ready: oneshot::Sender<Result<(), String>>,
    ) -> Result<WriteSummary> {
        let staging = match self.prepare(conn) {
            Ok(staging) => {
                let _ = ready.send(Ok(()));
                staging
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return Err(e);
            }
        };
        let destination = staging.clone().unwrap_or_else(|| self.table.clone());
        let columns = self
            .incoming
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let inserted = conn.execute(&format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM {view}",
            destination.sql()
        ));
        // The batches' own failure (a bad batch, the client leaving) says more than DuckDB's
        // report of the scan stopping.
        if let Some(err) = lock(failure).take() {
            return Err(err);
        }
        let rows = inserted.map_err(|e| self.insert_error(e))?;
        if let Some(stage) = &staging {
            self.merge(conn, stage)?;
        }
        self.check_partition(conn, rows)?;
        let total = conn
            .query_i64(&format!("SELECT count(*) FROM {}", self.table.sql()))
            .map_err(self.fail("counting rows"))?;
        let [record, earlier] = markers().record(
            &literal(&self.request.put_id),
            &literal(&self.request.asset.to_string()),
        );
        conn.execute(&format!("{record}; {earlier}"))
            .map_err(self.fail("recording the commit"))?;
        Ok(WriteSummary {
            rows,
            bytes: 0,
            location: self.location.clone(),
            total_rows: Some(total as u64),
        })
    }

    /// Data DuckDB cannot take into the table's columns is the caller's to fix; inserting the
    /// put's rows, a violated constraint (a null in a NOT NULL column) is the data's fault too.
    fn insert_error(&self, e: quiver_duckdb::Error) -> Error {
        let class = error_class(&e.0);
        if is_data_error(class) || class == "Constraint" {
            return Error::invalid_data(format!(
                "DuckDB refused a batch for table {}: {e}",
                self.table.sql()
            ));
        }
        self.fail("inserting rows")(e)
    }

    /// Creates, replaces or evolves the table; returns the staging table for upserts.
    fn prepare(&self, conn: &RawConnection) -> Result<Option<Table>> {
        let req = &self.request;
        let table = self.table.sql();
        let replace_table = req.mode == Mode::Overwrite && req.partition.is_none();
        if replace_table || req.existing.is_none() {
            let ddl = create_table(&table, &req.schema, replace_table)?;
            conn.execute(&ddl)
                .map_err(self.fail("creating the table"))?;
        } else if let Some(existing) = &req.existing {
            for field in req.schema.fields() {
                if existing.field_with_name(field.name()).is_err() {
                    let column = column_definition(field).map_err(Error::invalid_data)?;
                    conn.execute(&format!("ALTER TABLE {table} ADD COLUMN {column}"))
                        .map_err(self.fail("adding a column"))?;
                }
            }
        }
        if let (Some(partition), Some(columns)) = (&req.partition, &req.partition_column)
            && req.mode == Mode::Overwrite
        {
            let filter = partition_filter(Some(std::slice::from_ref(partition)), Some(columns))?;
            conn.execute(&format!("DELETE FROM {table}{filter}"))
                .map_err(self.fail("replacing a partition"))?;
        }
        if req.mode != Mode::Upsert {
            return Ok(None);
        }
        let stage = Table {
            schema: STAGING_SCHEMA.to_string(),
            table: format!("stage_{}", uuid::Uuid::new_v4().simple()),
        };
        conn.execute(&create_table(&stage.sql(), &self.incoming, false)?)
            .map_err(self.fail("creating a staging table"))?;
        Ok(Some(stage))
    }

    /// Upsert: rows whose key is in the staging table replace the table's rows; within one put
    /// the last row for a key wins.
    fn merge(&self, conn: &RawConnection, stage: &Table) -> Result<()> {
        let keys = self
            .request
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let columns = self
            .incoming
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let table = self.table.sql();
        let stage = stage.sql();
        conn.execute(&format!(
            "DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM {stage});
             INSERT INTO {table} ({columns})
                SELECT {columns} FROM {stage}
                QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY rowid DESC) = 1;
             DROP TABLE {stage};"
        ))
        .map(|_| ())
        .map_err(self.fail("merging upserted rows"))
    }

    /// A partition put may only hold rows of its partition.
    fn check_partition(&self, conn: &RawConnection, rows: u64) -> Result<()> {
        let (Some(partition), Some(columns)) =
            (&self.request.partition, &self.request.partition_column)
        else {
            return Ok(());
        };
        if self.request.mode != Mode::Overwrite {
            return Ok(());
        }
        let filter = partition_filter(Some(std::slice::from_ref(partition)), Some(columns))?;
        let inside = conn
            .query_i64(&format!(
                "SELECT count(*) FROM {}{filter}",
                self.table.sql()
            ))
            .map_err(self.fail("checking partition rows"))?;
        if inside as u64 != rows {
            return Err(Error::invalid_data(format!(
                "{} of {rows} rows sent for partition '{partition}' do not have that key in {:?}; \
                 every row of a partition put must belong to the partition",
                rows - inside as u64,
                columns.columns()
            )));
        }
        Ok(())
    }
}

/// The put's batches as DuckDB reads them: each converted to its storage types, until the
/// end message. Anything else ends the stream with an error, kept in `failure` for the
/// writer to report.
struct Incoming {
    rx: mpsc::Receiver<Message>,
    /// The storage schema every batch is converted to.
    schema: SchemaRef,
    key: Vec<String>,
    failure: Arc<Mutex<Option<Error>>>,
    done: bool,
}

impl Incoming {
    fn convert(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        for key in &self.key {
            if let Some(column) = batch.column_by_name(key)
                && column.null_count() > 0
            {
                return Err(Error::invalid_data(format!(
                    "key column '{key}' holds nulls; every row of an upsert needs a key"
                )));
            }
        }
        to_storage(batch, &self.schema)
            .map_err(|e| Error::invalid_data(format!("cannot convert a batch for DuckDB: {e}")))
    }

    fn fail(&mut self, err: Error) -> Option<Result<RecordBatch, ArrowError>> {
        self.done = true;
        let message = err.to_string();
        *lock(&self.failure) = Some(err);
        Some(Err(ArrowError::ExternalError(message.into())))
    }
}

impl Iterator for Incoming {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.blocking_recv() {
            Some(Message::Batch(batch)) => match self.convert(&batch) {
                Ok(storage) => Some(Ok(storage)),
                Err(err) => self.fail(err),
            },
            Some(Message::End) => {
                self.done = true;
                None
            }
            None => self.fail(Error::Cancelled {
                message: "the put ended before it committed".to_string(),
            }),
        }
    }
}

impl RecordBatchReader for Incoming {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

fn create_table(table: &str, schema: &Schema, replace: bool) -> Result<String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| column_definition(f))
        .collect::<Result<Vec<_>, String>>()
        .map_err(Error::invalid_data)?;
    let verb = if replace {
        "CREATE OR REPLACE TABLE"
    } else {
        "CREATE TABLE"
    };
    Ok(format!("{verb} {table} ({})", columns.join(", ")))
}

/// Feeds the writer thread; dropping it without a commit rolls the transaction back.
struct DuckDbWriter {
    tx: Option<mpsc::Sender<Message>>,
    /// Answers once everything but the COMMIT is done; `None` once it has.
    prepared: Option<oneshot::Receiver<()>>,
    /// Commits the prepared put; dropped, it rolls the put back.
    decision: Option<oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<Result<WriteSummary>>>,
}

impl DuckDbWriter {
    /// The worker's own error, once it has stopped.
    async fn worker_result(&mut self) -> Result<WriteSummary> {
        self.tx = None;
        match self.worker.take() {
            Some(worker) => worker.await?,
            None => Err(Error::internal("the duckdb writer was already finished")),
        }
    }
}

#[async_trait]
impl AssetWriter for DuckDbWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(Message::Batch(batch)).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The worker stopped: it failed, and says why.
        Err(self
            .worker_result()
            .await
            .err()
            .unwrap_or_else(|| Error::internal("the duckdb writer stopped early")))
    }

    /// Ends the rows; the writer thread merges, checks, counts and records the commit
    /// marker, then waits for the commit. The marker is the put id, so there is no mark.
    async fn prepare(&mut self) -> Result<String> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Message::End).await;
        }
        let Some(prepared) = self.prepared.take() else {
            return Err(Error::internal("the duckdb writer was already prepared"));
        };
        if prepared.await.is_ok() {
            return Ok(String::new());
        }
        // The worker stopped: it failed, and says why.
        Err(self
            .worker_result()
            .await
            .err()
            .unwrap_or_else(|| Error::internal("the duckdb writer stopped before it prepared")))
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        if self.prepared.is_some() {
            self.prepare().await?;
        }
        if let Some(decision) = self.decision.take() {
            let _ = decision.send(());
        }
        self.worker_result().await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.decision = None;
        match self.worker_result().await {
            Ok(_) => Err(Error::internal(
                "the duckdb writer committed during an abort",
            )),
            Err(_) => Ok(()),
        }
    }
}

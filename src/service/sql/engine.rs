//! The query engine: an in-memory DuckDB per query, locked down, whose tables scan assets
//! through the DoGet path.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::StreamExt;
use quiver_duckdb::{BatchIter, Database, Interrupt, Param, Prepared, RawConnection, ScanSource};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::super::Inner;
use super::{CATALOG, Statement};
use crate::auth::Principal;
use crate::catalog::AssetRecord;
use crate::error::{Error, Result};
use crate::protocol::AssetTicket;
use crate::targets::{SendableBatchStream, lock};

/// DuckDB settings of every query's database: no files, network, extensions or settings
/// changes reach past the tables Quiver gives it.
const LOCKED_DOWN: &[(&str, &str)] = &[
    ("enable_external_access", "false"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("allow_community_extensions", "false"),
];

/// Result chunks are sent in batches of about this many rows.
const BATCH_ROWS: usize = 65_536;

/// One query's database, with a view per asset the caller may read.
struct Session {
    conn: RawConnection,
    _database: Arc<Database>,
}

impl Session {
    fn open(inner: &Arc<Inner>, caller: &Principal, records: Vec<AssetRecord>) -> Result<Self> {
        let threads = inner.sql.threads.to_string();
        let mut settings = LOCKED_DOWN.to_vec();
        settings.push(("memory_limit", inner.sql.memory_limit.trim()));
        settings.push(("threads", &threads));
        let database = Database::open_in_memory(&settings).map_err(engine_error)?;
        let conn = database.raw_connection().map_err(engine_error)?;
        let handle = Handle::current();
        let mut ddl = format!("ATTACH ':memory:' AS {CATALOG}; USE {CATALOG};\n");
        let mut schemas: Vec<&str> = Vec::new();
        for (i, record) in records.iter().enumerate() {
            if !schemas.contains(&record.target.as_str()) {
                schemas.push(&record.target);
                ddl.push_str(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {};\n",
                    quote(&record.target)
                ));
            }
            ddl.push_str(&format!(
                "CREATE VIEW {}.{} AS SELECT * FROM quiver_scan({i});\n",
                quote(&record.target),
                quote(&record.asset.to_string())
            ));
        }
        ddl.push_str("SET lock_configuration = true;");
        let sources = records
            .into_iter()
            .map(|record| {
                Arc::new(AssetScan {
                    inner: Arc::clone(inner),
                    caller: caller.clone(),
                    record,
                    handle: handle.clone(),
                }) as Arc<dyn ScanSource>
            })
            .collect();
        conn.register_scans("quiver_scan", sources)
            .map_err(engine_error)?;
        conn.execute(&ddl).map_err(engine_error)?;
        Ok(Self {
            conn,
            _database: database,
        })
    }

    /// Prepares the statement; with `bind`, binds its parameters too.
    fn prepare(&self, statement: &Statement, bind: bool) -> Result<Prepared<'_>> {
        let prepared = self.conn.prepare(&statement.sql).map_err(|e| {
            // A write fails to bind against the views before its kind is known.
            if reads(&statement.sql) {
                engine_error(e)
            } else {
                Error::invalid_request(format!("{ONLY_QUERIES} ({e})"))
            }
        });
        let mut prepared = prepared?;
        if !prepared.is_query() {
            return Err(Error::invalid_request(ONLY_QUERIES));
        }
        if bind {
            let wanted = prepared.parameter_count();
            if statement.params.len() != wanted {
                return Err(Error::invalid_request(format!(
                    "the statement has {wanted} parameter(s) but {} were bound; bind one value \
                     per parameter",
                    statement.params.len()
                )));
            }
            for (i, value) in statement.params.iter().enumerate() {
                prepared
                    .bind(i + 1, &param(value))
                    .map_err(|e| Error::invalid_request(e.to_string()))?;
            }
        }
        Ok(prepared)
    }
}

const ONLY_QUERIES: &str = "only queries (SELECT, WITH, VALUES, EXPLAIN) run through Flight SQL; \
     write assets with DoPut and manage them with DoAction";

/// Whether the statement's first keyword starts a query (comments skipped).
fn reads(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix('(') {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "SELECT" | "WITH" | "VALUES" | "FROM" | "TABLE" | "EXPLAIN" | "DESCRIBE" | "SUMMARIZE"
    )
}

fn param(value: &Value) -> Param {
    match value {
        Value::Null => Param::Null,
        Value::Bool(b) => Param::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Param::Int(i),
            None => Param::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Param::Text(s.clone()),
        other => Param::Text(other.to_string()),
    }
}

/// `a"b` → `"a""b"`.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A DuckDB error as the caller should see it: the query's own mistakes are INVALID_ARGUMENT,
/// an interrupted query DEADLINE_EXCEEDED, the rest INTERNAL.
fn engine_error(e: quiver_duckdb::Error) -> Error {
    let message = e.to_string();
    let class = message.split(':').next().unwrap_or_default();
    match class {
        "Parser Error"
        | "Binder Error"
        | "Catalog Error"
        | "Conversion Error"
        | "Invalid Input Error"
        | "Out of Range Error"
        | "Permission Error"
        | "Not implemented Error"
        | "Constraint Error"
        | "Invalid Error" => Error::invalid_request(message),
        "INTERRUPT Error" | "Interrupt Error" => Error::Timeout {
            message: "the query ran longer than sql.timeout_secs and was stopped".to_string(),
        },
        "Out of Memory Error" => Error::ResourceExhausted { message },
        _ => Error::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::reads;

    #[test]
    fn queries_are_told_from_writes_by_their_first_keyword() {
        for sql in [
            "SELECT 1",
            "  with x as (select 1) select * from x",
            "-- c\nFROM t",
            "/* c */ (SELECT 1)",
            "values (1)",
        ] {
            assert!(reads(sql), "{sql}");
        }
        for sql in [
            "DELETE FROM t",
            "insert into t values (1)",
            "COPY t TO 'x'",
            "ATTACH 'x'",
            "",
            "-- only",
        ] {
            assert!(!reads(sql), "{sql}");
        }
    }
}

/// An asset as a table: each scan opens a DoGet read of the version the query planned with.
struct AssetScan {
    inner: Arc<Inner>,
    caller: Principal,
    record: AssetRecord,
    handle: Handle,
}

impl ScanSource for AssetScan {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.record.schema)
    }

    fn open(&self, columns: &[usize]) -> std::result::Result<Box<dyn BatchIter>, String> {
        let names = columns
            .iter()
            .map(|&i| self.record.schema.field(i).name().clone())
            .collect();
        let ticket = AssetTicket {
            target: Some(self.record.target.clone()),
            asset: self.record.asset.clone(),
            partitions: Vec::new(),
            columns: Some(names),
            version: Some(self.record.version),
        };
        let seen = OnceLock::new();
        let (_, stream) = self
            .handle
            .block_on(self.inner.open(ticket, &self.caller, &seen))
            .map_err(|e| e.to_string())?;
        Ok(Box::new(Blocking {
            handle: self.handle.clone(),
            stream,
        }))
    }
}

/// An async batch stream read from a DuckDB thread.
struct Blocking {
    handle: Handle,
    stream: SendableBatchStream,
}

impl Iterator for Blocking {
    type Item = std::result::Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.handle
            .block_on(self.stream.next())
            .map(|b| b.map_err(|e| e.to_string()))
    }
}

/// Interrupts a running query from another task, until disarmed.
#[derive(Clone)]
struct Watchdog(Arc<Mutex<Option<Interrupt>>>);

impl Watchdog {
    fn fire(&self) {
        if let Some(interrupt) = lock(&self.0).as_ref() {
            interrupt.interrupt();
        }
    }

    /// Called before the connection closes: an interrupt after that would touch a closed
    /// connection.
    fn disarm(&self) {
        lock(&self.0).take();
    }
}

impl Inner {
    /// The result schema of a statement, without running it.
    pub(super) async fn plan(
        self: &Arc<Self>,
        caller: &Principal,
        statement: &Statement,
    ) -> Result<SchemaRef> {
        let records = self.readable(caller).await?;
        let inner = Arc::clone(self);
        let caller = caller.clone();
        let statement = statement.clone();
        tokio::task::spawn_blocking(move || {
            let session = Session::open(&inner, &caller, records)?;
            let prepared = session.prepare(&statement, false)?;
            prepared.schema().map_err(engine_error)
        })
        .await
        .map_err(|e| Error::internal(format!("the query planner failed: {e}")))?
    }

    /// Runs a statement; its rows stream as they are computed.
    pub(super) async fn run(
        self: &Arc<Self>,
        caller: &Principal,
        statement: Statement,
    ) -> Result<(SchemaRef, SendableBatchStream)> {
        let records = self.readable(caller).await?;
        let inner = Arc::clone(self);
        let caller = caller.clone();
        let (batches, received) = mpsc::channel::<Result<RecordBatch>>(2);
        let (schema_tx, schema_rx) = oneshot::channel::<Result<SchemaRef>>();
        let handle = Handle::current();
        let timeout = Duration::from_secs(self.sql.timeout_secs);
        tokio::task::spawn_blocking(move || {
            let session = match Session::open(&inner, &caller, records) {
                Ok(session) => session,
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            let watchdog = Watchdog(Arc::new(Mutex::new(Some(session.conn.interrupt()))));
            let (done, finished) = oneshot::channel::<()>();
            let watch = watchdog.clone();
            let receiver_gone = batches.clone();
            handle.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => watch.fire(),
                    _ = receiver_gone.closed() => watch.fire(),
                    _ = finished => {}
                }
            });
            stream_rows(&session, &statement, schema_tx, &batches);
            watchdog.disarm();
            let _ = done.send(());
        });
        let schema = schema_rx
            .await
            .map_err(|_| Error::internal("the query stopped before it started"))??;
        let stream = tokio_stream::wrappers::ReceiverStream::new(received);
        Ok((schema, Box::pin(stream)))
    }
}

/// Runs the statement and sends its rows in batches of about [`BATCH_ROWS`].
fn stream_rows(
    session: &Session,
    statement: &Statement,
    schema_tx: oneshot::Sender<Result<SchemaRef>>,
    batches: &mpsc::Sender<Result<RecordBatch>>,
) {
    let rows = session
        .prepare(statement, true)
        .and_then(|p| p.execute().map_err(engine_error));
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let _ = schema_tx.send(Err(e));
            return;
        }
    };
    let schema = rows.schema();
    if schema_tx.send(Ok(Arc::clone(&schema))).is_err() {
        return;
    }
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let flush = |pending: &mut Vec<RecordBatch>| -> Result<Option<RecordBatch>> {
        if pending.is_empty() {
            return Ok(None);
        }
        let batch = arrow_select::concat::concat_batches(&schema, pending.iter())
            .map_err(|e| Error::internal(format!("joining result chunks: {e}")))?;
        pending.clear();
        Ok(Some(batch))
    };
    for chunk in rows {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = batches.blocking_send(Err(engine_error(e)));
                return;
            }
        };
        pending_rows += chunk.num_rows();
        pending.push(chunk);
        if pending_rows >= BATCH_ROWS {
            pending_rows = 0;
            let batch = flush(&mut pending).transpose();
            if batch.is_some_and(|b| batches.blocking_send(b).is_err()) {
                return;
            }
        }
    }
    if let Some(batch) = flush(&mut pending).transpose() {
        let _ = batches.blocking_send(batch);
    }
}

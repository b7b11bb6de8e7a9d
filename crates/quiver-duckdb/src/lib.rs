//! DuckDB's own parallel Arrow scan, for Quiver's DuckDB target.
//!
//! duckdb-rs appends Arrow batches through its appender, on one thread. DuckDB itself reads an
//! Arrow stream with all its threads, converting and compressing batches in parallel while
//! keeping their order (what Python's `duckdb` does for `CREATE TABLE t AS SELECT * FROM
//! arrow_table`), but duckdb-rs exposes neither that scan nor a connection's raw handle. This
//! crate is the one place Quiver calls DuckDB's C API: [`Database`] opens the database and
//! hands out ordinary [`duckdb::Connection`]s, and [`RawConnection`] runs SQL — including one
//! statement over a stream of record batches — on a connection of its own.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, RecordBatchReader, StructArray};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use duckdb::ffi;

mod query;
mod scan;

pub use query::{Interrupt, Param, Prepared, Rows};
pub use scan::{BatchIter, ScanSource};

/// A DuckDB failure. The message starts with DuckDB's error class, as in
/// `Conversion Error: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn c_string(text: &str, what: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error(format!("{what} holds a NUL character")))
}

/// An open DuckDB database. Connections keep DuckDB's instance alive on their own, so they
/// may outlive this handle.
pub struct Database {
    raw: ffi::duckdb_database,
    /// A new connection's default schema, quoted (`"catalog"."main"`): `register_stream`
    /// switches to the scan catalog and back to this.
    home: String,
}

// SAFETY: a DuckDB database handle may be used from any thread; DuckDB synchronises inside.
unsafe impl Send for Database {}
// SAFETY: as above; `connect` only reads the handle.
unsafe impl Sync for Database {}

impl Database {
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let text = path
            .to_str()
            .ok_or_else(|| Error(format!("{} is not valid UTF-8", path.display())))?;
        let c_path = c_string(text, "the database path")?;
        // SAFETY: a valid C path and the default configuration.
        let raw = unsafe { open_raw(c_path.as_ptr(), ptr::null_mut())? };
        let mut database = Self {
            raw,
            home: String::new(),
        };
        // SAFETY: `raw` is the open database just made; the connection is closed before
        // `database` can drop.
        let conn = unsafe { RawConnection::connect(raw)? };
        let catalog = conn.query_string("SELECT current_database()")?;
        let schema = conn.query_string("SELECT current_schema()")?;
        conn.execute(&format!("ATTACH ':memory:' AS {SCAN_CATALOG}"))?;
        drop(conn);
        database.home = format!("{}.{}", quote(&catalog), quote(&schema));
        Ok(Arc::new(database))
    }

    /// A duckdb-rs connection to this database.
    pub fn connect(&self) -> duckdb::Result<duckdb::Connection> {
        // SAFETY: `raw` is open until `self` drops, and a connection holds DuckDB's instance
        // alive by itself after that.
        unsafe { duckdb::Connection::open_from_raw(self.raw) }
    }

    /// A connection driven through the C API, for [`RawConnection::execute_with_stream`].
    pub fn raw_connection(self: &Arc<Self>) -> Result<RawConnection> {
        // SAFETY: `self.raw` is open while `self` lives, and the connection holds `self`.
        let mut conn = unsafe { RawConnection::connect(self.raw)? };
        conn.database = Some(Arc::clone(self));
        Ok(conn)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, closed once; open connections keep the instance alive.
        unsafe { ffi::duckdb_close(&mut self.raw) };
    }
}

/// Opens a database at `path` (null: in memory) with `config` (null: the defaults).
///
/// # Safety
/// `path` is null or a C string; `config` is null or a live configuration.
unsafe fn open_raw(
    path: *const c_char,
    config: ffi::duckdb_config,
) -> Result<ffi::duckdb_database> {
    let mut raw: ffi::duckdb_database = ptr::null_mut();
    let mut message: *mut c_char = ptr::null_mut();
    // SAFETY: as the caller guarantees; DuckDB writes `raw` and `message`.
    let state = unsafe { ffi::duckdb_open_ext(path, &mut raw, config, &mut message) };
    if state == ffi::DuckDBSuccess {
        return Ok(raw);
    }
    Err(Error(if message.is_null() {
        "DuckDB could not open the database".to_string()
    } else {
        // SAFETY: DuckDB set `message` to a C string that we must free.
        let text = unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by DuckDB, freed once.
        unsafe { ffi::duckdb_free(message.cast()) };
        text
    }))
}

/// One connection, used by one thread at a time.
pub struct RawConnection {
    raw: ffi::duckdb_connection,
    /// Set for every connection handed out; only `Database::open`'s own is without it.
    database: Option<Arc<Database>>,
}

// SAFETY: a DuckDB connection may move between threads; `&mut`-free methods are only ever
// called by the thread that owns it (the type is not `Sync`).
unsafe impl Send for RawConnection {}

impl Drop for RawConnection {
    fn drop(&mut self) {
        // SAFETY: connected in `raw_connection`, disconnected once.
        unsafe { ffi::duckdb_disconnect(&mut self.raw) };
    }
}

/// A query result, destroyed on drop (DuckDB requires it even for a failed query).
struct QueryResult(ffi::duckdb_result);

impl Drop for QueryResult {
    fn drop(&mut self) {
        // SAFETY: filled in by `duckdb_query`, destroyed once.
        unsafe { ffi::duckdb_destroy_result(&mut self.0) };
    }
}

impl RawConnection {
    /// # Safety
    /// `database` is open, and stays open while the connection is used.
    unsafe fn connect(database: ffi::duckdb_database) -> Result<Self> {
        let mut raw: ffi::duckdb_connection = ptr::null_mut();
        // SAFETY: the caller guarantees `database` is open; DuckDB writes `raw`.
        let state = unsafe { ffi::duckdb_connect(database, &mut raw) };
        if state != ffi::DuckDBSuccess {
            return Err(Error("DuckDB could not open a connection".to_string()));
        }
        Ok(Self {
            raw,
            database: None,
        })
    }

    fn query(&self, sql: &str) -> Result<QueryResult> {
        let sql = c_string(sql, "the SQL text")?;
        // SAFETY: an all-zero result is the documented initial state for `duckdb_query`.
        let mut result = QueryResult(unsafe { std::mem::zeroed() });
        // SAFETY: the connection is open and the SQL a valid C string.
        let state = unsafe { ffi::duckdb_query(self.raw, sql.as_ptr(), &mut result.0) };
        if state == ffi::DuckDBSuccess {
            return Ok(result);
        }
        // SAFETY: the result holds an error message until it is destroyed.
        let message = unsafe { ffi::duckdb_result_error(&mut result.0) };
        Err(Error(if message.is_null() {
            "DuckDB reported an error without a message".to_string()
        } else {
            // SAFETY: a C string owned by the result, copied before the result drops.
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        }))
    }

    /// Runs one or more SQL statements; returns the rows the last one changed.
    pub fn execute(&self, sql: &str) -> Result<u64> {
        let mut result = self.query(sql)?;
        // SAFETY: a successful result.
        Ok(unsafe { ffi::duckdb_rows_changed(&mut result.0) })
    }

    /// Runs a query and returns its first row's first column as an integer (0 without rows).
    pub fn query_i64(&self, sql: &str) -> Result<i64> {
        let mut result = self.query(sql)?;
        // SAFETY: a successful result; DuckDB returns 0 for a missing or NULL value.
        Ok(unsafe { ffi::duckdb_value_int64(&mut result.0, 0, 0) })
    }

    /// Runs a query and returns its first row's first column as text (empty without rows).
    pub fn query_string(&self, sql: &str) -> Result<String> {
        let mut result = self.query(sql)?;
        // SAFETY: a successful result; DuckDB returns a string we must free, or null.
        let value = unsafe { ffi::duckdb_value_varchar(&mut result.0, 0, 0) };
        if value.is_null() {
            return Ok(String::new());
        }
        // SAFETY: a C string allocated by DuckDB, copied, then freed once.
        let text = unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        unsafe { ffi::duckdb_free(value.cast()) };
        Ok(text)
    }

    /// Makes the batches of `reader` readable as a view: DuckDB pulls them with all its
    /// threads, one at a time, in order, when a statement reads the view (once). Call it
    /// outside a transaction; the view lives in an in-memory catalog (a view over a
    /// process-local stream cannot be written to a database file), and is dropped with the
    /// returned guard.
    pub fn register_stream(
        &self,
        reader: Box<dyn RecordBatchReader + Send>,
    ) -> Result<StreamView<'_>> {
        static VIEWS: AtomicU64 = AtomicU64::new(0);
        let name = format!("scan_{}", VIEWS.fetch_add(1, Ordering::Relaxed));
        let schema = FFI_ArrowSchema::try_from(reader.schema().as_ref())
            .map_err(|e| Error(format!("cannot describe the batches to DuckDB: {e}")))?;
        let mut state = Box::new(StreamState {
            reader,
            schema,
            last_error: None,
        });
        let mut stream = Box::new(ArrowArrayStream {
            get_schema: Some(stream_get_schema),
            get_next: Some(stream_get_next),
            get_last_error: Some(stream_get_last_error),
            release: Some(stream_release),
            private_data: ptr::from_mut::<StreamState>(&mut *state).cast(),
        });
        let c_name = c_string(&name, "the view name")?;
        // `duckdb_arrow_scan` creates its view in the default schema: make that the in-memory
        // catalog's for the call, then restore it.
        let home = self
            .database
            .as_ref()
            .map(|database| database.home.as_str())
            .ok_or_else(|| Error("the connection has no database".to_string()))?;
        self.execute(&format!("USE {SCAN_CATALOG}.main"))?;
        // SAFETY: `stream` is a valid Arrow C stream; the guard returned owns it and its
        // private data, and drops the view before freeing them. DuckDB never releases a
        // caller's stream.
        let registered = unsafe {
            ffi::duckdb_arrow_scan(
                self.raw,
                c_name.as_ptr(),
                ptr::from_mut::<ArrowArrayStream>(&mut *stream).cast(),
            )
        };
        let view = StreamView {
            connection: self,
            name: format!("{SCAN_CATALOG}.main.{}", quote(&name)),
            stream: ManuallyDrop::new(stream),
            state: ManuallyDrop::new(state),
        };
        self.execute(&format!("USE {home}"))?;
        if registered != ffi::DuckDBSuccess {
            return Err(Error(format!(
                "DuckDB could not read the batches as view {}",
                view.name
            )));
        }
        Ok(view)
    }
}

/// The in-memory catalog holding stream views, attached when the database opens.
const SCAN_CATALOG: &str = "__quiver_arrow_scan";

/// A view over a stream of batches; dropping it drops the view, then frees the stream.
pub struct StreamView<'c> {
    connection: &'c RawConnection,
    name: String,
    // Read by DuckDB through the pointers it was given; freed after the view is dropped.
    stream: ManuallyDrop<Box<ArrowArrayStream>>,
    state: ManuallyDrop<Box<StreamState>>,
}

impl StreamView<'_> {
    /// The view's qualified name, ready for SQL.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for StreamView<'_> {
    fn drop(&mut self) {
        let dropped = self
            .connection
            .execute(&format!("DROP VIEW IF EXISTS {}", self.name));
        if dropped.is_ok() {
            // SAFETY: DuckDB no longer holds the view, so nothing points at these; each is
            // dropped once, here.
            unsafe {
                ManuallyDrop::drop(&mut self.stream);
                ManuallyDrop::drop(&mut self.state);
            }
        }
        // Otherwise the view still points at them: they stay allocated (a leak, not a
        // dangling pointer).
    }
}

/// `a"b` → `"a""b"`.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The Arrow C stream interface (arrow-rs keeps its own version's fields private).
#[repr(C)]
struct ArrowArrayStream {
    get_schema: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ffi::ArrowSchema) -> c_int>,
    get_next: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ffi::ArrowArray) -> c_int>,
    get_last_error: Option<unsafe extern "C" fn(*mut ArrowArrayStream) -> *const c_char>,
    release: Option<unsafe extern "C" fn(*mut ArrowArrayStream)>,
    private_data: *mut c_void,
}

struct StreamState {
    reader: Box<dyn RecordBatchReader + Send>,
    /// Lent to DuckDB by `stream_get_schema`: DuckDB does not release the schemas a stream
    /// gives it, so the stream keeps the one schema it hands out.
    schema: FFI_ArrowSchema,
    last_error: Option<CString>,
}

/// `EIO`: the Arrow C stream interface reports failures as errno values.
const STREAM_ERROR: c_int = 5;

/// # Safety
/// `stream` is a stream made by `execute_with_stream`, `out` writable.
unsafe extern "C" fn stream_get_schema(
    stream: *mut ArrowArrayStream,
    out: *mut ffi::ArrowSchema,
) -> c_int {
    // SAFETY: the private data is the live `StreamState` of this stream.
    let state = unsafe { &*(*stream).private_data.cast::<StreamState>() };
    let lent = ptr::from_ref(&state.schema).cast::<ffi::ArrowSchema>();
    // SAFETY: `FFI_ArrowSchema` is the C `ArrowSchema`; the shallow copy points into the
    // stream's schema, and its release does nothing, so the stream stays the owner.
    unsafe {
        ptr::copy_nonoverlapping(lent, out, 1);
        (*out).release = Some(release_lent_schema);
    }
    0
}

unsafe extern "C" fn release_lent_schema(schema: *mut ffi::ArrowSchema) {
    // SAFETY: called by the consumer on a schema `stream_get_schema` wrote.
    unsafe { (*schema).release = None };
}

/// # Safety
/// `stream` is a stream made by `execute_with_stream`, `out` writable; DuckDB calls this from
/// one thread at a time.
unsafe extern "C" fn stream_get_next(
    stream: *mut ArrowArrayStream,
    out: *mut ffi::ArrowArray,
) -> c_int {
    // SAFETY: the private data is the live `StreamState` of this stream, used by one thread.
    let state = unsafe { &mut *(*stream).private_data.cast::<StreamState>() };
    let next = catch_unwind(AssertUnwindSafe(|| state.reader.next())).unwrap_or_else(|_| {
        Some(Err(arrow::error::ArrowError::ComputeError(
            "the batch source panicked".to_string(),
        )))
    });
    let array = match next {
        None => FFI_ArrowArray::empty(),
        Some(Ok(batch)) => FFI_ArrowArray::new(&StructArray::from(batch).to_data()),
        Some(Err(e)) => {
            state.last_error = CString::new(e.to_string().replace('\0', " ")).ok();
            return STREAM_ERROR;
        }
    };
    // SAFETY: `FFI_ArrowArray` is the C `ArrowArray`; the consumer now owns it and calls its
    // release. `out` holds no array to drop.
    unsafe { ptr::write(out.cast::<FFI_ArrowArray>(), array) };
    0
}

/// # Safety
/// `stream` is a stream made by `execute_with_stream`.
unsafe extern "C" fn stream_get_last_error(stream: *mut ArrowArrayStream) -> *const c_char {
    // SAFETY: the private data is the live `StreamState` of this stream.
    let state = unsafe { &*(*stream).private_data.cast::<StreamState>() };
    state
        .last_error
        .as_ref()
        .map_or(ptr::null(), |message| message.as_ptr())
}

/// The stream belongs to `execute_with_stream`, which frees it; consumers only mark it released.
unsafe extern "C" fn stream_release(stream: *mut ArrowArrayStream) {
    // SAFETY: called by the consumer on a stream it was given.
    unsafe { (*stream).release = None };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, RecordBatchIterator, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::error::ArrowError;

    use super::*;

    fn batches(count: i64, rows: i64) -> (Arc<Schema>, Vec<Result<RecordBatch, ArrowError>>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let out = (0..count)
            .map(|b| {
                let ids: Int64Array = (b * rows..(b + 1) * rows).collect();
                let names: StringArray = ids.iter().map(|i| i.map(|i| format!("n{i}"))).collect();
                Ok(
                    RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ids), Arc::new(names)])
                        .unwrap(),
                )
            })
            .collect();
        (schema, out)
    }

    fn database() -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("t.duckdb")).unwrap();
        (dir, db)
    }

    #[test]
    fn inserts_every_batch_in_order() {
        let (_dir, db) = database();
        let conn = db.raw_connection().unwrap();
        conn.execute("CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)")
            .unwrap();
        let (schema, items) = batches(40, 5000);
        let reader = RecordBatchIterator::new(items, schema);
        let view = conn.register_stream(Box::new(reader)).unwrap();
        conn.execute("BEGIN TRANSACTION").unwrap();
        let rows = conn
            .execute(&format!("INSERT INTO t SELECT * FROM {}", view.name()))
            .unwrap();
        conn.execute("COMMIT").unwrap();
        drop(view);
        assert_eq!(rows, 200_000);
        // Order kept: rowid i holds id i.
        assert_eq!(
            conn.query_i64("SELECT count(*) FROM t WHERE rowid <> id")
                .unwrap(),
            0
        );
        assert_eq!(
            conn.query_i64("SELECT count(*) FROM t WHERE name <> 'n' || id")
                .unwrap(),
            0
        );
        // No view is left, and a duckdb-rs connection sees the committed rows.
        assert_eq!(
            conn.query_i64("SELECT count(*) FROM duckdb_views() WHERE NOT internal")
                .unwrap(),
            0
        );
        assert_eq!(conn.query_string("SELECT current_database()").unwrap(), "t");
        assert_eq!(
            conn.query_string("SELECT current_schema()").unwrap(),
            "main"
        );
        let other = db.connect().unwrap();
        let count: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 200_000);
    }

    #[test]
    fn a_failing_source_fails_the_statement_and_the_transaction_rolls_back() {
        let (_dir, db) = database();
        let conn = db.raw_connection().unwrap();
        conn.execute("CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)")
            .unwrap();
        let (schema, mut items) = batches(3, 100);
        items.push(Err(ArrowError::ExternalError(
            "the client went away".into(),
        )));
        let view = conn
            .register_stream(Box::new(RecordBatchIterator::new(items, schema)))
            .unwrap();
        conn.execute("BEGIN TRANSACTION").unwrap();
        let err = conn
            .execute(&format!("INSERT INTO t SELECT * FROM {}", view.name()))
            .unwrap_err();
        assert!(err.0.contains("the client went away"), "{err}");
        conn.execute("ROLLBACK").unwrap();
        drop(view);
        assert_eq!(conn.query_i64("SELECT count(*) FROM t").unwrap(), 0);
    }

    #[test]
    fn sql_errors_carry_duckdb_error_class() {
        let (_dir, db) = database();
        let conn = db.raw_connection().unwrap();
        let err = conn.execute("SELECT * FROM missing_table").unwrap_err();
        assert!(err.0.starts_with("Catalog Error"), "{err}");
        let err = conn.query_i64("SELECT 'x'::INTEGER").unwrap_err();
        assert!(err.0.starts_with("Conversion Error"), "{err}");
    }
}

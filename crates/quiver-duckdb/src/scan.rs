//! A table function that scans sources of record batches the caller supplies, opened only
//! when a query reads them, with DuckDB's projection pushdown.
//!
//! `register_scans(name, sources)` makes `name(i)` a table over `sources[i]`. Every reference
//! in a query binds and opens a read of its own (a self-join reads twice), asking the source
//! for the columns the query uses. Batches become DuckDB vectors through DuckDB's own Arrow
//! conversion (`duckdb_data_chunk_from_arrow`), which keeps the Arrow buffers.

use std::ffi::{CString, c_void};
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use duckdb::ffi;

use crate::{Error, RawConnection, Result, c_string};

/// Where a scanned table's batches come from.
pub trait ScanSource: Send + Sync {
    /// The table's columns.
    fn schema(&self) -> SchemaRef;
    /// Opens a read of `columns` (indices into [`ScanSource::schema`], in that order); the
    /// batches carry exactly those columns. Called on a DuckDB thread, which may block.
    fn open(&self, columns: &[usize]) -> Result<Box<dyn BatchIter>, String>;
}

/// The batches of one read.
pub trait BatchIter: Iterator<Item = Result<RecordBatch, String>> + Send {}
impl<T: Iterator<Item = Result<RecordBatch, String>> + Send> BatchIter for T {}

/// What the table function needs at every call: the sources, and a connection of its own to
/// read DuckDB's Arrow conversion settings from.
struct Scans {
    sources: Vec<Arc<dyn ScanSource>>,
    converter: Mutex<RawConnection>,
}

impl RawConnection {
    /// Registers the table function `name(BIGINT)` reading `sources[i]`. The function lives
    /// as long as the database.
    pub fn register_scans(&self, name: &str, sources: Vec<Arc<dyn ScanSource>>) -> Result<()> {
        let database = self
            .database
            .as_ref()
            .ok_or_else(|| Error("the connection has no database".to_string()))?;
        let scans = Box::new(Scans {
            sources,
            converter: Mutex::new(database.raw_connection()?),
        });
        let c_name = c_string(name, "the function name")?;
        // SAFETY: every handle below is created here and handed to DuckDB, which owns the
        // extra info (freed with `drop_boxed::<Scans>`) once `set_extra_info` returns.
        unsafe {
            let mut function = ffi::duckdb_create_table_function();
            ffi::duckdb_table_function_set_name(function, c_name.as_ptr());
            let mut bigint = ffi::duckdb_create_logical_type(ffi::DUCKDB_TYPE_DUCKDB_TYPE_BIGINT);
            ffi::duckdb_table_function_add_parameter(function, bigint);
            ffi::duckdb_destroy_logical_type(&mut bigint);
            ffi::duckdb_table_function_set_extra_info(
                function,
                Box::into_raw(scans).cast(),
                Some(drop_boxed::<Scans>),
            );
            ffi::duckdb_table_function_set_bind(function, Some(bind));
            ffi::duckdb_table_function_set_init(function, Some(init));
            ffi::duckdb_table_function_set_function(function, Some(scan));
            ffi::duckdb_table_function_supports_projection_pushdown(function, true);
            let state = ffi::duckdb_register_table_function(self.raw, function);
            ffi::duckdb_destroy_table_function(&mut function);
            if state != ffi::DuckDBSuccess {
                return Err(Error(format!("DuckDB refused the table function {name}")));
            }
        }
        Ok(())
    }
}

unsafe extern "C" fn drop_boxed<T>(data: *mut c_void) {
    // SAFETY: DuckDB hands back the pointer `Box::into_raw` made, once.
    drop(unsafe { Box::from_raw(data.cast::<T>()) });
}

/// A bound reference: its source, and the DuckDB types of its columns.
struct Bound {
    source: Arc<dyn ScanSource>,
}

/// One read in progress.
struct Reading {
    batches: Box<dyn BatchIter>,
    /// For each output column, its position in the batches read; `None` for a column DuckDB
    /// asked for that the source does not have (the row id of `count(*)`), left unfilled.
    outputs: Vec<Option<usize>>,
    converted: ConvertedSchema,
    current: Option<RecordBatch>,
    offset: usize,
}

struct ConvertedSchema(ffi::duckdb_arrow_converted_schema);

// SAFETY: a converted schema is plain data DuckDB reads; it moves with the read that owns it.
unsafe impl Send for ConvertedSchema {}

impl Drop for ConvertedSchema {
    fn drop(&mut self) {
        // SAFETY: made by `duckdb_schema_from_arrow`, destroyed once.
        unsafe { ffi::duckdb_destroy_arrow_converted_schema(&mut self.0) };
    }
}

/// DuckDB's error data as a `Result`, destroying it.
pub(crate) fn check_error(mut data: ffi::duckdb_error_data) -> Result<(), String> {
    // SAFETY: `data` is a live error data handle, read, then destroyed once.
    unsafe {
        let failed = ffi::duckdb_error_data_has_error(data);
        let message = if failed {
            let text = ffi::duckdb_error_data_message(data);
            if text.is_null() {
                "DuckDB failed without a message".to_string()
            } else {
                std::ffi::CStr::from_ptr(text)
                    .to_string_lossy()
                    .into_owned()
            }
        } else {
            String::new()
        };
        ffi::duckdb_destroy_error_data(&mut data);
        if failed { Err(message) } else { Ok(()) }
    }
}

impl RawConnection {
    fn convert_schema(&self, schema: &Schema) -> Result<ConvertedSchema, String> {
        let mut ffi_schema = FFI_ArrowSchema::try_from(schema).map_err(|e| e.to_string())?;
        let mut converted: ffi::duckdb_arrow_converted_schema = ptr::null_mut();
        // SAFETY: the schema is a valid Arrow C schema; DuckDB releases it and writes
        // `converted`, which the returned guard destroys.
        let data = unsafe {
            ffi::duckdb_schema_from_arrow(
                self.raw,
                ptr::from_mut(&mut ffi_schema).cast(),
                &mut converted,
            )
        };
        // DuckDB took the schema: it must not be released again here.
        std::mem::forget(ffi_schema);
        check_error(data)?;
        Ok(ConvertedSchema(converted))
    }

    /// `batch` as a DuckDB data chunk (the caller destroys it).
    fn to_chunk(
        &self,
        batch: &RecordBatch,
        converted: &ConvertedSchema,
    ) -> Result<ffi::duckdb_data_chunk, String> {
        let mut array = FFI_ArrowArray::new(&StructArray::from(batch.clone()).to_data());
        let mut chunk: ffi::duckdb_data_chunk = ptr::null_mut();
        // SAFETY: a valid Arrow C array whose ownership passes to the chunk; the converted
        // schema describes its columns.
        let data = unsafe {
            ffi::duckdb_data_chunk_from_arrow(
                self.raw,
                ptr::from_mut(&mut array).cast(),
                converted.0,
                &mut chunk,
            )
        };
        // The chunk owns the array's buffers now.
        std::mem::forget(array);
        check_error(data)?;
        Ok(chunk)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_error(message: &str, set: impl FnOnce(*const std::ffi::c_char)) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    set(text.as_ptr());
}

/// # Safety
/// Called by DuckDB with a bind info of this function.
unsafe extern "C" fn bind(info: ffi::duckdb_bind_info) {
    // SAFETY: the extra info is the `Scans` registered with the function.
    let scans = unsafe { &*ffi::duckdb_bind_get_extra_info(info).cast::<Scans>() };
    let bound = (|| -> Result<Bound, String> {
        // SAFETY: the function has one BIGINT parameter; the value is destroyed after use.
        let index = unsafe {
            let mut value = ffi::duckdb_bind_get_parameter(info, 0);
            let index = ffi::duckdb_get_int64(value);
            ffi::duckdb_destroy_value(&mut value);
            index
        };
        let source = usize::try_from(index)
            .ok()
            .and_then(|i| scans.sources.get(i))
            .ok_or_else(|| format!("no table is registered as scan {index}"))?;
        let schema = source.schema();
        let converter = lock(&scans.converter);
        let converted = converter.convert_schema(&schema)?;
        // The column types: those of an empty chunk converted from the schema.
        let empty = RecordBatch::new_empty(Arc::clone(&schema));
        let mut chunk = converter.to_chunk(&empty, &converted)?;
        for (i, field) in schema.fields().iter().enumerate() {
            let name = CString::new(field.name().replace('\0', " ")).unwrap_or_default();
            // SAFETY: the chunk has one vector per field; the type is destroyed after use.
            unsafe {
                let vector = ffi::duckdb_data_chunk_get_vector(chunk, i as u64);
                let mut logical = ffi::duckdb_vector_get_column_type(vector);
                ffi::duckdb_bind_add_result_column(info, name.as_ptr(), logical);
                ffi::duckdb_destroy_logical_type(&mut logical);
            }
        }
        // SAFETY: made by `to_chunk`, destroyed once.
        unsafe { ffi::duckdb_destroy_data_chunk(&mut chunk) };
        Ok(Bound {
            source: Arc::clone(source),
        })
    })();
    match bound {
        Ok(bound) => {
            // SAFETY: DuckDB owns the bind data from here and frees it with `drop_boxed`.
            unsafe {
                ffi::duckdb_bind_set_bind_data(
                    info,
                    Box::into_raw(Box::new(bound)).cast(),
                    Some(drop_boxed::<Bound>),
                );
            }
        }
        // SAFETY: the message is copied by DuckDB.
        Err(e) => set_error(&e, |m| unsafe { ffi::duckdb_bind_set_error(info, m) }),
    }
}

/// # Safety
/// Called by DuckDB with an init info of this function.
unsafe extern "C" fn init(info: ffi::duckdb_init_info) {
    // SAFETY: the extra info is the function's `Scans`, the bind data a `Bound`.
    let (scans, bound) = unsafe {
        (
            &*ffi::duckdb_init_get_extra_info(info).cast::<Scans>(),
            &*ffi::duckdb_init_get_bind_data(info).cast::<Bound>(),
        )
    };
    let reading = (|| -> Result<Mutex<Reading>, String> {
        let schema = bound.source.schema();
        let width = schema.fields().len() as u64;
        // SAFETY: reading the projection DuckDB pushed down.
        let wanted: Vec<u64> = unsafe {
            (0..ffi::duckdb_init_get_column_count(info))
                .map(|i| ffi::duckdb_init_get_column_index(info, i))
                .collect()
        };
        let mut columns: Vec<usize> = Vec::new();
        let outputs = wanted
            .iter()
            .map(|&c| {
                (c < width).then(|| {
                    columns.push(c as usize);
                    columns.len() - 1
                })
            })
            .collect();
        // A read needs one column to count rows by.
        if columns.is_empty() && width > 0 {
            columns.push(0);
        }
        let projected = schema.project(&columns).map_err(|e| e.to_string())?;
        let converted = lock(&scans.converter).convert_schema(&projected)?;
        let batches = bound.source.open(&columns)?;
        Ok(Mutex::new(Reading {
            batches,
            outputs,
            converted,
            current: None,
            offset: 0,
        }))
    })();
    match reading {
        // SAFETY: DuckDB owns the init data from here; one thread reads it at a time.
        Ok(reading) => unsafe {
            ffi::duckdb_init_set_init_data(
                info,
                Box::into_raw(Box::new(reading)).cast(),
                Some(drop_boxed::<Mutex<Reading>>),
            );
            ffi::duckdb_init_set_max_threads(info, 1);
        },
        // SAFETY: the message is copied by DuckDB.
        Err(e) => set_error(&e, |m| unsafe { ffi::duckdb_init_set_error(info, m) }),
    }
}

/// # Safety
/// Called by DuckDB with a function info of this function and an output chunk of its columns.
unsafe extern "C" fn scan(info: ffi::duckdb_function_info, output: ffi::duckdb_data_chunk) {
    // SAFETY: the extra info is the function's `Scans`, the init data a `Mutex<Reading>`.
    let (scans, reading) = unsafe {
        (
            &*ffi::duckdb_function_get_extra_info(info).cast::<Scans>(),
            &*ffi::duckdb_function_get_init_data(info).cast::<Mutex<Reading>>(),
        )
    };
    let mut reading = lock(reading);
    let filled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fill(scans, &mut reading, output)
    }))
    .unwrap_or_else(|_| Err("the table's source panicked".to_string()));
    if let Err(e) = filled {
        // SAFETY: the message is copied by DuckDB.
        set_error(&e, |m| unsafe { ffi::duckdb_function_set_error(info, m) });
    }
}

/// Puts the next rows (at most one vector's worth) into `output`; none at the end.
fn fill(
    scans: &Scans,
    reading: &mut Reading,
    output: ffi::duckdb_data_chunk,
) -> Result<(), String> {
    // SAFETY: a plain query of DuckDB's vector size.
    let capacity = unsafe { ffi::duckdb_vector_size() } as usize;
    loop {
        if let Some(batch) = &reading.current
            && reading.offset < batch.num_rows()
        {
            break;
        }
        match reading.batches.next() {
            None => {
                // SAFETY: an empty output ends the scan.
                unsafe { ffi::duckdb_data_chunk_set_size(output, 0) };
                return Ok(());
            }
            Some(batch) => {
                reading.current = Some(batch?);
                reading.offset = 0;
            }
        }
    }
    let batch = reading.current.as_ref().expect("a batch with rows left");
    let rows = capacity.min(batch.num_rows() - reading.offset);
    let slice = batch.slice(reading.offset, rows);
    reading.offset += rows;
    let mut chunk = lock(&scans.converter).to_chunk(&slice, &reading.converted)?;
    // SAFETY: `output` has one vector per output column and `chunk` one per column read;
    // referencing shares the chunk's buffers, so the chunk may be destroyed after.
    unsafe {
        for (out, read) in reading.outputs.iter().enumerate() {
            if let Some(read) = read {
                ffi::duckdb_vector_reference_vector(
                    ffi::duckdb_data_chunk_get_vector(output, out as u64),
                    ffi::duckdb_data_chunk_get_vector(chunk, *read as u64),
                );
            }
        }
        ffi::duckdb_data_chunk_set_size(output, rows as u64);
        ffi::duckdb_destroy_data_chunk(&mut chunk);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    use super::*;
    use crate::{Database, Param};

    /// Ids 0..rows in batches of 1000, with a name per id; counts the reads it serves.
    struct Numbers {
        schema: SchemaRef,
        rows: i64,
        opened: AtomicUsize,
        asked: Mutex<Vec<Vec<usize>>>,
    }

    impl Numbers {
        fn new(rows: i64) -> Arc<Self> {
            Arc::new(Self {
                schema: Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int64, false),
                    Field::new("name", DataType::Utf8, true),
                ])),
                rows,
                opened: AtomicUsize::new(0),
                asked: Mutex::new(Vec::new()),
            })
        }
    }

    impl ScanSource for Numbers {
        fn schema(&self) -> SchemaRef {
            Arc::clone(&self.schema)
        }

        fn open(&self, columns: &[usize]) -> Result<Box<dyn BatchIter>, String> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            lock(&self.asked).push(columns.to_vec());
            let schema = Arc::new(self.schema.project(columns).unwrap());
            let columns = columns.to_vec();
            let rows = self.rows;
            Ok(Box::new((0..rows).step_by(1000).map(move |start| {
                let ids: Int64Array = (start..(start + 1000).min(rows)).collect();
                let names: StringArray = ids.iter().map(|i| i.map(|i| format!("n{i}"))).collect();
                let all: Vec<Arc<dyn Array>> = vec![Arc::new(ids), Arc::new(names)];
                let picked = columns.iter().map(|&c| Arc::clone(&all[c])).collect();
                RecordBatch::try_new(Arc::clone(&schema), picked).map_err(|e| e.to_string())
            })))
        }
    }

    fn run(conn: &RawConnection, sql: &str) -> Vec<RecordBatch> {
        conn.prepare(sql)
            .unwrap()
            .execute()
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn scans_open_lazily_push_projection_down_and_read_once_per_reference() {
        let db = Database::open_in_memory(&[("enable_external_access", "false")]).unwrap();
        let conn = db.raw_connection().unwrap();
        let (a, b) = (Numbers::new(10_000), Numbers::new(5));
        let sources: Vec<Arc<dyn ScanSource>> = vec![a.clone(), b.clone()];
        conn.register_scans("scan", sources).unwrap();
        conn.execute(
            "CREATE VIEW a AS SELECT * FROM scan(0); CREATE VIEW b AS SELECT * FROM scan(1)",
        )
        .unwrap();
        // Preparing binds but reads nothing.
        let schema = conn
            .prepare("SELECT name, id FROM a")
            .unwrap()
            .schema()
            .unwrap();
        assert_eq!(schema.field(0).name(), "name");
        assert_eq!(schema.field(1).data_type(), &DataType::Int64);
        assert_eq!(a.opened.load(Ordering::SeqCst), 0);

        let out = run(&conn, "SELECT max(id) AS m, count(*) AS n FROM a");
        let max = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(max.value(0), 9_999);
        let n = out[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 10_000);
        assert_eq!(lock(&a.asked)[0], vec![0], "only `id` is read");
        assert_eq!(
            b.opened.load(Ordering::SeqCst),
            0,
            "an unused table is never opened"
        );

        // A self-join reads the table once per reference and sees every row each time.
        let out = run(&conn, "SELECT count(*) FROM b x JOIN b y ON x.id <= y.id");
        let n = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 15);
        assert_eq!(b.opened.load(Ordering::SeqCst), 2);

        // Every row arrives, in order, with its types.
        let rows: usize = run(&conn, "SELECT * FROM a")
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 10_000);
        let mut prepared = conn.prepare("SELECT name FROM a WHERE id = $1").unwrap();
        assert_eq!(prepared.parameter_count(), 1);
        prepared.bind(1, &Param::Int(42)).unwrap();
        let out: Vec<RecordBatch> = prepared.execute().unwrap().map(|b| b.unwrap()).collect();
        let names = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "n42");
    }

    #[test]
    fn external_access_is_refused() {
        let db = Database::open_in_memory(&[
            ("enable_external_access", "false"),
            ("autoinstall_known_extensions", "false"),
            ("autoload_known_extensions", "false"),
            ("lock_configuration", "true"),
        ])
        .unwrap();
        let conn = db.raw_connection().unwrap();
        for sql in [
            "SELECT * FROM read_csv('/etc/passwd')",
            "ATTACH '/tmp/x.duckdb' AS x",
            "INSTALL httpfs",
            "SET enable_external_access = true",
            "COPY (SELECT 1) TO '/tmp/quiver-escape.csv'",
        ] {
            let err = conn.prepare(sql).and_then(|p| p.execute().map(|_| ()));
            assert!(err.is_err(), "{sql} was allowed");
        }
    }
}

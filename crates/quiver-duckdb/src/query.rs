//! Queries whose results stream out as Arrow: prepare (the result schema is known before
//! anything runs), bind parameters, execute, fetch one chunk at a time.

use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::sync::Arc;

use arrow::array::{RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi};
use duckdb::ffi;

use crate::scan::check_error;
use crate::{Database, Error, RawConnection, Result, c_string, open_raw};

impl Database {
    /// An in-memory database opened with `settings` (DuckDB configuration options, applied
    /// before anything runs, e.g. `enable_external_access = false`).
    pub fn open_in_memory(settings: &[(&str, &str)]) -> Result<Arc<Self>> {
        let mut config: ffi::duckdb_config = ptr::null_mut();
        // SAFETY: DuckDB writes the config handle, destroyed below on every path.
        if unsafe { ffi::duckdb_create_config(&mut config) } != ffi::DuckDBSuccess {
            return Err(Error("DuckDB could not create a configuration".to_string()));
        }
        let opened = (|| {
            for (name, value) in settings {
                let c_name = c_string(name, "a setting name")?;
                let c_value = c_string(value, "a setting value")?;
                // SAFETY: a live config and two C strings DuckDB copies.
                let state =
                    unsafe { ffi::duckdb_set_config(config, c_name.as_ptr(), c_value.as_ptr()) };
                if state != ffi::DuckDBSuccess {
                    return Err(Error(format!(
                        "DuckDB refused the setting {name} = {value}"
                    )));
                }
            }
            // SAFETY: a null path opens an in-memory database; the config is live.
            let raw = unsafe { open_raw(ptr::null(), config)? };
            Ok(raw)
        })();
        // SAFETY: made above, destroyed once; the database keeps its own copy.
        unsafe { ffi::duckdb_destroy_config(&mut config) };
        Ok(Arc::new(Database {
            raw: opened?,
            home: String::new(),
        }))
    }
}

/// A prepared statement; its result schema is known before it runs.
pub struct Prepared<'c> {
    connection: &'c RawConnection,
    raw: ffi::duckdb_prepared_statement,
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        // SAFETY: prepared in `prepare`, destroyed once (DuckDB requires it even on failure).
        unsafe { ffi::duckdb_destroy_prepare(&mut self.raw) };
    }
}

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// An interrupt for the statement a connection runs, usable from any thread.
#[derive(Clone, Copy)]
pub struct Interrupt(ffi::duckdb_connection);

// SAFETY: `duckdb_interrupt` is meant to be called from another thread than the query's.
unsafe impl Send for Interrupt {}
// SAFETY: as above.
unsafe impl Sync for Interrupt {}

impl Interrupt {
    /// Stops the statement running on the connection (if any) with an "Interrupted" error.
    /// The connection must still be open.
    pub fn interrupt(&self) {
        // SAFETY: the caller keeps the connection open (see `RawConnection::interrupt`).
        unsafe { ffi::duckdb_interrupt(self.0) };
    }
}

impl RawConnection {
    /// Prepares one statement.
    pub fn prepare(&self, sql: &str) -> Result<Prepared<'_>> {
        let c_sql = c_string(sql, "the SQL text")?;
        let mut prepared = Prepared {
            connection: self,
            raw: ptr::null_mut(),
        };
        // SAFETY: an open connection and a C string; DuckDB writes the handle.
        let state = unsafe { ffi::duckdb_prepare(self.raw, c_sql.as_ptr(), &mut prepared.raw) };
        if state != ffi::DuckDBSuccess {
            // SAFETY: the error belongs to the prepared statement, copied before it drops.
            let message = unsafe { ffi::duckdb_prepare_error(prepared.raw) };
            return Err(Error(if message.is_null() {
                "DuckDB could not prepare the statement".to_string()
            } else {
                // SAFETY: as above.
                unsafe { CStr::from_ptr(message) }
                    .to_string_lossy()
                    .into_owned()
            }));
        }
        Ok(prepared)
    }

    /// A handle that interrupts this connection's running statement. Using it after the
    /// connection is dropped is undefined: keep the connection alive while it may be used.
    pub fn interrupt(&self) -> Interrupt {
        Interrupt(self.raw)
    }

    fn arrow_options(&self) -> ArrowOptions {
        let mut options: ffi::duckdb_arrow_options = ptr::null_mut();
        // SAFETY: an open connection; DuckDB writes the options handle.
        unsafe { ffi::duckdb_connection_get_arrow_options(self.raw, &mut options) };
        ArrowOptions(options)
    }
}

struct ArrowOptions(ffi::duckdb_arrow_options);

impl Drop for ArrowOptions {
    fn drop(&mut self) {
        // SAFETY: made by DuckDB, destroyed once.
        unsafe { ffi::duckdb_destroy_arrow_options(&mut self.0) };
    }
}

impl<'c> Prepared<'c> {
    /// How many parameters (`?` or `$n`) the statement has.
    pub fn parameter_count(&self) -> usize {
        // SAFETY: a prepared statement.
        unsafe { ffi::duckdb_nparams(self.raw) as usize }
    }

    /// Whether the statement only reads: a `SELECT` (or `WITH … SELECT`, `VALUES`…) or an
    /// `EXPLAIN`.
    pub fn is_query(&self) -> bool {
        // SAFETY: a prepared statement.
        let kind = unsafe { ffi::duckdb_prepared_statement_type(self.raw) };
        kind == ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT
            || kind == ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPLAIN
    }

    /// The schema of the rows the statement returns.
    pub fn schema(&self) -> Result<SchemaRef> {
        // SAFETY: a prepared statement; names are copied into C strings we own, types are
        // destroyed after use, and the Arrow schema DuckDB writes is owned by `out`.
        unsafe {
            let count = ffi::duckdb_prepared_statement_column_count(self.raw);
            let mut types = Vec::with_capacity(count as usize);
            let mut names = Vec::with_capacity(count as usize);
            for i in 0..count {
                types.push(ffi::duckdb_prepared_statement_column_logical_type(
                    self.raw, i,
                ));
                let name = ffi::duckdb_prepared_statement_column_name(self.raw, i);
                names.push(if name.is_null() {
                    CString::default()
                } else {
                    let owned = CStr::from_ptr(name).to_owned();
                    ffi::duckdb_free(name.cast_mut().cast());
                    owned
                });
            }
            let mut name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
            let options = self.connection.arrow_options();
            let mut out = FFI_ArrowSchema::empty();
            let converted = check_error(ffi::duckdb_to_arrow_schema(
                options.0,
                types.as_mut_ptr(),
                name_ptrs.as_mut_ptr(),
                count,
                ptr::from_mut(&mut out).cast(),
            ));
            for t in &mut types {
                ffi::duckdb_destroy_logical_type(t);
            }
            converted.map_err(Error)?;
            Ok(Arc::new(
                Schema::try_from(&out).map_err(|e| Error(e.to_string()))?,
            ))
        }
    }

    /// Binds parameter `index` (from 1).
    pub fn bind(&mut self, index: usize, param: &Param) -> Result<()> {
        // SAFETY: a prepared statement; the value is created here and destroyed after the
        // bind, which copies it.
        let state = unsafe {
            let mut value = match param {
                Param::Null => ffi::duckdb_create_null_value(),
                Param::Bool(v) => ffi::duckdb_create_bool(*v),
                Param::Int(v) => ffi::duckdb_create_int64(*v),
                Param::Float(v) => ffi::duckdb_create_double(*v),
                Param::Text(v) => {
                    ffi::duckdb_create_varchar_length(v.as_ptr().cast(), v.len() as u64)
                }
                Param::Blob(v) => ffi::duckdb_create_blob(v.as_ptr(), v.len() as u64),
            };
            let state = ffi::duckdb_bind_value(self.raw, index as u64, value);
            ffi::duckdb_destroy_value(&mut value);
            state
        };
        if state != ffi::DuckDBSuccess {
            return Err(Error(format!(
                "parameter {index} cannot take the value {param:?}"
            )));
        }
        Ok(())
    }

    /// Runs the statement; the result streams, one DuckDB chunk per batch.
    pub fn execute(self) -> Result<Rows<'c>> {
        let schema = self.schema()?;
        let options = self.connection.arrow_options();
        // SAFETY: an all-zero result is the documented initial state.
        let mut result = unsafe { std::mem::zeroed::<ffi::duckdb_result>() };
        // SAFETY: a prepared statement with every parameter bound; DuckDB fills `result`.
        let state = unsafe { ffi::duckdb_execute_prepared_streaming(self.raw, &mut result) };
        let rows = Rows {
            _prepared: self,
            result,
            options,
            schema,
        };
        if state != ffi::DuckDBSuccess {
            let mut rows = rows;
            // SAFETY: the failed result holds its message until it is destroyed.
            let message = unsafe { ffi::duckdb_result_error(&mut rows.result) };
            return Err(Error(if message.is_null() {
                "DuckDB could not run the statement".to_string()
            } else {
                // SAFETY: as above.
                unsafe { CStr::from_ptr(message) }
                    .to_string_lossy()
                    .into_owned()
            }));
        }
        Ok(rows)
    }
}

/// A running statement's result.
pub struct Rows<'p> {
    _prepared: Prepared<'p>,
    result: ffi::duckdb_result,
    options: ArrowOptions,
    schema: SchemaRef,
}

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        // SAFETY: filled by `duckdb_execute_prepared_streaming`, destroyed once.
        unsafe { ffi::duckdb_destroy_result(&mut self.result) };
    }
}

impl Rows<'_> {
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: a streaming result; a null chunk ends it (or reports an error, read below).
        let mut chunk = unsafe { ffi::duckdb_fetch_chunk(self.result) };
        if chunk.is_null() {
            // SAFETY: the result's error message, if any, lives until it is destroyed.
            let message = unsafe { ffi::duckdb_result_error(&mut self.result) };
            if message.is_null() {
                return None;
            }
            // SAFETY: as above.
            let text = unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned();
            return Some(Err(Error(text)));
        }
        let mut array = FFI_ArrowArray::empty();
        // SAFETY: a live chunk converted into `array`, which then owns its buffers; the
        // chunk is destroyed once.
        let converted = unsafe {
            let converted = check_error(ffi::duckdb_data_chunk_to_arrow(
                self.options.0,
                chunk,
                ptr::from_mut(&mut array).cast(),
            ));
            ffi::duckdb_destroy_data_chunk(&mut chunk);
            converted
        };
        if let Err(e) = converted {
            return Some(Err(Error(e)));
        }
        Some(self.import(array))
    }
}

impl Rows<'_> {
    fn import(&self, array: FFI_ArrowArray) -> Result<RecordBatch> {
        let schema = FFI_ArrowSchema::try_from(arrow::datatypes::DataType::Struct(
            self.schema.fields().clone(),
        ))
        .map_err(|e| Error(e.to_string()))?;
        // SAFETY: DuckDB wrote a struct array of the result's columns, described by `schema`.
        let data = unsafe { from_ffi(array, &schema) }.map_err(|e| Error(e.to_string()))?;
        let columns = StructArray::from(data).into_parts().1;
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| Error(e.to_string()))
    }
}

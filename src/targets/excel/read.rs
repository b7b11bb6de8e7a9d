//! Reads a workbook back to the asset's recorded Arrow types. calamine needs the whole file
//! at hand (it is a ZIP archive), so the stored object is copied to a local temporary file
//! first; its sheets are then streamed cell by cell on a blocking thread, in batches, through
//! a bounded channel.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_cast::CastOptions;
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use calamine::{DataRef, Reader, Xlsx};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::cells::{
    from_millis, millis_of_serial, nanos_per, parse_date, parse_time, parse_timestamp,
    time_millis_of_serial,
};
use super::write::anonymous_file;
use crate::error::{Error, Result};
use crate::targets::SendableBatchStream;
use crate::targets::file::PinnedObject;

/// Rows per batch read back.
const READ_BATCH_ROWS: usize = 8 * 1024;

/// One cell's value, before it becomes its column's type.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    fn of(cell: &DataRef<'_>) -> Result<Self, String> {
        Ok(match cell {
            DataRef::Empty => Self::Null,
            DataRef::Int(i) => Self::Int(*i),
            DataRef::Float(f) => Self::Number(*f),
            DataRef::DateTime(d) => Self::Number(d.as_f64()),
            DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => {
                Self::Text(s.clone())
            }
            DataRef::SharedString(s) => Self::Text(s.to_string()),
            DataRef::Bool(b) => Self::Bool(*b),
            DataRef::Error(e) => return Err(format!("an error cell ({e})")),
        })
    }
}

/// Streams every sheet of a stored workbook, in order, as batches of `schema` projected.
pub(crate) async fn read(
    object: PinnedObject,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
) -> Result<SendableBatchStream> {
    let target = object.target().to_string();
    let copy_failed =
        |e: std::io::Error| Error::storage(&target, "copying a workbook to read it", e);
    let mut local = anonymous_file().map_err(copy_failed)?;
    let mut file = tokio::fs::File::from_std(local.try_clone().map_err(copy_failed)?);
    let mut bytes = object.stream(None).await?;
    while let Some(chunk) = bytes.next().await {
        file.write_all(&chunk?).await.map_err(copy_failed)?;
    }
    file.flush().await.map_err(copy_failed)?;
    drop(file);
    local.seek(SeekFrom::Start(0)).map_err(copy_failed)?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let columns = projection.unwrap_or_else(|| (0..schema.fields().len()).collect());
        let sheets = Sheets {
            target,
            schema,
            columns,
            tx,
        };
        if let Err(e) = sheets.read(local) {
            let _ = sheets.tx.blocking_send(Err(e));
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

struct Sheets {
    target: String,
    schema: SchemaRef,
    /// Indices into `schema` of the columns to return, in order.
    columns: Vec<usize>,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
}

/// The reader went away; reading stops.
struct Gone;

impl Sheets {
    fn failed(&self, action: &str, e: impl Into<crate::error::BoxError>) -> Error {
        Error::format(&self.target, action, e)
    }

    fn read(&self, local: std::fs::File) -> Result<()> {
        let mut xlsx = Xlsx::new(std::io::BufReader::new(local))
            .map_err(|e| self.failed("open a workbook", e))?;
        // Sheet column -> position among the columns read, for the columns asked for.
        let mut slot = vec![None; self.schema.fields().len()];
        for (i, &column) in self.columns.iter().enumerate() {
            slot[column].get_or_insert(i);
        }
        let mut rows = Rows::new(self.columns.len());
        for name in xlsx.sheet_names() {
            let mut cells = xlsx
                .worksheet_cells_reader(&name)
                .map_err(|e| self.failed("open a sheet", e))?;
            // Rows of nulls have one blank cell, which marks the extent but is not reported.
            let mut last = cells.dimensions().end.0;
            let mut current = 1;
            while let Some(cell) = cells
                .next_cell()
                .map_err(|e| self.failed("read a sheet", e))?
            {
                let (row, col) = cell.get_position();
                if row == 0 {
                    continue;
                }
                last = last.max(row);
                while current < row {
                    if rows.end_row(self).is_err() {
                        return Ok(());
                    }
                    current += 1;
                }
                if let Some(Some(i)) = slot.get(col as usize) {
                    rows.pending[*i] = Value::of(cell.get_value()).map_err(|problem| {
                        self.failed(
                            "read a sheet",
                            format!(
                                "sheet '{name}' row {} column '{}' holds {problem}",
                                row + 1,
                                self.schema.field(self.columns[*i]).name()
                            ),
                        )
                    })?;
                }
            }
            while current <= last {
                if rows.end_row(self).is_err() {
                    return Ok(());
                }
                current += 1;
            }
        }
        if rows.count > 0 || !rows.sent {
            let batch = rows.take(self)?;
            let _ = self.tx.blocking_send(Ok(batch));
        }
        Ok(())
    }

    /// The batch of `values`, one vector per column read.
    fn batch(&self, values: Vec<Vec<Value>>, count: usize) -> Result<RecordBatch> {
        let schema = Arc::new(
            self.schema
                .project(&self.columns)
                .map_err(|e| Error::internal(e.to_string()))?,
        );
        let arrays = values
            .into_iter()
            .zip(schema.fields())
            .map(|(values, field)| {
                column(values, field).map_err(|problem| {
                    self.failed(
                        "read a sheet",
                        format!("column '{}' {problem}", field.name()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new_with_options(
            schema,
            arrays,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(count)),
        )
        .map_err(|e| self.failed("read a sheet", e))
    }
}

/// The rows of the batch being filled.
struct Rows {
    values: Vec<Vec<Value>>,
    /// The row being read.
    pending: Vec<Value>,
    count: usize,
    /// Whether a batch went out, so an empty asset still yields one (empty) batch.
    sent: bool,
}

impl Rows {
    fn new(columns: usize) -> Self {
        Self {
            values: vec![Vec::with_capacity(READ_BATCH_ROWS); columns],
            pending: vec![Value::Null; columns],
            count: 0,
            sent: false,
        }
    }

    /// Ends the row being read; sends the batch once it is full.
    fn end_row(&mut self, sheets: &Sheets) -> Result<(), Gone> {
        for (values, value) in self.values.iter_mut().zip(&mut self.pending) {
            values.push(std::mem::replace(value, Value::Null));
        }
        self.count += 1;
        if self.count == READ_BATCH_ROWS {
            let batch = self.take(sheets);
            let failed = batch.is_err();
            sheets.tx.blocking_send(batch).map_err(|_| Gone)?;
            if failed {
                return Err(Gone);
            }
        }
        Ok(())
    }

    fn take(&mut self, sheets: &Sheets) -> Result<RecordBatch> {
        let values = self
            .values
            .iter_mut()
            .map(|v| std::mem::replace(v, Vec::with_capacity(READ_BATCH_ROWS)))
            .collect();
        let count = std::mem::take(&mut self.count);
        self.sent = true;
        sheets.batch(values, count)
    }
}

/// A column of cell values as `field`'s type.
fn column(values: Vec<Value>, field: &Field) -> Result<ArrayRef, String> {
    use DataType::*;
    let to = field.data_type();
    let wrong = |v: &Value| format!("holds {v:?}, which is not a {to}");
    let exact = |f: f64| (f.fract() == 0.0 && f.abs() < 9.3e18).then_some(f as i64);
    let array: ArrayRef = match to {
        Null => return Ok(Arc::new(arrow_array::NullArray::new(values.len()))),
        Boolean => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Bool(b) => Ok(Some(*b)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<BooleanArray, _>>()?,
        ),
        Int8 | Int16 | Int32 | Int64 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => Ok(Some(*i)),
                    Value::Number(f) => exact(*f).map(Some).ok_or_else(|| wrong(v)),
                    Value::Text(s) => s.parse().map(Some).map_err(|_| wrong(v)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<Int64Array, _>>()?,
        ),
        UInt8 | UInt16 | UInt32 | UInt64 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => u64::try_from(*i).map(Some).map_err(|_| wrong(v)),
                    Value::Number(f) if *f >= 0.0 => {
                        exact(*f).map(|i| Some(i as u64)).ok_or_else(|| wrong(v))
                    }
                    Value::Text(s) => s.parse().map(Some).map_err(|_| wrong(v)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<arrow_array::UInt64Array, _>>()?,
        ),
        Float16 | Float32 | Float64 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => Ok(Some(*i as f64)),
                    Value::Number(f) => Ok(Some(*f)),
                    Value::Text(s) => s.parse().map(Some).map_err(|_| wrong(v)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<Float64Array, _>>()?,
        ),
        Utf8 | LargeUtf8 | Utf8View | Dictionary(_, _) | Decimal128(_, _) | Decimal256(_, _) => {
            Arc::new(
                values
                    .into_iter()
                    .map(|v| match v {
                        Value::Null => None,
                        Value::Int(i) => Some(i.to_string()),
                        Value::Number(f) => Some(f.to_string()),
                        Value::Text(s) => Some(s),
                        Value::Bool(b) => Some(if b { "TRUE" } else { "FALSE" }.to_string()),
                    })
                    .collect::<StringArray>(),
            )
        }
        Date32 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Number(f) => Ok(Some(millis_of_serial(*f).div_euclid(86_400_000))),
                    Value::Text(s) => parse_date(s)
                        .map(|d| Some(i64::from(d)))
                        .ok_or_else(|| wrong(v)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<Int64Array, _>>()?,
        ),
        Date64 | Timestamp(_, _) => {
            let unit = match to {
                Timestamp(unit, _) => *unit,
                _ => TimeUnit::Millisecond,
            };
            Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Value::Null => Ok(None),
                        Value::Number(f) => from_millis(millis_of_serial(*f), unit)
                            .map(Some)
                            .ok_or_else(|| wrong(v)),
                        Value::Text(s) => {
                            parse_timestamp(s, unit).map(Some).ok_or_else(|| wrong(v))
                        }
                        other => Err(wrong(other)),
                    })
                    .collect::<Result<Int64Array, _>>()?,
            )
        }
        Time32(unit) | Time64(unit) => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Number(f) => from_millis(time_millis_of_serial(*f), *unit)
                        .map(Some)
                        .ok_or_else(|| wrong(v)),
                    Value::Text(s) => parse_time(s)
                        .map(|n| Some(n / nanos_per(*unit)))
                        .ok_or_else(|| wrong(v)),
                    other => Err(wrong(other)),
                })
                .collect::<Result<Int64Array, _>>()?,
        ),
        other => {
            return Err(format!(
                "has type {other}, which the excel target does not store"
            ));
        }
    };
    restore(array, to)
}

/// Casts a column built as one of the wide types above to the stored type; a value that does
/// not fit is an error, never a null.
fn restore(array: ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    if array.data_type() == to {
        return Ok(array);
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = |array: &ArrayRef, to: &DataType| {
        arrow_cast::cast_with_options(array, to, &options).map_err(|e| e.to_string())
    };
    match to {
        DataType::Date32 | DataType::Time32(_) => cast(&cast(&array, &DataType::Int32)?, to),
        _ => cast(&array, to),
    }
}

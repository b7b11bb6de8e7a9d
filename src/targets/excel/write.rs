//! Writes batches into a workbook row by row, in rust_xlsxwriter's constant-memory mode: each
//! finished row goes to a temporary file, so memory stays flat however many rows arrive. The
//! workbook (a ZIP archive) is assembled on local disk at the end and handed to the upload in
//! parts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use rust_xlsxwriter::{Format, Formula, Workbook, Worksheet, XlsxError};

use super::cells::{
    self, MAX_DECIMAL_DIGITS, MAX_EXACT_INTEGER, MAX_TEXT, date_text, serial_of_millis,
    serial_of_time, significant_digits, text_len, time_text, timestamp_text, to_millis,
};
use super::options::SheetOptions;
use crate::error::{Error, Result};
use crate::targets::file::{Encoder, SharedBuffer};

/// Bytes of the finished workbook handed to the upload at a time.
const PART_BYTES: usize = 8 << 20;
/// Rows of the first batch measured for column widths.
const WIDTH_SAMPLE_ROWS: usize = 1000;
/// Column widths, in characters.
const MIN_WIDTH: f64 = 8.0;
const MAX_WIDTH: f64 = 60.0;

/// The cell formats a workbook uses.
struct Styles {
    header: Format,
    date: Format,
    datetime: Format,
    datetime_ms: Format,
    time: Format,
    time_ms: Format,
    /// Marks a row whose every value is null, so the row is still there when read back.
    null_row: Format,
}

impl Styles {
    fn new() -> Self {
        Self {
            header: Format::new().set_bold(),
            date: Format::new().set_num_format("yyyy-mm-dd"),
            datetime: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            datetime_ms: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss.000"),
            time: Format::new().set_num_format("hh:mm:ss"),
            time_ms: Format::new().set_num_format("hh:mm:ss.000"),
            null_row: Format::new().set_unlocked(),
        }
    }
}

/// One column of a batch, in the shape its cells are written from.
enum Column {
    Null,
    Bool(arrow_array::BooleanArray),
    Int(arrow_array::Int64Array),
    UInt(arrow_array::UInt64Array),
    Float(arrow_array::Float64Array),
    Text(arrow_array::StringArray),
    /// A decimal's exact digits.
    Decimal(arrow_array::StringArray),
    Date(arrow_array::Date32Array),
    /// A timestamp (or Date64) as counts of `unit` since 1970-01-01.
    Moment {
        values: arrow_array::Int64Array,
        unit: TimeUnit,
        date_only: bool,
    },
    /// A time of day as counts of `unit` since midnight.
    Time {
        values: arrow_array::Int64Array,
        unit: TimeUnit,
    },
}

fn cast(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    arrow_cast::cast(array, to).map_err(|e| Error::internal(format!("casting to {to}: {e}")))
}

impl Column {
    fn new(array: &ArrayRef) -> Result<Self> {
        use DataType::*;
        let counts = |array: &ArrayRef| -> Result<arrow_array::Int64Array> {
            let array = match array.data_type() {
                Time32(_) => cast(array, &Int32)?,
                _ => ArrayRef::clone(array),
            };
            Ok(cast(&array, &Int64)?.as_primitive::<Int64Type>().clone())
        };
        Ok(match array.data_type() {
            Null => Self::Null,
            Boolean => Self::Bool(array.as_boolean().clone()),
            Int8 | Int16 | Int32 | Int64 => {
                Self::Int(cast(array, &Int64)?.as_primitive::<Int64Type>().clone())
            }
            UInt8 | UInt16 | UInt32 | UInt64 => {
                Self::UInt(cast(array, &UInt64)?.as_primitive::<UInt64Type>().clone())
            }
            Float16 | Float32 | Float64 => {
                Self::Float(cast(array, &Float64)?.as_primitive::<Float64Type>().clone())
            }
            Decimal128(_, _) | Decimal256(_, _) => {
                Self::Decimal(cast(array, &Utf8)?.as_string::<i32>().clone())
            }
            Date32 => Self::Date(array.as_primitive().clone()),
            Date64 => Self::Moment {
                values: counts(array)?,
                unit: TimeUnit::Millisecond,
                date_only: true,
            },
            Timestamp(unit, _) => Self::Moment {
                values: counts(array)?,
                unit: *unit,
                date_only: false,
            },
            Time32(unit) | Time64(unit) => Self::Time {
                values: counts(array)?,
                unit: *unit,
            },
            _ => Self::Text(cast(array, &Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// How wide the text of row `i` is, for the column width.
    fn width(&self, i: usize) -> usize {
        match self {
            Self::Null => 0,
            Self::Bool(_) => 5,
            Self::Int(a) => a.value(i).to_string().len(),
            Self::UInt(a) => a.value(i).to_string().len(),
            Self::Float(a) => a.value(i).to_string().len().min(16),
            Self::Text(a) | Self::Decimal(a) => a.value(i).chars().count(),
            Self::Date(_) => 10,
            Self::Moment {
                unit, date_only, ..
            } => match (date_only, unit) {
                (true, _) => 10,
                (false, TimeUnit::Second) => 19,
                (false, _) => 23,
            },
            Self::Time { unit, .. } => match unit {
                TimeUnit::Second => 8,
                _ => 12,
            },
        }
    }

    fn is_valid(&self, i: usize) -> bool {
        match self {
            Self::Null => false,
            Self::Bool(a) => a.is_valid(i),
            Self::Int(a) => a.is_valid(i),
            Self::UInt(a) => a.is_valid(i),
            Self::Float(a) => a.is_valid(i),
            Self::Text(a) | Self::Decimal(a) => a.is_valid(i),
            Self::Date(a) => a.is_valid(i),
            Self::Moment { values, .. } | Self::Time { values, .. } => values.is_valid(i),
        }
    }
}

/// Why a value cannot be written, naming its column.
fn refuse(column: &str, problem: &str) -> Error {
    Error::invalid_data(format!("column '{column}' {problem}"))
}

/// The workbook a put is writing.
pub(crate) struct ExcelEncoder {
    target: String,
    schema: SchemaRef,
    options: SheetOptions,
    workbook: Workbook,
    styles: Styles,
    /// Column widths, from the first batch.
    widths: Option<Vec<f64>>,
    /// Sheets started so far; the last one is being filled.
    sheets: u32,
    /// Data rows in the sheet being filled.
    rows: u32,
    out: SharedBuffer,
    /// The finished workbook on local disk, being handed to the upload.
    spill: Option<File>,
}

impl ExcelEncoder {
    pub(crate) fn new(
        target: &str,
        schema: SchemaRef,
        options: SheetOptions,
        out: SharedBuffer,
    ) -> Self {
        Self {
            target: target.to_string(),
            schema,
            options,
            workbook: Workbook::new(),
            styles: Styles::new(),
            widths: None,
            sheets: 0,
            rows: 0,
            out,
            spill: None,
        }
    }

    fn failed(&self, action: &str, e: XlsxError) -> Error {
        Error::format(&self.target, action, e)
    }

    fn sheet(&mut self) -> Result<&mut Worksheet> {
        let index = self.sheets as usize - 1;
        let target = self.target.clone();
        self.workbook
            .worksheet_from_index(index)
            .map_err(|e| Error::format(target, "find the sheet being written", e))
    }

    /// Column widths from the header and the first rows: wide enough for the values the
    /// first batch holds, within [`MIN_WIDTH`] and [`MAX_WIDTH`].
    fn measure(&mut self, columns: &[Column], rows: usize) {
        let widths = self
            .schema
            .fields()
            .iter()
            .zip(columns)
            .map(|(field, column)| {
                // The header also shows the autofilter's button.
                let header = field.name().chars().count() + 3;
                let widest = (0..rows.min(WIDTH_SAMPLE_ROWS))
                    .filter(|&i| column.is_valid(i))
                    .map(|i| column.width(i))
                    .max()
                    .unwrap_or(0);
                (header.max(widest) as f64 + 1.0).clamp(MIN_WIDTH, MAX_WIDTH)
            })
            .collect();
        self.widths = Some(widths);
    }

    /// Closes the sheet being filled and starts the next, with its header row.
    fn start_sheet(&mut self) -> Result<()> {
        if let Some(max) = self.options.max_sheets
            && self.sheets >= max
        {
            return Err(Error::invalid_data(format!(
                "the put has more rows than {max} sheet(s) of {} rows hold (option \
                 max_sheets); raise max_sheets or sheet_rows, or send fewer rows",
                self.options.sheet_rows
            )));
        }
        self.close_sheet()?;
        let name = self.options.sheet_name(self.sheets);
        let schema = SchemaRef::clone(&self.schema);
        let widths = self.widths.clone().unwrap_or_default();
        let freeze = self.options.freeze;
        let header = self.styles.header.clone();
        let sheet = self
            .workbook
            .add_worksheet_with_constant_memory()
            .map_err(|e| Error::format(&self.target, "start a sheet", e))?;
        (|| {
            sheet.set_name(&name)?;
            // The formula that stands for an empty string caches "" as its value.
            sheet.set_formula_result_default("");
            for (col, width) in widths.iter().enumerate() {
                sheet.set_column_width(col as u16, *width)?;
            }
            if freeze {
                sheet.set_freeze_panes(1, 0)?;
            }
            for (col, field) in schema.fields().iter().enumerate() {
                if field.name().is_empty() {
                    sheet.write_blank(0, col as u16, &header)?;
                } else {
                    sheet.write_string_with_format(0, col as u16, field.name(), &header)?;
                }
            }
            Ok::<_, XlsxError>(())
        })()
        .map_err(|e| self.failed("start a sheet", e))?;
        self.sheets += 1;
        self.rows = 0;
        Ok(())
    }

    /// Puts the autofilter over the sheet being filled, now that its last row is known.
    fn close_sheet(&mut self) -> Result<()> {
        if self.sheets == 0 || !self.options.autofilter {
            return Ok(());
        }
        let (rows, last_col) = (self.rows, self.schema.fields().len() as u16 - 1);
        let target = self.target.clone();
        self.sheet()?
            .autofilter(0, 0, rows, last_col)
            .map(|_| ())
            .map_err(|e| Error::format(target, "set the autofilter", e))
    }

    /// Writes rows `range` of `columns` below the last row of the sheet being filled, which
    /// has room for them.
    fn write_rows(&mut self, columns: &[Column], range: std::ops::Range<usize>) -> Result<()> {
        let index = self.sheets as usize - 1;
        let Self {
            workbook,
            styles,
            schema,
            target,
            rows,
            ..
        } = self;
        let target = target.as_str();
        let sheet = workbook
            .worksheet_from_index(index)
            .map_err(|e| Error::format(target, "find the sheet being written", e))?;
        for i in range {
            *rows += 1;
            let row = *rows;
            let mut written = false;
            for (col, (column, field)) in columns.iter().zip(schema.fields()).enumerate() {
                if !column.is_valid(i) {
                    continue;
                }
                written = true;
                write_cell(sheet, styles, row, col as u16, column, i, field.name()).map_err(
                    |e| match e {
                        CellError::Refused(e) => e,
                        CellError::Xlsx(e) => Error::format(target, "write a cell", e),
                    },
                )?;
            }
            if !written {
                sheet
                    .write_blank(row, 0, &styles.null_row)
                    .map_err(|e| Error::format(target, "write a row of nulls", e))?;
            }
        }
        Ok(())
    }
}

enum CellError {
    Refused(Error),
    Xlsx(XlsxError),
}

impl From<XlsxError> for CellError {
    fn from(e: XlsxError) -> Self {
        Self::Xlsx(e)
    }
}

/// Writes one non-null value.
fn write_cell(
    sheet: &mut Worksheet,
    styles: &Styles,
    row: u32,
    col: u16,
    column: &Column,
    i: usize,
    name: &str,
) -> Result<(), CellError> {
    match column {
        Column::Null => {}
        Column::Bool(a) => {
            sheet.write_boolean(row, col, a.value(i))?;
        }
        Column::Int(a) => {
            let v = a.value(i);
            if v.unsigned_abs() <= MAX_EXACT_INTEGER {
                sheet.write_number(row, col, v as f64)?;
            } else {
                sheet.write_string(row, col, v.to_string())?;
            }
        }
        Column::UInt(a) => {
            let v = a.value(i);
            if v <= MAX_EXACT_INTEGER {
                sheet.write_number(row, col, v as f64)?;
            } else {
                sheet.write_string(row, col, v.to_string())?;
            }
        }
        Column::Float(a) => {
            let v = a.value(i);
            if !v.is_finite() {
                return Err(CellError::Refused(refuse(
                    name,
                    &format!(
                        "holds {v}, which an Excel cell cannot; replace NaN and infinities \
                         (with nulls, say) before the put"
                    ),
                )));
            }
            sheet.write_number(row, col, v)?;
        }
        Column::Text(a) => {
            let v = a.value(i);
            if v.is_empty() {
                // Excel has no empty text cell; this formula shows and reads as "".
                sheet.write_formula(row, col, Formula::new("=\"\"").set_result(""))?;
            } else if text_len(v) > MAX_TEXT {
                return Err(CellError::Refused(refuse(
                    name,
                    &format!(
                        "holds text of {} characters; an Excel cell holds at most {MAX_TEXT}",
                        text_len(v)
                    ),
                )));
            } else {
                sheet.write_string(row, col, v)?;
            }
        }
        Column::Decimal(a) => {
            let v = a.value(i);
            match v.parse::<f64>() {
                Ok(n) if significant_digits(v) <= MAX_DECIMAL_DIGITS => {
                    sheet.write_number(row, col, n)?;
                }
                _ => {
                    sheet.write_string(row, col, v)?;
                }
            }
        }
        Column::Date(a) => {
            let days = a.value(i);
            match serial_of_millis(i64::from(days) * 86_400_000) {
                Some(serial) => {
                    sheet.write_number_with_format(row, col, serial, &styles.date)?;
                }
                None => {
                    sheet.write_string(row, col, date_text(days))?;
                }
            }
        }
        Column::Moment {
            values,
            unit,
            date_only,
        } => {
            let v = values.value(i);
            match to_millis(v, *unit).and_then(serial_of_millis) {
                Some(serial) => {
                    let format = match (date_only, unit) {
                        (true, _) if serial.fract() == 0.0 => &styles.date,
                        (false, TimeUnit::Second) => &styles.datetime,
                        _ => &styles.datetime_ms,
                    };
                    sheet.write_number_with_format(row, col, serial, format)?;
                }
                None => {
                    sheet.write_string(row, col, timestamp_text(v, *unit))?;
                }
            }
        }
        Column::Time { values, unit } => {
            let v = values.value(i);
            match to_millis(v, *unit) {
                Some(ms) => {
                    let format = match unit {
                        TimeUnit::Second => &styles.time,
                        _ => &styles.time_ms,
                    };
                    sheet.write_number_with_format(row, col, serial_of_time(ms), format)?;
                }
                None => {
                    sheet.write_string(row, col, time_text(v * cells::nanos_per(*unit)))?;
                }
            }
        }
    }
    Ok(())
}

impl Encoder for ExcelEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns = batch
            .columns()
            .iter()
            .map(Column::new)
            .collect::<Result<Vec<_>>>()?;
        if self.widths.is_none() {
            self.measure(&columns, batch.num_rows());
        }
        let mut start = 0;
        while start < batch.num_rows() {
            if self.sheets == 0 || self.rows >= self.options.sheet_rows {
                self.start_sheet()?;
            }
            let room = (self.options.sheet_rows - self.rows) as usize;
            let end = batch.num_rows().min(start + room);
            self.write_rows(&columns, start..end)?;
            start = end;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.sheets == 0 {
            self.start_sheet()?;
        }
        self.close_sheet()?;
        let spilled = |e: std::io::Error| {
            Error::storage(
                &self.target,
                "spilling the workbook to the temporary directory",
                e,
            )
        };
        let mut file = anonymous_file().map_err(spilled)?;
        self.workbook
            .save_to_writer(&mut file)
            .map_err(|e| Error::format(&self.target, "assemble the workbook", e))?;
        file.seek(SeekFrom::Start(0)).map_err(spilled)?;
        self.spill = Some(file);
        Ok(())
    }

    fn next_part(&mut self) -> Result<()> {
        let Some(file) = self.spill.as_mut() else {
            return Ok(());
        };
        let mut part = Vec::with_capacity(PART_BYTES);
        let read = Read::by_ref(file)
            .take(PART_BYTES as u64)
            .read_to_end(&mut part)
            .map_err(|e| Error::storage(&self.target, "reading the spilled workbook", e))?;
        if read == 0 {
            self.spill = None;
        } else {
            self.out
                .write_all(&part)
                .map_err(|e| Error::internal(e.to_string()))?;
        }
        Ok(())
    }
}

/// A new file in the system's temporary directory whose name is already gone: only the
/// handle reaches it, so nothing is left behind however the server stops.
pub(crate) fn anonymous_file() -> std::io::Result<File> {
    let path = std::env::temp_dir().join(format!("quiver-excel-{}.xlsx", uuid::Uuid::new_v4()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

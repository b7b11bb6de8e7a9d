//! PostgreSQL's binary COPY format, to and from Arrow.
//!
//! Encoding works a column at a time: each column is converted once into PostgreSQL's binary
//! representation (strings and bytes are not copied at all), then the rows are interleaved
//! into one buffer per batch. Decoding appends each field to a per-column builder and converts
//! the finished columns to the catalog's Arrow types.
//!
//! Format: a header (`PGCOPY\n\xff\r\n\0`, flags, extension length), then per row an `i16`
//! field count and per field an `i32` length (`-1` for NULL) and the value, then `-1i16`.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{
    Array, ArrayRef, Decimal128Array, Decimal256Array, NullArray, PrimitiveArray, RecordBatch,
    UInt64Array, new_null_array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer, i256};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};

use super::types::PgType;

/// The header of a binary COPY stream: signature, flags, no extension.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary COPY stream.
pub const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const JSONB_VERSION: u8 = 1;

const CAST: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow_cast::display::FormatOptions::new(),
};

/// One column in PostgreSQL's binary representation.
struct Encoded {
    nulls: Option<NullBuffer>,
    values: Values,
}

enum Values {
    /// Every value has `width` bytes; row `i` is at `i * width`.
    Fixed { bytes: Vec<u8>, width: usize },
    /// Row `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    Var {
        bytes: Buffer,
        offsets: OffsetBuffer<i32>,
    },
    /// Every row is NULL.
    Null,
}

/// Encodes a batch as binary COPY rows (no header or trailer). Errors name the column.
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| {
            encode_column(array).map_err(|reason| format!("column '{}': {reason}", field.name()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rows = batch.num_rows();
    let field_count = i16::try_from(columns.len())
        .map_err(|_| "PostgreSQL rows hold at most 1664 columns".to_string())?
        .to_be_bytes();
    let payload: usize = columns
        .iter()
        .map(|c| match &c.values {
            Values::Fixed { bytes, .. } => bytes.len(),
            Values::Var { offsets, .. } => {
                (offsets[offsets.len() - 1] - offsets[0]).max(0) as usize
            }
            Values::Null => 0,
        })
        .sum();
    let mut out = Vec::with_capacity(payload + rows * (2 + 4 * columns.len()));
    for row in 0..rows {
        out.extend_from_slice(&field_count);
        for column in &columns {
            if column.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            match &column.values {
                Values::Fixed { bytes, width } => {
                    out.extend_from_slice(&(*width as i32).to_be_bytes());
                    out.extend_from_slice(&bytes[row * width..(row + 1) * width]);
                }
                Values::Var { bytes, offsets } => {
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    out.extend_from_slice(&((end - start) as i32).to_be_bytes());
                    out.extend_from_slice(&bytes[start..end]);
                }
                Values::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    }
    Ok(out)
}

fn fixed<T: ArrowPrimitiveType, const N: usize>(
    array: &dyn Array,
    encode: impl Fn(T::Native) -> Result<[u8; N], String>,
) -> Result<Encoded, String> {
    let array = array.as_primitive::<T>();
    let mut bytes = Vec::with_capacity(array.len() * N);
    for (i, v) in array.values().iter().enumerate() {
        if array.is_valid(i) {
            bytes.extend_from_slice(&encode(*v)?);
        } else {
            bytes.extend_from_slice(&[0; N]);
        }
    }
    Ok(Encoded {
        nulls: array.nulls().cloned(),
        values: Values::Fixed { bytes, width: N },
    })
}

/// Builds variable-width values with `encode` writing each valid row.
fn var(
    array: &dyn Array,
    mut encode: impl FnMut(usize, &mut Vec<u8>) -> Result<(), String>,
) -> Result<Encoded, String> {
    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity(array.len() + 1);
    offsets.push(0i32);
    for i in 0..array.len() {
        if array.is_valid(i) {
            encode(i, &mut bytes)?;
        }
        offsets.push(
            i32::try_from(bytes.len())
                .map_err(|_| "a batch holds more than 2 GiB of values; send smaller batches")?,
        );
    }
    Ok(Encoded {
        nulls: array.logical_nulls(),
        values: Values::Var {
            bytes: Buffer::from_vec(bytes),
            offsets: OffsetBuffer::new(ScalarBuffer::from(offsets)),
        },
    })
}

/// Microseconds from a value in `unit`, refusing precision PostgreSQL cannot hold.
fn to_micros(value: i64, unit: &TimeUnit) -> Result<i64, String> {
    let micros = match unit {
        TimeUnit::Second => value.checked_mul(1_000_000),
        TimeUnit::Millisecond => value.checked_mul(1_000),
        TimeUnit::Microsecond => Some(value),
        TimeUnit::Nanosecond => {
            if value % 1_000 != 0 {
                return Err(format!(
                    "value {value} ns has a sub-microsecond part, which PostgreSQL cannot hold; \
                     cast the column to microseconds or use a file target"
                ));
            }
            Some(value / 1_000)
        }
    };
    micros.ok_or_else(|| format!("value {value} {unit:?} is out of PostgreSQL's range"))
}

fn from_micros(micros: i64, unit: &TimeUnit) -> Result<i64, String> {
    Ok(match unit {
        TimeUnit::Second => micros / 1_000_000,
        TimeUnit::Millisecond => micros / 1_000,
        TimeUnit::Microsecond => micros,
        TimeUnit::Nanosecond => micros
            .checked_mul(1_000)
            .ok_or_else(|| format!("{micros} µs does not fit nanoseconds"))?,
    })
}

fn timestamp(value: i64, unit: &TimeUnit) -> Result<[u8; 8], String> {
    to_micros(value, unit)?
        .checked_sub(EPOCH_MICROS)
        .map(i64::to_be_bytes)
        .ok_or_else(|| format!("timestamp {value} is out of PostgreSQL's range"))
}

fn interval(value: i64, unit: &TimeUnit) -> Result<[u8; 16], String> {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&to_micros(value, unit)?.to_be_bytes());
    Ok(out)
}

fn encode_column(array: &ArrayRef) -> Result<Encoded, String> {
    use DataType::*;
    let e = |e: arrow_schema::ArrowError| e.to_string();
    Ok(match array.data_type() {
        Dictionary(_, value) => encode_column(&cast_with_options(array, value, &CAST).map_err(e)?)?,
        Null => Encoded {
            nulls: None,
            values: Values::Null,
        },
        Boolean => {
            let array = array.as_boolean();
            Encoded {
                nulls: array.nulls().cloned(),
                values: Values::Fixed {
                    bytes: array.values().iter().map(u8::from).collect(),
                    width: 1,
                },
            }
        }
        Int8 => fixed::<Int8Type, 2>(array, |v| Ok((v as i16).to_be_bytes()))?,
        UInt8 => fixed::<UInt8Type, 2>(array, |v| Ok((v as i16).to_be_bytes()))?,
        Int16 => fixed::<Int16Type, 2>(array, |v| Ok(v.to_be_bytes()))?,
        UInt16 => fixed::<UInt16Type, 4>(array, |v| Ok((v as i32).to_be_bytes()))?,
        Int32 => fixed::<Int32Type, 4>(array, |v| Ok(v.to_be_bytes()))?,
        UInt32 => fixed::<UInt32Type, 8>(array, |v| Ok((v as i64).to_be_bytes()))?,
        Int64 => fixed::<Int64Type, 8>(array, |v| Ok(v.to_be_bytes()))?,
        Float16 => fixed::<Float16Type, 4>(array, |v| Ok(v.to_f32().to_be_bytes()))?,
        Float32 => fixed::<Float32Type, 4>(array, |v| Ok(v.to_be_bytes()))?,
        Float64 => fixed::<Float64Type, 8>(array, |v| Ok(v.to_be_bytes()))?,
        UInt64 => {
            let values = array.as_primitive::<UInt64Type>();
            var(array, |i, out| {
                write_numeric(out, false, &values.value(i).to_string(), 0);
                Ok(())
            })?
        }
        Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s) => {
            let values = cast_with_options(array, &Decimal128(38, *s), &CAST).map_err(e)?;
            let values = values.as_primitive::<Decimal128Type>();
            var(array, |i, out| {
                let v = values.value(i);
                write_numeric(out, v < 0, &v.unsigned_abs().to_string(), *s as u16);
                Ok(())
            })?
        }
        Decimal256(_, s) => {
            let values = array.as_primitive::<Decimal256Type>();
            var(array, |i, out| {
                let v = values.value(i);
                let text = v.wrapping_abs().to_string();
                let digits = text.trim_start_matches('-');
                write_numeric(out, v < i256::ZERO, digits, *s as u16);
                Ok(())
            })?
        }
        Utf8 => {
            let strings = array.as_string::<i32>();
            let used = &strings.values()[strings.value_offsets()[0] as usize
                ..*strings.value_offsets().last().unwrap_or(&0) as usize];
            if used.contains(&0) {
                return Err(
                    "holds a NUL character, which PostgreSQL text cannot store; remove it or \
                     send the column as binary"
                        .into(),
                );
            }
            Encoded {
                nulls: strings.nulls().cloned(),
                values: Values::Var {
                    bytes: strings.values().clone(),
                    offsets: strings.offsets().clone(),
                },
            }
        }
        Binary => {
            let binary = array.as_binary::<i32>();
            Encoded {
                nulls: binary.nulls().cloned(),
                values: Values::Var {
                    bytes: binary.values().clone(),
                    offsets: binary.offsets().clone(),
                },
            }
        }
        LargeUtf8 | Utf8View => encode_column(&cast_with_options(array, &Utf8, &CAST).map_err(e)?)?,
        LargeBinary | BinaryView | FixedSizeBinary(_) => {
            encode_column(&cast_with_options(array, &Binary, &CAST).map_err(e)?)?
        }
        Date32 => fixed::<Date32Type, 4>(array, |d| {
            d.checked_sub(EPOCH_DAYS)
                .map(i32::to_be_bytes)
                .ok_or_else(|| format!("date {d} is out of PostgreSQL's range"))
        })?,
        Date64 => fixed::<Date64Type, 4>(array, |ms| {
            if ms % 86_400_000 != 0 {
                return Err(format!("date64 value {ms} is not a whole day"));
            }
            i32::try_from(ms / 86_400_000)
                .ok()
                .and_then(|d| d.checked_sub(EPOCH_DAYS))
                .map(i32::to_be_bytes)
                .ok_or_else(|| format!("date64 value {ms} is out of PostgreSQL's range"))
        })?,
        Timestamp(TimeUnit::Second, _) => {
            fixed::<TimestampSecondType, 8>(array, |v| timestamp(v, &TimeUnit::Second))?
        }
        Timestamp(TimeUnit::Millisecond, _) => {
            fixed::<TimestampMillisecondType, 8>(array, |v| timestamp(v, &TimeUnit::Millisecond))?
        }
        Timestamp(TimeUnit::Microsecond, _) => {
            fixed::<TimestampMicrosecondType, 8>(array, |v| timestamp(v, &TimeUnit::Microsecond))?
        }
        Timestamp(TimeUnit::Nanosecond, _) => {
            fixed::<TimestampNanosecondType, 8>(array, |v| timestamp(v, &TimeUnit::Nanosecond))?
        }
        Time32(TimeUnit::Second) => fixed::<Time32SecondType, 8>(array, |v| {
            Ok(to_micros(v.into(), &TimeUnit::Second)?.to_be_bytes())
        })?,
        Time32(_) => fixed::<Time32MillisecondType, 8>(array, |v| {
            Ok(to_micros(v.into(), &TimeUnit::Millisecond)?.to_be_bytes())
        })?,
        Time64(TimeUnit::Nanosecond) => fixed::<Time64NanosecondType, 8>(array, |v| {
            Ok(to_micros(v, &TimeUnit::Nanosecond)?.to_be_bytes())
        })?,
        Time64(_) => fixed::<Time64MicrosecondType, 8>(array, |v| Ok(v.to_be_bytes()))?,
        Duration(TimeUnit::Second) => {
            fixed::<DurationSecondType, 16>(array, |v| interval(v, &TimeUnit::Second))?
        }
        Duration(TimeUnit::Millisecond) => {
            fixed::<DurationMillisecondType, 16>(array, |v| interval(v, &TimeUnit::Millisecond))?
        }
        Duration(TimeUnit::Microsecond) => {
            fixed::<DurationMicrosecondType, 16>(array, |v| interval(v, &TimeUnit::Microsecond))?
        }
        Duration(TimeUnit::Nanosecond) => {
            fixed::<DurationNanosecondType, 16>(array, |v| interval(v, &TimeUnit::Nanosecond))?
        }
        List(_) | LargeList(_) | FixedSizeList(_, _) | Struct(_) | Map(_, _) => {
            let field: FieldRef = Arc::new(Field::new("v", array.data_type().clone(), true));
            let options = arrow_json::writer::EncoderOptions::default();
            let mut encoder =
                arrow_json::writer::make_encoder(&field, array.as_ref(), &options).map_err(e)?;
            var(array, |i, out| {
                out.push(JSONB_VERSION);
                encoder.encode(i, out);
                Ok(())
            })?
        }
        other => return Err(format!("PostgreSQL has no exact type for {other}")),
    })
}

/// Writes a `numeric` from its unscaled decimal digits (no sign) and scale.
fn write_numeric(out: &mut Vec<u8>, negative: bool, digits: &str, scale: u16) {
    let scale_len = scale as usize;
    let digits = digits.as_bytes();
    // Integer and fraction digits, the fraction left-padded to `scale` digits.
    let int_len = digits.len().saturating_sub(scale_len);
    let (int, frac_raw) = digits.split_at(int_len);
    let mut groups: Vec<i16> = Vec::with_capacity(digits.len() / 4 + 2);
    let int_pad = (4 - int.len() % 4) % 4;
    let mut acc = 0i16;
    for (i, d) in std::iter::repeat_n(b'0', int_pad)
        .chain(int.iter().copied())
        .enumerate()
    {
        acc = acc * 10 + (d - b'0') as i16;
        if i % 4 == 3 {
            groups.push(acc);
            acc = 0;
        }
    }
    let mut weight = groups.len() as i16 - 1;
    let frac =
        std::iter::repeat_n(b'0', scale_len - frac_raw.len()).chain(frac_raw.iter().copied());
    let mut count = 0;
    for d in frac {
        acc = acc * 10 + (d - b'0') as i16;
        count += 1;
        if count % 4 == 0 {
            groups.push(acc);
            acc = 0;
        }
    }
    if count % 4 != 0 {
        for _ in count % 4..4 {
            acc *= 10;
        }
        groups.push(acc);
    }
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let sign = if negative && !groups.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        0
    };
    if groups.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// Reads a `numeric` as its unscaled decimal digits at `scale`, with a sign.
fn read_numeric(bytes: &[u8], scale: u16) -> Result<String, String> {
    let word = |i: usize| -> Result<i16, String> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric value".to_string())
    };
    let ndigits = word(0)?.max(0) as usize;
    let weight = word(1)? as i32;
    let sign = word(2)? as u16;
    if sign == NUMERIC_NAN {
        return Err("NaN cannot be read into an Arrow decimal".into());
    }
    let digit = |i: i32| -> Result<i16, String> {
        if i < 0 || i as usize >= ndigits {
            Ok(0)
        } else {
            word(4 + i as usize)
        }
    };
    let frac_groups = (scale as i32 + 3) / 4;
    let mut text = String::with_capacity(((weight.max(0) + 1 + frac_groups) * 4) as usize + 1);
    if sign == NUMERIC_NEGATIVE {
        text.push('-');
    }
    let mut int = String::new();
    for position in (0..=weight.max(0)).rev() {
        int.push_str(&format!("{:04}", digit(weight - position)?));
    }
    let int = int.trim_start_matches('0');
    text.push_str(int);
    let mut frac = String::new();
    for position in 1..=frac_groups {
        frac.push_str(&format!("{:04}", digit(weight + position)?));
    }
    text.push_str(&frac[..scale as usize]);
    if text.is_empty() || text == "-" {
        text.push('0');
    }
    Ok(text)
}

/// Collects the rows of a COPY stream into one column per field.
pub struct Decoder {
    schema: SchemaRef,
    columns: Vec<ColumnDecoder>,
    rows: usize,
}

enum ColumnDecoder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    /// Numerics as unscaled digit strings, parsed when the column finishes.
    Numeric(StringBuilder, u16),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Int32Builder),
    /// Timestamps, times and intervals in microseconds.
    Micros(Int64Builder),
    Json(StringBuilder),
    Null(usize),
}

impl ColumnDecoder {
    fn new(data_type: &DataType) -> Result<Self, String> {
        let value = match data_type {
            DataType::Dictionary(_, value) => value.as_ref(),
            other => other,
        };
        if value == &DataType::Null {
            return Ok(Self::Null(0));
        }
        Ok(match PgType::of(value)? {
            PgType::Bool => Self::Bool(BooleanBuilder::new()),
            PgType::Int2 => Self::I16(Int16Builder::new()),
            PgType::Int4 => Self::I32(Int32Builder::new()),
            PgType::Int8 => Self::I64(Int64Builder::new()),
            PgType::Float4 => Self::F32(Float32Builder::new()),
            PgType::Float8 => Self::F64(Float64Builder::new()),
            PgType::Numeric { scale, .. } => Self::Numeric(StringBuilder::new(), scale as u16),
            PgType::Text => Self::Text(StringBuilder::new()),
            PgType::Bytea => Self::Bytes(BinaryBuilder::new()),
            PgType::Date => Self::Date(Int32Builder::new()),
            PgType::Timestamp | PgType::Timestamptz | PgType::Time | PgType::Interval => {
                Self::Micros(Int64Builder::new())
            }
            PgType::Jsonb => Self::Json(StringBuilder::new()),
        })
    }

    fn push(&mut self, value: Option<&[u8]>) -> Result<(), String> {
        fn be<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
            bytes
                .get(..N)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("a {N}-byte value is {} bytes", bytes.len()))
        }
        let Some(bytes) = value else {
            match self {
                Self::Bool(b) => b.append_null(),
                Self::I16(b) => b.append_null(),
                Self::I32(b) | Self::Date(b) => b.append_null(),
                Self::I64(b) | Self::Micros(b) => b.append_null(),
                Self::F32(b) => b.append_null(),
                Self::F64(b) => b.append_null(),
                Self::Numeric(b, _) | Self::Text(b) | Self::Json(b) => b.append_null(),
                Self::Bytes(b) => b.append_null(),
                Self::Null(n) => *n += 1,
            }
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(be::<1>(bytes)?[0] != 0),
            Self::I16(b) => b.append_value(i16::from_be_bytes(be(bytes)?)),
            Self::I32(b) => b.append_value(i32::from_be_bytes(be(bytes)?)),
            Self::I64(b) => b.append_value(i64::from_be_bytes(be(bytes)?)),
            Self::F32(b) => b.append_value(f32::from_be_bytes(be(bytes)?)),
            Self::F64(b) => b.append_value(f64::from_be_bytes(be(bytes)?)),
            Self::Numeric(b, scale) => b.append_value(read_numeric(bytes, *scale)?),
            Self::Text(b) => b.append_value(
                std::str::from_utf8(bytes).map_err(|e| format!("text is not UTF-8: {e}"))?,
            ),
            Self::Bytes(b) => b.append_value(bytes),
            Self::Date(b) => b.append_value(
                i32::from_be_bytes(be(bytes)?)
                    .checked_add(EPOCH_DAYS)
                    .ok_or("date out of Arrow's range")?,
            ),
            Self::Micros(b) => {
                let micros = i64::from_be_bytes(be(bytes)?);
                // An interval adds its day and month fields; Quiver writes them as zero.
                let micros = if bytes.len() == 16 {
                    let days = i32::from_be_bytes(be(&bytes[8..])?) as i64;
                    let months = i32::from_be_bytes(be(&bytes[12..])?) as i64;
                    micros + (days + months * 30) * MICROS_PER_DAY
                } else {
                    micros
                };
                b.append_value(micros)
            }
            Self::Json(b) => {
                let text = bytes
                    .strip_prefix(&[JSONB_VERSION])
                    .ok_or("unknown jsonb version")?;
                b.append_value(
                    std::str::from_utf8(text).map_err(|e| format!("jsonb is not UTF-8: {e}"))?,
                )
            }
            Self::Null(n) => *n += 1,
        }
        Ok(())
    }

    /// The finished column as `field`'s Arrow type.
    fn finish(&mut self, field: &Field) -> Result<ArrayRef, String> {
        let target = field.data_type();
        let e = |e: arrow_schema::ArrowError| e.to_string();
        let array: ArrayRef = match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Text(b) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish().reinterpret_cast::<Date32Type>()),
            Self::Null(n) => {
                let len = std::mem::take(n);
                return Ok(if target == &DataType::Null {
                    Arc::new(NullArray::new(len))
                } else {
                    new_null_array(target, len)
                });
            }
            Self::Numeric(b, _) => numeric_array(&b.finish(), value_type(target))?,
            Self::Micros(b) => micros_array(b.finish(), value_type(target))?,
            Self::Json(b) => json_array(&b.finish(), field)?,
        };
        if array.data_type() == target {
            return Ok(array);
        }
        cast_with_options(&array, target, &CAST).map_err(e)
    }
}

fn value_type(data_type: &DataType) -> &DataType {
    match data_type {
        DataType::Dictionary(_, value) => value,
        other => other,
    }
}

fn numeric_array(digits: &arrow_array::StringArray, target: &DataType) -> Result<ArrayRef, String> {
    let bad = |v: &str| format!("numeric {v} does not fit {target}");
    Ok(match target {
        DataType::UInt64 => Arc::new(
            digits
                .iter()
                .map(|v| v.map(|v| v.parse::<u64>().map_err(|_| bad(v))).transpose())
                .collect::<Result<UInt64Array, _>>()?,
        ),
        DataType::Decimal256(p, s) => Arc::new(
            digits
                .iter()
                .map(|v| {
                    v.map(|v| i256::from_string(v).ok_or_else(|| bad(v)))
                        .transpose()
                })
                .collect::<Result<Decimal256Array, _>>()?
                .with_precision_and_scale(*p, *s)
                .map_err(|e| e.to_string())?,
        ),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            let wide = digits
                .iter()
                .map(|v| v.map(|v| v.parse::<i128>().map_err(|_| bad(v))).transpose())
                .collect::<Result<Decimal128Array, _>>()?
                .with_precision_and_scale((*p).min(38), *s)
                .map_err(|e| e.to_string())?;
            Arc::new(wide)
        }
        other => return Err(format!("a numeric column cannot be read as {other}")),
    })
}

fn micros_array(micros: arrow_array::Int64Array, target: &DataType) -> Result<ArrayRef, String> {
    fn convert<T: ArrowPrimitiveType<Native = i64>>(
        micros: &arrow_array::Int64Array,
        f: impl Fn(i64) -> Result<i64, String>,
    ) -> Result<PrimitiveArray<T>, String> {
        micros
            .iter()
            .map(|v| v.map(&f).transpose())
            .collect::<Result<PrimitiveArray<T>, _>>()
    }
    let since_1970 = |v: i64| {
        v.checked_add(EPOCH_MICROS)
            .ok_or_else(|| format!("timestamp {v} is out of Arrow's range"))
    };
    Ok(match target {
        DataType::Timestamp(unit, tz) => {
            let at = |v: i64| from_micros(since_1970(v)?, unit);
            let values: ArrayRef = match unit {
                TimeUnit::Second => Arc::new(
                    convert::<TimestampSecondType>(&micros, at)?.with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Millisecond => Arc::new(
                    convert::<TimestampMillisecondType>(&micros, at)?.with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Microsecond => Arc::new(
                    convert::<TimestampMicrosecondType>(&micros, at)?.with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Nanosecond => Arc::new(
                    convert::<TimestampNanosecondType>(&micros, at)?.with_timezone_opt(tz.clone()),
                ),
            };
            values
        }
        DataType::Duration(unit) => {
            let at = |v: i64| from_micros(v, unit);
            match unit {
                TimeUnit::Second => Arc::new(convert::<DurationSecondType>(&micros, at)?),
                TimeUnit::Millisecond => Arc::new(convert::<DurationMillisecondType>(&micros, at)?),
                TimeUnit::Microsecond => Arc::new(convert::<DurationMicrosecondType>(&micros, at)?),
                TimeUnit::Nanosecond => Arc::new(convert::<DurationNanosecondType>(&micros, at)?),
            }
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            Arc::new(convert::<Time64NanosecondType>(&micros, |v| {
                from_micros(v, &TimeUnit::Nanosecond)
            })?)
        }
        DataType::Time64(_) => Arc::new(micros.reinterpret_cast::<Time64MicrosecondType>()),
        DataType::Time32(unit) => {
            let values = convert::<Int64Type>(&micros, |v| from_micros(v, unit))?;
            let narrow =
                cast_with_options(&values, &DataType::Int32, &CAST).map_err(|e| e.to_string())?;
            let narrow = narrow.as_primitive::<Int32Type>();
            match unit {
                TimeUnit::Second => Arc::new(narrow.reinterpret_cast::<Time32SecondType>()),
                _ => Arc::new(narrow.reinterpret_cast::<Time32MillisecondType>()),
            }
        }
        other => return Err(format!("a time column cannot be read as {other}")),
    })
}

/// Parses jsonb texts into `field`'s nested Arrow type.
fn json_array(texts: &arrow_array::StringArray, field: &Field) -> Result<ArrayRef, String> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        field.data_type().clone(),
        true,
    )]));
    let mut lines = Vec::with_capacity(texts.value_data().len() + texts.len() * 8);
    for value in texts.iter() {
        lines.extend_from_slice(b"{\"v\":");
        lines.extend_from_slice(value.unwrap_or("null").as_bytes());
        lines.extend_from_slice(b"}\n");
    }
    let mut decoder = arrow_json::ReaderBuilder::new(schema)
        .with_batch_size(texts.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.decode(&lines).map_err(|e| e.to_string())?;
    match decoder.flush().map_err(|e| e.to_string())? {
        Some(batch) => Ok(Arc::clone(batch.column(0))),
        None => Ok(new_null_array(field.data_type(), 0)),
    }
}

impl Decoder {
    pub fn new(schema: SchemaRef) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                ColumnDecoder::new(f.data_type())
                    .map_err(|reason| format!("column '{}': {reason}", f.name()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            schema,
            columns,
            rows: 0,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes one tuple. Returns `false` at the trailer.
    pub fn push_row(&mut self, mut row: &[u8]) -> Result<bool, String> {
        let count = take::<2>(&mut row).map(i16::from_be_bytes)?;
        if count == -1 {
            return Ok(false);
        }
        if count as usize != self.columns.len() {
            return Err(format!(
                "a row has {count} fields, expected {}",
                self.columns.len()
            ));
        }
        for column in &mut self.columns {
            let len = take::<4>(&mut row).map(i32::from_be_bytes)?;
            if len < 0 {
                column.push(None)?;
                continue;
            }
            let len = len as usize;
            let value = row
                .get(..len)
                .ok_or_else(|| "a row ends inside a value".to_string())?;
            column.push(Some(value))?;
            row = &row[len..];
        }
        self.rows += 1;
        Ok(true)
    }

    /// The rows decoded since the last call, as a batch of the schema's types.
    pub fn finish(&mut self) -> Result<RecordBatch, String> {
        let columns = self
            .columns
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                c.finish(f)
                    .map_err(|reason| format!("column '{}': {reason}", f.name()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
            .map_err(|e| e.to_string())
    }
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], String> {
    let head: [u8; N] = bytes
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "a COPY row is truncated".to_string())?;
    *bytes = &bytes[N..];
    Ok(head)
}

/// Strips the COPY header from the first message of a stream; returns the rest.
pub fn strip_header(bytes: &[u8]) -> Result<&[u8], String> {
    let rest = bytes
        .strip_prefix(&HEADER[..11])
        .ok_or("the COPY stream has no binary header")?;
    let mut rest = rest.get(4..).ok_or("truncated COPY header")?;
    let extension = take::<4>(&mut rest).map(u32::from_be_bytes)? as usize;
    rest.get(extension..)
        .ok_or_else(|| "truncated COPY header extension".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_round_trip(unscaled: i128, scale: u16) {
        let mut out = Vec::new();
        write_numeric(
            &mut out,
            unscaled < 0,
            &unscaled.unsigned_abs().to_string(),
            scale,
        );
        let text = read_numeric(&out, scale).unwrap();
        assert_eq!(text.parse::<i128>().unwrap(), unscaled, "scale {scale}");
    }

    #[test]
    fn numerics_round_trip_exactly() {
        for scale in [0, 1, 2, 3, 4, 5, 9, 10, 17, 38] {
            for v in [
                0,
                1,
                -1,
                9999,
                10000,
                -10001,
                123_456_789,
                i128::from(i64::MAX) * 1_000_000_007,
                99_999_999_999_999_999_999_999_999_999_999_999_999,
                -99_999_999_999_999_999_999_999_999_999_999_999_999,
            ] {
                numeric_round_trip(v, scale);
            }
        }
    }

    #[test]
    fn numeric_matches_postgres_layout() {
        // 12345.678 as numeric(10, 3): digits [1, 2345, 6780], weight 1, dscale 3.
        let mut out = Vec::new();
        write_numeric(&mut out, false, "12345678", 3);
        let words: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(words, vec![3, 1, 0, 3, 1, 2345, 6780]);
    }

    #[test]
    fn sub_microsecond_timestamps_are_refused() {
        assert!(to_micros(1_500, &TimeUnit::Nanosecond).is_err());
        assert_eq!(to_micros(2_000, &TimeUnit::Nanosecond), Ok(2));
    }
}

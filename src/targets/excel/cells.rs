//! How Arrow values become Excel cells and back: Excel has numbers (IEEE doubles, and dates
//! as day counts with a date format), text, booleans and empty cells. A value a cell cannot
//! hold exactly becomes text the reader parses back to the same value.

use arrow_schema::{DataType, Field, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike};

/// Integers beyond ±2^53 are written as text: a double holds them only approximately.
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;
/// Decimals with more significant digits are written as text: Excel shows (and computes
/// with) 15.
pub const MAX_DECIMAL_DIGITS: usize = 15;
/// Longest text a cell holds, in UTF-16 code units.
pub const MAX_TEXT: usize = 32_767;

/// Excel's serial day of 1970-01-01 (serial 1 is 1900-01-01).
const UNIX_EPOCH_SERIAL: i64 = 25_569;
/// The first serial day after Excel's phantom 1900-02-29; earlier serials are off by one.
const FIRST_SERIAL: i64 = 61;
/// The serial day of 9999-12-31, the last date Excel shows.
const LAST_SERIAL: i64 = 2_958_465;
const MS_PER_DAY: i64 = 86_400_000;

/// Whether a column of this type can go into a sheet; the refusal says why not.
pub fn check_type(field: &Field) -> Result<(), String> {
    use DataType::*;
    let hint = match field.data_type() {
        Null
        | Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Float16
        | Float32
        | Float64
        | Utf8
        | LargeUtf8
        | Utf8View
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _) => {
            return Ok(());
        }
        Dictionary(_, value) if matches!(value.as_ref(), Utf8 | LargeUtf8) => return Ok(()),
        t if t.is_nested() => {
            "a cell holds one value, not a list, struct or map; flatten it or use the json, \
             parquet or arrow target"
        }
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
            "a cell cannot hold bytes; encode them as text (hex, base64) or use the parquet or \
             arrow target"
        }
        _ => {
            "Excel has no cell type for it; cast it (to a number or text) or use the parquet or arrow target"
        }
    };
    Err(format!(
        "column '{}' has type {}: {hint}",
        field.name(),
        field.data_type()
    ))
}

/// What a value in `unit` is multiplied and divided by to count milliseconds.
fn per_milli(unit: TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (1000, 1),
        TimeUnit::Millisecond => (1, 1),
        TimeUnit::Microsecond => (1, 1000),
        TimeUnit::Nanosecond => (1, 1_000_000),
    }
}

/// `value` in `unit` as whole milliseconds, or `None` if it has finer digits (or overflows).
pub fn to_millis(value: i64, unit: TimeUnit) -> Option<i64> {
    let (mul, div) = per_milli(unit);
    (value % div == 0)
        .then(|| value / div)
        .and_then(|v| v.checked_mul(mul))
}

/// Milliseconds as a value in `unit`; `None` if the unit cannot hold it exactly.
pub fn from_millis(ms: i64, unit: TimeUnit) -> Option<i64> {
    let (mul, div) = per_milli(unit);
    (ms % mul == 0)
        .then(|| ms / mul)
        .and_then(|v| v.checked_mul(div))
}

/// The Excel serial (days and fraction of a day) of a moment `ms` after 1970-01-01, if Excel
/// shows that day correctly (1900-03-01 to 9999-12-31).
pub fn serial_of_millis(ms: i64) -> Option<f64> {
    let day = ms.div_euclid(MS_PER_DAY) + UNIX_EPOCH_SERIAL;
    let of_day = ms.rem_euclid(MS_PER_DAY);
    (FIRST_SERIAL..=LAST_SERIAL)
        .contains(&day)
        .then(|| day as f64 + of_day as f64 / MS_PER_DAY as f64)
}

/// The moment an Excel serial stands for, in milliseconds after 1970-01-01.
pub fn millis_of_serial(serial: f64) -> i64 {
    let day = serial.floor();
    let of_day = ((serial - day) * MS_PER_DAY as f64).round() as i64;
    (day as i64 - UNIX_EPOCH_SERIAL) * MS_PER_DAY + of_day
}

/// The fraction of a day a time of day `ms` after midnight is, as Excel stores times.
pub fn serial_of_time(ms: i64) -> f64 {
    ms as f64 / MS_PER_DAY as f64
}

/// The time of day an Excel time serial stands for, in milliseconds after midnight.
pub fn time_millis_of_serial(serial: f64) -> i64 {
    (serial.fract() * MS_PER_DAY as f64).round() as i64
}

/// A timestamp in `unit` as ISO 8601 text, for values a date cell cannot hold exactly.
pub fn timestamp_text(value: i64, unit: TimeUnit) -> String {
    let moment = match unit {
        TimeUnit::Second => DateTime::from_timestamp(value, 0),
        TimeUnit::Millisecond => DateTime::from_timestamp_millis(value),
        TimeUnit::Microsecond => DateTime::from_timestamp_micros(value),
        TimeUnit::Nanosecond => Some(DateTime::from_timestamp_nanos(value)),
    };
    match moment {
        Some(m) => m.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        // Beyond chrono's years: the count itself, which the reader also accepts.
        None => value.to_string(),
    }
}

/// Parses [`timestamp_text`] back.
pub fn parse_timestamp(text: &str, unit: TimeUnit) -> Option<i64> {
    if let Ok(count) = text.parse::<i64>() {
        return Some(count);
    }
    let moment = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()?
        .and_utc();
    match unit {
        TimeUnit::Second => Some(moment.timestamp()),
        TimeUnit::Millisecond => Some(moment.timestamp_millis()),
        TimeUnit::Microsecond => Some(moment.timestamp_micros()),
        TimeUnit::Nanosecond => moment.timestamp_nanos_opt(),
    }
}

/// A day count after 1970-01-01 as `YYYY-MM-DD`, for dates a date cell cannot show.
pub fn date_text(days: i32) -> String {
    match days
        .checked_add(719_163)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
    {
        Some(date) => date.format("%Y-%m-%d").to_string(),
        None => days.to_string(),
    }
}

/// Parses [`date_text`] back.
pub fn parse_date(text: &str) -> Option<i32> {
    if let Ok(days) = text.parse::<i32>() {
        return Some(days);
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.num_days_from_ce() - 719_163)
}

/// A time of day `nanos` after midnight as `HH:MM:SS.fffffffff`, for times with digits finer
/// than a millisecond.
pub fn time_text(nanos: i64) -> String {
    let secs = (nanos / 1_000_000_000) as u32;
    let frac = (nanos % 1_000_000_000) as u32;
    match NaiveTime::from_num_seconds_from_midnight_opt(secs, frac) {
        Some(t) => t.format("%H:%M:%S%.f").to_string(),
        None => nanos.to_string(),
    }
}

/// Parses [`time_text`] back to nanoseconds after midnight.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(nanos) = text.parse::<i64>() {
        return Some(nanos);
    }
    let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok()?;
    Some(i64::from(t.num_seconds_from_midnight()) * 1_000_000_000 + i64::from(t.nanosecond()))
}

/// Nanoseconds per unit of a time of day.
pub fn nanos_per(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Significant digits of a decimal's text (`-0.00120` has 3: leading zeros do not count,
/// trailing zeros of the scale do not either).
pub fn significant_digits(text: &str) -> usize {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    let digits = if text.contains('.') {
        digits.trim_end_matches('0')
    } else {
        digits
    };
    digits.len()
}

/// The UTF-16 length Excel measures text in.
pub fn text_len(text: &str) -> usize {
    text.encode_utf16().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_survive_the_serial_to_the_millisecond() {
        for ms in [
            0,
            -1,
            1_700_000_000_123,
            -2_203_891_200_000,  // 1900-03-01
            253_402_300_799_999, // 9999-12-31 23:59:59.999
        ] {
            let serial = serial_of_millis(ms).unwrap();
            let written: f64 = serial.to_string().parse().unwrap();
            assert_eq!(millis_of_serial(written), ms, "{ms}");
        }
        assert_eq!(serial_of_millis(0), Some(25_569.0));
        assert_eq!(serial_of_millis(-2_203_891_200_001), None, "1900-02-28");
        assert_eq!(serial_of_millis(253_402_300_800_000), None, "10000-01-01");
    }

    #[test]
    fn finer_digits_stay_exact_as_text() {
        let ns = 1_700_000_000_123_456_789;
        assert_eq!(to_millis(ns, TimeUnit::Nanosecond), None);
        let text = timestamp_text(ns, TimeUnit::Nanosecond);
        assert_eq!(text, "2023-11-14T22:13:20.123456789");
        assert_eq!(parse_timestamp(&text, TimeUnit::Nanosecond), Some(ns));
        assert_eq!(date_text(-719_162), "0001-01-01");
        assert_eq!(parse_date("0001-01-01"), Some(-719_162));
        assert_eq!(time_text(86_399_999_999_000), "23:59:59.999999");
        assert_eq!(parse_time("23:59:59.999999"), Some(86_399_999_999_000));
    }

    #[test]
    fn significant_digits_ignore_padding() {
        assert_eq!(significant_digits("-0.0000000001"), 1);
        assert_eq!(significant_digits("120.500"), 4);
        assert_eq!(significant_digits("1200"), 4);
        assert_eq!(
            significant_digits("99999999999999999999999999.9999999999"),
            36
        );
    }
}

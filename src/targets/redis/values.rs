//! The hash layout's values: each Arrow value as the string a Redis hash field holds, and
//! back to the exact Arrow type the catalog recorded. docs/types.md lists every form.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::LargeBinaryBuilder;
use arrow_array::{Array, ArrayRef, LargeBinaryArray, new_null_array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_cast::{CastOptions, cast, cast_with_options};
use arrow_schema::{DataType, Field, FieldRef, Schema};

use crate::targets::util::{first_non_finite, json_supported, text_dictionary_ok};

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// A column of type Null: never stored.
    Absent,
    /// Strings as they are.
    Text,
    /// Bytes as they are.
    Bytes,
    /// Arrow's display form: numbers, booleans, decimals, dates, times, timestamps, and the
    /// values of string dictionaries.
    Display,
    /// A duration as the integer count of its unit.
    Count,
    /// Lists and structs as JSON.
    Json,
}

/// The form of a column of `data_type`, or `None` when the hash layout cannot hold it.
pub(super) fn form(data_type: &DataType) -> Option<Form> {
    use DataType::*;
    match data_type {
        Null => Some(Form::Absent),
        Utf8 | LargeUtf8 | Utf8View => Some(Form::Text),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Some(Form::Bytes),
        Boolean
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
        | Decimal32(_, _)
        | Decimal64(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _)
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _) => Some(Form::Display),
        Dictionary(_, value) if matches!(value.as_ref(), Utf8 | LargeUtf8) => Some(Form::Display),
        Duration(_) => Some(Form::Count),
        List(_) | LargeList(_) | Struct(_)
            if json_supported(data_type) && text_dictionary_ok(data_type, true) =>
        {
            Some(Form::Json)
        }
        _ => None,
    }
}

/// Refuses a schema the hash layout cannot hold, or key columns that cannot name a row.
pub(super) fn check(schema: &Schema, key: &[String]) -> Result<(), String> {
    for field in schema.fields() {
        let Some(form) = form(field.data_type()) else {
            return Err(format!(
                "column '{}' has type {}, which the hash layout cannot store as a string; \
                 store the asset with layout \"table\" or cast the column",
                field.name(),
                field.data_type()
            ));
        };
        if key.contains(field.name()) && matches!(form, Form::Absent | Form::Json) {
            return Err(format!(
                "key column '{}' has type {}, which cannot name a row; key by a column of \
                 numbers, strings, bytes, dates or times",
                field.name(),
                field.data_type()
            ));
        }
    }
    Ok(())
}

/// One column's values in their stored form; null where the hash gets no field.
pub(super) fn encode(field: &FieldRef, array: &ArrayRef) -> Result<LargeBinaryArray, String> {
    let bad = |e: &dyn std::fmt::Display| format!("column '{}': {e}", field.name());
    let form = form(field.data_type())
        .ok_or_else(|| bad(&format!("type {} has no string form", field.data_type())))?;
    match form {
        Form::Absent => Ok(LargeBinaryArray::new_null(array.len())),
        Form::Text => {
            let text = cast(array, &DataType::LargeUtf8).map_err(|e| bad(&e))?;
            let text = text
                .as_any()
                .downcast_ref::<arrow_array::LargeStringArray>()
                .expect("cast to LargeUtf8");
            Ok(LargeBinaryArray::from(text.clone()))
        }
        Form::Bytes => {
            let bytes = cast(array, &DataType::LargeBinary).map_err(|e| bad(&e))?;
            Ok(bytes
                .as_any()
                .downcast_ref::<LargeBinaryArray>()
                .expect("cast to LargeBinary")
                .clone())
        }
        Form::Display => display(array).map_err(|e| bad(&e)),
        Form::Count => {
            display(&cast(array, &DataType::Int64).map_err(|e| bad(&e))?).map_err(|e| bad(&e))
        }
        Form::Json => {
            if let Some(value) = first_non_finite(array) {
                return Err(bad(&format!(
                    "holds {value}, which JSON cannot hold; store the asset with layout \"table\""
                )));
            }
            let options = arrow_json::writer::EncoderOptions::default();
            let mut encoder = arrow_json::writer::make_encoder(field, array.as_ref(), &options)
                .map_err(|e| bad(&e))?;
            let mut out = LargeBinaryBuilder::with_capacity(array.len(), 0);
            let mut scratch = Vec::new();
            for row in 0..array.len() {
                if array.is_null(row) {
                    out.append_null();
                } else {
                    scratch.clear();
                    encoder.encode(row, &mut scratch);
                    out.append_value(&scratch);
                }
            }
            Ok(out.finish())
        }
    }
}

/// Arrow's display form of each value.
fn display(array: &ArrayRef) -> Result<LargeBinaryArray, arrow_schema::ArrowError> {
    let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
    let mut out = LargeBinaryBuilder::with_capacity(array.len(), array.len() * 8);
    let mut scratch = String::new();
    for row in 0..array.len() {
        if array.is_null(row) {
            out.append_null();
        } else {
            scratch.clear();
            write!(scratch, "{}", formatter.value(row))
                .map_err(|e| arrow_schema::ArrowError::ComputeError(e.to_string()))?;
            out.append_value(scratch.as_bytes());
        }
    }
    Ok(out.finish())
}

/// Rebuilds a column of `field`'s exact type from stored strings (null for a missing field).
pub(super) fn decode(field: &Field, values: &LargeBinaryArray) -> Result<ArrayRef, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!(
            "column '{}' ({}) holds a value that is not in its stored form: {e}",
            field.name(),
            field.data_type()
        )
    };
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let data_type = field.data_type();
    let text = || cast_with_options(values, &DataType::LargeUtf8, &strict).map_err(|e| bad(&e));
    match form(data_type).ok_or_else(|| bad(&"no string form"))? {
        Form::Absent => Ok(new_null_array(data_type, values.len())),
        Form::Bytes => cast_with_options(values, data_type, &strict).map_err(|e| bad(&e)),
        Form::Text | Form::Display => {
            cast_with_options(&text()?, data_type, &strict).map_err(|e| bad(&e))
        }
        Form::Count => {
            let counts =
                cast_with_options(&text()?, &DataType::Int64, &strict).map_err(|e| bad(&e))?;
            cast_with_options(&counts, data_type, &strict).map_err(|e| bad(&e))
        }
        Form::Json => {
            let mut lines = Vec::with_capacity(values.len() * 16);
            for row in 0..values.len() {
                lines.extend_from_slice(b"{\"v\":");
                if values.is_null(row) {
                    lines.extend_from_slice(b"null");
                } else {
                    lines.extend_from_slice(values.value(row));
                }
                lines.extend_from_slice(b"}\n");
            }
            let schema = Arc::new(Schema::new(vec![Field::new("v", data_type.clone(), true)]));
            let mut decoder = arrow_json::ReaderBuilder::new(schema)
                .with_batch_size(values.len().max(1))
                .build_decoder()
                .map_err(|e| bad(&e))?;
            let mut rest = lines.as_slice();
            while !rest.is_empty() {
                let used = decoder.decode(rest).map_err(|e| bad(&e))?;
                if used == 0 {
                    return Err(bad(&"the JSON decoder stopped"));
                }
                rest = &rest[used..];
            }
            match decoder.flush().map_err(|e| bad(&e))? {
                Some(batch) if batch.num_rows() == values.len() => Ok(Arc::clone(batch.column(0))),
                _ if values.is_empty() => Ok(new_null_array(data_type, 0)),
                _ => Err(bad(&"the JSON decoder lost rows")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::types::Int32Type;
    use arrow_array::*;

    use super::*;

    fn round_trip(array: ArrayRef) -> Vec<String> {
        let field = Arc::new(Field::new("c", array.data_type().clone(), true));
        let encoded = encode(&field, &array).unwrap();
        let back = decode(&field, &encoded).unwrap();
        assert_eq!(back.data_type(), array.data_type());
        assert_eq!(back.to_data(), array.to_data(), "{:?}", array.data_type());
        (0..encoded.len())
            .map(|i| {
                if encoded.is_null(i) {
                    "<null>".to_string()
                } else {
                    String::from_utf8_lossy(encoded.value(i)).into_owned()
                }
            })
            .collect()
    }

    #[test]
    fn scalar_forms_are_the_documented_ones() {
        let forms = |a: ArrayRef| round_trip(a);
        assert_eq!(
            forms(Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                None,
                Some(7)
            ]))),
            ["-9223372036854775808", "<null>", "7"]
        );
        assert_eq!(
            forms(Arc::new(Float64Array::from(vec![
                -0.1,
                1e-300,
                f64::MAX,
                1.0,
                f64::NEG_INFINITY
            ]))),
            ["-0.1", "1e-300", "1.7976931348623157e308", "1.0", "-inf"]
        );
        assert_eq!(
            forms(Arc::new(Float32Array::from(vec![0.1f32, f32::MAX]))),
            ["0.1", "3.4028235e38"]
        );
        assert_eq!(
            forms(cast(&Float32Array::from(vec![1.5f32]), &DataType::Float16).unwrap()),
            ["1.5"]
        );
        assert_eq!(
            forms(Arc::new(BooleanArray::from(vec![true, false]))),
            ["true", "false"]
        );
        assert_eq!(
            forms(Arc::new(Date32Array::from(vec![0, -719162, 2932896]))),
            ["1970-01-01", "0001-01-01", "9999-12-31"]
        );
        assert_eq!(
            forms(Arc::new(Date64Array::from(vec![86_400_000]))),
            ["1970-01-02T00:00:00"]
        );
        assert_eq!(
            forms(Arc::new(TimestampSecondArray::from(vec![
                -1,
                1_700_000_000
            ]))),
            ["1969-12-31T23:59:59", "2023-11-14T22:13:20"]
        );
        assert_eq!(
            forms(Arc::new(
                TimestampNanosecondArray::from(vec![1_700_000_000_123_456_789])
                    .with_timezone("+05:30")
            )),
            ["2023-11-15T03:43:20.123456789+05:30"]
        );
        assert_eq!(
            forms(Arc::new(
                TimestampMicrosecondArray::from(vec![1]).with_timezone("UTC")
            )),
            ["1970-01-01T00:00:00.000001Z"]
        );
        assert_eq!(
            forms(Arc::new(Time64NanosecondArray::from(vec![
                86_399_999_999_999
            ]))),
            ["23:59:59.999999999"]
        );
        assert_eq!(
            forms(Arc::new(Time32MillisecondArray::from(vec![1]))),
            ["00:00:00.001"]
        );
        assert_eq!(
            forms(Arc::new(
                Decimal128Array::from(vec![-1, 12_345])
                    .with_precision_and_scale(38, 3)
                    .unwrap()
            )),
            ["-0.001", "12.345"]
        );
        assert_eq!(
            forms(Arc::new(DurationMillisecondArray::from(vec![-5, 1500]))),
            ["-5", "1500"]
        );
        assert_eq!(
            forms(Arc::new(StringArray::from(vec!["a:b", "", "é 🎯"]))),
            ["a:b", "", "é 🎯"]
        );
        assert_eq!(
            forms(Arc::new(BinaryArray::from(vec![b"\x00\xff".as_slice()]))),
            ["\u{0}\u{fffd}"]
        );
        assert_eq!(
            forms(Arc::new(DictionaryArray::<Int32Type>::from_iter([
                Some("red"),
                None,
                Some("red")
            ]))),
            ["red", "<null>", "red"]
        );
        assert_eq!(forms(Arc::new(NullArray::new(2))), ["<null>", "<null>"]);
    }

    #[test]
    fn every_width_round_trips() {
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int8Array::from(vec![i8::MIN, i8::MAX])),
            Arc::new(UInt64Array::from(vec![0, u64::MAX])),
            Arc::new(LargeStringArray::from(vec!["x"])),
            Arc::new(StringViewArray::from(vec![
                "a value longer than twelve bytes",
            ])),
            Arc::new(LargeBinaryArray::from(vec![b"abc".as_slice()])),
            Arc::new(BinaryViewArray::from(vec![b"abc".as_slice()])),
            Arc::new(
                FixedSizeBinaryArray::try_from_iter(
                    vec![b"ab".as_slice(), b"cd".as_slice()].into_iter(),
                )
                .unwrap(),
            ),
            Arc::new(TimestampMillisecondArray::from(vec![
                -1,
                253_402_300_799_999,
            ])),
            Arc::new(
                Decimal256Array::from(vec![arrow_buffer::i256::from_i128(-5)])
                    .with_precision_and_scale(50, 2)
                    .unwrap(),
            ),
            Arc::new(DurationNanosecondArray::from(vec![i64::MAX])),
            Arc::new(Time32SecondArray::from(vec![86_399])),
        ];
        for array in arrays {
            round_trip(array);
        }
    }

    #[test]
    fn nested_values_are_json() {
        let mut list =
            arrow_array::builder::ListBuilder::new(arrow_array::builder::Int32Builder::new());
        list.append_value([Some(1), None, Some(3)]);
        list.append_null();
        list.append_value([]);
        assert_eq!(
            round_trip(Arc::new(list.finish())),
            ["[1,null,3]", "<null>", "[]"]
        );
        let structs = StructArray::new(
            vec![
                Field::new("a", DataType::Int32, true),
                Field::new("b", DataType::Utf8, true),
            ]
            .into(),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
            ],
            None,
        );
        assert_eq!(
            round_trip(Arc::new(structs)),
            ["{\"a\":1,\"b\":\"x\"}", "{\"b\":\"y\"}"]
        );
    }

    #[test]
    fn what_cannot_be_held_is_refused_by_name() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "span",
                DataType::Interval(arrow_schema::IntervalUnit::DayTime),
                true,
            ),
        ]);
        let err = check(&schema, &["id".to_string()]).unwrap_err();
        assert!(err.contains("'span'"), "{err}");
        let schema = Schema::new(vec![Field::new(
            "tags",
            DataType::new_list(DataType::Utf8, true),
            true,
        )]);
        check(&schema, &[]).unwrap();
        let err = check(&schema, &["tags".to_string()]).unwrap_err();
        assert!(err.contains("key column 'tags'"), "{err}");
        let nested_nan: ArrayRef = {
            let mut list =
                arrow_array::builder::ListBuilder::new(arrow_array::builder::Float64Builder::new());
            list.append_value([Some(f64::NAN)]);
            Arc::new(list.finish())
        };
        let field = Arc::new(Field::new("f", nested_nan.data_type().clone(), true));
        assert!(encode(&field, &nested_nan).unwrap_err().contains("NaN"));
    }

    #[test]
    fn a_value_not_in_its_form_is_an_error() {
        let field = Field::new("n", DataType::Int32, true);
        let stored = LargeBinaryArray::from(vec![b"12".as_slice(), b"twelve".as_slice()]);
        let err = decode(&field, &stored).unwrap_err();
        assert!(err.contains("column 'n'"), "{err}");
    }
}

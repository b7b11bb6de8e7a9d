//! The per-put options of the Excel target: how the workbook's sheets look and how many
//! there may be.

use serde_json::Value;

use crate::error::{Error, Result, echo};
use crate::protocol::Options;

/// Most rows one Excel sheet holds, the header row included.
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;
/// Most columns one Excel sheet holds.
pub const EXCEL_MAX_COLUMNS: usize = 16_384;
/// Longest sheet name Excel accepts, in characters.
const MAX_SHEET_NAME: usize = 31;

const ACCEPTED: &str = "sheet, freeze, autofilter, max_sheets, sheet_rows";

/// How a put lays its rows out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetOptions {
    /// The first sheet's name; the sheets after it are `<sheet> (2)`, `<sheet> (3)`, ...
    /// When absent the sheets are `Sheet1`, `Sheet2`, ...
    pub sheet: Option<String>,
    /// Freeze the header row, so it stays in view while scrolling.
    pub freeze: bool,
    /// An autofilter over the header row and the data below it.
    pub autofilter: bool,
    /// Most sheets the put may fill; a put with more rows is refused. No limit when absent.
    pub max_sheets: Option<u32>,
    /// Data rows per sheet before the next sheet begins.
    pub sheet_rows: u32,
}

impl Default for SheetOptions {
    fn default() -> Self {
        Self {
            sheet: None,
            freeze: true,
            autofilter: true,
            max_sheets: None,
            sheet_rows: EXCEL_MAX_ROWS - 1,
        }
    }
}

impl SheetOptions {
    /// Reads a put's options; the protobuf descriptor carries every value as a string.
    pub fn parse(options: &Options) -> Result<Self> {
        let mut parsed = Self::default();
        for (key, value) in options {
            match key.as_str() {
                "sheet" => parsed.sheet = Some(sheet_name(value)?),
                "freeze" => parsed.freeze = boolean(key, value)?,
                "autofilter" => parsed.autofilter = boolean(key, value)?,
                "max_sheets" => parsed.max_sheets = Some(count(key, value, u32::MAX)?),
                "sheet_rows" => parsed.sheet_rows = count(key, value, EXCEL_MAX_ROWS - 1)?,
                other => {
                    return Err(Error::invalid_request(format!(
                        "option '{}' is not understood by excel targets; accepted options: {ACCEPTED}",
                        echo(other)
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// The name of sheet `index` (0-based).
    pub fn sheet_name(&self, index: u32) -> String {
        match (&self.sheet, index) {
            (None, i) => format!("Sheet{}", i + 1),
            (Some(name), 0) => name.clone(),
            (Some(name), i) => {
                let suffix = format!(" ({})", i + 1);
                let keep = MAX_SHEET_NAME - suffix.chars().count();
                format!("{}{suffix}", name.chars().take(keep).collect::<String>())
            }
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn boolean(key: &str, value: &Value) -> Result<bool> {
    match text(value).as_deref() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(Error::invalid_request(format!(
            "option '{key}' must be true or false, not {}",
            echo(&value.to_string())
        ))),
    }
}

fn count(key: &str, value: &Value, max: u32) -> Result<u32> {
    text(value)
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            Error::invalid_request(format!(
                "option '{key}' must be a whole number from 1 to {max}, not {}",
                echo(&value.to_string())
            ))
        })
}

/// A sheet name Excel accepts: 1 to 31 characters, none of `[ ] : * ? / \`, not starting or
/// ending with an apostrophe, and not `History` (Excel keeps that one for itself).
fn sheet_name(value: &Value) -> Result<String> {
    let name = match value {
        Value::String(s) => s.clone(),
        other => {
            return Err(Error::invalid_request(format!(
                "option 'sheet' must be a sheet name, not {}",
                echo(&other.to_string())
            )));
        }
    };
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.chars().count() > MAX_SHEET_NAME {
        Some(format!("is longer than {MAX_SHEET_NAME} characters"))
    } else if let Some(c) = name.chars().find(|c| "[]:*?/\\".contains(*c)) {
        Some(format!("contains '{c}'"))
    } else if name.starts_with('\'') || name.ends_with('\'') {
        Some("starts or ends with an apostrophe".to_string())
    } else if name.eq_ignore_ascii_case("history") {
        Some("is reserved by Excel".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::invalid_request(format!(
            "option 'sheet' {:?} {problem}; Excel sheet names have 1 to {MAX_SHEET_NAME} \
             characters, none of [ ] : * ? / \\",
            echo(&name)
        ))),
        None => Ok(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(pairs: &[(&str, Value)]) -> Result<SheetOptions> {
        SheetOptions::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn strings_from_the_descriptor_parse_like_json_values() {
        let options = parse(&[
            ("sheet", json!("Sales")),
            ("freeze", json!("false")),
            ("autofilter", json!(false)),
            ("max_sheets", json!("3")),
            ("sheet_rows", json!(1000)),
        ])
        .unwrap();
        assert_eq!(
            options,
            SheetOptions {
                sheet: Some("Sales".into()),
                freeze: false,
                autofilter: false,
                max_sheets: Some(3),
                sheet_rows: 1000,
            }
        );
        assert_eq!(options.sheet_name(0), "Sales");
        assert_eq!(options.sheet_name(1), "Sales (2)");
        assert_eq!(SheetOptions::default().sheet_name(2), "Sheet3");
    }

    #[test]
    fn continuation_names_stay_within_excels_limit() {
        let options = parse(&[("sheet", json!("x".repeat(31)))]).unwrap();
        let name = options.sheet_name(11);
        assert_eq!(name.chars().count(), 31);
        assert!(name.ends_with(" (12)"), "{name}");
    }

    #[test]
    fn bad_options_are_named() {
        let cases = [
            (("sheet", json!("a/b")), "contains '/'"),
            (("sheet", json!("")), "is empty"),
            (("sheet", json!("x".repeat(32))), "longer than 31"),
            (
                ("freeze", json!("yes")),
                "option 'freeze' must be true or false",
            ),
            (
                ("max_sheets", json!(0)),
                "option 'max_sheets' must be a whole number",
            ),
            (("sheet_rows", json!(1_048_576)), "from 1 to 1048575"),
            (("sheets", json!(1)), "option 'sheets' is not understood"),
        ];
        for ((key, value), expected) in cases {
            let err = parse(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(expected), "{key}: {err}");
        }
    }
}

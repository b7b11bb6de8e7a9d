//! Asset keys and partition keys: validated names that are safe to use as paths anywhere.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, echo, echo_list};

/// Longest asset key accepted, in bytes of its `a/b/c` form.
pub const MAX_ASSET_KEY_LEN: usize = 512;
/// Most segments an asset key may have.
pub const MAX_ASSET_SEGMENTS: usize = 16;
/// Longest segment of an asset key or partition key, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// A validated asset key such as `sales/daily`.
///
/// Segments hold only `[A-Za-z0-9_.-]`, are not empty, are not `.` or `..` and do not start with
/// `.` (names starting with a dot are kept for Quiver's own files), so a key can never escape the
/// root of the target it is stored in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetKey {
    segments: Vec<String>,
}

impl AssetKey {
    /// Builds a key from segments; a segment containing `/` is split further.
    pub fn new<S: AsRef<str>>(segments: &[S]) -> Result<Self> {
        let segments: Vec<String> = segments
            .iter()
            .flat_map(|s| s.as_ref().split('/'))
            .map(str::to_string)
            .collect();
        if segments.is_empty() || segments == [""] {
            return Err(Error::invalid_request(
                "the asset key is empty; name the asset, e.g. \"sales/daily\"",
            ));
        }
        if segments.len() > MAX_ASSET_SEGMENTS {
            return Err(Error::invalid_request(format!(
                "asset key '{}' has {} segments; at most {MAX_ASSET_SEGMENTS} are allowed",
                echo(&segments.join("/")),
                segments.len()
            )));
        }
        let joined = segments.join("/");
        if joined.len() > MAX_ASSET_KEY_LEN {
            return Err(Error::invalid_request(format!(
                "asset key is {} bytes long; at most {MAX_ASSET_KEY_LEN} are allowed",
                joined.len()
            )));
        }
        for segment in &segments {
            check_segment(
                "asset key",
                &joined,
                segment,
                is_asset_char,
                "[A-Za-z0-9_.-]",
            )?;
        }
        Ok(Self { segments })
    }

    /// Parses `a/b/c`.
    pub fn parse(key: &str) -> Result<Self> {
        Self::new(&[key])
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The last segment, e.g. `daily` for `sales/daily`.
    pub fn name(&self) -> &str {
        self.segments.last().expect("an asset key has a segment")
    }

    /// Whether this key starts with `prefix` (as text, so `sal` matches `sales/daily`).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.to_string().starts_with(prefix)
    }
}

impl fmt::Display for AssetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

fn is_asset_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_partition_char(c: char) -> bool {
    is_asset_char(c) || matches!(c, ':' | '+')
}

fn check_segment(
    what: &str,
    whole: &str,
    segment: &str,
    allowed: fn(char) -> bool,
    allowed_text: &str,
) -> Result<()> {
    let whole = echo(whole);
    if segment.is_empty() {
        return Err(Error::invalid_request(format!(
            "{what} '{whole}' has an empty segment; use segments like \"sales/daily\""
        )));
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(Error::invalid_request(format!(
            "{what} '{whole}' has a segment of {} bytes; at most {MAX_SEGMENT_LEN} are allowed",
            segment.len()
        )));
    }
    if segment.starts_with('.') {
        return Err(Error::invalid_request(format!(
            "{what} '{whole}' has segment '{}' starting with '.'; \
             segments may not start with a dot (and '.' and '..' are never allowed)",
            echo(segment)
        )));
    }
    if let Some(bad) = segment.chars().find(|c| !allowed(*c)) {
        return Err(Error::invalid_request(format!(
            "{what} '{whole}' contains {bad:?}; segments may only use {allowed_text}"
        )));
    }
    Ok(())
}

/// A partition of an asset: one key, or one key per named dimension.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Partition {
    Single(String),
    Multi(BTreeMap<String, String>),
}

impl Partition {
    pub fn single(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        check_segment(
            "partition key",
            &key,
            &key,
            is_partition_char,
            "[A-Za-z0-9_.:+-]",
        )?;
        Ok(Self::Single(key))
    }

    pub fn multi(dims: BTreeMap<String, String>) -> Result<Self> {
        if dims.is_empty() {
            return Err(Error::invalid_request(
                "the partition object is empty; give one key per dimension, e.g. {\"date\": \"2024-01-01\"}",
            ));
        }
        for (dim, key) in &dims {
            check_segment(
                "partition dimension",
                dim,
                dim,
                is_asset_char,
                "[A-Za-z0-9_.-]",
            )?;
            check_segment(
                "partition key",
                key,
                key,
                is_partition_char,
                "[A-Za-z0-9_.:+-]",
            )?;
        }
        Ok(Self::Multi(dims))
    }

    /// The canonical text of this partition, as stored in the catalog: `2024-01-01` or
    /// `date=2024-01-01|region=eu` (dimensions sorted by name).
    pub fn id(&self) -> String {
        match self {
            Self::Single(key) => key.clone(),
            Self::Multi(dims) => dims
                .iter()
                .map(|(d, k)| format!("{d}={k}"))
                .collect::<Vec<_>>()
                .join("|"),
        }
    }

    /// Parses the text produced by [`Partition::id`].
    pub fn from_id(id: &str) -> Result<Self> {
        if !id.contains('=') {
            return Self::single(id);
        }
        let mut dims = BTreeMap::new();
        for part in id.split('|') {
            let (d, k) = part.split_once('=').ok_or_else(|| {
                Error::invalid_request(format!(
                    "partition '{}' mixes dimension=key pairs with plain keys",
                    echo(id)
                ))
            })?;
            dims.insert(d.to_string(), k.to_string());
        }
        Self::multi(dims)
    }

    /// Path segments used by file targets, as Dagster's UPathIOManager lays them out: the key,
    /// or each dimension's key in dimension-name order.
    pub fn path_segments(&self) -> Vec<&str> {
        match self {
            Self::Single(key) => vec![key.as_str()],
            Self::Multi(dims) => dims.values().map(String::as_str).collect(),
        }
    }

    /// The dimension names, or `None` for a single-key partition.
    pub fn dimensions(&self) -> Option<Vec<String>> {
        match self {
            Self::Single(_) => None,
            Self::Multi(dims) => Some(dims.keys().cloned().collect()),
        }
    }

    /// The value a row of this partition holds in column `dimension` (`None`: the single key).
    pub fn value(&self, dimension: Option<&str>) -> Option<&str> {
        match (self, dimension) {
            (Self::Single(key), None) => Some(key),
            (Self::Multi(dims), Some(d)) => dims.get(d).map(String::as_str),
            _ => None,
        }
    }

    /// The JSON form used in requests and replies: a string or an object.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Single(key) => serde_json::Value::String(key.clone()),
            Self::Multi(dims) => serde_json::to_value(dims).expect("a map of strings"),
        }
    }
}

/// The columns that hold an asset's partition keys in table targets: one column for
/// single-key partitions, one per dimension for multi-dimensional ones (Dagster's
/// `partition_expr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PartitionColumns {
    Single(String),
    PerDimension(BTreeMap<String, String>),
}

impl PartitionColumns {
    /// Every column named.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Self::Single(c) => vec![c.as_str()],
            Self::PerDimension(m) => m.values().map(String::as_str).collect(),
        }
    }

    /// Checks that these columns fit the shape of `partition`.
    pub fn check(&self, partition: &Partition) -> Result<()> {
        match (self, partition) {
            (Self::Single(_), Partition::Single(_)) => Ok(()),
            (Self::PerDimension(cols), Partition::Multi(dims)) if cols.keys().eq(dims.keys()) => {
                Ok(())
            }
            (Self::PerDimension(cols), Partition::Multi(dims)) => {
                Err(Error::invalid_request(format!(
                    "\"partition_column\" names dimensions {:?} but the partition has dimensions {:?}; \
                 give one column per dimension",
                    echo_list(cols.keys().map(String::as_str)),
                    echo_list(dims.keys().map(String::as_str))
                )))
            }
            (Self::Single(c), Partition::Multi(_)) => Err(Error::invalid_request(format!(
                "the partition has several dimensions but \"partition_column\" is the single column '{}'; \
                 give an object mapping each dimension to its column, e.g. {{\"date\": \"day\", \"region\": \"region\"}}",
                echo(c)
            ))),
            (Self::PerDimension(_), Partition::Single(_)) => Err(Error::invalid_request(
                "\"partition_column\" is an object but the partition is a single key; give one column name",
            )),
        }
    }

    /// `(column, key)` pairs selecting `partition`'s rows; call [`PartitionColumns::check`] first.
    pub fn filter<'a>(&'a self, partition: &'a Partition) -> Vec<(&'a str, &'a str)> {
        match (self, partition) {
            (Self::Single(c), Partition::Single(key)) => vec![(c.as_str(), key.as_str())],
            (Self::PerDimension(cols), Partition::Multi(dims)) => cols
                .iter()
                .filter_map(|(d, c)| dims.get(d).map(|k| (c.as_str(), k.as_str())))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        let key = AssetKey::parse("sales/daily").unwrap();
        assert_eq!(key.segments(), ["sales", "daily"]);
        assert_eq!(key.to_string(), "sales/daily");
        assert_eq!(key.name(), "daily");
        let key = AssetKey::new(&["a", "b/c"]).unwrap();
        assert_eq!(key.to_string(), "a/b/c");
    }

    #[test]
    fn refuses_keys_that_could_escape_or_confuse() {
        for bad in [
            "",
            "/",
            "a//b",
            "..",
            "a/../b",
            ".",
            ".hidden",
            "a/b c",
            "a\\b",
            "a/b\0",
            "é",
            "/abs",
            "trailing/",
        ] {
            let err = AssetKey::parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err}");
        }
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        assert!(AssetKey::parse(&long).is_err());
        let deep = vec!["a"; MAX_ASSET_SEGMENTS + 1].join("/");
        assert!(AssetKey::parse(&deep).is_err());
    }

    #[test]
    fn partition_ids_round_trip() {
        let single = Partition::single("2024-01-01-00:00").unwrap();
        assert_eq!(Partition::from_id(&single.id()).unwrap(), single);
        let multi = Partition::multi(BTreeMap::from([
            ("region".to_string(), "eu".to_string()),
            ("date".to_string(), "2024-01-01".to_string()),
        ]))
        .unwrap();
        assert_eq!(multi.id(), "date=2024-01-01|region=eu");
        assert_eq!(multi.path_segments(), ["2024-01-01", "eu"]);
        assert_eq!(Partition::from_id(&multi.id()).unwrap(), multi);
    }

    #[test]
    fn refuses_bad_partitions() {
        for bad in ["", "..", "a/b", "a=b", "a|b", ".x"] {
            assert!(Partition::single(bad).is_err(), "{bad:?}");
        }
        assert!(Partition::multi(BTreeMap::new()).is_err());
        assert!(Partition::multi(BTreeMap::from([("d".to_string(), "../x".to_string())])).is_err());
    }
}

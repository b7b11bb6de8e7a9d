//! Key names: where an asset's data sits, for Quiver and for applications reading Redis
//! directly (docs/configuration.md shows the same layout).
//!
//! Every key of an asset starts with the hash tag `{<prefix>:<asset>}`, so Redis Cluster would
//! keep them on one slot and a MULTI/EXEC over them stays on one node:
//!
//! - `{p:a}` or `{p:a}:<partition>`: the pointer, a hash naming the version readers see;
//! - `<pointer>:v<N>:<chunk>`: the Arrow IPC chunks of table-layout version N;
//! - `<pointer>:g<N>:<key values>`: one hash per row of hash-layout generation N;
//! - `{p:a}#puts`: the asset's registry of staged and retired versions, and its counter.
//!
//! Version numbers come from one counter per asset, so `<pointer>:v<N>` or `<pointer>:g<N>`
//! names one version of one partition, and a partition key with a `:`-separated part shaped
//! like `v<N>` or `g<N>` is refused: no key of one partition can then look like another's.

use crate::asset::{AssetKey, Partition};

use super::config::Layout;

/// The keys of one asset.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    tag: String,
}

impl Keys {
    pub fn new(prefix: &str, asset: &AssetKey) -> Self {
        Self {
            tag: format!("{{{prefix}:{asset}}}"),
        }
    }

    /// The pointer of the asset, or of one partition.
    pub fn pointer(&self, partition: Option<&Partition>) -> String {
        match partition {
            Some(p) => format!("{}:{}", self.tag, p.id()),
            None => self.tag.clone(),
        }
    }

    /// The asset's registry of staged and retired versions.
    pub fn registry(&self) -> String {
        format!("{}{REGISTRY_SUFFIX}", self.tag)
    }

    /// A pattern matching every key of the asset and nothing else.
    pub fn everything(&self) -> String {
        format!("{}*", glob_escape(&self.tag))
    }
}

/// What follows the hash tag in a registry key.
const REGISTRY_SUFFIX: &str = "#puts";

/// The registry field holding the asset's version counter.
pub(super) const COUNTER_FIELD: &str = "seq";

/// A pattern matching the registry of every asset under `prefix`.
pub(super) fn registries(prefix: &str) -> String {
    format!(
        "{}*}}{REGISTRY_SUFFIX}",
        glob_escape(&format!("{{{prefix}:"))
    )
}

/// The asset a registry key found with [`registries`] belongs to: `None` for a key of
/// another prefix that happens to match (asset keys hold no `:`).
pub(super) fn registry_asset(prefix: &str, key: &str) -> Option<AssetKey> {
    let asset = key
        .strip_prefix(&format!("{{{prefix}:"))?
        .strip_suffix(&format!("}}{REGISTRY_SUFFIX}"))?;
    (!asset.contains(':'))
        .then(|| AssetKey::parse(asset).ok())
        .flatten()
}

/// Refuses a partition key the layout could confuse with a version (see the module docs).
pub(super) fn check_partition(partition: &Partition) -> Result<(), String> {
    let id = partition.id();
    match id.split(':').find(|part| version_part(part).is_some()) {
        Some(part) => Err(format!(
            "partition '{id}' has the part '{part}', which redis targets keep for version \
             numbers (v<digits>, g<digits>); rename the partition"
        )),
        None => Ok(()),
    }
}

/// `v12` or `g12` as a layout and number.
fn version_part(part: &str) -> Option<(Layout, u64)> {
    let layout = match part.as_bytes().first()? {
        b'v' => Layout::Table,
        b'g' => Layout::Hash,
        _ => return None,
    };
    let digits = &part[1..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((layout, digits.parse().ok()?))
}

/// One version of an asset or partition: the chunks of a table-layout put, or the rows of a
/// hash-layout generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Version {
    pub pointer: String,
    pub layout: Layout,
    pub number: u64,
}

impl Version {
    /// `<pointer>:v<N>` or `<pointer>:g<N>`: what every key of the version starts with, and
    /// its name in the registry.
    pub fn prefix(&self) -> String {
        let letter = match self.layout {
            Layout::Table => 'v',
            Layout::Hash => 'g',
        };
        format!("{}:{letter}{}", self.pointer, self.number)
    }

    /// Parses [`Version::prefix`].
    pub fn parse(prefix: &str) -> Option<Self> {
        let (pointer, last) = prefix.rsplit_once(':')?;
        let (layout, number) = version_part(last)?;
        Some(Self {
            pointer: pointer.to_string(),
            layout,
            number,
        })
    }

    /// The key of table chunk `index`.
    pub fn chunk(&self, index: usize) -> String {
        format!("{}:{index}", self.prefix())
    }

    /// A pattern matching every key of this version and nothing else.
    pub fn pattern(&self) -> String {
        format!("{}:*", glob_escape(&self.prefix()))
    }
}

/// The version a table chunk key belongs to.
pub(super) fn chunk_version(chunk: &str) -> Option<Version> {
    let (prefix, index) = chunk.rsplit_once(':')?;
    index.parse::<usize>().ok()?;
    Version::parse(prefix)
}

/// Appends one key value to a row key: `%` and `:` are written `%25` and `%3A`, so the `:`
/// between the values of several key columns stays unambiguous.
pub(super) fn push_key_value(value: &[u8], out: &mut Vec<u8>) {
    for &byte in value {
        match byte {
            b'%' => out.extend_from_slice(b"%25"),
            b':' => out.extend_from_slice(b"%3A"),
            other => out.push(other),
        }
    }
}

/// `text` matched literally by a Redis glob pattern.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("quiver", &AssetKey::parse("sales/daily").unwrap());
        assert_eq!(keys.pointer(None), "{quiver:sales/daily}");
        let day = Partition::single("2024-01-01").unwrap();
        assert_eq!(keys.pointer(Some(&day)), "{quiver:sales/daily}:2024-01-01");
        let multi = Partition::multi(BTreeMap::from([
            ("region".to_string(), "eu".to_string()),
            ("date".to_string(), "2024-01-01".to_string()),
        ]))
        .unwrap();
        assert_eq!(
            keys.pointer(Some(&multi)),
            "{quiver:sales/daily}:date=2024-01-01|region=eu"
        );
        assert_eq!(keys.registry(), "{quiver:sales/daily}#puts");
        let v = Version {
            pointer: keys.pointer(Some(&day)),
            layout: Layout::Table,
            number: 7,
        };
        assert_eq!(v.chunk(0), "{quiver:sales/daily}:2024-01-01:v7:0");
        assert_eq!(Version::parse(&v.prefix()), Some(v.clone()));
        assert_eq!(chunk_version(&v.chunk(12)), Some(v));
        let g = Version {
            pointer: keys.pointer(None),
            layout: Layout::Hash,
            number: 3,
        };
        assert_eq!(g.prefix(), "{quiver:sales/daily}:g3");
        assert_eq!(g.pattern(), "{quiver:sales/daily}:g3:*");
        assert_eq!(Version::parse("{quiver:a}:x3"), None);
        assert_eq!(Version::parse("{quiver:a}:g"), None);
    }

    #[test]
    fn registries_name_their_asset() {
        assert_eq!(registries("quiver"), "{quiver:*}#puts");
        assert_eq!(
            registry_asset("quiver", "{quiver:sales/daily}#puts"),
            Some(AssetKey::parse("sales/daily").unwrap())
        );
        // Another target's prefix `quiver:x` matches the pattern but is not this one's.
        assert_eq!(registry_asset("quiver", "{quiver:x:sales}#puts"), None);
        assert_eq!(registry_asset("quiver", "{quiver:sales}"), None);
    }

    #[test]
    fn partitions_that_look_like_versions_are_refused() {
        for ok in [
            "2024-01-01",
            "2024-01-01T10:00:00",
            "good",
            "v",
            "gx1",
            "v1a",
        ] {
            check_partition(&Partition::single(ok).unwrap()).unwrap();
        }
        for bad in ["v1", "a:g22", "x:v0:y"] {
            let err = check_partition(&Partition::single(bad).unwrap()).unwrap_err();
            assert!(err.contains("rename the partition"), "{err}");
        }
    }

    #[test]
    fn key_values_escape_their_separator() {
        let mut key = Vec::new();
        push_key_value(b"a:b%c", &mut key);
        assert_eq!(key, b"a%3Ab%25c");
        assert_eq!(glob_escape("{q:a*}[x]"), "{q:a\\*}\\[x\\]");
    }
}

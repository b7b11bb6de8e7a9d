//! The one list of target kinds, and the set of targets a configuration builds from it.
//!
//! Each kind lives in its own folder under `src/targets/` and implements [`TargetKind`]: its
//! config type (the `[targets.<name>]` table without `kind`), its validation, its default
//! location, whether several servers can share it, and the factory that builds the target.
//! The `registry!` call at the bottom names every kind once; it generates [`TargetConfig`]
//! (the config enum, one variant per kind) and every `match` over it, so adding a kind is one
//! line here and the compiler checks the rest. A kind behind a Cargo feature that this build
//! left out is still known by name, so a config naming it is refused with the feature to
//! enable rather than as a typo.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{Target, TargetKind};
use crate::error::{Error, Result};
use crate::protocol::Mode;

/// The kinds a build can be missing, with the Cargo feature each needs.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub kind: &'static str,
    pub feature: Option<&'static str>,
    pub compiled: bool,
}

macro_rules! registry {
    (
        always { $( $variant:ident = $name:literal => $kind:ty, )* }
        optional { $( $fvariant:ident = $fname:literal => $fkind:ty, feature $feature:literal, )* }
    ) => {
        /// One target's settings, selected by `kind`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TargetConfig {
            $( $variant(<$kind as TargetKind>::Config), )*
            $( #[cfg(feature = $feature)] $fvariant(<$fkind as TargetKind>::Config), )*
        }

        /// Every kind Quiver knows, compiled into this build or not.
        pub const KINDS: &[KindInfo] = &[
            $( KindInfo { kind: $name, feature: None, compiled: true }, )*
            $( KindInfo { kind: $fname, feature: Some($feature), compiled: cfg!(feature = $feature) }, )*
        ];

        impl TargetConfig {
            /// The `kind` this config was read with.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $name, )*
                    $( #[cfg(feature = $feature)] Self::$fvariant(_) => $fname, )*
                }
            }

            /// Reads a `[targets.<name>]` table's settings for `kind`.
            fn parse(kind: &str, table: toml::Table) -> Result<Self, String> {
                let settings = toml::Value::Table(table);
                match kind {
                    $( $name => settings.try_into().map(Self::$variant).map_err(|e| e.to_string()), )*
                    $(
                        #[cfg(feature = $feature)]
                        $fname => settings.try_into().map(Self::$fvariant).map_err(|e| e.to_string()),
                        #[cfg(not(feature = $feature))]
                        $fname => Err(format!(
                            "target kind `{}` is not in this build (cargo feature `{}`); \
                             build Quiver with that feature or remove the target",
                            $fname, $feature
                        )),
                    )*
                    other => Err(format!(
                        "unknown target kind `{other}`; the kinds are {}",
                        KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
                    )),
                }
            }

            /// See [`TargetKind::validate`].
            pub fn validate(&self) -> Result<(), String> {
                match self {
                    $( Self::$variant(c) => <$kind as TargetKind>::validate(c), )*
                    $( #[cfg(feature = $feature)] Self::$fvariant(c) => <$fkind as TargetKind>::validate(c), )*
                }
            }

            /// See [`TargetKind::default_location`].
            pub fn default_location(&mut self, data_dir: &Path, name: &str) {
                match self {
                    $( Self::$variant(c) => <$kind as TargetKind>::default_location(c, data_dir, name), )*
                    $( #[cfg(feature = $feature)] Self::$fvariant(c) => <$fkind as TargetKind>::default_location(c, data_dir, name), )*
                }
            }

            /// See [`TargetKind::unshareable`].
            pub fn unshareable(&self) -> Option<String> {
                match self {
                    $( Self::$variant(c) => <$kind as TargetKind>::unshareable(c), )*
                    $( #[cfg(feature = $feature)] Self::$fvariant(c) => <$fkind as TargetKind>::unshareable(c), )*
                }
            }

            /// See [`TargetKind::build`].
            pub fn build(&self, name: &str) -> Result<Arc<dyn Target>> {
                match self {
                    $( Self::$variant(c) => <$kind as TargetKind>::build(name, c), )*
                    $( #[cfg(feature = $feature)] Self::$fvariant(c) => <$fkind as TargetKind>::build(name, c), )*
                }
            }
        }
    };
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => return Err(D::Error::custom("`kind` must be a string")),
            None => return Err(D::Error::missing_field("kind")),
        };
        Self::parse(&kind, table).map_err(D::Error::custom)
    }
}

registry! {
    always {
        Parquet = "parquet" => super::file::Parquet,
        Json = "json" => super::file::Json,
        Csv = "csv" => super::file::Csv,
        Arrow = "arrow" => super::file::Arrow,
        Discard = "discard" => super::discard::Discard,
    }
    optional {
        Duckdb = "duckdb" => super::duckdb::DuckDb, feature "duckdb",
        Postgres = "postgres" => super::postgres::Postgres, feature "postgres",
        Elasticsearch = "elasticsearch" => super::search::Elasticsearch, feature "search",
        Opensearch = "opensearch" => super::search::OpenSearch, feature "search",
        Redis = "redis" => super::redis::Redis, feature "redis",
        Excel = "excel" => super::excel::Excel, feature "excel",
        Delta = "delta" => super::delta::Delta, feature "delta",
        Webhook = "webhook" => super::webhook::Webhook, feature "webhook",
        Graphql = "graphql" => super::graphql::Graphql, feature "graphql",
        Email = "email" => super::email::Email, feature "email",
        Hyper = "hyper" => super::hyper::Hyper, feature "hyper",
    }
}

/// With several servers sharing storage, how old an orphaned put's leftovers must be before
/// a starting server removes them: no put runs this long.
pub const SHARED_LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Longest one target's recovery sweep may delay start-up.
const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The configured targets, by name.
#[derive(Clone, Default)]
pub struct Targets {
    by_name: BTreeMap<String, Arc<dyn Target>>,
}

impl Targets {
    /// Builds every configured target. Nothing is written until the first put.
    pub fn from_config(configs: &BTreeMap<String, TargetConfig>) -> Result<Self> {
        let by_name = configs
            .iter()
            .map(|(name, config)| Ok((name.clone(), config.build(name)?)))
            .collect::<Result<_>>()?;
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn Target>> {
        self.by_name.get(name).ok_or_else(|| Error::UnknownTarget {
            target: name.to_string(),
            available: self.names(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Target>> {
        self.by_name.values()
    }

    /// Runs every target's recovery sweep, before the server accepts calls. A target that
    /// cannot be reached is logged and skipped; its leftovers go at a later start.
    /// With `shared`, other servers may be writing right now, so only leftovers older than
    /// [`SHARED_LEFTOVER_AGE`] go.
    pub async fn recover(&self, shared: bool) {
        let min_age = if shared {
            SHARED_LEFTOVER_AGE
        } else {
            std::time::Duration::ZERO
        };
        for target in self.iter() {
            match tokio::time::timeout(RECOVERY_TIMEOUT, target.recover(min_age)).await {
                Ok(Ok(removed)) if removed.is_empty() => {}
                Ok(Ok(removed)) => tracing::info!(
                    target = target.name(),
                    count = removed.len(),
                    removed = %removed.join(", "),
                    "removed what interrupted puts left behind"
                ),
                Ok(Err(e)) => tracing::warn!(
                    target = target.name(),
                    error = %e,
                    "could not look for what interrupted puts left behind"
                ),
                Err(_) => tracing::warn!(
                    target = target.name(),
                    "the recovery sweep timed out; it runs again at the next start"
                ),
            }
        }
    }

    /// Names of the targets that can write `mode`, for error messages.
    pub fn supporting(&self, mode: Mode) -> Vec<String> {
        self.iter()
            .filter(|t| t.modes().contains(&mode))
            .map(|t| t.name().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TargetConfig, String> {
        toml::from_str::<TargetConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_compiled_kind_parses_from_its_name() {
        for info in KINDS.iter().filter(|k| k.compiled) {
            let settings = match info.kind {
                "postgres" => "url = \"postgres://db/x\"",
                "elasticsearch" | "opensearch" => "url = \"http://es:9200\"",
                "redis" => "url = \"redis://127.0.0.1:6379\"",
                "webhook" => "url = \"http://127.0.0.1:8080/hook\"",
                "email" => {
                    "smtp = \"smtp://127.0.0.1:25\"\nfrom = \"q@example.com\"\nto = [\"a@example.com\"]"
                }
                "graphql" => "endpoint = \"http://127.0.0.1:8080/graphql\"\nmutation = \"$rows\"",
                _ => "",
            };
            let config = parse(&format!("kind = \"{}\"\n{settings}", info.kind))
                .unwrap_or_else(|e| panic!("{}: {e}", info.kind));
            assert_eq!(config.kind(), info.kind);
        }
    }

    #[test]
    fn an_unknown_or_missing_kind_is_named() {
        let err = parse("kind = \"parquett\"").unwrap_err();
        assert!(err.contains("unknown target kind `parquett`"), "{err}");
        assert!(err.contains("parquet, json"), "{err}");
        assert!(parse("root = \"x\"").unwrap_err().contains("kind"));
        assert!(parse("kind = 3").unwrap_err().contains("string"));
    }

    #[test]
    fn settings_of_a_kind_stay_strict() {
        let err = parse("kind = \"parquet\"\ncompresion = \"zstd\"").unwrap_err();
        assert!(err.contains("compresion"), "{err}");
    }

    #[test]
    fn a_kind_left_out_of_the_build_names_its_feature() {
        for info in KINDS.iter().filter(|k| !k.compiled) {
            let err = parse(&format!("kind = \"{}\"", info.kind)).unwrap_err();
            let feature = info.feature.expect("only optional kinds can be left out");
            assert!(
                err.contains(&format!(
                    "target kind `{}` is not in this build (cargo feature `{feature}`)",
                    info.kind
                )),
                "{err}"
            );
        }
    }
}

//! The one list of target kinds.
//!
//! Each kind lives in its own folder under `src/targets/` and implements [`TargetKind`]: its
//! config type (the `[targets.<name>]` table without `kind`), its validation, its default
//! location, whether several servers can share it, and the factory that builds the target.
//! The `registry!` call at the bottom names every kind once; it generates [`TargetConfig`]
//! (the config enum, one variant per kind) and every `match` over it, so adding a kind is one
//! line here and the compiler checks the rest. A kind behind a Cargo feature that this build
//! left out is still known by name, so a config naming it is refused with the feature to
//! enable rather than as a typo.

use std::path::Path;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::Target;
use crate::error::Result;

/// What each target kind provides. `Config` is the kind's `[targets.<name>]` table.
pub trait TargetKind {
    type Config: DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Send + Sync;

    /// Checks settings without touching the outside world; the error names the setting.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Fills in where the target keeps its data when the config leaves it out.
    fn default_location(_config: &mut Self::Config, _data_dir: &Path, _name: &str) {}

    /// Why several servers (replicas) cannot share this target, if they cannot.
    fn unshareable(config: &Self::Config) -> Option<String>;

    /// Builds the target. Connects to nothing: the first put or health check does.
    fn build(name: &str, config: &Self::Config) -> Result<Arc<dyn Target>>;
}

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

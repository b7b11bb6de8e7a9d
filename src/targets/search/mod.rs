//! Elasticsearch and OpenSearch: one implementation, two flavours.
//!
//! An asset is an alias; its documents live in physical indices behind it. An overwrite loads
//! a new index and moves the alias to it in one `_aliases` call, so readers see the old
//! documents until the swap and never a mix. A partition is an index of its own, behind both
//! the asset's alias and a partition alias, so replacing one partition swaps only that index.
//! Appends and upserts go into the live index.
//!
//! Requests go through the `elasticsearch` crate's transport (connection handling, basic and
//! API-key credentials, CA certificates). The crate's typed API is written for Elasticsearch;
//! the few calls where OpenSearch differs (point in time) are sent by path through the same
//! transport.

mod bulk;
mod cluster;
mod config;
mod mapping;
mod read;

use std::sync::Arc;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use serde_json::json;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::{Mode, Options};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SchemaPolicy, SendableBatchStream, Target,
    WriteRequest, WriteSummary,
};
pub use config::{Elasticsearch, OpenSearch, SearchConfig};

use cluster::Cluster;

/// Which product the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Elasticsearch,
    OpenSearch,
}

impl Flavour {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Elasticsearch => "elasticsearch",
            Self::OpenSearch => "opensearch",
        }
    }
}

/// Longest index name the clusters accept, in bytes.
const MAX_INDEX_NAME: usize = 255;
/// What a physical index name adds to its alias: `.quiver-` and 32 hex digits.
const INDEX_SUFFIX_LEN: usize = 8 + 32;

/// Checks settings that need no connection.
pub fn check_config(config: &SearchConfig) -> Result<(), String> {
    cluster::parse_url(&config.url)?;
    if config.bulk_bytes < 1024 {
        return Err("bulk_bytes must be at least 1024".into());
    }
    if config.bulk_concurrency == 0 {
        return Err("bulk_concurrency must be at least 1".into());
    }
    if config.timeout_secs == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    if config.api_key.is_some() && (config.username.is_some() || config.password.is_some()) {
        return Err("set either api_key or username/password, not both".into());
    }
    if config.password.is_some() && config.username.is_none() {
        return Err("password is set without username".into());
    }
    if !config.index_prefix.is_empty() {
        check_index_name(&config.index_prefix).map_err(|e| format!("index_prefix: {e}"))?;
    }
    Ok(())
}

/// Index and alias names: lowercase, no `\ / * ? " < > | , # :` or spaces, not starting with
/// `_`, `-` or `+`.
fn check_index_name(name: &str) -> Result<(), String> {
    if name.starts_with(['_', '-', '+']) {
        return Err(format!(
            "'{name}' starts with '{}', which index names may not",
            &name[..1]
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_uppercase() || "\\/*?\"<>|,#: ".contains(*c))
    {
        return Err(format!(
            "'{name}' contains '{c}', which index names may not"
        ));
    }
    Ok(())
}

pub struct SearchTarget {
    name: String,
    flavour: Flavour,
    cluster: Arc<Cluster>,
    config: SearchConfig,
}

impl SearchTarget {
    /// Builds the client; nothing is sent until the first request.
    pub fn open(name: &str, flavour: Flavour, config: &SearchConfig) -> Result<Self> {
        check_config(config).map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
        let cluster = Cluster::connect(name, flavour, config)?;
        Ok(Self {
            name: name.to_string(),
            flavour,
            cluster: Arc::new(cluster),
            config: config.clone(),
        })
    }

    /// The alias an asset is read through: its key lowercased, `/` turned into `.`.
    fn alias(&self, asset: &AssetKey) -> Result<String> {
        let alias = format!(
            "{}{}",
            self.config.index_prefix,
            asset.segments().join(".").to_lowercase()
        );
        check_index_name(&alias).map_err(|e| {
            Error::invalid_request(format!(
                "asset '{asset}' cannot be stored in {} target '{}': its alias {e}; rename the asset",
                self.flavour.kind(),
                self.name
            ))
        })?;
        if alias.len() + INDEX_SUFFIX_LEN > MAX_INDEX_NAME {
            return Err(Error::invalid_request(format!(
                "asset '{asset}' is too long for {} target '{}': its alias may be at most {} bytes",
                self.flavour.kind(),
                self.name,
                MAX_INDEX_NAME - INDEX_SUFFIX_LEN
            )));
        }
        Ok(alias)
    }

    /// The alias of one partition's index.
    fn partition_alias(alias: &str, partition: &Partition) -> String {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, partition.id().as_bytes());
        format!("{alias}.quiver-p{}", id.simple())
    }

    /// The indices of the asset, or of some of its partitions, in read order.
    async fn indices(
        &self,
        asset: &AssetKey,
        partitions: Option<&[Partition]>,
    ) -> Result<Vec<String>> {
        let alias = self.alias(asset)?;
        let Some(partitions) = partitions else {
            return self.cluster.indices_behind(&alias).await;
        };
        let mut indices = Vec::new();
        for partition in partitions {
            let behind = self
                .cluster
                .indices_behind(&Self::partition_alias(&alias, partition))
                .await?;
            if behind.is_empty() {
                return Err(Error::storage(
                    &self.name,
                    "finding a partition's index",
                    format!("partition '{partition}' of asset '{asset}' has no index"),
                ));
            }
            indices.extend(behind);
        }
        Ok(indices)
    }

    /// Copies every document of `index`, read with `schema`, into the writer's new index.
    async fn copy(
        &self,
        writer: &mut bulk::SearchWriter,
        index: String,
        schema: SchemaRef,
    ) -> Result<()> {
        // Documents of a put made without `refresh` are not searchable until a refresh.
        self.cluster.refresh(&index).await?;
        let documents = read::read(Arc::clone(&self.cluster), vec![index], schema).await?;
        writer.copy(documents).await
    }
}

/// Per-put options.
#[derive(Debug)]
struct PutOptions {
    refresh: bool,
    text: Vec<String>,
}

fn put_options(options: &Options) -> Result<PutOptions> {
    let mut parsed = PutOptions {
        refresh: true,
        text: Vec::new(),
    };
    for (key, value) in options {
        match key.as_str() {
            // The protobuf descriptor carries options as strings.
            "refresh" => {
                parsed.refresh = match value {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::String(s) if s == "true" || s == "false" => s == "true",
                    _ => {
                        return Err(Error::invalid_request(format!(
                            "option 'refresh' must be true or false, not {value}"
                        )));
                    }
                };
            }
            "text" => {
                parsed.text = match value {
                    serde_json::Value::String(s) => {
                        s.split(',').map(|c| c.trim().to_string()).collect()
                    }
                    _ => serde_json::from_value(value.clone()).map_err(|_| {
                        Error::invalid_request(format!(
                            "option 'text' must list column names, e.g. [\"body\"] or \"body,title\", not {value}"
                        ))
                    })?,
                };
            }
            other => {
                return Err(Error::invalid_request(format!(
                    "option '{other}' is not understood by search targets; accepted options: refresh, text"
                )));
            }
        }
    }
    Ok(parsed)
}

#[async_trait]
impl Target for SearchTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.flavour.kind()
    }

    fn modes(&self) -> &'static [Mode] {
        &Mode::ALL
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        let base = format!("{}/{}", self.cluster.display_url(), self.storage_id(asset));
        crate::targets::partition_location(base, partition)
    }

    fn schema_policy(&self) -> SchemaPolicy {
        SchemaPolicy::Evolve
    }

    /// The alias; for a key the cluster would refuse (the put fails in `begin`), its
    /// lowercased form, so two such keys still compare.
    fn storage_id(&self, asset: &AssetKey) -> String {
        self.alias(asset)
            .unwrap_or_else(|_| asset.segments().join(".").to_lowercase())
    }

    async fn begin(&self, req: &WriteRequest, _schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        let options = put_options(&req.options)?;
        let mappings = mapping::mappings(&req.schema, &options.text).map_err(|reason| {
            Error::invalid_data(format!(
                "{} target '{}' cannot store asset '{}': {reason}",
                self.flavour.kind(),
                self.name,
                req.asset
            ))
        })?;
        let alias = self.alias(&req.asset)?;
        let partition_alias = req
            .partition
            .as_ref()
            .map(|p| Self::partition_alias(&alias, p));
        let behind_alias = self.cluster.indices_behind(&alias).await?;
        if behind_alias.is_empty() && self.cluster.index_exists(&alias).await? {
            return Err(Error::failed_precondition(format!(
                "{} target '{}' already has an index named '{alias}' that Quiver did not create; \
                 delete it or give the asset another name",
                self.flavour.kind(),
                self.name
            )));
        }
        let live = match &partition_alias {
            Some(p) => self.cluster.indices_behind(p).await?,
            None => behind_alias.clone(),
        };
        if req.existing.is_none() && !behind_alias.is_empty() && req.mode != Mode::Overwrite {
            return Err(Error::failed_precondition(format!(
                "alias '{alias}' in {} target '{}' exists but is not a Quiver asset; \
                 overwrite it to take it over, or give the asset another name",
                self.flavour.kind(),
                self.name
            )));
        }
        let target = bulk::Destination {
            alias,
            partition_alias,
            index: String::new(),
            created: false,
            replaces: Vec::new(),
        };
        let meta = json!({
            "prefix": self.config.index_prefix,
            "asset": req.asset.to_string(),
            "partition": req.partition.as_ref().map(Partition::to_json),
            "key": mapping::key_meta(&req.key),
        });
        // The index an upsert copies before writing, when its documents' `_id`s do not come
        // from the upsert's key.
        let mut rekeys = None;
        let destination = match (req.mode, live.as_slice()) {
            (Mode::Append | Mode::Upsert, [index]) => {
                let current = self.cluster.mapping(index).await?;
                let keyed_by = mapping::keyed_by(&current);
                let by_this_key = keyed_by.as_deref() == Some(req.key.as_slice());
                if req.mode == Mode::Upsert && !by_this_key {
                    // Documents written without this key cannot be found by `_id`: the upsert
                    // copies them into a new index keyed by it, then swaps it in like an
                    // overwrite, so readers never see both a document and its replacement.
                    let new = put_index(&target.alias, &req.put_id);
                    let extended = mapping::extended(&current, &mappings);
                    self.cluster.create_index(&new, extended, meta).await?;
                    rekeys = Some(index.clone());
                    bulk::Destination {
                        index: new,
                        created: true,
                        replaces: vec![index.clone()],
                        ..target
                    }
                } else {
                    let forget = (keyed_by.is_some() && !by_this_key)
                        .then(|| mapping::without_key(&current));
                    self.cluster
                        .extend_mapping(index, &current, &mappings, forget)
                        .await?;
                    bulk::Destination {
                        index: index.clone(),
                        ..target
                    }
                }
            }
            (Mode::Append | Mode::Upsert, [_, _, ..]) => {
                return Err(Error::failed_precondition(format!(
                    "asset '{}' in {} target '{}' spans several indices ({}); overwrite it first",
                    req.asset,
                    self.flavour.kind(),
                    self.name,
                    live.join(", ")
                )));
            }
            _ => {
                let index = put_index(&target.alias, &req.put_id);
                let mut replaces = live;
                if req.existing.is_none() {
                    // A stale alias of the same name is taken over whole.
                    for old in behind_alias {
                        if !replaces.contains(&old) {
                            replaces.push(old);
                        }
                    }
                }
                self.cluster.create_index(&index, mappings, meta).await?;
                bulk::Destination {
                    index,
                    created: true,
                    replaces,
                    ..target
                }
            }
        };
        let mut writer = Box::new(bulk::SearchWriter::new(
            Arc::clone(&self.cluster),
            destination,
            req,
            options.refresh,
            self.location(&req.asset, req.partition.as_ref()),
        ));
        if let Some(old) = rekeys {
            let schema = mapping::with_order_field(req.existing.as_deref().unwrap_or(&req.schema));
            if let Err(e) = self.copy(&mut writer, old, schema).await {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "aborting an upsert whose copy failed also failed");
                }
                return Err(e);
            }
        }
        Ok(writer)
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let indices = self.indices(&req.asset, req.partitions.as_deref()).await?;
        read::read(Arc::clone(&self.cluster), indices, req.output_schema()?).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let indices = if req.whole {
            self.indices(&req.asset, None).await?
        } else {
            let alias = self.alias(&req.asset)?;
            let mut indices = Vec::new();
            for partition in &req.partitions {
                indices.extend(
                    self.cluster
                        .indices_behind(&Self::partition_alias(&alias, partition))
                        .await?,
                );
            }
            indices
        };
        self.cluster.delete_indices(&indices).await
    }

    async fn healthcheck(&self) -> Result<()> {
        self.cluster.ping().await
    }

    /// Deletes Quiver's indices that no alias points to: loads a crashed server never
    /// committed.
    async fn recover(&self, min_age: std::time::Duration) -> Result<Vec<String>> {
        let orphans = self
            .cluster
            .unaliased_indices(
                &format!("{}*.quiver-*", self.config.index_prefix),
                &self.config.index_prefix,
                min_age,
            )
            .await?;
        self.cluster.delete_indices(&orphans).await?;
        Ok(orphans)
    }

    /// A put that loaded an index of its own (named for the put) landed if the asset's (or
    /// partition's) alias points to it; otherwise that index is deleted. An append or upsert
    /// into the live index wrote its documents as they streamed, so once pending it has landed.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let alias = self.alias(&c.asset)?;
        let index = put_index(&alias, &put.id);
        let serving = match &c.partition {
            Some(p) => Self::partition_alias(&alias, p),
            None => alias.clone(),
        };
        let landed = self
            .cluster
            .indices_behind(&serving)
            .await?
            .contains(&index)
            || (c.mode != Mode::Overwrite && !self.cluster.index_exists(&index).await?);
        if !landed {
            if self.cluster.index_exists(&index).await? {
                self.cluster.delete_indices(&[index]).await?;
            }
            return Ok(None);
        }
        Ok(Some(WriteSummary {
            rows: c.rows,
            bytes: c.bytes,
            location: c.location.clone(),
            total_rows: None,
        }))
    }
}

/// The index a put loads when it does not write into the live one: named for the put, so
/// that after a crash the alias tells whether the put's commit (the alias swap) landed.
fn put_index(alias: &str, put_id: &str) -> String {
    format!("{alias}.quiver-{}", put_id.replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_cluster_rules() {
        assert!(check_index_name("sales.daily").is_ok());
        assert!(check_index_name("_sales").is_err());
        assert!(check_index_name("-sales").is_err());
        assert!(check_index_name("Sales").is_err());
        assert!(check_index_name("a b").is_err());
        assert!(check_index_name("a#b").is_err());
    }

    #[test]
    fn options_are_checked() {
        let mut options = Options::new();
        options.insert("refresh".into(), json!(false));
        options.insert("text".into(), json!(["body"]));
        let parsed = put_options(&options).unwrap();
        assert!(!parsed.refresh);
        assert_eq!(parsed.text, ["body"]);
        options.insert("refresh".into(), json!("yes"));
        assert!(put_options(&options).is_err());
        options.insert("refresh".into(), json!("false"));
        options.insert("text".into(), json!("body, title"));
        let parsed = put_options(&options).unwrap();
        assert!(!parsed.refresh);
        assert_eq!(parsed.text, ["body", "title"]);
        let mut unknown = Options::new();
        unknown.insert("shards".into(), json!(3));
        let err = put_options(&unknown).unwrap_err().to_string();
        assert!(err.contains("'shards'"), "{err}");
    }

    #[test]
    fn partition_aliases_are_stable_and_distinct() {
        let a = Partition::single("2024-01-01").unwrap();
        let b = Partition::single("2024-01-02").unwrap();
        assert_eq!(
            SearchTarget::partition_alias("sales", &a),
            SearchTarget::partition_alias("sales", &a)
        );
        assert_ne!(
            SearchTarget::partition_alias("sales", &a),
            SearchTarget::partition_alias("sales", &b)
        );
    }
}

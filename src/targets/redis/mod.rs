//! Redis: assets as Arrow IPC chunks (table layout) or one hash per row (hash layout).
//!
//! Every key of an asset carries the hash tag `{<prefix>:<asset>}` (see `keys`). A put writes
//! a new, invisible version and its commit swaps the asset's pointer hash to it in one
//! MULTI/EXEC (see `stage`); readers follow the pointer, so they see the old version until the
//! swap and never a mix. The connection is a `redis` crate `ConnectionManager`, which
//! reconnects by itself when Redis comes back.

mod config;
mod hash;
mod keys;
mod stage;
mod store;
mod table;
mod values;

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::StreamExt;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::{Mode, Options};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary,
};
pub use config::{Layout, Redis, RedisConfig};

use keys::{Keys, Version};
use stage::{PutInfo, Stage};
use store::{PointerState, Store};

pub struct RedisTarget {
    name: String,
    config: RedisConfig,
    store: Arc<Store>,
}

/// Per-put options.
#[derive(Debug, PartialEq)]
struct PutOptions {
    layout: Layout,
    ttl: Option<u64>,
}

fn put_options(options: &Options, config: &RedisConfig) -> Result<PutOptions> {
    let mut parsed = PutOptions {
        layout: config.layout,
        ttl: config.ttl,
    };
    for (key, value) in options {
        match key.as_str() {
            "layout" => {
                parsed.layout = value.as_str().and_then(Layout::parse).ok_or_else(|| {
                    Error::invalid_request(format!(
                        "option 'layout' must be \"table\" or \"hash\", not {value}"
                    ))
                })?;
            }
            // The protobuf descriptor carries options as strings.
            "ttl" => {
                let seconds = match value {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                parsed.ttl = match seconds {
                    Some(0) => None,
                    Some(seconds) => Some(seconds),
                    None => {
                        return Err(Error::invalid_request(format!(
                            "option 'ttl' must be a whole number of seconds (0: never expire), \
                             not {value}"
                        )));
                    }
                };
            }
            other => {
                return Err(Error::invalid_request(format!(
                    "option '{other}' is not understood by redis targets; accepted options: \
                     layout, ttl"
                )));
            }
        }
    }
    Ok(parsed)
}

/// `name: type` of each column, for messages.
fn columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RedisTarget {
    /// Checks the settings; connects to nothing until the first request.
    pub fn open(name: &str, config: &RedisConfig) -> Result<Self> {
        config::check(config).map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            store: Arc::new(Store::open(name, config)?),
        })
    }

    fn keys(&self, asset: &AssetKey) -> Keys {
        Keys::new(&self.config.prefix, asset)
    }

    /// The error for a pointer key holding something Quiver did not write.
    fn foreign(&self, key: &str, asset: &AssetKey) -> Error {
        Error::failed_precondition(format!(
            "key {key} in redis target '{}' holds something Quiver did not write, where asset \
             '{asset}' belongs; overwrite the asset to replace it, or delete the key",
            self.name
        ))
    }

    /// Removes one pointer and every version it names or its registry lists for it.
    async fn delete_pointer(&self, keys: &Keys, key: &str) -> Result<()> {
        let mut versions = match self.store.pointer(key).await? {
            PointerState::Quiver(pointer) => pointer.versions(),
            _ => Vec::new(),
        };
        for (version, _) in self.store.registry(keys).await? {
            if version.pointer == key && !versions.contains(&version) {
                versions.push(version);
            }
        }
        for version in &versions {
            self.store.discard(keys, version).await?;
        }
        self.store.unlink(&[key]).await.map(|_| ())
    }
}

#[async_trait]
impl Target for RedisTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    /// Overwrite in both layouts, append in the table layout, upsert in the hash layout; a
    /// put naming a mode its layout cannot do is refused in [`Target::begin`].
    fn modes(&self) -> &'static [Mode] {
        &Mode::ALL
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        format!(
            "{}/{}",
            self.store.display_url().trim_end_matches('/'),
            self.keys(asset).pointer(partition)
        )
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        let options = put_options(&req.options, &self.config)?;
        if let Some(partition) = &req.partition {
            keys::check_partition(partition).map_err(Error::invalid_request)?;
        }
        let layout = options.layout.as_str();
        let refuse = |mode: &str, why: &str| {
            Err(Error::failed_precondition(format!(
                "target '{}' does not support mode '{mode}' with layout \"{layout}\": {why}",
                self.name
            )))
        };
        match (options.layout, req.mode) {
            (Layout::Table, Mode::Upsert) => {
                return refuse(
                    "upsert",
                    "a table-layout asset is Arrow IPC, not rows addressable by key; put with \
                     option layout = \"hash\" and a key to upsert",
                );
            }
            (Layout::Hash, Mode::Append) => {
                return refuse(
                    "append",
                    "each row is the hash named by its key; upsert the rows instead",
                );
            }
            _ => {}
        }
        if req.mode != Mode::Overwrite
            && let Some(existing) = &req.existing
            && existing.fields() != schema.fields()
        {
            return Err(Error::failed_precondition(format!(
                "asset '{}' in target '{}' has columns [{}] but this put sends [{}]; an {} must \
                 send the stored columns, an overwrite may change them",
                req.asset,
                self.name,
                columns(existing),
                columns(&schema),
                req.mode
            )));
        }
        if options.layout == Layout::Hash {
            if req.key.is_empty() {
                return Err(Error::invalid_request(format!(
                    "the hash layout of target '{}' stores one hash per row, named by the row's \
                     key: set the descriptor's \"key\" option to the key columns, e.g. \
                     \"key\": [\"id\"]",
                    self.name
                )));
            }
            values::check(&schema, &req.key).map_err(|reason| {
                Error::invalid_data(format!(
                    "target '{}' cannot store asset '{}' in the hash layout: {reason}",
                    self.name, req.asset
                ))
            })?;
        }

        let keys = self.keys(&req.asset);
        let pointer_key = keys.pointer(req.partition.as_ref());
        let previous = match self.store.pointer(&pointer_key).await? {
            PointerState::Quiver(pointer) => Some(pointer),
            PointerState::Missing => None,
            PointerState::Foreign if req.mode == Mode::Overwrite => None,
            PointerState::Foreign => return Err(self.foreign(&pointer_key, &req.asset)),
        };
        if let Some(previous) = &previous {
            if req.existing.is_none() && req.mode != Mode::Overwrite {
                return Err(Error::failed_precondition(format!(
                    "{pointer_key} in redis target '{}' holds data this server's catalog does not \
                     list; overwrite asset '{}' to take it over, or delete the keys",
                    self.name, req.asset
                )));
            }
            if req.mode != Mode::Overwrite && previous.layout != options.layout {
                return Err(Error::failed_precondition(format!(
                    "asset '{}' in target '{}' is stored in the {} layout, but this {} asks for \
                     the {layout} layout; overwrite the asset to change its layout",
                    req.asset,
                    self.name,
                    previous.layout.as_str(),
                    req.mode
                )));
            }
            if req.mode == Mode::Upsert && previous.key_columns != req.key {
                return Err(Error::failed_precondition(format!(
                    "asset '{}' in target '{}' is keyed by {:?}, not {:?}; upsert by the same \
                     key, or overwrite the asset to key it differently",
                    req.asset, self.name, previous.key_columns, req.key
                )));
            }
        }
        let upsert_into = match (&previous, req.mode) {
            (Some(p), Mode::Upsert) => Some(p.generation()),
            _ => None,
        };
        let stage = Stage::begin(
            Arc::clone(&self.store),
            keys,
            pointer_key,
            options.layout,
            previous,
            PutInfo {
                put_id: req.put_id.clone(),
                ttl: options.ttl,
                location: self.location(&req.asset, req.partition.as_ref()),
            },
        )
        .await?;
        let partitioned = req.partition.is_some();
        Ok(match options.layout {
            Layout::Table => Box::new(table::TableWriter::new(
                stage,
                req.mode,
                schema,
                self.config.chunk_bytes,
                partitioned,
            )),
            Layout::Hash => Box::new(hash::HashWriter::new(
                stage,
                schema,
                req.key.clone(),
                self.config.pipeline,
                upsert_into,
                partitioned,
            )?),
        })
    }

    /// Pins every pointer now; each one's keys are fetched when the stream reaches it.
    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let keys = self.keys(&req.asset);
        let pointer_keys: Vec<String> = match &req.partitions {
            None => vec![keys.pointer(None)],
            Some(partitions) => partitions.iter().map(|p| keys.pointer(Some(p))).collect(),
        };
        let mut pointers = Vec::with_capacity(pointer_keys.len());
        for key in pointer_keys {
            pointers.push(match self.store.pointer(&key).await? {
                PointerState::Quiver(pointer) => pointer,
                PointerState::Foreign => return Err(self.foreign(&key, &req.asset)),
                PointerState::Missing => {
                    return Err(Error::failed_precondition(format!(
                        "asset '{}' in redis target '{}' has no data at {key}: its keys expired \
                         (ttl) or were deleted outside Quiver; put the asset again or delete it",
                        req.asset, self.name
                    )));
                }
            });
        }
        let store = Arc::clone(&self.store);
        let schema = req.output_schema()?;
        let projection = req.projection.clone();
        let asset = req.asset.to_string();
        let streams = pointers
            .into_iter()
            .map(move |pointer| match pointer.layout {
                Layout::Table => table::read(
                    Arc::clone(&store),
                    pointer,
                    projection.clone(),
                    asset.clone(),
                ),
                Layout::Hash => hash::read(
                    Arc::clone(&store),
                    hash::HashRead {
                        pointer,
                        schema: Arc::clone(&schema),
                        asset: asset.clone(),
                    },
                ),
            });
        Ok(Box::pin(futures::stream::iter(streams).flatten()))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let keys = self.keys(&req.asset);
        if req.whole {
            self.store.unlink_matching(&keys.everything(), b"").await
        } else {
            for partition in &req.partitions {
                self.delete_pointer(&keys, &keys.pointer(Some(partition)))
                    .await?;
            }
            Ok(())
        }
    }

    async fn healthcheck(&self) -> Result<()> {
        self.store.ping().await
    }

    /// Removes the versions registries list as retired (a commit replaced them, and a crash
    /// came before their keys were deleted) and the staged ones at least `min_age` old that no
    /// pointer names (puts that never committed).
    async fn recover(&self, min_age: std::time::Duration) -> Result<Vec<String>> {
        let pattern = keys::registries(&self.config.prefix);
        let mut registries = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, found) = self.store.scan(&pattern, cursor).await?;
            registries.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        registries.sort();
        registries.dedup();
        let mut removed = Vec::new();
        for key in registries {
            let Some(asset) =
                keys::registry_asset(&self.config.prefix, &String::from_utf8_lossy(&key))
            else {
                continue;
            };
            removed.extend(self.store.sweep(&self.keys(&asset), min_age).await?);
        }
        Ok(removed)
    }

    /// The put landed if its pointer names it (the commit's MULTI/EXEC writes the put id into
    /// the pointer): then the versions it replaced are deleted if a crash left them. If not,
    /// its staged keys (the mark) are deleted.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let keys = self.keys(&c.asset);
        let pointer_key = keys.pointer(c.partition.as_ref());
        let pointer = self.store.pointer(&pointer_key).await?.quiver();
        if let Some(pointer) = pointer.filter(|p| p.put == put.id) {
            self.store.sweep(&keys, std::time::Duration::MAX).await?;
            return Ok(Some(WriteSummary {
                rows: c.rows,
                bytes: c.bytes,
                location: c.location.clone(),
                total_rows: c.partition.is_none().then_some(pointer.rows),
            }));
        }
        if let Some(staged) = Version::parse(&put.mark).filter(|v| v.pointer == pointer_key) {
            self.store.discard(&keys, &staged).await?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn options_are_checked() {
        let config = RedisConfig::from_url("redis://127.0.0.1/");
        let mut options = Options::new();
        assert_eq!(
            put_options(&options, &config).unwrap(),
            PutOptions {
                layout: Layout::Table,
                ttl: None
            }
        );
        options.insert("layout".into(), json!("hash"));
        options.insert("ttl".into(), json!("60"));
        assert_eq!(
            put_options(&options, &config).unwrap(),
            PutOptions {
                layout: Layout::Hash,
                ttl: Some(60)
            }
        );
        let with_default = RedisConfig {
            ttl: Some(30),
            ..config.clone()
        };
        options.insert("ttl".into(), json!(0));
        assert_eq!(put_options(&options, &with_default).unwrap().ttl, None);
        options.insert("ttl".into(), json!(-1));
        assert!(
            put_options(&options, &config)
                .unwrap_err()
                .to_string()
                .contains("ttl")
        );
        options.insert("ttl".into(), json!(5));
        options.insert("layout".into(), json!("rows"));
        assert!(
            put_options(&options, &config)
                .unwrap_err()
                .to_string()
                .contains("layout")
        );
        let mut unknown = Options::new();
        unknown.insert("expire".into(), json!(3));
        let err = put_options(&unknown, &config).unwrap_err().to_string();
        assert!(
            err.contains("'expire'") && err.contains("layout, ttl"),
            "{err}"
        );
    }
}

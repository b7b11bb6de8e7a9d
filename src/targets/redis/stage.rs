//! The commit protocol both layouts share.
//!
//! A put numbers a new version from the asset's counter and notes it as staged in the
//! asset's registry before writing any key of it. Its keys are invisible: readers follow the
//! pointer, which names older versions. The commit is one MULTI/EXEC that rewrites the
//! pointer (with the put's id), drops the staged note and notes the versions the pointer no
//! longer names as retired; their keys are deleted right after, and a crash in between leaves
//! them to the next settle or start-up sweep. An abort deletes the staged keys, then the note.

use std::sync::Arc;

use arrow_schema::Schema;
use redis::Pipeline;

use super::config::Layout;
use super::keys::{Keys, Version};
use super::store::{Entry, Pointer, Store, field};
use crate::error::Result;

/// Who is putting, and how its keys live.
pub(super) struct PutInfo {
    pub put_id: String,
    pub ttl: Option<u64>,
    /// Where the data lives, for the put's summary.
    pub location: String,
}

/// One put's place in Redis.
pub(super) struct Stage {
    pub store: Arc<Store>,
    pub keys: Keys,
    /// Where the put writes its keys.
    pub version: Version,
    /// The pointer as the put found it; the asset's lock keeps it so until the commit.
    pub previous: Option<Pointer>,
    pub put_id: String,
    pub ttl: Option<u64>,
    pub location: String,
}

impl Stage {
    /// Numbers a new version of `pointer` and notes it as staged.
    pub async fn begin(
        store: Arc<Store>,
        keys: Keys,
        pointer: String,
        layout: Layout,
        previous: Option<Pointer>,
        put: PutInfo,
    ) -> Result<Self> {
        let number = store.next_version(&keys).await?;
        let version = Version {
            pointer,
            layout,
            number,
        };
        store.note_staged(&keys, &version, &put.put_id).await?;
        Ok(Self {
            store,
            keys,
            version,
            previous,
            put_id: put.put_id,
            ttl: put.ttl,
            location: put.location,
        })
    }

    /// What [`crate::targets::Target::resolve`] needs to find the staged keys again.
    pub fn mark(&self) -> String {
        self.version.prefix()
    }

    pub fn pointer_key(&self) -> &str {
        &self.version.pointer
    }

    /// An empty MULTI/EXEC for the commit: the pointer rewrite and whatever must land with it.
    pub fn transaction(&self) -> Pipeline {
        let mut tx = redis::pipe();
        tx.atomic();
        tx
    }

    /// Sets (`ttl`) or clears the expiry of `key` within `tx`.
    pub fn expiry(&self, tx: &mut Pipeline, key: &str) {
        match self.ttl {
            Some(seconds) => tx.cmd("EXPIRE").arg(key).arg(seconds).ignore(),
            None => tx.cmd("PERSIST").arg(key).ignore(),
        };
    }

    /// Runs `tx` after adding the registry changes: the staged note goes, `retire` is noted as
    /// retired. Then deletes the retired versions' keys; a failure there is logged, since the
    /// put is committed and the registry still lists them for the next sweep.
    pub async fn commit(&self, mut tx: Pipeline, retire: &[Version]) -> Result<()> {
        let registry = self.keys.registry();
        tx.cmd("HDEL")
            .arg(&registry)
            .arg(self.version.prefix())
            .ignore();
        for old in retire {
            tx.cmd("HSET")
                .arg(&registry)
                .arg(old.prefix())
                .arg(Entry::retired(&self.put_id).encode())
                .ignore();
        }
        self.store
            .pipe::<()>("committing (swapping the pointer)", &tx)
            .await?;
        for old in retire {
            if let Err(e) = self.store.discard(&self.keys, old).await {
                tracing::warn!(
                    target = self.store.target(),
                    version = %old.prefix(),
                    error = %e,
                    "could not delete a replaced version yet; the next put or start-up does"
                );
            }
        }
        Ok(())
    }

    /// Deletes everything the put wrote and its staged note.
    pub async fn abort(&self) -> Result<()> {
        self.store.discard(&self.keys, &self.version).await
    }
}

/// The fields every pointer carries besides its layout's own.
pub(super) fn common_fields(
    layout: Layout,
    rows: u64,
    bytes: u64,
    put_id: &str,
    schema: &Schema,
) -> Vec<(&'static str, String)> {
    vec![
        (field::LAYOUT, layout.as_str().to_string()),
        (field::ROWS, rows.to_string()),
        (field::BYTES, bytes.to_string()),
        (field::PUT, put_id.to_string()),
        (field::SCHEMA, schema_json(schema)),
    ]
}

/// The schema as applications reading Redis see it: `[{"name", "type", "nullable"}]`, the
/// type in Arrow's own notation.
fn schema_json(schema: &Schema) -> String {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
            })
        })
        .collect();
    serde_json::Value::Array(columns).to_string()
}

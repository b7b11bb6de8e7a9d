//! DoAction and ListActions: deleting and describing an asset, listing the targets, and their
//! health.

use std::sync::Arc;

use arrow_flight::{Action, ActionType};
use serde::Serialize;
use serde_json::json;
use tonic::Status;
use tracing::info;

use super::Inner;
use super::records::{describe_record, schema_json};
use crate::asset::Partition;
use crate::auth::{Access, Principal};
use crate::error::{Error, Result};
use crate::protocol::{self, Mode};
use crate::targets::DeleteRequest;

/// The actions DoAction understands, with the description ListActions gives.
const ACTIONS: [(&str, &str); 4] = [
    (
        "delete",
        "Delete an asset or one partition of it. Body: {\"target\": T, \"asset\": A, \"partition\": P?}",
    ),
    (
        "describe",
        "Catalog record and write history of an asset. Body: {\"target\": T, \"asset\": A}",
    ),
    (
        "list-targets",
        "The configured targets with their kind and supported modes. Body: empty",
    ),
    (
        "health",
        "Health of every target; status is \"ok\" or \"degraded\". Body: empty",
    ),
];

impl Inner {
    /// ListActions' answer.
    pub(super) fn list_actions(&self) -> [Result<ActionType, Status>; 4] {
        ACTIONS.map(|(name, description)| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: description.to_string(),
            })
        })
    }

    /// DoAction's work: decodes the action's body, checks that `caller` may run it, runs it
    /// and answers with one JSON result.
    pub(super) async fn act(
        &self,
        caller: &Principal,
        action: Action,
    ) -> Result<arrow_flight::Result, Status> {
        let value = match action.r#type.as_str() {
            "delete" => {
                let action = protocol::parse_asset_action("delete", &action.body)?;
                caller.check(Access::Write, &action.target, &action.asset)?;
                self.delete(action).await?
            }
            "describe" => {
                let action = protocol::parse_asset_action("describe", &action.body)?;
                caller.check(Access::Read, &action.target, &action.asset)?;
                self.describe(action).await?
            }
            "list-targets" => self.list_targets(),
            "health" => self.health().await,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action '{other}'; actions: {}",
                    ACTIONS.map(|(name, _)| name).join(", ")
                )));
            }
        };
        json_result(&value)
    }

    async fn delete(&self, action: protocol::AssetAction) -> Result<serde_json::Value> {
        let target = Arc::clone(self.targets.get(&action.target)?);
        let lock = self.locks.get(&action.target, &action.asset);
        let _put = lock.put.lock().await;
        // Other servers sharing the catalog write this asset one at a time too.
        let _shared = self
            .catalog
            .lock_asset(&action.target, &action.asset)
            .await?;
        self.settle_pending(target.as_ref(), &lock, &action.asset)
            .await?;
        let _visible = lock.visible.write().await;
        let record = self.record(&action.target, &action.asset).await?;
        let partitions: Vec<Partition> = match &action.partition {
            None => record
                .partitions
                .iter()
                .map(|p| p.partition.clone())
                .collect(),
            Some(_) if !record.layout.is_partitioned() => {
                return Err(Error::invalid_request(format!(
                    "asset '{}' in target '{}' is not partitioned; delete it without \"partition\"",
                    action.asset, action.target
                )));
            }
            Some(p) => {
                if !record.partitions.iter().any(|r| &r.partition == p) {
                    return Err(Error::AssetNotFound {
                        target: action.target.clone(),
                        asset: action.asset.to_string(),
                        partition: Some(p.to_string()),
                    });
                }
                vec![p.clone()]
            }
        };
        let whole = action.partition.is_none();
        // The catalog goes first: once it forgets the data, no reader can open it.
        let forget: &[Partition] = if whole { &[] } else { &partitions };
        self.catalog
            .delete(&action.target, &action.asset, forget)
            .await?;
        target
            .delete(&DeleteRequest {
                asset: action.asset.clone(),
                whole,
                partitions,
                partition_columns: record.partition_columns.clone(),
            })
            .await?;
        info!(target = %action.target, asset = %action.asset, "deleted");
        Ok(json!({
            "deleted": action.asset.to_string(),
            "target": action.target,
            "partition": action.partition.as_ref().map(Partition::to_json),
        }))
    }

    async fn describe(&self, action: protocol::AssetAction) -> Result<serde_json::Value> {
        let target = self.targets.get(&action.target)?;
        let record = self.record(&action.target, &action.asset).await?;
        let history = self.catalog.history(&action.target, &action.asset).await?;
        let mut value = describe_record(&record, target.kind());
        value["schema"] = schema_json(&record.schema);
        value["history"] =
            serde_json::to_value(history).map_err(|e| Error::internal(e.to_string()))?;
        Ok(value)
    }

    fn list_targets(&self) -> serde_json::Value {
        let targets: Vec<_> = self
            .targets
            .iter()
            .map(|t| {
                json!({
                    "name": t.name(),
                    "kind": t.kind(),
                    "modes": t.modes().iter().map(Mode::as_str).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!(targets)
    }

    async fn health(&self) -> serde_json::Value {
        let mut targets = serde_json::Map::new();
        let mut healthy = true;
        for target in self.targets.iter() {
            let state = match target.healthcheck().await {
                Ok(()) => json!({"ok": true}),
                Err(e) => {
                    healthy = false;
                    json!({"ok": false, "error": e.to_string()})
                }
            };
            targets.insert(target.name().to_string(), state);
        }
        json!({"status": if healthy { "ok" } else { "degraded" }, "targets": targets})
    }
}

fn json_result(value: &impl Serialize) -> Result<arrow_flight::Result, Status> {
    let body = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(arrow_flight::Result::new(body))
}

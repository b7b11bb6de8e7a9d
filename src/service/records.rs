//! An asset's catalog record as clients see it: in a FlightInfo's app_metadata, in the
//! describe action's answer, and in the error messages that name its columns.

use arrow_schema::Schema;
use serde_json::json;

use crate::catalog::AssetRecord;

pub(super) fn field_summary(schema: &Schema) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}

pub(super) fn schema_json(schema: &Schema) -> serde_json::Value {
    json!(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect::<Vec<_>>()
    )
}

pub(super) fn describe_record(record: &AssetRecord, kind: &str) -> serde_json::Value {
    let partitions: Vec<_> = record
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition.to_json(),
                "rows": p.rows,
                "bytes": p.bytes,
                "location": p.location,
                "version": p.version,
                "updated_at": p.updated_at.to_rfc3339(),
            })
        })
        .collect();
    json!({
        "target": record.target,
        "kind": kind,
        "asset": record.asset.to_string(),
        "version": record.version,
        "rows": record.rows,
        "bytes": record.bytes,
        "location": record.location,
        "created_at": record.created_at.to_rfc3339(),
        "updated_at": record.updated_at.to_rfc3339(),
        "partitioned": record.layout.is_partitioned(),
        "partitions": partitions,
    })
}

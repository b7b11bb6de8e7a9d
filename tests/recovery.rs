//! Settling puts left pending between a target's commit and the catalog's: the state a server
//! killed at that moment leaves is built here exactly (a pending put in the catalog, the
//! target's data landed or not), and a restarted server must make the catalog and the data
//! agree. `tests/python/test_crash_commit.py` produces the same states with real kills.

mod common;

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::Utc;
use common::{TestServer, cmd, get, put};
use quiver::asset::AssetKey;
use quiver::catalog::{Catalog, Commit, PendingPut, SqliteCatalog};
use quiver::protocol::Mode;
use serde_json::json;

fn table(rows: i64, extra: bool) -> (SchemaRef, RecordBatch) {
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    let mut columns: Vec<arrow_array::ArrayRef> =
        vec![Arc::new(Int64Array::from_iter_values(0..rows))];
    if extra {
        fields.push(Field::new("note", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("n{i}")),
        )));
    }
    let schema = Arc::new(Schema::new(fields));
    (
        Arc::clone(&schema),
        RecordBatch::try_new(schema, columns).unwrap(),
    )
}

/// A pending put as the service records it before the target commits.
fn pending(
    asset: &str,
    schema: SchemaRef,
    rows: u64,
    mark: &str,
    data: &std::path::Path,
) -> PendingPut {
    let id = uuid::Uuid::new_v4().to_string();
    let location = format!("file://{}/parquet/{asset}.parquet", data.display());
    PendingPut {
        id: id.clone(),
        commit: Commit {
            target: "parquet".into(),
            asset: AssetKey::parse(asset).unwrap(),
            schema,
            partition: None,
            mode: Mode::Overwrite,
            rows,
            bytes: 0,
            location: location.clone(),
            asset_location: location,
            total_rows: None,
            partition_columns: None,
            duration_ms: 0,
            idempotency_key: Some("retry-me".into()),
            put_id: Some(id),
        },
        mark: mark.into(),
        started_at: Utc::now(),
    }
}

async fn describe(server: &TestServer, asset: &str) -> serde_json::Value {
    let mut client = server.client().await;
    common::action(
        &mut client,
        "describe",
        json!({"target": "parquet", "asset": asset}),
    )
    .await
    .unwrap()
}

async fn rows_read(server: &TestServer, asset: &str) -> (SchemaRef, usize) {
    let mut client = server.client().await;
    let (schema, batches) = get(&mut client, json!({"target": "parquet", "asset": asset}))
        .await
        .unwrap();
    (schema, batches.iter().map(RecordBatch::num_rows).sum())
}

#[tokio::test]
async fn a_put_whose_file_landed_is_rolled_forward_at_start_up() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (small, v1) = table(3, false);
    let (big, v2) = table(5, true);
    put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/a"})),
        small,
        vec![v1],
    )
    .await
    .unwrap();
    put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/b"})),
        Arc::clone(&big),
        vec![v2],
    )
    .await
    .unwrap();
    let dir = server.stop().await;
    let data = dir.path().join("data");

    // The server died right after renaming s/a's new file into place.
    std::fs::copy(
        data.join("parquet/s/b.parquet"),
        data.join("parquet/s/a.parquet"),
    )
    .unwrap();
    let catalog = SqliteCatalog::open(&data.join("catalog.sqlite")).unwrap();
    catalog
        .begin_put(&pending("s/a", big, 5, "etag:the-file-before", &data))
        .await
        .unwrap();
    drop(catalog);

    let server = TestServer::start_in(dir, "").await;
    let info = describe(&server, "s/a").await;
    assert_eq!(info["version"], 2, "{info}");
    assert_eq!(info["rows"], 5, "{info}");
    let (schema, rows) = rows_read(&server, "s/a").await;
    assert_eq!(rows, 5);
    assert_eq!(
        schema.fields().len(),
        2,
        "the put's schema is the asset's now"
    );
    // The rolled-forward put is in the history with its idempotency key: a retry replays it.
    let mut client = server.client().await;
    let (_, retry) = table(7, true);
    let replayed = put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/a", "idempotency_key": "retry-me"})),
        retry.schema(),
        vec![retry],
    )
    .await
    .unwrap();
    assert_eq!(replayed["replayed"], true, "{replayed}");
    assert_eq!(replayed["version"], 2, "{replayed}");
    server.stop().await;
}

#[tokio::test]
async fn a_put_whose_file_never_landed_is_forgotten_and_leaves_nothing() {
    let server = TestServer::start().await;
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let (schema, _) = table(5, false);
    // The server died before the new asset's file was completed: there is no file.
    let catalog = SqliteCatalog::open(&data.join("catalog.sqlite")).unwrap();
    catalog
        .begin_put(&pending("s/fresh", schema, 5, "absent", &data))
        .await
        .unwrap();
    drop(catalog);

    let server = TestServer::start_in(dir, "").await;
    let mut client = server.client().await;
    let err = get(
        &mut client,
        json!({"target": "parquet", "asset": "s/fresh"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let dir = server.stop().await;
    let catalog = SqliteCatalog::open(&dir.path().join("data/catalog.sqlite")).unwrap();
    assert!(
        catalog
            .pending_puts("parquet", None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_unchanged_file_means_the_put_did_not_land() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (schema, v1) = table(3, false);
    put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/a"})),
        Arc::clone(&schema),
        vec![v1],
    )
    .await
    .unwrap();
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let path = data.join("parquet/s/a.parquet");
    let mark = quiver::targets::file::local_identity(&path).unwrap();
    let (big, _) = table(5, true);
    let catalog = SqliteCatalog::open(&data.join("catalog.sqlite")).unwrap();
    catalog
        .begin_put(&pending("s/a", big, 5, &mark, &data))
        .await
        .unwrap();
    drop(catalog);

    let server = TestServer::start_in(dir, "").await;
    let info = describe(&server, "s/a").await;
    assert_eq!(info["version"], 1, "{info}");
    let (read_schema, rows) = rows_read(&server, "s/a").await;
    assert_eq!((read_schema.fields().len(), rows), (1, 3));
    server.stop().await;
}

#[tokio::test]
async fn a_pending_put_is_settled_before_the_next_put_to_its_asset() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (schema, v1) = table(3, false);
    put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/a"})),
        Arc::clone(&schema),
        vec![v1.clone()],
    )
    .await
    .unwrap();
    // Another server of a cluster died after committing this put's file (the file is the
    // same one here: its identity differs from the mark).
    let data = server.data_dir();
    let catalog = SqliteCatalog::open(&data.join("catalog.sqlite")).unwrap();
    catalog
        .begin_put(&pending("s/a", Arc::clone(&schema), 3, "etag:older", &data))
        .await
        .unwrap();
    let summary = put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "s/a"})),
        schema,
        vec![v1],
    )
    .await
    .unwrap();
    assert_eq!(
        summary["version"], 3,
        "the pending put became version 2 first: {summary}"
    );
    assert!(
        catalog
            .pending_puts("parquet", None)
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

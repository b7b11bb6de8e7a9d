//! Elasticsearch and OpenSearch targets: the conformance suite plus alias swaps, upserts,
//! partition indices, rejected documents and an unreachable cluster, for both flavours.
//!
//! By default each test starts its own protocol server from PyPI (noida-db, osmem-server);
//! with `QUIVER_TEST_ELASTICSEARCH_URL` / `QUIVER_TEST_OPENSEARCH_URL` set, the same tests run
//! against those clusters instead.

mod common;
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_flight::FlightClient;
use arrow_schema::{DataType, Field, Schema};
use elasticsearch::http::Method;
use futures::SinkExt;
use serde_json::json;
use tonic::Code;

use common::search::SearchServer;
use common::*;
use conformance::{Profile, numbered, run_on};

async fn server_for(cluster: &SearchServer) -> TestServer {
    TestServer::start_with_toml(&cluster.target_toml(cluster.kind)).await
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn ids(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn strs(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// `(id, value)` pairs of a read, in read order.
fn pairs(batches: &[RecordBatch]) -> Vec<(i64, Option<String>)> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column_by_name("id").unwrap();
        let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
        let v = arrow_cast::cast(b.column_by_name("v").unwrap(), &DataType::Utf8).unwrap();
        let v = v.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((id.value(i), v.is_valid(i).then(|| v.value(i).to_string())));
        }
    }
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn conforms(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    run_on(
        server,
        &Profile {
            target: kind,
            refuses: &[],
            extra_modes: &["append", "upsert"],
            extension: None,
        },
    )
    .await;
    // Cancelled and failed puts deleted their indices: one index per live asset or partition.
    for index in cluster.indices().await {
        let (_, aliases) = cluster
            .request(Method::Get, &format!("/{index}/_alias"), None)
            .await;
        let aliases = &aliases[&index]["aliases"];
        assert!(
            aliases.as_object().is_some_and(|a| !a.is_empty()),
            "{kind}: index {index} is behind no alias: {aliases}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_conforms() {
    conforms("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_conforms() {
    conforms("opensearch").await;
}

/// Append adds documents, upsert replaces by key (idempotently), new columns are added to the
/// mapping, and the alias is an ordinary one other tools can search.
async fn modes(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let put_mode = |mode: &'static str, b: RecordBatch| {
        let descriptor =
            cmd(json!({"target": kind, "asset": "shop/orders", "mode": mode, "key": ["id"]}));
        (descriptor, b)
    };
    let first = batch(vec![("id", ids(&[1, 2])), ("v", strs(&["a", "b"]))]);
    let (d, b) = put_mode("overwrite", first);
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    let more = batch(vec![("id", ids(&[3])), ("v", strs(&["c"]))]);
    let (d, b) = put_mode("append", more);
    let appended = put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    assert_eq!(appended["rows"], 1);
    let upsert = batch(vec![
        ("id", ids(&[2, 4, 4])),
        ("v", strs(&["b2", "d", "d2"])),
        ("extra", strs(&["x", "y", "z"])),
    ]);
    for _ in 0..2 {
        let (d, b) = put_mode("upsert", upsert.clone());
        put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    }
    let (schema, got) = get(&mut client, json!({"target": kind, "asset": "shop/orders"}))
        .await
        .unwrap();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["id", "v", "extra"]
    );
    let mut rows = pairs(&got);
    rows.sort();
    assert_eq!(
        rows,
        [(1, s("a")), (2, s("b2")), (3, s("c")), (4, s("d2"))],
        "{kind}: upsert updates by key, the last duplicate wins, repeating it changes nothing"
    );
    let info = client
        .get_flight_info(path(&[kind, "shop", "orders"]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 4);
    // The alias answers ordinary searches, and the new column is in the index mapping.
    let alias = format!("{}shop.orders", cluster.prefix);
    let (status, found) = cluster
        .request(
            Method::Post,
            &format!("/{alias}/_search"),
            Some(r#"{"query": {"term": {"v": "b2"}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["hits"]["hits"][0]["_source"]["extra"], "x");
    let (_, mapping) = cluster
        .request(Method::Get, &format!("/{alias}/_mapping"), None)
        .await;
    let index = mapping.as_object().unwrap().keys().next().unwrap().clone();
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["extra"]["type"],
        "keyword"
    );
    // Deleting the asset deletes its index.
    action(
        &mut client,
        "delete",
        json!({"target": kind, "asset": "shop/orders"}),
    )
    .await
    .unwrap();
    assert!(
        cluster.indices().await.is_empty(),
        "{kind}: delete leaves no index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_modes() {
    modes("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_modes() {
    modes("opensearch").await;
}

/// `(id, v)` pairs of an asset, in read order.
async fn read(client: &mut FlightClient, kind: &str, asset: &str) -> Vec<(i64, Option<String>)> {
    let (_, got) = get(client, json!({"target": kind, "asset": asset}))
        .await
        .unwrap();
    pairs(&got)
}

/// The `_meta.quiver.key` of the one index behind `alias` (without the test prefix), and the
/// index's name.
async fn keyed_by(cluster: &SearchServer, alias: &str) -> (String, serde_json::Value) {
    let behind = cluster.behind(alias).await;
    assert_eq!(
        behind.len(),
        1,
        "{}: {alias} is one index: {behind:?}",
        cluster.kind
    );
    let index = behind[0].clone();
    let (status, mapping) = cluster
        .request(Method::Get, &format!("/{index}/_mapping"), None)
        .await;
    assert_eq!(status, 200, "{mapping}");
    let key = mapping[&index]["mappings"]["_meta"]["quiver"]["key"].clone();
    (index, key)
}

/// An upsert by a key the documents' `_id`s do not come from (the asset was written without
/// it) first copies them into a new index keyed by it, so one document per key remains; later
/// upserts by that key go into that index; once documents without the key repeat one, the
/// upsert is refused and changes nothing.
async fn upsert_by_a_new_key(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let people = |mode: &str, key: Option<&str>, id: &[i64], v: &[i64]| {
        let mut command = json!({"target": kind, "asset": "people", "mode": mode});
        if let Some(key) = key {
            command["key"] = json!([key]);
        }
        let b = batch(vec![("id", ids(id)), ("v", ids(v))]);
        (cmd(command), b)
    };
    let n = |v: i64| Some(v.to_string());

    let (d, b) = people("overwrite", None, &[1, 3], &[1, 3]);
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    // Not refreshed when the put returns: the copy still sees it.
    let (_, b) = people("append", None, &[5], &[5]);
    let d = cmd(json!({"target": kind, "asset": "people", "mode": "append",
                       "options": {"refresh": false}}));
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    let (unkeyed, key) = keyed_by(&cluster, "people").await;
    assert_eq!(key, serde_json::Value::Null, "{kind}");

    let (d, b) = people("upsert", Some("id"), &[3, 4], &[30, 40]);
    let result = put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    assert_eq!(result["rows"], 2, "{result}");
    assert_eq!(
        read(&mut client, kind, "people").await,
        [(1, n(1)), (5, n(5)), (3, n(30)), (4, n(40))],
        "{kind}: one document per key, in write order"
    );
    let (keyed, key) = keyed_by(&cluster, "people").await;
    assert_ne!(keyed, unkeyed, "{kind}: the upsert swapped in a new index");
    assert_eq!(key, json!(["id"]), "{kind}");
    assert_eq!(
        cluster.indices().await,
        std::slice::from_ref(&keyed),
        "{kind}"
    );
    let info = client
        .get_flight_info(path(&[kind, "people"]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 4);

    // The index is keyed by `id` now: the next upsert writes into it.
    let (d, b) = people("upsert", Some("id"), &[4], &[41]);
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    assert_eq!(
        keyed_by(&cluster, "people").await,
        (keyed.clone(), json!(["id"]))
    );
    assert_eq!(
        read(&mut client, kind, "people").await,
        [(1, n(1)), (5, n(5)), (3, n(30)), (4, n(41))]
    );

    // An append without the key forgets it; documents may then repeat a key.
    let (d, b) = people("append", None, &[3], &[31]);
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    assert_eq!(
        keyed_by(&cluster, "people").await,
        (keyed.clone(), serde_json::Value::Null)
    );
    let before = read(&mut client, kind, "people").await;
    assert_eq!(before.len(), 5);
    let (d, b) = people("upsert", Some("id"), &[4], &[42]);
    let err = put(&mut client, d, b.schema(), vec![b]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    for part in [
        "asset 'people'",
        r#"key ["id"]"#,
        "(e.g. 3)",
        "Overwrite the asset",
    ] {
        assert!(err.message().contains(part), "{kind}: {part} in {err}");
    }
    assert_eq!(
        read(&mut client, kind, "people").await,
        before,
        "{kind}: nothing changed"
    );
    assert_eq!(
        cluster.indices().await,
        [keyed],
        "{kind}: the copy is deleted"
    );

    // A partition's index is rekeyed on its own, behind both aliases.
    let day = |mode: &str, key: Option<&str>, id: &[i64], v: &[i64]| {
        let mut command =
            json!({"target": kind, "asset": "visits", "mode": mode, "partition": "2024-01-01"});
        if let Some(key) = key {
            command["key"] = json!([key]);
        }
        (cmd(command), batch(vec![("id", ids(id)), ("v", ids(v))]))
    };
    for (d, b) in [
        day("overwrite", None, &[7, 8], &[7, 8]),
        day("upsert", Some("id"), &[8, 9], &[80, 90]),
    ] {
        put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    }
    for ticket in [
        json!({"target": kind, "asset": "visits"}),
        json!({"target": kind, "asset": "visits", "partition": "2024-01-01"}),
    ] {
        let (_, got) = get(&mut client, ticket).await.unwrap();
        assert_eq!(pairs(&got), [(7, n(7)), (8, n(80)), (9, n(90))], "{kind}");
    }
    assert_eq!(cluster.indices().await.len(), 2, "{kind}: one per asset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_upsert_by_a_new_key() {
    upsert_by_a_new_key("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_upsert_by_a_new_key() {
    upsert_by_a_new_key("opensearch").await;
}

/// A reader polling while overwrites land sees one whole version each time, never a mix and
/// never an empty alias.
/// Decimals of up to 15 digits are numbers the cluster can range over; wider ones stay exact
/// strings; both read back exactly.
async fn decimals(kind: &'static str) {
    use arrow_array::Decimal128Array;
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let decimal = |values: Vec<i128>, precision: u8, scale: i8| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(precision, scale)
                .unwrap(),
        )
    };
    let b = batch(vec![
        ("id", ids(&[1, 2, 3])),
        (
            "cost",
            decimal(vec![999_999_999_999_999, -1, 250_000], 15, 4),
        ),
        (
            "wide",
            decimal(vec![i128::MAX / 10_000_000_000, 0, -5], 38, 2),
        ),
    ]);
    put(
        &mut client,
        cmd(json!({"target": kind, "asset": "ledger"})),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    let (_, got) = get(&mut client, json!({"target": kind, "asset": "ledger"}))
        .await
        .unwrap();
    assert_eq!(concat(&b.schema(), &got), b);

    let alias = format!("{}ledger", cluster.prefix);
    let (status, mapping) = cluster
        .request(Method::Get, &format!("/{alias}/_mapping"), None)
        .await;
    assert_eq!(status, 200, "{mapping}");
    let properties =
        &mapping.as_object().unwrap().values().next().unwrap()["mappings"]["properties"];
    assert_eq!(properties["cost"]["type"], "double", "{mapping}");
    assert_eq!(properties["wide"]["type"], "keyword", "{mapping}");
    let (status, found) = cluster
        .request(
            Method::Post,
            &format!("/{alias}/_search"),
            Some(r#"{"query": {"range": {"cost": {"gte": 0, "lte": 25}}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    let hits: Vec<i64> = found["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(hits, [3], "{found}");
}

#[tokio::test]
async fn elasticsearch_decimals() {
    decimals("elasticsearch").await;
}

#[tokio::test]
async fn opensearch_decimals() {
    decimals("opensearch").await;
}

async fn alias_swap_is_atomic(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let asset = "swap/atomic";
    let put_version = move |tag: i64| {
        let b = numbered(tag, 2_000);
        (cmd(json!({"target": kind, "asset": asset})), b)
    };
    let (d, b) = put_version(0);
    put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    let writer = {
        let mut client = server.client().await;
        tokio::spawn(async move {
            for tag in 1..=5 {
                let (d, b) = put_version(tag);
                let half = b.num_rows() / 2;
                put(
                    &mut client,
                    d,
                    b.schema(),
                    vec![b.slice(0, half), b.slice(half, half)],
                )
                .await
                .unwrap();
            }
        })
    };
    let mut reads = 0;
    let mut seen = std::collections::BTreeSet::new();
    while !writer.is_finished() || reads < 5 {
        let (_, batches) = get(&mut client, json!({"target": kind, "asset": asset}))
            .await
            .unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let tags: std::collections::BTreeSet<i64> = batches
            .iter()
            .flat_map(|b| {
                let t = b.column_by_name("tag").unwrap();
                let t = t.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                (0..t.len()).map(move |i| t.value(i))
            })
            .collect();
        assert_eq!(rows, 2_000, "{kind}: a read saw {rows} rows");
        assert_eq!(tags.len(), 1, "{kind}: a read mixed versions {tags:?}");
        seen.extend(tags);
        reads += 1;
    }
    writer.await.unwrap();
    assert!(seen.len() >= 2, "{kind}: the reads saw only {seen:?}");
    assert_eq!(cluster.behind("swap.atomic").await.len(), 1);
    assert_eq!(
        cluster.indices().await.len(),
        1,
        "{kind}: old indices are deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_alias_swap_is_atomic() {
    alias_swap_is_atomic("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_alias_swap_is_atomic() {
    alias_swap_is_atomic("opensearch").await;
}

/// Rejected documents fail the put with a count and the cluster's reasons. An overwrite then
/// leaves the alias on the old index and deletes the new one.
async fn rejected_documents(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let asset = json!({"target": kind, "asset": "logs/app", "key": ["k"]});
    let good = batch(vec![("k", strs(&["a", "b"])), ("n", ids(&[1, 2]))]);
    put(&mut client, cmd(asset.clone()), good.schema(), vec![good])
        .await
        .unwrap();
    let before = cluster.indices().await;
    // Ids may be at most 512 bytes.
    let long = "k".repeat(600);
    let bad = batch(vec![("k", strs(&["c", &long])), ("n", ids(&[3, 4]))]);
    let failed = put(&mut client, cmd(asset.clone()), bad.schema(), vec![bad]).await;
    assert_status(failed, Code::InvalidArgument, "too long");
    assert_eq!(
        cluster.indices().await,
        before,
        "{kind}: the new index is deleted"
    );
    let (_, got) = get(&mut client, json!({"target": kind, "asset": "logs/app"}))
        .await
        .unwrap();
    assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    // A field someone else added to the index with another type rejects some documents.
    let index = &before[0];
    let (status, reply) = cluster
        .request(
            Method::Put,
            &format!("/{index}/_mapping"),
            Some(r#"{"properties": {"level": {"type": "integer"}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let mixed = batch(vec![
        ("k", strs(&["d", "e", "f"])),
        ("n", ids(&[4, 5, 6])),
        ("level", strs(&["1", "warning", "3"])),
    ]);
    let failed = put(
        &mut client,
        cmd(json!({"target": kind, "asset": "logs/app", "mode": "append"})),
        mixed.schema(),
        vec![mixed],
    )
    .await;
    let err = failed.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("1 of 3 documents were rejected"),
        "{err}"
    );
    assert!(
        err.message().contains("level"),
        "the reason names the field: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_rejected_documents() {
    rejected_documents("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_rejected_documents() {
    rejected_documents("opensearch").await;
}

/// Each partition is an index behind the asset alias; replacing one swaps only its index.
async fn partition_indices(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let put_day = |day: &str, tag: i64, n: usize| {
        let b = numbered(tag, n);
        (
            cmd(json!({"target": kind, "asset": "web/visits", "partition": day})),
            b,
        )
    };
    for (day, tag) in [("2024-01-01", 1), ("2024-01-02", 2), ("2024-01-01", 3)] {
        let (d, b) = put_day(day, tag, 10);
        put(&mut client, d, b.schema(), vec![b]).await.unwrap();
    }
    assert_eq!(cluster.behind("web.visits").await.len(), 2);
    assert_eq!(
        cluster.indices().await.len(),
        2,
        "{kind}: the replaced partition index is gone"
    );
    let (_, got) = get(
        &mut client,
        json!({"target": kind, "asset": "web/visits", "partition": "2024-01-01"}),
    )
    .await
    .unwrap();
    let tags = got[0].column_by_name("tag").unwrap();
    assert_eq!(
        tags.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
        3
    );
    action(
        &mut client,
        "delete",
        json!({"target": kind, "asset": "web/visits", "partition": "2024-01-02"}),
    )
    .await
    .unwrap();
    assert_eq!(cluster.indices().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_partition_indices() {
    partition_indices("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_partition_indices() {
    partition_indices("opensearch").await;
}

/// A cluster that does not answer fails puts with UNAVAILABLE; other targets keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TestServer::start_with_toml(&format!(
        "[targets.search]\nkind = \"elasticsearch\"\nurl = \"http://elastic:secret@127.0.0.1:{port}\"\n\
         timeout_secs = 5\n[targets.parquet]\nkind = \"parquet\"\n"
    ))
    .await;
    let mut client = server.client().await;
    let b = numbered(1, 10);
    let failed = put(
        &mut client,
        path(&["search", "a"]),
        b.schema(),
        vec![b.clone()],
    )
    .await;
    let err = failed.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        !err.message().contains("secret"),
        "no password in errors: {err}"
    );
    put(&mut client, path(&["parquet", "a"]), b.schema(), vec![b])
        .await
        .unwrap();
    let health = action(&mut client, "health", json!({})).await.unwrap();
    assert_eq!(health["targets"]["search"]["ok"], false, "{health}");
    assert_eq!(health["targets"]["parquet"]["ok"], true, "{health}");
    let reason = health["targets"]["search"]["error"].as_str().unwrap();
    assert!(
        !reason.contains("secret"),
        "no password in health: {reason}"
    );
}

/// A client whose connection dies mid-put leaves no index behind (the conformance suite
/// checks the data; this checks the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_put_deletes_its_index() {
    let cluster = SearchServer::start("opensearch").await;
    let server = server_for(&cluster).await;
    let (relay_addr, relay_task) = relay(server.addr).await;
    let (mut tx, call) = open_put(
        client_at(relay_addr).await,
        cmd(json!({"target": "opensearch", "asset": "gone"})),
    );
    tx.send(Ok(numbered(1, 500))).await.unwrap();
    for _ in 0..100 {
        if !cluster.indices().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster.indices().await.len(),
        1,
        "the put created its index"
    );
    relay_task.abort();
    let _ = relay_task.await;
    assert!(call.await.unwrap().is_err(), "a cut put must not succeed");
    for _ in 0..100 {
        if cluster.indices().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster.indices().await.is_empty(),
        "the abandoned index is deleted"
    );
    drop(tx);
}

/// A starting server deletes the loading indices a crashed one left (no alias points to
/// them) and leaves everything else alone.
async fn start_up_sweeps_orphaned_indices(kind: &'static str) {
    let cluster = SearchServer::start(kind).await;
    let orphan = format!("{}lost.quiver-{}", cluster.prefix, "0".repeat(32));
    let foreign = format!("{}other.quiver-{}", cluster.prefix, "1".repeat(32));
    for (index, prefix) in [
        (&orphan, cluster.prefix.as_str()),
        (&foreign, "someone-else-"),
    ] {
        let body = json!({"mappings": {"_meta": {"quiver": {"prefix": prefix}}}}).to_string();
        let (status, reply) = cluster
            .request(Method::Put, &format!("/{index}"), Some(&body))
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    let server = server_for(&cluster).await;
    let mut client = server.client().await;
    let b = numbered(1, 5);
    put(&mut client, path(&[kind, "kept"]), b.schema(), vec![b])
        .await
        .unwrap();
    let indices = cluster.indices().await;
    assert!(!indices.contains(&orphan), "{kind}: {indices:?}");
    assert!(indices.contains(&foreign), "{kind}: {indices:?}");
    assert_eq!(indices.len(), 2, "{kind}: {indices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_start_up_sweeps_orphaned_indices() {
    start_up_sweeps_orphaned_indices("elasticsearch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_start_up_sweeps_orphaned_indices() {
    start_up_sweeps_orphaned_indices("opensearch").await;
}

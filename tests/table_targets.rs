//! Table targets: the conformance suite plus append, upsert, partition replace and schema
//! evolution, checked through Flight and in the database itself.

mod common;
mod conformance;

use std::sync::Arc;

use arrow_array::builder::{BinaryViewBuilder, StringViewBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use quiver::asset::AssetKey;
use quiver::catalog::{Commit, PendingPut};
use quiver::protocol::Mode;
use quiver::targets::duckdb::DuckDbConfig;
use quiver::targets::duckdb::DuckDbTarget;
use quiver::targets::postgres::PostgresConfig;
use quiver::targets::postgres::PostgresTarget;
use quiver::targets::{AssetWriter, DeleteRequest, Target, WriteRequest, WriteSummary};
use serde_json::json;
use tonic::Code;

use common::postgres::TestDb;
use common::*;
use conformance::{Profile, run, run_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_conforms() {
    run(&Profile {
        target: "duckdb",
        refuses: &["time64_ns"],
        extra_modes: &["append", "upsert"],
        extension: None,
    })
    .await;
}

fn batch(columns: Vec<(&str, ArrayRef, bool)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a, _)| a).collect(),
    )
    .unwrap()
}

fn ids(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn strs(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// The rows of a read as `(id, value)` pairs sorted by id.
fn pairs(batches: &[RecordBatch], value: &str) -> Vec<(i64, Option<String>)> {
    let mut out = Vec::new();
    for b in batches {
        let id = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let v = arrow_cast::cast(b.column_by_name(value).unwrap(), &DataType::Utf8).unwrap();
        let v = v.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((id.value(i), v.is_valid(i).then(|| v.value(i).to_string())));
        }
    }
    out.sort();
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_append_upsert_and_evolution() {
    let server = TestServer::start().await;
    append_upsert_and_evolution(&server, "duckdb").await;
    let dir = server.stop().await;
    // The data is an ordinary DuckDB table that SQL users can query.
    let db = duckdb::Connection::open(dir.path().join("data/quiver.duckdb")).unwrap();
    let count: i64 = db
        .query_row("SELECT count(*) FROM analytics.orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 6);
    let stray: i64 = db
        .query_row(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = '__quiver'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stray, 0, "no staging table survives a put");
}

/// DuckDB reads a put's batches with several threads; the table still holds them in the order
/// they were sent, and the scan leaves no view behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_keeps_row_order_across_many_batches() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batches: Vec<RecordBatch> = (0..60i64)
        .map(|b| {
            let values: Vec<i64> = (b * 2500..(b + 1) * 2500).collect();
            let names: Vec<String> = values.iter().map(|v| format!("row {v}")).collect();
            batch(vec![
                ("id", ids(&values), false),
                ("name", Arc::new(StringArray::from(names)), true),
            ])
        })
        .collect();
    let result = put(
        &mut client,
        cmd(json!({"target": "duckdb", "asset": "ordered/rows"})),
        batches[0].schema(),
        batches,
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], 150_000);
    let (_, got) = get(
        &mut client,
        json!({"target": "duckdb", "asset": "ordered/rows"}),
    )
    .await
    .unwrap();
    let mut next = 0i64;
    for b in &got {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let name = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            assert_eq!(
                id.value(i),
                next,
                "rows come back in the order they were put"
            );
            assert_eq!(name.value(i), format!("row {next}"));
            next += 1;
        }
    }
    assert_eq!(next, 150_000);
    let dir = server.stop().await;
    let db = duckdb::Connection::open(dir.path().join("data/quiver.duckdb")).unwrap();
    let views: i64 = db
        .query_row(
            "SELECT count(*) FROM duckdb_views() WHERE NOT internal",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(views, 0, "the put's scan view does not outlive it");
}

/// View columns go to DuckDB as they arrive (DuckDB reads Arrow's string views itself): short
/// values held inline, long ones in several data buffers, nulls and a sliced batch all come
/// back exactly, and the table holds plain VARCHAR / BLOB columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_stores_view_columns_exactly() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let rows = 3000i64;
    let text = |i: i64| match i % 4 {
        0 => None,
        1 => Some(format!("s{i}")),
        2 => Some(format!("a value longer than twelve bytes, number {i}")),
        _ => Some(String::new()),
    };
    // Small blocks: the long values spread over many data buffers.
    let mut strings = StringViewBuilder::new().with_fixed_block_size(4096);
    let mut bytes = BinaryViewBuilder::new().with_fixed_block_size(4096);
    for i in 0..rows {
        strings.append_option(text(i));
        bytes.append_option(text(i).map(|t| [t.as_bytes(), &[0u8, 255]].concat()));
    }
    let whole = batch(vec![
        ("id", ids(&(0..rows).collect::<Vec<_>>()), false),
        ("s", Arc::new(strings.finish()), true),
        ("b", Arc::new(bytes.finish()), true),
    ]);
    // The second batch is a slice: its views start past the first row of their buffers.
    let batches = vec![whole.slice(0, 1000), whole.slice(1000, 2000)];
    let result = put(
        &mut client,
        cmd(json!({"target": "duckdb", "asset": "views/text"})),
        whole.schema(),
        batches,
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], rows);
    let (schema, got) = get(
        &mut client,
        json!({"target": "duckdb", "asset": "views/text"}),
    )
    .await
    .unwrap();
    assert_eq!(
        schema,
        whole.schema(),
        "the view types are read back as sent"
    );
    let got = concat(&schema, &got);
    assert_eq!(got, whole);
    let dir = server.stop().await;
    let db = duckdb::Connection::open(dir.path().join("data/quiver.duckdb")).unwrap();
    let (kind, value): (String, String) = db
        .query_row(
            "SELECT typeof(s), s FROM views.text WHERE id = 2998",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kind, "VARCHAR");
    assert_eq!(value, "a value longer than twelve bytes, number 2998");
}

/// Append, upsert (last duplicate wins), schema evolution and its refusals, null keys.
async fn append_upsert_and_evolution(server: &TestServer, target: &str) {
    let mut client = server.client().await;
    let asset = "analytics/orders";
    let write = |mode: &str, b: &RecordBatch| {
        let mut command = json!({"target": target, "asset": asset, "mode": mode});
        if mode == "upsert" {
            command["key"] = json!(["id"]);
        }
        (cmd(command), b.schema(), vec![b.clone()])
    };

    let first = batch(vec![
        ("id", ids(&[1, 2, 3]), false),
        ("status", strs(&["new", "new", "new"]), true),
    ]);
    let (d, sc, b) = write("overwrite", &first);
    put(&mut client, d, sc, b).await.unwrap();

    // Append adds rows.
    let more = batch(vec![
        ("id", ids(&[4]), false),
        ("status", strs(&["new"]), true),
    ]);
    let (d, sc, b) = write("append", &more);
    let result = put(&mut client, d, sc, b).await.unwrap();
    assert_eq!(
        (result["mode"].clone(), result["rows"].clone()),
        (json!("append"), json!(1))
    );
    let got = get(&mut client, json!({"target": target, "asset": asset}))
        .await
        .unwrap()
        .1;
    assert_eq!(pairs(&got, "status").len(), 4);

    // Upsert replaces rows by key, inserts new ones, and the last duplicate in a put wins.
    let changes = batch(vec![
        ("id", ids(&[2, 5, 5, 3]), false),
        ("status", strs(&["paid", "draft", "new", "shipped"]), true),
    ]);
    let (d, sc, b) = write("upsert", &changes);
    put(&mut client, d, sc, b).await.unwrap();
    let got = get(&mut client, json!({"target": target, "asset": asset}))
        .await
        .unwrap()
        .1;
    assert_eq!(
        pairs(&got, "status"),
        [
            (1, s("new")),
            (2, s("paid")),
            (3, s("shipped")),
            (4, s("new")),
            (5, s("new"))
        ]
    );
    let info = client
        .get_flight_info(path(&[target, "analytics", "orders"]))
        .await
        .unwrap();
    assert_eq!(
        info.total_records, 5,
        "the catalog counts the table's rows after an upsert"
    );

    // A new nullable column is added; older rows read it as null.
    let wider = batch(vec![
        ("id", ids(&[6]), false),
        ("status", strs(&["new"]), true),
        ("note", strs(&["gift"]), true),
    ]);
    let (d, sc, b) = write("append", &wider);
    put(&mut client, d, sc, b).await.unwrap();
    let schema = client
        .get_schema(path(&[target, "analytics", "orders"]))
        .await
        .unwrap();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["id", "status", "note"]
    );
    let got = get(
        &mut client,
        json!({"target": target, "asset": asset, "columns": ["id", "note"]}),
    )
    .await
    .unwrap()
    .1;
    let notes = pairs(&got, "note");
    assert_eq!(notes[0], (1, None));
    assert_eq!(notes[5], (6, s("gift")));

    // Type conflicts, new NOT NULL columns and missing NOT NULL columns are refused by name.
    let conflict = batch(vec![("id", strs(&["7"]), false)]);
    let (d, sc, b) = write("append", &conflict);
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::FailedPrecondition,
        "column 'id'",
    );
    let strict_new = batch(vec![("id", ids(&[7]), false), ("rank", ids(&[1]), false)]);
    let (d, sc, b) = write("append", &strict_new);
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::FailedPrecondition,
        "new column 'rank'",
    );
    let missing_id = batch(vec![("status", strs(&["x"]), true)]);
    let (d, sc, b) = write("append", &missing_id);
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::FailedPrecondition,
        "column 'id'",
    );

    // Null keys cannot be upserted; the table is untouched.
    let nullable = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(8), None])) as ArrayRef,
            true,
        ),
        ("status", strs(&["a", "b"]), true),
    ]);
    let upsert = |b: &RecordBatch| {
        (
            cmd(
                json!({"target": target, "asset": "analytics/nullable", "mode": "upsert", "key": ["id"]}),
            ),
            b.schema(),
            vec![b.clone()],
        )
    };
    let seed = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(1)])) as ArrayRef,
            true,
        ),
        ("status", strs(&["a"]), true),
    ]);
    let (d, sc, b) = upsert(&seed);
    put(&mut client, d, sc, b).await.unwrap();
    let (d, sc, b) = upsert(&nullable);
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::InvalidArgument,
        "key column 'id' holds nulls",
    );
    let got = get(
        &mut client,
        json!({"target": target, "asset": "analytics/nullable"}),
    )
    .await
    .unwrap()
    .1;
    assert_eq!(pairs(&got, "status"), [(1, s("a"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_partition_replace_is_exact() {
    let server = TestServer::start().await;
    partition_replace_is_exact(&server, "duckdb").await;
}

/// Partition replace touches only its partition and refuses rows of other partitions.
async fn partition_replace_is_exact(server: &TestServer, target: &str) {
    let mut client = server.client().await;
    let day = |tag: i64, n: usize, date: &str| {
        batch(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
                false,
            ),
            (
                "tag",
                Arc::new(Int64Array::from(vec![tag; n])) as ArrayRef,
                false,
            ),
            ("date", strs(&vec![date; n]), false),
        ])
    };
    let descriptor = |key: &str| {
        cmd(
            json!({"target": target, "asset": "sales", "partition": key, "partition_column": "date"}),
        )
    };
    for (key, tag, n) in [("2024-01-01", 1, 3), ("2024-01-02", 2, 4)] {
        let b = day(tag, n, key);
        put(&mut client, descriptor(key), b.schema(), vec![b])
            .await
            .unwrap();
    }
    // Rows outside the partition are refused and nothing changes.
    let stray = day(9, 2, "2024-01-03");
    let refused = put(
        &mut client,
        descriptor("2024-01-01"),
        stray.schema(),
        vec![stray],
    )
    .await;
    assert_status(refused, Code::InvalidArgument, "do not have that key");
    let all = get(&mut client, json!({"target": target, "asset": "sales"}))
        .await
        .unwrap()
        .1;
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 7);
    // A partition put without partition_column cannot know which rows to replace.
    let b = day(3, 1, "2024-01-01");
    let no_column = put(
        &mut client,
        cmd(json!({"target": target, "asset": "other", "partition": "2024-01-01"})),
        b.schema(),
        vec![b],
    )
    .await;
    assert_status(no_column, Code::InvalidArgument, "partition_column");
    // Two assets may not share one table (the schema is the second-to-last segment).
    let b = day(1, 1, "x");
    put(
        &mut client,
        path(&[target, "lake", "t"]),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    let clash = put(
        &mut client,
        // DuckDB folds identifier case; PostgreSQL keeps quoted names as given.
        path(&[
            target,
            "other",
            "lake",
            if target == "duckdb" { "T" } else { "t" },
        ]),
        b.schema(),
        vec![b],
    )
    .await;
    assert_status(clash, Code::FailedPrecondition, "share storage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_concurrent_puts_to_different_tables_all_commit() {
    let server = TestServer::start().await;
    concurrent_puts_to_different_tables_all_commit(&server, "duckdb").await;
}

/// Four puts to four tables of one target, with overlapping transactions, all commit.
async fn concurrent_puts_to_different_tables_all_commit(server: &TestServer, target: &str) {
    use futures::SinkExt;
    // Every put is held open until all have started, so their transactions overlap.
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..4 {
        let (tx, call) = open_put(
            server.client().await,
            cmd(json!({"target": target, "asset": format!("shared/t{i}")})),
        );
        calls.push(call);
        senders.push(tx);
    }
    let b = batch(vec![("id", ids(&[1, 2, 3]), false)]);
    for round in 0..2 {
        for tx in &mut senders {
            // A failed send means the server ended that put early; its result says why.
            let _ = tx.send(Ok(b.clone())).await;
        }
        if round == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    drop(senders);
    for call in calls {
        call.await.unwrap().expect("every concurrent put commits");
    }
    let mut client = server.client().await;
    for i in 0..4 {
        let (_, got) = get(
            &mut client,
            json!({"target": target, "asset": format!("shared/t{i}")}),
        )
        .await
        .unwrap();
        assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
    }
}

/// The PostgreSQL target's conformance profile: nanosecond values finer than PostgreSQL's
/// microseconds are refused by name.
const POSTGRES: Profile = Profile {
    target: "postgres",
    refuses: &["ts_ns", "ts_ns_offset", "time64_ns"],
    extra_modes: &["append", "upsert"],
    extension: None,
};

/// A server whose only target is `postgres`, on a fresh database.
async fn postgres_server() -> (TestDb, TestServer) {
    let db = TestDb::create().await;
    let server = TestServer::start_with_toml(&db.toml("postgres")).await;
    (db, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let (db, server) = postgres_server().await;
    run_on(server, &POSTGRES).await;
    let pg = db.client().await;
    let leftovers: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_\\_quiver%' OR relname LIKE 'quiver_stage%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "aborted puts leave no tables behind");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_append_upsert_and_evolution() {
    let (db, server) = postgres_server().await;
    append_upsert_and_evolution(&server, "postgres").await;
    server.stop().await;
    // The data is an ordinary table with a unique index on the upsert key.
    let pg = db.client().await;
    let count: i64 = pg
        .query_one("SELECT count(*) FROM analytics.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 6);
    let unique: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'analytics' \
             AND tablename = 'orders' AND indexdef LIKE 'CREATE UNIQUE INDEX%(id)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unique, 1, "upsert keeps a unique index on its key");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partition_replace_is_exact() {
    let (db, server) = postgres_server().await;
    partition_replace_is_exact(&server, "postgres").await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_puts_to_different_tables_all_commit() {
    let (db, server) = postgres_server().await;
    concurrent_puts_to_different_tables_all_commit(&server, "postgres").await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_columns_have_native_types() {
    let (db, server) = postgres_server().await;
    let mut client = server.client().await;
    let matrix = conformance::type_matrix();
    let keep: Vec<usize> = (0..matrix.num_columns())
        .filter(|i| {
            !POSTGRES
                .refuses
                .contains(&matrix.schema().field(*i).name().as_str())
        })
        .collect();
    let batch = matrix.project(&keep).unwrap();
    put(
        &mut client,
        path(&["postgres", "types"]),
        batch.schema(),
        vec![batch],
    )
    .await
    .unwrap();
    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'types'",
            &[],
        )
        .await
        .unwrap();
    let types: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (column, expected) in [
        ("i8", "smallint"),
        ("u32", "bigint"),
        ("u64", "numeric"),
        ("f32", "real"),
        ("decimal", "numeric"),
        ("utf8", "text"),
        ("binary", "bytea"),
        ("date32", "date"),
        ("ts_us", "timestamp without time zone"),
        ("ts_us_utc", "timestamp with time zone"),
        ("time64_us", "time without time zone"),
        ("list", "jsonb"),
        ("struct", "jsonb"),
        ("dict", "text"),
    ] {
        assert_eq!(types[column], expected, "column {column}");
    }
    // NUMERIC keeps every digit, beyond what a float could hold.
    let text: String = pg
        .query_one(
            "SELECT decimal::text FROM public.types WHERE decimal > 1e27",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(text, "9999999999999999999999999999.9999999999");
    let list: String = pg
        .query_one("SELECT list::text FROM public.types WHERE i32 = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(list, "[]");
    let instant: String = pg
        .query_one(
            "SELECT to_char(ts_us_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM public.types WHERE i32 = 2147483647",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(instant, "2023-11-14 22:13:20.123456");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_values_it_cannot_store() {
    let (db, server) = postgres_server().await;
    let mut client = server.client().await;
    let nul = batch(vec![("s", strs(&["ok", "bad\0byte"]), true)]);
    assert_status(
        put(
            &mut client,
            path(&["postgres", "nul"]),
            nul.schema(),
            vec![nul],
        )
        .await,
        Code::InvalidArgument,
        "column 's'",
    );
    let long = "x".repeat(64);
    let b = batch(vec![("id", ids(&[1]), false)]);
    assert_status(
        put(&mut client, path(&["postgres", &long]), b.schema(), vec![b]).await,
        Code::InvalidArgument,
        "at most 63",
    );
    // A table this catalog did not write is not appended to blindly.
    let pg = db.client().await;
    pg.batch_execute("CREATE TABLE public.foreign_rows (id bigint)")
        .await
        .unwrap();
    let b = batch(vec![("id", ids(&[1]), false)]);
    assert_status(
        put(
            &mut client,
            cmd(json!({"target": "postgres", "asset": "foreign_rows", "mode": "append"})),
            b.schema(),
            vec![b.clone()],
        )
        .await,
        Code::FailedPrecondition,
        "overwrite the asset",
    );
    // Overwriting takes the table over.
    put(
        &mut client,
        path(&["postgres", "foreign_rows"]),
        b.schema(),
        vec![b],
    )
    .await
    .unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_unavailable() {
    // Nothing listens on port 1.
    let server = TestServer::start_with_toml(
        "[targets.postgres]\nkind = \"postgres\"\nurl = \"postgres://quiver:secret@127.0.0.1:1/none\"\n",
    )
    .await;
    let mut client = server.client().await;
    let b = batch(vec![("id", ids(&[1]), false)]);
    let result = put(&mut client, path(&["postgres", "t"]), b.schema(), vec![b]).await;
    let err = assert_status(result, Code::Unavailable, "postgres://127.0.0.1:1/none");
    assert!(!err.contains("secret"), "the password never shows: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_connect_and_verify() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let ssl: String = pg.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let cert: String = pg
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ssl, "on", "the test server must have TLS enabled");
    let url = |host: &str, mode: &str| {
        let mut u = url::Url::parse(&db.url).unwrap();
        u.set_host(Some(host)).unwrap();
        u.query_pairs_mut().append_pair("sslmode", mode);
        u.to_string()
    };
    let config = format!(
        "[targets.required]\nkind = \"postgres\"\nurl = \"{}\"\n\
         [targets.verified]\nkind = \"postgres\"\nurl = \"{}\"\nca_file = \"{cert}\"\n\
         [targets.wrong_host]\nkind = \"postgres\"\nurl = \"{}\"\nca_file = \"{cert}\"\n\
         [targets.chain_only]\nkind = \"postgres\"\nurl = \"{}\"\nca_file = \"{cert}\"\n",
        url("127.0.0.1", "require"),
        url("localhost", "verify-full"),
        url("127.0.0.1", "verify-full"),
        url("127.0.0.1", "verify-ca"),
    );
    let server = TestServer::start_with_toml(&config).await;
    let mut client = server.client().await;
    let b = batch(vec![("id", ids(&[1, 2]), false)]);
    for target in ["required", "verified", "chain_only"] {
        put(
            &mut client,
            path(&[target, target]),
            b.schema(),
            vec![b.clone()],
        )
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    // The certificate names localhost, not 127.0.0.1.
    assert_status(
        put(
            &mut client,
            path(&["wrong_host", "t"]),
            b.schema(),
            vec![b.clone()],
        )
        .await,
        Code::Unavailable,
        "wrong_host",
    );
    // Every connection of the verified targets is encrypted.
    let encrypted: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'quiver' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 3, "{encrypted} TLS connections");
    server.stop().await;
    drop(pg);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_identifiers_are_quoted_exactly() {
    let (db, server) = postgres_server().await;
    let mut client = server.client().await;
    let hostile = "\"; DROP TABLE x; --";
    let weird = batch(vec![
        ("we\"ird", ids(&[1, 2]), false),
        ("with space", strs(&["a", "b"]), true),
        ("ünïcødé", strs(&["x", "y"]), true),
        (hostile, strs(&["p", "p"]), true),
    ]);
    let asset = "Mixed-Case.v2/Weird-Table";
    for (mode, extra) in [
        ("overwrite", json!({})),
        ("upsert", json!({"key": ["we\"ird"]})),
        (
            "overwrite",
            json!({"partition": "p", "partition_column": hostile}),
        ),
    ] {
        let mut command = json!({"target": "postgres", "asset": asset, "mode": mode});
        for (k, v) in extra.as_object().unwrap() {
            command[k] = v.clone();
        }
        if mode == "overwrite" && extra.get("partition").is_some() {
            // A partitioned asset is a different asset from the unpartitioned one.
            command["asset"] = json!("Mixed-Case.v2/Weird-Parts");
        }
        put(
            &mut client,
            cmd(command),
            weird.schema(),
            vec![weird.clone()],
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    let (schema, got) = get(&mut client, json!({"target": "postgres", "asset": asset}))
        .await
        .unwrap();
    assert_eq!(schema, weird.schema());
    assert_eq!(concat(&schema, &got), weird);
    let pg = db.client().await;
    let value: String = pg
        .query_one(
            "SELECT \"ünïcødé\" FROM \"Mixed-Case.v2\".\"Weird-Table\" WHERE \"we\"\"ird\" = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "y");
    let parts: i64 = pg
        .query_one(
            "SELECT count(*) FROM \"Mixed-Case.v2\".\"Weird-Parts\" WHERE \"\"\"; DROP TABLE x; --\" = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 2);
    db.drop().await;
}

/// Table targets take their settings from the configuration: a put's options are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_targets_refuse_options() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let b = batch(vec![("id", ids(&[1]), false)]);
    let refused = put(
        &mut client,
        cmd(json!({"target": "duckdb", "asset": "opts", "options": {"threads": 4}})),
        b.schema(),
        vec![b],
    )
    .await;
    assert_status(refused, Code::InvalidArgument, "option 'threads'");
}

/// An upsert after an overwrite without a key leaves one row per key (the row the overwrite
/// wrote is replaced), and repeating it changes nothing.
async fn upsert_after_an_overwrite_without_key(server: &TestServer, target: &str) {
    let mut client = server.client().await;
    let people = |mode: &str, id: &[i64], v: &[i64]| {
        let mut command = json!({"target": target, "asset": "people", "mode": mode});
        if mode == "upsert" {
            command["key"] = json!(["id"]);
        }
        let b = batch(vec![("id", ids(id), false), ("v", ids(v), true)]);
        (cmd(command), b.schema(), vec![b])
    };
    let (d, sc, b) = people("overwrite", &[3], &[3]);
    put(&mut client, d, sc, b).await.unwrap();
    for _ in 0..2 {
        let (d, sc, b) = people("upsert", &[3, 4], &[30, 40]);
        put(&mut client, d, sc, b).await.unwrap();
        let got = get(&mut client, json!({"target": target, "asset": "people"}))
            .await
            .unwrap()
            .1;
        assert_eq!(
            pairs(&got, "v"),
            [(3, s("30")), (4, s("40"))],
            "{target}: one row per key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_upsert_after_an_overwrite_without_key() {
    let server = TestServer::start().await;
    upsert_after_an_overwrite_without_key(&server, "duckdb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upsert_after_an_overwrite_without_key() {
    let (db, server) = postgres_server().await;
    upsert_after_an_overwrite_without_key(&server, "postgres").await;
    server.stop().await;
    db.drop().await;
}

/// Starts a put of `b` as `asset` through the target itself, under a chosen put id, and
/// prepares it: what is left is the commit (or a server dying before it).
async fn prepared_put(
    target: &dyn Target,
    asset: &str,
    put_id: &str,
    b: &RecordBatch,
) -> Box<dyn AssetWriter> {
    let request = WriteRequest {
        asset: AssetKey::parse(asset).unwrap(),
        mode: Mode::Overwrite,
        partition: None,
        partition_column: None,
        key: Vec::new(),
        options: Default::default(),
        schema: b.schema(),
        existing: None,
        put_id: put_id.to_string(),
    };
    let mut writer = target.begin(&request, b.schema()).await.unwrap();
    writer.write(b.clone()).await.unwrap();
    writer.prepare().await.unwrap();
    writer
}

/// The put the catalog would hold as pending, had the server died during its commit.
fn pending(target: &dyn Target, asset: &str, put_id: &str, rows: u64) -> PendingPut {
    let asset = AssetKey::parse(asset).unwrap();
    PendingPut {
        id: put_id.to_string(),
        commit: Commit {
            target: target.name().to_string(),
            asset: asset.clone(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            partition: None,
            mode: Mode::Overwrite,
            rows,
            bytes: 0,
            location: target.location(&asset, None),
            asset_location: target.location(&asset, None),
            total_rows: None,
            partition_columns: None,
            duration_ms: 0,
            idempotency_key: None,
            put_id: Some(put_id.to_string()),
        },
        mark: String::new(),
        started_at: chrono::Utc::now(),
    }
}

/// The commit markers of a table target hold the last committed put of each asset, so
/// `resolve` rolls a put forward exactly when its commit landed. Leaves `crash/orders` at
/// put `b` (three rows) and no `crash/other`, `crash/fresh` or `quiver_commits` asset.
async fn commit_markers_settle_puts(target: &dyn Target) {
    let rows = |n: i64| batch(vec![("id", ids(&(0..n).collect::<Vec<_>>()), false)]);
    for (asset, put_id, n) in [
        ("crash/orders", "a", 2),
        ("crash/orders", "b", 3),
        ("crash/other", "c", 1),
    ] {
        let written = prepared_put(target, asset, put_id, &rows(n))
            .await
            .commit()
            .await
            .unwrap();
        assert_eq!(written.total_rows, Some(n as u64));
    }
    // Prepared but never committed: an existing table's overwrite, and a new table.
    prepared_put(target, "crash/orders", "d", &rows(5))
        .await
        .abort()
        .await
        .unwrap();
    prepared_put(target, "crash/fresh", "e", &rows(5))
        .await
        .abort()
        .await
        .unwrap();

    let landed = target
        .resolve(&pending(target, "crash/orders", "b", 3))
        .await
        .unwrap();
    assert_eq!(
        landed,
        Some(WriteSummary {
            rows: 3,
            bytes: 0,
            location: target.location(&AssetKey::parse("crash/orders").unwrap(), None),
            total_rows: Some(3),
        }),
        "the last committed put rolls forward with the table's row count"
    );
    for (asset, put_id) in [
        ("crash/orders", "d"),
        ("crash/fresh", "e"),
        ("crash/orders", "never-sent"),
    ] {
        let resolved = target
            .resolve(&pending(target, asset, put_id, 5))
            .await
            .unwrap();
        assert_eq!(resolved, None, "put {put_id} did not commit");
    }

    // Deleting an asset forgets its marker with its table.
    target
        .delete(&DeleteRequest {
            asset: AssetKey::parse("crash/other").unwrap(),
            whole: true,
            partitions: Vec::new(),
            partition_columns: None,
        })
        .await
        .unwrap();
    let refused = target
        .begin(
            &WriteRequest {
                asset: AssetKey::parse("quiver_commits").unwrap(),
                mode: Mode::Overwrite,
                partition: None,
                partition_column: None,
                key: Vec::new(),
                options: Default::default(),
                schema: rows(1).schema(),
                existing: None,
                put_id: "f".to_string(),
            },
            rows(1).schema(),
        )
        .await
        .err()
        .expect("the markers' table is not an asset's");
    assert!(
        refused.to_string().contains("records its commits"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_commit_markers_settle_interrupted_puts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("markers.duckdb");
    let config = DuckDbConfig {
        path: Some(file.clone()),
        ..Default::default()
    };
    let target = DuckDbTarget::open("duckdb", &config).unwrap();
    commit_markers_settle_puts(&target).await;
    drop(target);
    let db = duckdb::Connection::open(&file).unwrap();
    let mut query = db
        .prepare("SELECT asset, put_id FROM main.quiver_commits ORDER BY asset")
        .unwrap();
    let markers: Vec<(String, String)> = query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(markers, [("crash/orders".to_string(), "b".to_string())]);
    let tables: Vec<String> = db
        .prepare(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables() \
             WHERE database_name = current_database() ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        tables,
        ["crash.orders", "main.quiver_commits"],
        "an uncommitted put leaves no table, staging or new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commit_markers_settle_interrupted_puts() {
    let db = TestDb::create().await;
    let target = PostgresTarget::open("postgres", &PostgresConfig::from_url(&db.url)).unwrap();
    commit_markers_settle_puts(&target).await;
    drop(target);
    let pg = db.client().await;
    let markers: Vec<(String, String)> = pg
        .query(
            "SELECT asset, put_id FROM public.quiver_commits ORDER BY asset",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(markers, [("crash/orders".to_string(), "b".to_string())]);
    let tables: Vec<String> = pg
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        ["crash.orders", "public.quiver_commits"],
        "an uncommitted put leaves no table, the overwrite's new one included"
    );
    drop(pg);
    db.drop().await;
}

/// Puts through Flight leave one marker per asset; the markers' table is not an asset and no
/// asset may take its name.
async fn commit_markers_through_flight(server: &TestServer, target: &str) {
    let mut client = server.client().await;
    for n in [2, 3] {
        let b = batch(vec![("id", ids(&(0..n).collect::<Vec<_>>()), false)]);
        put(
            &mut client,
            path(&[target, "analytics", "orders"]),
            b.schema(),
            vec![b],
        )
        .await
        .unwrap();
    }
    let b = batch(vec![("id", ids(&[1]), false)]);
    assert_status(
        put(
            &mut client,
            path(&[target, "quiver_commits"]),
            b.schema(),
            vec![b],
        )
        .await,
        Code::InvalidArgument,
        "records its commits",
    );
    let listed: Vec<Vec<String>> = client
        .list_flights(json!({"target": target}).to_string())
        .await
        .unwrap()
        .map_ok(|info| info.flight_descriptor.unwrap().path)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, [[target, "analytics", "orders"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_commit_markers_through_flight() {
    let server = TestServer::start().await;
    commit_markers_through_flight(&server, "duckdb").await;
    let dir = server.stop().await;
    let db = duckdb::Connection::open(dir.path().join("data/quiver.duckdb")).unwrap();
    let (rows, assets): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT asset) FROM main.quiver_commits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, assets), (1, 1), "one marker per asset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commit_markers_through_flight() {
    let (db, server) = postgres_server().await;
    commit_markers_through_flight(&server, "postgres").await;
    server.stop().await;
    let pg = db.client().await;
    let assets: Vec<String> = pg
        .query("SELECT asset FROM public.quiver_commits", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(assets, ["analytics/orders"], "one marker per asset");
    drop(pg);
    db.drop().await;
}

//! The Redis target: the conformance suite (table layout), then what an application reading
//! Redis directly sees of each layout, the modes, ttl, the commit protocol after a crash, and
//! an outage. Each test starts its own `redis-server` (or uses `QUIVER_TEST_REDIS_URL`).
#![cfg(feature = "redis")]

mod common;
mod conformance;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use quiver::asset::AssetKey;
use quiver::catalog::{Commit, PendingPut};
use quiver::protocol::Mode;
use quiver::targets::redis::{Layout, RedisConfig, RedisTarget};
use quiver::targets::{AssetWriter, Target, WriteRequest};
use serde_json::{Value, json};
use tonic::Code;

use common::redis::RedisServer;
use common::*;
use conformance::{Profile, run_on, type_matrix};

/// A server whose targets are `redis` (table layout, small chunks) and `rhash` (hash layout).
async fn server_for(redis: &RedisServer) -> TestServer {
    let toml = redis.target_toml("redis", "chunk_bytes = 4096")
        + &redis.target_toml("rhash", "layout = \"hash\"\npipeline = 64");
    TestServer::start_with_toml(&toml).await
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), *n != "id"))
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

fn strs(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// The rows of a read as `(id, name)` sorted by id.
fn rows(batches: &[RecordBatch]) -> Vec<(i64, Option<String>)> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column_by_name("id").unwrap();
        let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
        let name = b.column_by_name("name").unwrap();
        let name = name.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i),
                name.is_valid(i).then(|| name.value(i).to_string()),
            ));
        }
    }
    out.sort();
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn hgetall(redis: &RedisServer, key: &str) -> HashMap<String, Vec<u8>> {
    redis.connection().await.hgetall(key).await.unwrap()
}

fn text(fields: &HashMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(fields[name].clone()).unwrap()
}

/// Checks that Redis holds only live data: no registry lists a version, and every chunk or
/// row key belongs to the version a pointer names.
async fn audit(redis: &RedisServer) {
    let keys = redis.keys().await;
    let mut live: Vec<String> = Vec::new();
    let mut pointers = Vec::new();
    for key in &keys {
        let fields = hgetall_lossy(redis, key).await;
        if key.ends_with("#puts") {
            let entries: Vec<&String> = fields.keys().filter(|f| *f != "seq").collect();
            assert!(entries.is_empty(), "{key} still lists {entries:?}");
        } else if fields.contains_key("layout") && fields.contains_key("put") {
            pointers.push(key.clone());
            match fields["layout"].as_str() {
                "table" => {
                    live.extend(serde_json::from_str::<Vec<String>>(&fields["chunks"]).unwrap())
                }
                _ => live.push(format!("{key}:g{}:", fields["generation"])),
            }
        }
    }
    for key in keys {
        let ok = key.ends_with("#puts")
            || pointers.contains(&key)
            || live
                .iter()
                .any(|l| key == *l || (l.ends_with(':') && key.starts_with(l)));
        assert!(ok, "{key} belongs to no live version");
    }
}

async fn hgetall_lossy(redis: &RedisServer, key: &str) -> HashMap<String, String> {
    let mut c = redis.connection().await;
    let kind: String = ::redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    if kind != "hash" {
        return HashMap::new();
    }
    let fields: HashMap<String, Vec<u8>> = c.hgetall(key).await.unwrap();
    fields
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_table_layout_conforms() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    run_on(
        server,
        &Profile {
            target: "redis",
            refuses: &[],
            extra_modes: &["append"],
            extension: None,
        },
    )
    .await;
    audit(&redis).await;
}

/// Every type of the conformance matrix round-trips through the hash layout, and each value
/// sits in its hash in the string form docs/types.md gives; nulls are absent fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_layout_round_trips_every_type() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    let matrix = type_matrix();
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    fields.extend(matrix.schema().fields().iter().map(|f| f.as_ref().clone()));
    let mut columns = vec![ids(&[0, 1, 2, 3])];
    columns.extend(matrix.columns().iter().cloned());
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        matrix.schema().metadata().clone(),
    ));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let result = put(
        &mut client,
        cmd(json!({"target": "rhash", "asset": "types/matrix", "key": ["id"]})),
        Arc::clone(&schema),
        vec![batch.slice(0, 2), batch.slice(2, 2)],
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], 4);

    let (got_schema, got) = get(
        &mut client,
        json!({"target": "rhash", "asset": "types/matrix"}),
    )
    .await
    .unwrap();
    assert_eq!(got_schema, schema, "the schema round-trips exactly");
    let got = concat(&got_schema, &got);
    let order = arrow::compute::sort_to_indices(got.column(0), None, None).unwrap();
    let got = arrow::compute::take_record_batch(&got, &order).unwrap();
    for (i, field) in schema.fields().iter().enumerate() {
        assert_eq!(
            got.column(i).data_type(),
            field.data_type(),
            "{}",
            field.name()
        );
        assert_eq!(
            values(&got)[i].to_data(),
            values(&batch)[i].to_data(),
            "column {} values",
            field.name()
        );
    }

    // What an application reading Redis sees.
    let pointer = hgetall_lossy(&redis, &redis.key("rhash", "types/matrix}")).await;
    assert_eq!(pointer["layout"], "hash");
    assert_eq!(pointer["key"], "[\"id\"]");
    assert_eq!(pointer["rows"], "4");
    let row = |id: i64| {
        let generation = pointer["generation"].clone();
        let redis = &redis;
        async move {
            hgetall(
                redis,
                &redis.key("rhash", &format!("types/matrix}}:g{generation}:{id}")),
            )
            .await
        }
    };
    // Row 1 is null in every column but the struct and the dictionary.
    let nulls = row(1).await;
    let mut present: Vec<&str> = nulls.keys().map(String::as_str).collect();
    present.sort_unstable();
    assert_eq!(
        present,
        ["dict", "id", "struct"],
        "null values are absent fields"
    );
    assert_eq!(
        text(&nulls, "struct"),
        "{\"a\":2}",
        "null children are omitted"
    );
    assert_eq!(text(&nulls, "dict"), "green");
    let first = row(0).await;
    for (column, form) in [
        ("id", "0"),
        ("i8", "-128"),
        ("u64", "0"),
        ("f32", "-1.5"),
        ("f64", "-0.1"),
        ("bool", "true"),
        ("utf8", "héllo, \"wörld\""),
        ("date32", "1970-01-01"),
        ("ts_s", "1970-01-01T00:00:00"),
        ("ts_us_utc", "1970-01-01T00:00:00Z"),
        ("ts_ns_offset", "1970-01-01T05:30:00+05:30"),
        ("time64_us", "00:00:00"),
        ("list", "[1,null,3]"),
        ("struct", "{\"a\":1,\"b\":\"x\"}"),
        ("dict", "red"),
    ] {
        assert_eq!(text(&first, column), form, "column {column}");
    }
    assert_eq!(first["binary"], b"\x00\xff", "bytes are stored as they are");
    assert!(!first.contains_key("nulls"));
    let last = row(3).await;
    assert_eq!(text(&last, "f64"), "1.7976931348623157e308");
    assert_eq!(
        text(&last, "decimal"),
        "9999999999999999999999999999.9999999999"
    );
    assert_eq!(text(&last, "u64"), "18446744073709551615");
}

/// Overwrite swaps generations and deletes the old one; upsert replaces whole rows by key, last
/// duplicate winning; append, keyless puts, other keys and unstorable types are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_layout_modes() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    let put_users = |mode: &str, b: &RecordBatch, key: Value| {
        (
            cmd(json!({"target": "rhash", "asset": "users", "mode": mode, "key": key})),
            b.schema(),
            vec![b.clone()],
        )
    };
    let first = batch(vec![
        ("id", ids(&[1, 2, 3])),
        ("name", strs(&[Some("a"), Some("b"), Some("c")])),
    ]);
    let (d, sc, b) = put_users("overwrite", &first, json!(["id"]));
    put(&mut client, d, sc, b).await.unwrap();
    let pointer = hgetall_lossy(&redis, &redis.key("rhash", "users}")).await;
    let g1 = pointer["generation"].clone();
    assert_eq!(
        text(
            &hgetall(&redis, &redis.key("rhash", &format!("users}}:g{g1}:2"))).await,
            "name"
        ),
        "b"
    );

    let changes = batch(vec![
        ("id", ids(&[2, 4, 4])),
        ("name", strs(&[None, Some("d"), Some("d2")])),
    ]);
    let (d, sc, b) = put_users("upsert", &changes, json!(["id"]));
    let result = put(&mut client, d, sc, b).await.unwrap();
    assert_eq!(result["rows"], 3);
    let got = get(&mut client, json!({"target": "rhash", "asset": "users"}))
        .await
        .unwrap()
        .1;
    assert_eq!(
        rows(&got),
        [(1, s("a")), (2, None), (3, s("c")), (4, s("d2"))],
        "an upsert replaces the whole row: row 2's name is gone"
    );
    let info = client
        .get_flight_info(path(&["rhash", "users"]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 4, "the pointer counts distinct rows");

    let (d, sc, b) = put_users(
        "overwrite",
        &batch(vec![("id", ids(&[10])), ("name", strs(&[Some("z")]))]),
        json!(["id"]),
    );
    put(&mut client, d, sc, b).await.unwrap();
    let keys = redis.keys().await;
    assert!(
        !keys.iter().any(|k| k.contains(&format!(":g{g1}:"))),
        "the old generation is deleted: {keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| k.contains("users}:g")).count(), 1);

    let (d, sc, b) = put_users("append", &first, json!(["id"]));
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::FailedPrecondition,
        "does not support mode 'append'",
    );
    let (d, sc, b) = put_users("overwrite", &first, json!([]));
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::InvalidArgument,
        "\"key\"",
    );
    let (d, sc, b) = put_users("upsert", &first, json!(["name"]));
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::FailedPrecondition,
        "keyed by",
    );
    let span = batch(vec![
        ("id", ids(&[1])),
        (
            "span",
            Arc::new(arrow_array::IntervalDayTimeArray::from(vec![
                arrow_buffer::IntervalDayTime::new(1, 2),
            ])),
        ),
    ]);
    let (d, sc, b) = put_users("overwrite", &span, json!(["id"]));
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::InvalidArgument,
        "'span'",
    );
    let nullable_key = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
    )
    .unwrap();
    let (d, sc, b) = put_users("overwrite", &nullable_key, json!(["id"]));
    assert_status(
        put(&mut client, d, sc, b).await,
        Code::InvalidArgument,
        "key column 'id' holds nulls",
    );

    // Several key columns: `:` inside a value is escaped, so these two rows stay apart.
    let pairs = batch(vec![
        ("a", strs(&[Some("x:y"), Some("x")])),
        ("b", strs(&[Some("z"), Some("y:z")])),
    ]);
    put(
        &mut client,
        cmd(json!({"target": "rhash", "asset": "pairs", "key": ["a", "b"]})),
        pairs.schema(),
        vec![pairs],
    )
    .await
    .unwrap();
    let g = hgetall_lossy(&redis, &redis.key("rhash", "pairs}")).await["generation"].clone();
    let mut rows: Vec<String> = redis
        .keys()
        .await
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(&redis.key("rhash", &format!("pairs}}:g{g}:")))
                .map(str::to_string)
        })
        .collect();
    rows.sort();
    assert_eq!(rows, ["x%3Ay:z", "x:y%3Az"]);
    audit(&redis).await;
}

/// Partitions of the hash layout are pointers of their own; deleting one keeps the others,
/// deleting the asset removes every key; a partition shaped like a version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_partitions_and_delete() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    for (day, n) in [("2024-01-01", 2), ("2024-01-02", 3)] {
        let b = batch(vec![
            ("id", ids(&(0..n).collect::<Vec<_>>())),
            ("day", strs(&vec![Some(day); n as usize])),
        ]);
        put(
            &mut client,
            cmd(json!({"target": "rhash", "asset": "events", "key": ["id"], "partition": day, "partition_column": "day"})),
            b.schema(),
            vec![b],
        )
        .await
        .unwrap();
    }
    let all = get(&mut client, json!({"target": "rhash", "asset": "events"}))
        .await
        .unwrap()
        .1;
    assert_eq!(all.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
    let day1 = redis.key("rhash", "events}:2024-01-01");
    assert_eq!(hgetall_lossy(&redis, &day1).await["rows"], "2");
    action(
        &mut client,
        "delete",
        json!({"target": "rhash", "asset": "events", "partition": "2024-01-01"}),
    )
    .await
    .unwrap();
    let keys = redis.keys().await;
    assert!(!keys.iter().any(|k| k.starts_with(&day1)), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("events}:2024-01-02:g")));
    let b = batch(vec![("id", ids(&[1])), ("day", strs(&[Some("v1")]))]);
    assert_status(
        put(
            &mut client,
            cmd(json!({"target": "rhash", "asset": "events", "key": ["id"], "partition": "v1", "partition_column": "day"})),
            b.schema(),
            vec![b],
        )
        .await,
        Code::InvalidArgument,
        "rename the partition",
    );
    action(
        &mut client,
        "delete",
        json!({"target": "rhash", "asset": "events"}),
    )
    .await
    .unwrap();
    let left: Vec<String> = redis
        .keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":events}"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The table layout's chunks are whole Arrow IPC streams an application can decode; append
/// adds chunks, an overwrite deletes the versions it replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_table_layout_chunks_and_append() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..3000).map(|i| format!("name number {i}")).collect();
    let big = batch(vec![
        ("id", ids(&(0..3000).collect::<Vec<_>>())),
        (
            "name",
            Arc::new(StringArray::from_iter_values(names.iter())),
        ),
    ]);
    put(
        &mut client,
        path(&["redis", "big"]),
        big.schema(),
        vec![big.clone()],
    )
    .await
    .unwrap();
    let pointer_key = redis.key("redis", "big}");
    let pointer = hgetall_lossy(&redis, &pointer_key).await;
    assert_eq!(pointer["format"], "arrow-ipc-stream;compression=zstd");
    assert_eq!(pointer["rows"], "3000");
    let chunks: Vec<String> = serde_json::from_str(&pointer["chunks"]).unwrap();
    assert!(chunks.len() > 1, "4 KiB chunks: {chunks:?}");
    assert_eq!(
        chunks[0],
        format!("{pointer_key}:v{}:0", pointer["version"])
    );
    let mut decoded = 0;
    for chunk in &chunks {
        let bytes: Vec<u8> = redis.connection().await.get(chunk).await.unwrap();
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        assert_eq!(reader.schema(), big.schema());
        decoded += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    assert_eq!(decoded, 3000, "every chunk is a whole IPC stream");

    let more = batch(vec![("id", ids(&[3000])), ("name", strs(&[Some("last")]))]);
    put(
        &mut client,
        cmd(json!({"target": "redis", "asset": "big", "mode": "append"})),
        more.schema(),
        vec![more],
    )
    .await
    .unwrap();
    let appended: Vec<String> =
        serde_json::from_str(&hgetall_lossy(&redis, &pointer_key).await["chunks"]).unwrap();
    assert_eq!(
        appended[..chunks.len()],
        chunks[..],
        "append keeps the chunks"
    );
    let got = get(&mut client, json!({"target": "redis", "asset": "big"}))
        .await
        .unwrap()
        .1;
    let got = rows(&got);
    assert_eq!(got.len(), 3001);
    assert_eq!(got[3000], (3000, s("last")));
    let info = client
        .get_flight_info(path(&["redis", "big"]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 3001);

    let other = batch(vec![("id", ids(&[1])), ("other", strs(&[Some("x")]))]);
    assert_status(
        put(
            &mut client,
            cmd(json!({"target": "redis", "asset": "big", "mode": "append"})),
            other.schema(),
            vec![other.clone()],
        )
        .await,
        Code::FailedPrecondition,
        "must send the stored columns",
    );
    put(
        &mut client,
        path(&["redis", "big"]),
        other.schema(),
        vec![other],
    )
    .await
    .unwrap();
    let keys = redis.keys().await;
    for chunk in appended {
        assert!(!keys.contains(&chunk), "{chunk} outlived its overwrite");
    }
    audit(&redis).await;
}

/// A put's `ttl` (or the target's) sets the expiry of every key it writes; `ttl` 0 clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ttl_applies_to_every_key_of_a_put() {
    let redis = RedisServer::start().await;
    let toml = redis.target_toml("redis", "ttl = 300");
    let server = TestServer::start_with_toml(&toml).await;
    let mut client = server.client().await;
    let b = batch(vec![
        ("id", ids(&[1, 2])),
        ("name", strs(&[Some("a"), None])),
    ]);
    let ttls = async |redis: &RedisServer| -> Vec<i64> {
        let mut c = redis.connection().await;
        let mut out = Vec::new();
        for key in redis.keys().await.iter().filter(|k| !k.ends_with("#puts")) {
            out.push(c.ttl(key).await.unwrap());
        }
        out
    };
    put(
        &mut client,
        path(&["redis", "a"]),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    let all = ttls(&redis).await;
    assert!(
        all.len() >= 2 && all.iter().all(|t| (1..=300).contains(t)),
        "{all:?}"
    );
    put(
        &mut client,
        cmd(json!({"target": "redis", "asset": "a", "mode": "append", "options": {"ttl": 0}})),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    let all = ttls(&redis).await;
    assert!(all.iter().all(|t| *t == -1), "ttl 0: no expiry: {all:?}");
    put(
        &mut client,
        cmd(json!({"target": "redis", "asset": "a", "key": ["id"], "options": {"layout": "hash", "ttl": "50"}})),
        b.schema(),
        vec![b],
    )
    .await
    .unwrap();
    let all = ttls(&redis).await;
    assert_eq!(all.len(), 3, "a pointer and two rows");
    assert!(all.iter().all(|t| (1..=50).contains(t)), "{all:?}");
}

/// A Redis that does not answer is UNAVAILABLE, naming the URL without its password; once it
/// is back, the next calls succeed without restarting Quiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_and_recovers() {
    let mut redis = RedisServer::start().await;
    let toml = redis.target_toml("redis", "")
        + "[targets.locked]\nkind = \"redis\"\nurl = \"redis://:s3cret@127.0.0.1:1/0\"\n";
    let server = TestServer::start_with_toml(&toml).await;
    let mut client = server.client().await;
    let b = batch(vec![("id", ids(&[1])), ("name", strs(&[Some("a")]))]);
    let err = assert_status(
        put(
            &mut client,
            path(&["locked", "t"]),
            b.schema(),
            vec![b.clone()],
        )
        .await,
        Code::Unavailable,
        "redis://:***@127.0.0.1:1/0",
    );
    assert!(!err.contains("s3cret"), "the password never shows: {err}");
    assert!(err.contains("does not answer"), "{err}");
    if !redis.local() {
        eprintln!("QUIVER_TEST_REDIS_URL is set: the outage of a shared Redis is not simulated");
        return;
    }
    put(
        &mut client,
        path(&["redis", "t"]),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    redis.kill();
    assert_status(
        put(
            &mut client,
            path(&["redis", "t"]),
            b.schema(),
            vec![b.clone()],
        )
        .await,
        Code::Unavailable,
        &redis.url,
    );
    redis.restart().await;
    let mut last = None;
    for _ in 0..50 {
        match put(
            &mut client,
            path(&["redis", "t"]),
            b.schema(),
            vec![b.clone()],
        )
        .await
        {
            Ok(result) => {
                last = Some(result);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(last.is_some(), "the target reconnected once Redis was back");
    let got = get(&mut client, json!({"target": "redis", "asset": "t"}))
        .await
        .unwrap()
        .1;
    assert_eq!(rows(&got), [(1, s("a"))]);
}

fn target(redis: &RedisServer, layout: Layout) -> RedisTarget {
    let config = RedisConfig {
        prefix: redis.prefix_of("crash"),
        layout,
        ..RedisConfig::from_url(&redis.url)
    };
    RedisTarget::open("crash", &config).unwrap()
}

/// A put of `b` as `asset` through the target itself, prepared: what is left is the commit
/// (or a crash before it). Returns the writer and its mark.
async fn prepared_put(
    target: &dyn Target,
    asset: &str,
    put_id: &str,
    b: &RecordBatch,
) -> (Box<dyn AssetWriter>, String) {
    let request = WriteRequest {
        asset: AssetKey::parse(asset).unwrap(),
        mode: Mode::Overwrite,
        partition: None,
        partition_column: None,
        key: vec!["id".to_string()],
        options: Default::default(),
        schema: b.schema(),
        existing: None,
        put_id: put_id.to_string(),
    };
    let mut writer = target.begin(&request, b.schema()).await.unwrap();
    writer.write(b.clone()).await.unwrap();
    let mark = writer.prepare().await.unwrap();
    (writer, mark)
}

/// The put the catalog would hold as pending had the server died during its commit.
fn pending(target: &dyn Target, asset: &str, put_id: &str, mark: &str, rows: u64) -> PendingPut {
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
        mark: mark.to_string(),
        started_at: chrono::Utc::now(),
    }
}

/// `resolve` rolls a put forward exactly when the pointer names it (and then deletes what the
/// swap replaced), else deletes its staged keys; the start-up sweep removes staged versions
/// older than its age and retired ones at once.
async fn commit_protocol(redis: &RedisServer, layout: Layout) {
    let target = target(redis, layout);
    let id_batch = |n: i64| batch(vec![("id", ids(&(0..n).collect::<Vec<_>>()))]);
    let staged = |mark: String| {
        let prefix = format!("{mark}:");
        async move {
            redis
                .keys()
                .await
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
                .count()
        }
    };
    for (put_id, n) in [("a", 2), ("b", 3)] {
        let (writer, _) = prepared_put(&target, "crash/orders", put_id, &id_batch(n)).await;
        writer.commit().await.unwrap();
    }
    let landed = target
        .resolve(&pending(&target, "crash/orders", "b", "", 3))
        .await
        .unwrap()
        .expect("the committed put rolls forward");
    assert_eq!((landed.rows, landed.total_rows), (3, Some(3)));

    // Prepared, never committed: rolled back, its keys deleted.
    let (writer, mark) = prepared_put(&target, "crash/orders", "c", &id_batch(5)).await;
    assert!(staged(mark.clone()).await > 0);
    assert_eq!(
        target
            .resolve(&pending(&target, "crash/orders", "c", &mark, 5))
            .await
            .unwrap(),
        None
    );
    assert_eq!(staged(mark).await, 0);
    drop(writer);

    // A crash after the swap but before the replaced version was deleted: the registry lists
    // it as retired, and settling the put deletes it.
    let (writer, mark) = prepared_put(&target, "crash/orders", "d", &id_batch(1)).await;
    let before = hgetall_lossy(redis, &redis.key("crash", "crash/orders}")).await;
    writer.commit().await.unwrap();
    let old = match layout {
        Layout::Table => format!(
            "{}:v{}",
            redis.key("crash", "crash/orders}"),
            before["version"]
        ),
        Layout::Hash => format!(
            "{}:g{}",
            redis.key("crash", "crash/orders}"),
            before["generation"]
        ),
    };
    let mut c = redis.connection().await;
    let _: () = c.set(format!("{old}:0"), "left behind").await.unwrap();
    let _: () = c
        .hset(
            redis.key("crash", "crash/orders}#puts"),
            &old,
            json!({"state": "retired", "put": "d", "at_ms": 0}).to_string(),
        )
        .await
        .unwrap();
    assert!(
        target
            .resolve(&pending(&target, "crash/orders", "d", &mark, 1))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(staged(old).await, 0);

    // A server that died mid-put: the sweep leaves young staged versions to their put.
    let (writer, mark) = prepared_put(&target, "crash/other", "e", &id_batch(4)).await;
    drop(writer);
    assert!(
        target
            .recover(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(staged(mark.clone()).await > 0);
    assert_eq!(
        target.recover(Duration::ZERO).await.unwrap(),
        std::slice::from_ref(&mark)
    );
    assert_eq!(staged(mark).await, 0);
    audit(redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_table_commit_protocol_settles_interrupted_puts() {
    let redis = RedisServer::start().await;
    commit_protocol(&redis, Layout::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_commit_protocol_settles_interrupted_puts() {
    let redis = RedisServer::start().await;
    commit_protocol(&redis, Layout::Hash).await;
}

/// An upsert is invisible until its commit: a reader mid-put sees the old rows only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_upsert_is_invisible_until_commit() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    let first = batch(vec![
        ("id", ids(&[1, 2])),
        ("name", strs(&[Some("a"), Some("b")])),
    ]);
    put(
        &mut client,
        cmd(json!({"target": "rhash", "asset": "live", "key": ["id"]})),
        first.schema(),
        vec![first],
    )
    .await
    .unwrap();
    let (mut tx, call) = open_put(
        server.client().await,
        cmd(json!({"target": "rhash", "asset": "live", "key": ["id"], "mode": "upsert"})),
    );
    let names: Vec<String> = (0..500).map(|i| format!("new {i}")).collect();
    let change = batch(vec![
        ("id", ids(&(1..501).collect::<Vec<_>>())),
        (
            "name",
            Arc::new(StringArray::from_iter_values(names.iter())),
        ),
    ]);
    use futures::SinkExt;
    tx.send(Ok(change)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mid = get(&mut client, json!({"target": "rhash", "asset": "live"}))
        .await
        .unwrap()
        .1;
    assert_eq!(rows(&mid), [(1, s("a")), (2, s("b"))]);
    drop(tx);
    call.await.unwrap().expect("the upsert commits");
    let after = get(&mut client, json!({"target": "rhash", "asset": "live"}))
        .await
        .unwrap()
        .1;
    let after = rows(&after);
    assert_eq!(after.len(), 500);
    assert_eq!(after[0], (1, s("new 0")));
    audit(&redis).await;
}

/// A hash-layout read returns every row once, in batches, whatever the SCAN order; a
/// projection reads only the columns asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_layout_reads_many_rows() {
    let redis = RedisServer::start().await;
    let server = server_for(&redis).await;
    let mut client = server.client().await;
    let n = 20_000i64;
    let names: Vec<String> = (0..n).map(|i| format!("name {i}")).collect();
    let b = batch(vec![
        ("id", ids(&(0..n).collect::<Vec<_>>())),
        (
            "name",
            Arc::new(StringArray::from_iter_values(names.iter())),
        ),
    ]);
    let batches = vec![b.slice(0, 7_000), b.slice(7_000, 13_000)];
    put(
        &mut client,
        cmd(json!({"target": "rhash", "asset": "many", "key": ["id"]})),
        b.schema(),
        batches,
    )
    .await
    .unwrap();
    let got = get(&mut client, json!({"target": "rhash", "asset": "many"}))
        .await
        .unwrap()
        .1;
    assert!(got.len() > 1, "several batches");
    let got = rows(&got);
    assert_eq!(got.len(), n as usize);
    assert!(
        got.iter().enumerate().all(|(i, (id, name))| *id == i as i64
            && name.as_deref() == Some(format!("name {i}").as_str()))
    );
    let (schema, names_only) = get(
        &mut client,
        json!({"target": "rhash", "asset": "many", "columns": ["name"]}),
    )
    .await
    .unwrap();
    assert_eq!(schema.fields().len(), 1);
    assert_eq!(
        names_only.iter().map(RecordBatch::num_rows).sum::<usize>(),
        n as usize
    );
}

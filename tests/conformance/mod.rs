//! The conformance suite every target runs: written once, driven through the Flight service,
//! parameterized by what the target can hold.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::*;
use arrow_flight::FlightClient;
use arrow_flight::FlightData;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_schema::{DataType, Field, Fields, Schema};
use futures::{SinkExt, TryStreamExt};
use serde_json::json;
use tonic::Code;

use crate::common::*;

/// What one target is expected to hold.
pub struct Profile {
    pub target: &'static str,
    /// Columns of [`type_matrix`] the target must refuse with INVALID_ARGUMENT.
    pub refuses: &'static [&'static str],
    /// Modes besides overwrite the target supports.
    pub extra_modes: &'static [&'static str],
    /// File extension for file targets, whose locations the suite checks; `None` for tables.
    pub extension: Option<&'static str>,
}

/// Runs the whole suite against a fresh server with the default targets.
pub async fn run(profile: &Profile) {
    run_on(TestServer::start().await, profile).await;
}

/// Runs the whole suite against `server`, which must have `profile.target` configured.
pub async fn run_on(server: TestServer, profile: &Profile) {
    round_trips_every_type(&server, profile).await;
    refuses_what_it_cannot_hold(&server, profile).await;
    empty_tables_round_trip(&server, profile).await;
    bad_batch_aborts_and_keeps_the_old_version(&server, profile).await;
    client_cancel_leaves_nothing(&server, profile).await;
    overwrite_is_invisible_until_commit(&server, profile).await;
    partitions_are_isolated(&server, profile).await;
    bad_names_are_refused(&server, profile).await;
    unsupported_modes_are_refused(&server, profile).await;
    idempotent_puts_replay(&server, profile).await;
    concurrent_writers_serialize(&server, profile).await;
    projection_and_versions(&server, profile).await;
    server.stop().await;
}

/// One column per type that must round-trip, each with a null and edge values.
pub fn type_matrix() -> RecordBatch {
    let tz_utc: Arc<str> = "UTC".into();
    let tz_offset: Arc<str> = "+05:30".into();
    let mut dict = StringDictionaryBuilder::<Int32Type>::new();
    for v in [Some("red"), Some("green"), None, Some("red")] {
        dict.append_option(v);
    }
    let mut list = ListBuilder::new(arrow_array::builder::Int32Builder::new());
    list.append_value([Some(1), None, Some(3)]);
    list.append_null();
    list.append_value([]);
    list.append_value([Some(i32::MAX)]);
    let structs = StructArray::new(
        Fields::from(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
        ]),
        vec![
            Arc::new(Int32Array::from(vec![Some(1), Some(2), None, Some(4)])),
            Arc::new(StringArray::from(vec![
                Some("x"),
                None,
                Some("z"),
                Some(""),
            ])),
        ],
        Some(vec![true, true, false, true].into()),
    );
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "i8",
            Arc::new(Int8Array::from(vec![
                Some(i8::MIN),
                None,
                Some(0),
                Some(i8::MAX),
            ])),
        ),
        (
            "i16",
            Arc::new(Int16Array::from(vec![
                Some(i16::MIN),
                None,
                Some(0),
                Some(i16::MAX),
            ])),
        ),
        (
            "i32",
            Arc::new(Int32Array::from(vec![
                Some(i32::MIN),
                None,
                Some(0),
                Some(i32::MAX),
            ])),
        ),
        (
            "i64",
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                None,
                Some(0),
                Some(i64::MAX),
            ])),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from(vec![
                Some(0),
                None,
                Some(1),
                Some(u8::MAX),
            ])),
        ),
        (
            "u16",
            Arc::new(UInt16Array::from(vec![
                Some(0),
                None,
                Some(1),
                Some(u16::MAX),
            ])),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from(vec![
                Some(0),
                None,
                Some(1),
                Some(u32::MAX),
            ])),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from(vec![
                Some(0),
                None,
                Some(1),
                Some(u64::MAX),
            ])),
        ),
        (
            "f32",
            Arc::new(Float32Array::from(vec![
                Some(-1.5),
                None,
                Some(0.1),
                Some(f32::MAX),
            ])),
        ),
        (
            "f64",
            Arc::new(Float64Array::from(vec![
                Some(-0.1),
                None,
                Some(1e-300),
                Some(f64::MAX),
            ])),
        ),
        (
            "bool",
            Arc::new(BooleanArray::from(vec![
                Some(true),
                None,
                Some(false),
                Some(true),
            ])),
        ),
        (
            "utf8",
            Arc::new(StringArray::from(vec![
                Some("héllo, \"wörld\""),
                None,
                Some(""),
                Some("line\nbreak 🎯"),
            ])),
        ),
        (
            "large_utf8",
            Arc::new(LargeStringArray::from(vec![
                Some("a"),
                None,
                Some(""),
                Some("ü"),
            ])),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from(vec![
                Some(b"\x00\xff".as_slice()),
                None,
                Some(b"".as_slice()),
                Some(b"abc".as_slice()),
            ])),
        ),
        (
            "date32",
            Arc::new(Date32Array::from(vec![
                Some(0),
                None,
                Some(-719162),
                Some(2932896),
            ])),
        ),
        (
            "ts_s",
            Arc::new(TimestampSecondArray::from(vec![
                Some(0),
                None,
                Some(-1),
                Some(1_700_000_000),
            ])),
        ),
        (
            "ts_ms",
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(0),
                None,
                Some(-1),
                Some(1_700_000_000_123),
            ])),
        ),
        (
            "ts_us",
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(0),
                None,
                Some(-1),
                Some(1_700_000_000_123_456),
            ])),
        ),
        (
            "ts_ns",
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(0),
                None,
                Some(-1),
                Some(1_700_000_000_123_456_789),
            ])),
        ),
        (
            "ts_us_utc",
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(0),
                    None,
                    Some(1),
                    Some(1_700_000_000_123_456),
                ])
                .with_timezone(tz_utc),
            ),
        ),
        (
            "ts_ns_offset",
            Arc::new(
                TimestampNanosecondArray::from(vec![
                    Some(0),
                    None,
                    Some(1),
                    Some(1_700_000_000_123_456_789),
                ])
                .with_timezone(tz_offset),
            ),
        ),
        (
            "time64_us",
            Arc::new(Time64MicrosecondArray::from(vec![
                Some(0),
                None,
                Some(1),
                Some(86_399_999_999),
            ])),
        ),
        (
            "time64_ns",
            Arc::new(Time64NanosecondArray::from(vec![
                Some(0),
                None,
                Some(1),
                Some(86_399_999_999_999),
            ])),
        ),
        (
            "decimal",
            Arc::new(
                Decimal128Array::from(vec![
                    Some(i128::from(i64::MAX) * 1_000_000_007),
                    None,
                    Some(-1),
                    Some(99_999_999_999_999_999_999_999_999_999_999_999_999),
                ])
                .with_precision_and_scale(38, 10)
                .unwrap(),
            ),
        ),
        ("list", Arc::new(list.finish())),
        ("struct", Arc::new(structs)),
        ("dict", Arc::new(dict.finish())),
        ("nulls", Arc::new(NullArray::new(4))),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let schema = Schema::new_with_metadata(
        fields,
        HashMap::from([("origin".to_string(), "conformance".to_string())]),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn without(batch: &RecordBatch, drop: &[&str]) -> RecordBatch {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !drop.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    batch.project(&keep).unwrap()
}

/// A simple two-column batch whose values identify the write.
pub fn numbered(tag: i64, rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("tag", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            Arc::new(Int64Array::from(vec![tag; rows])),
        ],
    )
    .unwrap()
}

fn tags(batches: &[RecordBatch]) -> Vec<i64> {
    let mut tags: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("tag")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    tags.dedup();
    tags
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

async fn put_numbered(
    client: &mut FlightClient,
    target: &str,
    asset: &str,
    tag: i64,
    n: usize,
) -> serde_json::Value {
    let batch = numbered(tag, n);
    put(
        client,
        cmd(json!({"target": target, "asset": asset})),
        batch.schema(),
        vec![batch],
    )
    .await
    .expect("put")
}

async fn read_all(client: &mut FlightClient, target: &str, asset: &str) -> Vec<RecordBatch> {
    get(client, json!({"target": target, "asset": asset}))
        .await
        .expect("get")
        .1
}

async fn round_trips_every_type(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let batch = without(&type_matrix(), p.refuses);
    // Two batches, so the writer sees more than one.
    let batches = vec![batch.slice(0, 2), batch.slice(2, 2)];
    let asset = "types/matrix";
    let result = put(
        &mut client,
        path(&[p.target, "types", "matrix"]),
        batch.schema(),
        batches,
    )
    .await
    .unwrap_or_else(|e| panic!("{}: put of the type matrix failed: {e}", p.target));
    assert_eq!(result["rows"], 4);
    assert_eq!(result["asset"], asset);
    assert_eq!(result["target"], p.target);
    assert_eq!(result["version"], 1);
    if p.extension.is_some() {
        assert!(result["bytes"].as_u64().unwrap() > 0, "a file has a size");
    }
    let (schema, got) = get(&mut client, json!({"target": p.target, "asset": asset}))
        .await
        .unwrap();
    assert_eq!(
        schema,
        batch.schema(),
        "{}: schema must round-trip exactly",
        p.target
    );
    let got = concat(&schema, &got);
    for (i, field) in batch.schema().fields().iter().enumerate() {
        assert_eq!(
            got.column(i).data_type(),
            field.data_type(),
            "{}: column {} type",
            p.target,
            field.name()
        );
        assert_eq!(
            values(&got)[i].to_data(),
            values(&batch)[i].to_data(),
            "{}: column {} values",
            p.target,
            field.name()
        );
    }
}

async fn refuses_what_it_cannot_hold(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let matrix = type_matrix();
    for column in p.refuses {
        let idx = matrix.schema().index_of(column).unwrap();
        let batch = matrix.project(&[0, idx]).unwrap();
        let result = put(
            &mut client,
            path(&[p.target, "refused", column]),
            batch.schema(),
            vec![batch],
        )
        .await;
        assert_status(result, Code::InvalidArgument, column);
        let missing = get(
            &mut client,
            json!({"target": p.target, "asset": format!("refused/{column}")}),
        )
        .await;
        assert_status(missing, Code::NotFound, "not found");
    }
}

async fn empty_tables_round_trip(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let schema = numbered(0, 0).schema();
    let result = put(
        &mut client,
        path(&[p.target, "empty"]),
        schema.clone(),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], 0);
    let (got_schema, got) = get(&mut client, json!({"target": p.target, "asset": "empty"}))
        .await
        .unwrap();
    assert_eq!(got_schema, schema);
    assert_eq!(rows(&got), 0);
}

/// Encodes a put whose second batch is garbage.
fn corrupt_put(target: &str, asset: &str) -> Vec<FlightData> {
    let good = numbered(2, 10);
    let data: Vec<FlightData> = futures::executor::block_on(
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(cmd(json!({"target": target, "asset": asset}))))
            .build(futures::stream::iter(vec![Ok(good.clone()), Ok(good)]))
            .try_collect(),
    )
    .unwrap();
    let mut data = data;
    let last = data.last_mut().unwrap();
    last.data_header = bytes::Bytes::from_static(b"\x01\x02\x03 not a flatbuffer");
    data
}

async fn bad_batch_aborts_and_keeps_the_old_version(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let asset = "abort/bad-batch";
    put_numbered(&mut client, p.target, asset, 1, 5).await;
    let before = server.files();
    let result = client
        .do_put(futures::stream::iter(
            corrupt_put(p.target, asset).into_iter().map(Ok),
        ))
        .await;
    let result = match result {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map_err(status),
        Err(e) => Err(status(e)),
    };
    assert_status(result, Code::InvalidArgument, "could not be decoded");
    assert_eq!(tags(&read_all(&mut client, p.target, asset).await), [1]);
    assert_eq!(
        server.files(),
        before,
        "{}: a failed put left files behind",
        p.target
    );
}

async fn client_cancel_leaves_nothing(server: &TestServer, p: &Profile) {
    let asset = "abort/cancelled";
    let mut client = server.client().await;
    put_numbered(&mut client, p.target, asset, 1, 5).await;
    let before = server.files();
    {
        // A client whose connection dies half-way through the put.
        let (relay_addr, relay_task) = relay(server.addr).await;
        let (mut tx, call) = open_put(
            client_at(relay_addr).await,
            cmd(json!({"target": p.target, "asset": asset})),
        );
        let batch = numbered(2, 1000);
        tx.send(Ok(batch.clone())).await.unwrap();
        tx.send(Ok(batch)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay_task.abort();
        let _ = relay_task.await;
        assert!(
            call.await.unwrap().is_err(),
            "{}: a cut put must not succeed",
            p.target
        );
        drop(tx);
    }
    // The server notices the reset stream and aborts; give it a moment.
    for _ in 0..50 {
        if server.files() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.files(),
        before,
        "{}: a cancelled put left files behind",
        p.target
    );
    assert_eq!(tags(&read_all(&mut client, p.target, asset).await), [1]);
    let info = action(
        &mut client,
        "describe",
        json!({"target": p.target, "asset": asset}),
    )
    .await
    .unwrap();
    assert_eq!(info["version"], 1, "a cancelled put must not commit");
}

async fn overwrite_is_invisible_until_commit(server: &TestServer, p: &Profile) {
    let asset = "visibility/overwrite";
    let mut client = server.client().await;
    put_numbered(&mut client, p.target, asset, 1, 100).await;
    let (mut tx, call) = open_put(
        server.client().await,
        cmd(json!({"target": p.target, "asset": asset})),
    );
    tx.send(Ok(numbered(2, 300))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Mid-put, readers see the whole old version.
    let mid = read_all(&mut client, p.target, asset).await;
    assert_eq!((tags(&mid), rows(&mid)), (vec![1], 100), "{}", p.target);
    tx.send(Ok(numbered(2, 300))).await.unwrap();
    drop(tx);
    call.await.unwrap().expect("second put commits");
    let after = read_all(&mut client, p.target, asset).await;
    assert_eq!((tags(&after), rows(&after)), (vec![2], 600), "{}", p.target);
}

/// A batch for partition tests: `id`, `tag`, and the partition key columns.
fn partition_batch(tag: i64, rows: usize, keys: &[(&str, &str)]) -> RecordBatch {
    let base = numbered(tag, rows);
    let mut fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    for (name, value) in keys {
        fields.push(Field::new(*name, DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from(vec![*value; rows])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

async fn partitions_are_isolated(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let asset = "events/daily";
    let put_day = |day: &'static str, tag: i64, n: usize| {
        let batch = partition_batch(tag, n, &[("day", day)]);
        (
            cmd(
                json!({"target": p.target, "asset": asset, "partition": day, "partition_column": "day"}),
            ),
            batch,
        )
    };
    for (day, tag, n) in [("2024-01-02", 2, 20), ("2024-01-01", 1, 10)] {
        let (descriptor, batch) = put_day(day, tag, n);
        let result = put(&mut client, descriptor, batch.schema(), vec![batch])
            .await
            .unwrap();
        assert_eq!(result["partition"], day);
        if let Some(ext) = p.extension {
            let location = result["location"].as_str().unwrap();
            assert!(
                location.ends_with(&format!("events/daily/{day}.{ext}")),
                "{result}"
            );
        }
    }
    // Whole asset: every partition.
    let all = read_all(&mut client, p.target, asset).await;
    assert_eq!((sorted(tags(&all)), rows(&all)), (vec![1, 2], 30));
    let one = get(
        &mut client,
        json!({"target": p.target, "asset": asset, "partition": "2024-01-02"}),
    )
    .await
    .unwrap()
    .1;
    assert_eq!((tags(&one), rows(&one)), (vec![2], 20));
    // Replacing one partition leaves the other untouched.
    let (descriptor, batch) = put_day("2024-01-01", 3, 5);
    put(&mut client, descriptor, batch.schema(), vec![batch])
        .await
        .unwrap();
    let all = read_all(&mut client, p.target, asset).await;
    assert_eq!((sorted(tags(&all)), rows(&all)), (vec![2, 3], 25));
    let info = client
        .get_flight_info(path(&[p.target, "events", "daily"]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 25);
    // An unknown partition is NOT_FOUND; an unpartitioned put to a partitioned asset is refused.
    let missing = get(
        &mut client,
        json!({"target": p.target, "asset": asset, "partition": "1999-01-01"}),
    )
    .await;
    assert_status(missing, Code::NotFound, "1999-01-01");
    let batch = partition_batch(4, 1, &[("day", "2024-01-01")]);
    let mixed = put(
        &mut client,
        path(&[p.target, "events", "daily"]),
        batch.schema(),
        vec![batch],
    )
    .await;
    assert_status(mixed, Code::FailedPrecondition, "partitioned");
    // A column whose type differs from the stored asset is refused.
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("day", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(StringArray::from(vec!["2024-01-03"])),
        ],
    )
    .unwrap();
    let drift = put(
        &mut client,
        cmd(json!({"target": p.target, "asset": asset, "partition": "2024-01-03", "partition_column": "day"})),
        other.schema(),
        vec![other],
    )
    .await;
    assert_status(drift, Code::FailedPrecondition, "id");
    // Deleting one partition keeps the rest.
    action(
        &mut client,
        "delete",
        json!({"target": p.target, "asset": asset, "partition": "2024-01-02"}),
    )
    .await
    .unwrap();
    let all = read_all(&mut client, p.target, asset).await;
    assert_eq!((tags(&all), rows(&all)), (vec![3], 5));
    // Multi-dimensional partitions: one key per dimension.
    let multi = "events/by_region";
    let columns = json!({"date": "date", "region": "region"});
    let batch = partition_batch(4, 2, &[("date", "2024-01-01"), ("region", "eu")]);
    let result = put(
        &mut client,
        cmd(json!({"target": p.target, "asset": multi, "partition": {"region": "eu", "date": "2024-01-01"}, "partition_column": columns})),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    if let Some(ext) = p.extension {
        // Files: one directory level per dimension, dimensions in name order.
        let location = result["location"].as_str().unwrap();
        assert!(
            location.ends_with(&format!("events/by_region/2024-01-01/eu.{ext}")),
            "{result}"
        );
    }
    let us = partition_batch(5, 3, &[("date", "2024-01-01"), ("region", "us")]);
    put(
        &mut client,
        cmd(json!({"target": p.target, "asset": multi, "partition": {"region": "us", "date": "2024-01-01"}, "partition_column": columns})),
        us.schema(),
        vec![us],
    )
    .await
    .unwrap();
    let single = put(
        &mut client,
        cmd(json!({"target": p.target, "asset": multi, "partition": "2024-01-01", "partition_column": "date"})),
        batch.schema(),
        vec![batch],
    )
    .await;
    assert_status(single, Code::FailedPrecondition, "dimensions");
    let got = get(&mut client, json!({"target": p.target, "asset": multi, "partition": {"date": "2024-01-01", "region": "eu"}})).await.unwrap().1;
    assert_eq!((tags(&got), rows(&got)), (vec![4], 2));
    let all = read_all(&mut client, p.target, multi).await;
    assert_eq!(rows(&all), 5);
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort();
    v.dedup();
    v
}

async fn bad_names_are_refused(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let batch = numbered(1, 1);
    for bad in [
        "../escape",
        "a/../../b",
        ".hidden",
        "a//b",
        "sp ace",
        "/abs",
    ] {
        let result = put(
            &mut client,
            cmd(json!({"target": p.target, "asset": bad})),
            batch.schema(),
            vec![batch.clone()],
        )
        .await;
        assert_status(result, Code::InvalidArgument, "asset key");
    }
    let escape = put(
        &mut client,
        path(&[p.target, "..", "x"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await;
    assert_status(escape, Code::InvalidArgument, "'..'");
    let unknown = put(
        &mut client,
        path(&["no-such-target", "x"]),
        batch.schema(),
        vec![batch],
    )
    .await;
    assert_status(unknown, Code::NotFound, "unknown target 'no-such-target'");
    assert!(
        server.files().iter().all(|f| !f.contains("escape")),
        "nothing may be written for a refused name"
    );
    assert!(!server.dir.path().join("escape.parquet").exists());
}

async fn unsupported_modes_are_refused(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let batch = numbered(1, 1);
    for mode in ["append", "upsert"] {
        if p.extra_modes.contains(&mode) {
            continue;
        }
        let result = put(
            &mut client,
            cmd(json!({"target": p.target, "asset": "modes/refused", "mode": mode, "key": ["id"]})),
            batch.schema(),
            vec![batch.clone()],
        )
        .await;
        assert_status(
            result,
            Code::FailedPrecondition,
            &format!("does not support mode '{mode}'"),
        );
    }
}

async fn idempotent_puts_replay(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let asset = "idempotent/run";
    let descriptor =
        || cmd(json!({"target": p.target, "asset": asset, "idempotency_key": "run-42"}));
    let first = numbered(1, 10);
    let a = put(&mut client, descriptor(), first.schema(), vec![first])
        .await
        .unwrap();
    assert_eq!(a["replayed"], false);
    let second = numbered(2, 99);
    let b = put(&mut client, descriptor(), second.schema(), vec![second])
        .await
        .unwrap();
    assert_eq!(b["replayed"], true);
    assert_eq!(
        (b["version"].clone(), b["rows"].clone()),
        (a["version"].clone(), a["rows"].clone())
    );
    let got = read_all(&mut client, p.target, asset).await;
    assert_eq!(
        (tags(&got), rows(&got)),
        (vec![1], 10),
        "a replay writes nothing"
    );
}

async fn concurrent_writers_serialize(server: &TestServer, p: &Profile) {
    let asset = "concurrent/asset";
    let mut handles = Vec::new();
    for tag in 1..=4 {
        let mut client = server.client().await;
        let target = p.target;
        handles.push(tokio::spawn(async move {
            put_numbered(&mut client, target, asset, tag, 500 * tag as usize).await
        }));
    }
    let mut versions = Vec::new();
    for h in handles {
        versions.push(h.await.unwrap()["version"].as_u64().unwrap());
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4], "each put commits its own version");
    let mut client = server.client().await;
    let got = read_all(&mut client, p.target, asset).await;
    let t = tags(&got);
    assert_eq!(t.len(), 1, "one whole version is visible");
    assert_eq!(rows(&got), 500 * t[0] as usize);
}

async fn projection_and_versions(server: &TestServer, p: &Profile) {
    let mut client = server.client().await;
    let asset = "projection/asset";
    put_numbered(&mut client, p.target, asset, 7, 3).await;
    let (schema, got) = get(
        &mut client,
        json!({"target": p.target, "asset": asset, "columns": ["tag"]}),
    )
    .await
    .unwrap();
    assert_eq!(schema.fields().len(), 1);
    assert_eq!(schema.field(0).name(), "tag");
    assert_eq!(tags(&got), [7]);
    // Columns come back in the order asked for, whatever the stored order.
    let (schema, got) = get(
        &mut client,
        json!({"target": p.target, "asset": asset, "columns": ["tag", "id"]}),
    )
    .await
    .unwrap();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["tag", "id"]);
    let got = concat(&schema, &got);
    assert_eq!(got.schema().field(0).name(), "tag");
    let as_i64 = |i: usize| {
        got.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    };
    assert_eq!(as_i64(0), [7, 7, 7], "first column is tag");
    let mut ids = as_i64(1);
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2], "second column is id");
    let unknown = get(
        &mut client,
        json!({"target": p.target, "asset": asset, "columns": ["nope"]}),
    )
    .await;
    assert_status(unknown, Code::InvalidArgument, "column 'nope'");
    // The ticket GetFlightInfo hands out pins the version it describes.
    let info = client
        .get_flight_info(path(&[p.target, "projection", "asset"]))
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    assert_eq!(
        tags(&get_ticket(&mut client, ticket.clone()).await.unwrap().1),
        [7]
    );
    put_numbered(&mut client, p.target, asset, 8, 3).await;
    assert_status(
        get_ticket(&mut client, ticket).await,
        Code::FailedPrecondition,
        "GetFlightInfo",
    );
}

//! The Flight protocol surface: catalog calls, actions, descriptor and ticket forms, errors.

mod common;
mod conformance;

use std::sync::Arc;

use arrow_flight::{FlightDescriptor, Ticket};
use arrow_schema::Schema;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use quiver::protocol::pb;
use serde_json::json;
use tonic::Code;

use common::*;
use conformance::numbered;

#[tokio::test]
async fn list_flights_describes_every_asset() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (target, asset, n) in [
        ("parquet", "sales/daily", 3),
        ("csv", "sales/monthly", 2),
        ("json", "ops/log", 1),
    ] {
        let batch = numbered(1, n);
        put(
            &mut client,
            cmd(json!({"target": target, "asset": asset})),
            batch.schema(),
            vec![batch],
        )
        .await
        .unwrap();
    }
    let all: Vec<_> = client
        .list_flights(Vec::<u8>::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let sales: Vec<_> = client
        .list_flights(json!({"prefix": "sales/"}).to_string())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut paths: Vec<Vec<String>> = sales
        .iter()
        .map(|i| i.flight_descriptor.clone().unwrap().path)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            vec!["csv", "sales", "monthly"],
            vec!["parquet", "sales", "daily"]
        ]
    );
    let parquet: Vec<_> = client
        .list_flights(
            pb::ListCriteria {
                target: Some("parquet".into()),
                prefix: None,
            }
            .encode_to_vec(),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(parquet.len(), 1);
    let info = &parquet[0];
    assert_eq!(info.total_records, 3);
    assert!(info.total_bytes > 0);
    assert_eq!(
        info.clone().try_decode_schema().unwrap(),
        *numbered(0, 0).schema()
    );
    let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["kind"], "parquet");
    assert!(
        meta["location"]
            .as_str()
            .unwrap()
            .ends_with("/parquet/sales/daily.parquet"),
        "{meta}"
    );
    assert!(meta["updated_at"].is_string());
    // The endpoint's ticket reads the asset.
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let (_, batches) = get_ticket(&mut client, ticket).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    let bad = client
        .list_flights(json!({"colour": "red"}).to_string())
        .await
        .map(|_| ());
    assert_status(bad.map_err(status), Code::InvalidArgument, "unknown field");
}

#[tokio::test]
async fn get_flight_info_and_schema_for_one_asset() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = conformance::type_matrix();
    put(
        &mut client,
        path(&["arrow", "t"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    let info = client.get_flight_info(path(&["arrow", "t"])).await.unwrap();
    assert_eq!(info.total_records, 4);
    assert_eq!(info.flight_descriptor.clone().unwrap().path, ["arrow", "t"]);
    let schema: Schema = info.try_decode_schema().unwrap();
    assert_eq!(Arc::new(schema), batch.schema());
    let schema = client.get_schema(path(&["arrow", "t"])).await.unwrap();
    assert_eq!(Arc::new(schema), batch.schema());
    assert_status(
        client
            .get_flight_info(path(&["arrow", "missing"]))
            .await
            .map_err(status),
        Code::NotFound,
        "asset 'missing' not found in target 'arrow'",
    );
    assert_status(
        client
            .get_schema(path(&["nope", "t"]))
            .await
            .map_err(status),
        Code::NotFound,
        "unknown target 'nope'; configured targets: arrow, csv, delta, duckdb, json, parquet",
    );
}

#[tokio::test]
async fn protobuf_commands_and_tickets_work_like_json() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(5, 4);
    let command = pb::AssetCommand {
        target: "parquet".into(),
        asset: vec!["pb".into(), "asset".into()],
        mode: pb::Mode::Overwrite as i32,
        partition: Some(pb::Partition {
            kind: Some(pb::partition::Kind::Key("2024-05-01".into())),
        }),
        idempotency_key: Some("pb-1".into()),
        ..Default::default()
    };
    let result = put(
        &mut client,
        FlightDescriptor::new_cmd(command.encode_to_vec()),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    assert_eq!(result["asset"], "pb/asset");
    assert_eq!(result["partition"], "2024-05-01");
    let ticket = pb::AssetTicket {
        target: String::new(),
        asset: vec!["pb/asset".into()],
        columns: vec!["tag".into()],
        ..Default::default()
    };
    let (schema, got) = get_ticket(&mut client, Ticket::new(ticket.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(schema.fields().len(), 1);
    assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
}

#[tokio::test]
async fn ticket_without_target_needs_an_unambiguous_asset() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(1, 2);
    for target in ["csv", "json"] {
        put(
            &mut client,
            path(&[target, "shared"]),
            batch.schema(),
            vec![batch.clone()],
        )
        .await
        .unwrap();
    }
    put(
        &mut client,
        path(&["csv", "only"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    assert!(get(&mut client, json!({"asset": "only"})).await.is_ok());
    assert_status(
        get(&mut client, json!({"asset": "shared"})).await,
        Code::InvalidArgument,
        "csv, json",
    );
    assert_status(
        get(&mut client, json!({"asset": "ghost"})).await,
        Code::NotFound,
        "ghost",
    );
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(1, 1);
    let cases = [
        (FlightDescriptor::new_cmd("{not json"), "not valid"),
        (
            FlightDescriptor::new_cmd(vec![0xff, 0xff, 0xff]),
            "neither JSON nor a protobuf",
        ),
        (FlightDescriptor::new_path(vec![]), "path is empty"),
        (
            FlightDescriptor::new_path(vec!["parquet".into()]),
            "no asset",
        ),
        (
            cmd(json!({"target": "parquet", "asset": "a", "mode": "upsert"})),
            "needs \"key\"",
        ),
        (
            cmd(json!({"target": "parquet", "asset": "a", "partition_column": "d"})),
            "no \"partition\"",
        ),
        (
            cmd(json!({"target": "parquet", "asset": "a", "options": {"row_group": 1}})),
            "option 'row_group'",
        ),
        (
            cmd(
                json!({"target": "parquet", "asset": "a", "partition": "x", "partition_column": "nope"}),
            ),
            "column 'nope'",
        ),
    ];
    for (descriptor, needle) in cases {
        let result = put(&mut client, descriptor, batch.schema(), vec![batch.clone()]).await;
        assert_status(result, Code::InvalidArgument, needle);
    }
    for (ticket, needle) in [
        (Ticket::new("{\"asset\": 1}"), "not valid"),
        (Ticket::new(vec![0xff, 0x00]), "neither JSON nor a protobuf"),
    ] {
        assert_status(
            get_ticket(&mut client, ticket).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert!(
        server.files().is_empty(),
        "nothing written: {:?}",
        server.files()
    );
}

#[tokio::test]
async fn actions_describe_delete_and_report_health() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let listed: Vec<_> = client
        .list_actions()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: Vec<_> = listed.iter().map(|a| a.r#type.as_str()).collect();
    assert_eq!(names, ["delete", "describe", "list-targets", "health"]);
    assert!(listed.iter().all(|a| !a.description.is_empty()));

    let targets = action(&mut client, "list-targets", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(targets.as_array().unwrap().len(), 6);
    assert_eq!(
        targets[0],
        json!({"name": "arrow", "kind": "arrow", "modes": ["overwrite"]})
    );

    let health = action(&mut client, "health", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["targets"]["parquet"]["ok"], true);

    let batch = numbered(1, 3);
    put(
        &mut client,
        path(&["parquet", "a", "b"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    put(
        &mut client,
        path(&["parquet", "a", "b"]),
        batch.schema(),
        vec![batch],
    )
    .await
    .unwrap();
    let described = action(
        &mut client,
        "describe",
        json!({"target": "parquet", "asset": "a/b"}),
    )
    .await
    .unwrap();
    assert_eq!(described["version"], 2);
    assert_eq!(described["rows"], 3);
    assert_eq!(
        described["schema"][0],
        json!({"name": "id", "type": "Int64", "nullable": false})
    );
    let history = described["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["version"], 2);
    assert_eq!(history[0]["mode"], "overwrite");

    let deleted = action(
        &mut client,
        "delete",
        json!({"target": "parquet", "asset": "a/b"}),
    )
    .await
    .unwrap();
    assert_eq!(deleted["deleted"], "a/b");
    assert!(server.files().is_empty(), "{:?}", server.files());
    assert_status(
        action(
            &mut client,
            "describe",
            json!({"target": "parquet", "asset": "a/b"}),
        )
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        action(
            &mut client,
            "delete",
            json!({"target": "parquet", "asset": "a/b"}),
        )
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        action(&mut client, "vacuum", serde_json::Value::Null).await,
        Code::InvalidArgument,
        "unknown action 'vacuum'",
    );
    assert_status(
        action(&mut client, "delete", json!({"asset": "x"})).await,
        Code::InvalidArgument,
        "missing field `target`",
    );
}

#[tokio::test]
async fn unsupported_rpcs_say_what_to_use() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let err = client
        .poll_flight_info(path(&["parquet", "a"]))
        .await
        .map_err(status)
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("GetFlightInfo"));
}

#[tokio::test]
async fn a_discard_target_counts_what_arrives_and_keeps_nothing() {
    let server = TestServer::start_with_toml("[targets.sink]\nkind = \"discard\"\n").await;
    let mut client = server.client().await;
    let batches = vec![numbered(0, 100), numbered(100, 150)];
    let result = put(
        &mut client,
        path(&["sink", "transport", "probe"]),
        batches[0].schema(),
        batches,
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], 250);
    assert_eq!(result["location"], "discard://sink/transport/probe");
    let err = get(
        &mut client,
        json!({"target": "sink", "asset": "transport/probe"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("discards"), "{err}");
    // Only configured: the default targets do not include it.
    let default = TestServer::start().await;
    let mut client = default.client().await;
    let err = put(
        &mut client,
        path(&["discard", "x"]),
        numbered(0, 1).schema(),
        vec![numbered(0, 1)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn named_targets_come_from_config() {
    let server = TestServer::start_with_toml(
        r#"
        [targets.lake]
        kind = "parquet"
        compression = "snappy"
        row_group_size = 2
        "#,
    )
    .await;
    let mut client = server.client().await;
    let batch = numbered(1, 5);
    let result = put(
        &mut client,
        path(&["lake", "x"]),
        batch.schema(),
        vec![batch],
    )
    .await
    .unwrap();
    assert!(
        result["location"]
            .as_str()
            .unwrap()
            .ends_with("/data/lake/x.parquet")
    );
    assert_eq!(server.files(), ["lake/x.parquet"]);
    let file = std::fs::File::open(server.data_dir().join("lake/x.parquet")).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert_eq!(
        meta.num_row_groups(),
        3,
        "row_group_size = 2 splits 5 rows into 3 groups"
    );
    assert_eq!(
        meta.row_group(0).column(0).compression(),
        parquet::basic::Compression::SNAPPY
    );
    let unknown = put(
        &mut client,
        path(&["parquet", "x"]),
        numbered(1, 1).schema(),
        vec![],
    )
    .await;
    assert_status(unknown, Code::NotFound, "configured targets: lake");
}

#[tokio::test]
async fn dagster_layout_on_disk() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(1, 2);
    for (target, ext) in [
        ("parquet", "parquet"),
        ("json", "json"),
        ("csv", "csv"),
        ("arrow", "arrow"),
    ] {
        put(
            &mut client,
            path(&[target, "sales", "daily"]),
            batch.schema(),
            vec![batch.clone()],
        )
        .await
        .unwrap();
        put(
            &mut client,
            cmd(
                json!({"target": target, "asset": "sales/hourly", "partition": "2024-01-01-00:00"}),
            ),
            batch.schema(),
            vec![batch.clone()],
        )
        .await
        .unwrap();
        assert!(
            server
                .data_dir()
                .join(format!("{target}/sales/daily.{ext}"))
                .is_file()
        );
        assert!(
            server
                .data_dir()
                .join(format!("{target}/sales/hourly/2024-01-01-00:00.{ext}"))
                .is_file()
        );
    }
    // Files are readable by ordinary tools: the CSV has a header and \N for nulls.
    let csv = std::fs::read_to_string(server.data_dir().join("csv/sales/daily.csv")).unwrap();
    assert_eq!(csv, "id,tag\n0,1\n1,1\n");
    let json = std::fs::read_to_string(server.data_dir().join("json/sales/daily.json")).unwrap();
    assert_eq!(json, "{\"id\":0,\"tag\":1}\n{\"id\":1,\"tag\":1}\n");
}

#[tokio::test]
async fn format_limits_are_refused_with_the_column_named() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    use arrow_array::{Float64Array, RecordBatch, StringArray};
    let floats = RecordBatch::try_from_iter([(
        "ratio",
        Arc::new(Float64Array::from(vec![1.0, f64::NAN])) as _,
    )])
    .unwrap();
    let result = put(
        &mut client,
        path(&["json", "nan"]),
        floats.schema(),
        vec![floats.clone()],
    )
    .await;
    assert_status(result, Code::InvalidArgument, "column 'ratio' holds NaN");
    // Parquet and Arrow hold NaN exactly.
    for target in ["parquet", "arrow", "csv"] {
        put(
            &mut client,
            path(&[target, "nan"]),
            floats.schema(),
            vec![floats.clone()],
        )
        .await
        .unwrap();
        let (_, got) = get(&mut client, json!({"target": target, "asset": "nan"}))
            .await
            .unwrap();
        let got = got[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        assert!(got.value(1).is_nan(), "{target}");
    }
    let marker =
        RecordBatch::try_from_iter([("note", Arc::new(StringArray::from(vec!["ok", "\\N"])) as _)])
            .unwrap();
    let result = put(
        &mut client,
        path(&["csv", "marker"]),
        marker.schema(),
        vec![marker],
    )
    .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "column 'note' holds the string \"\\N\"",
    );
    assert!(!server.data_dir().join("csv/marker.csv").exists());
    assert!(!server.data_dir().join("json/nan.json").exists());
}

/// A client that cancels its call mid-stream (HTTP/2 RST_STREAM with CANCEL): the put must
/// not take the stream for a finished one and commit what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_put_commits_nothing() {
    use futures::SinkExt;
    let server = TestServer::start().await;
    for _ in 0..5 {
        let (mut tx, call) = open_put(server.client().await, path(&["parquet", "cancelled"]));
        tx.send(Ok(numbered(0, 50))).await.unwrap();
        server.wait_for_puts_in_flight("parquet", 1).await;
        call.abort();
        server.wait_for_puts_in_flight("parquet", 0).await;
        drop(tx);
    }
    let mut client = server.client().await;
    let err = get(
        &mut client,
        json!({"target": "parquet", "asset": "cancelled"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

/// A client whose deadline passes mid-stream: the server answers DEADLINE_EXCEEDED and drops
/// the call, after which the request stream may look finished; the put must not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_past_its_deadline_commits_nothing() {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use futures::{SinkExt, StreamExt};
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut client = FlightServiceClient::new(channel);
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    let encoded = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(path(&["parquet", "late"])))
        .build(rx)
        .map(|data| data.expect("encodes"));
    let mut request = tonic::Request::new(encoded);
    request.set_timeout(std::time::Duration::from_millis(500));
    let call = tokio::spawn(async move { client.do_put(request).await });
    tx.send(Ok(numbered(0, 50))).await.unwrap();
    server.wait_for_puts_in_flight("parquet", 1).await;
    // Past the deadline, the stream is closed as if the client had finished.
    let code = call.await.unwrap().unwrap_err().code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
    tx.send(Ok(numbered(50, 50))).await.ok();
    drop(tx);
    server.wait_for_puts_in_flight("parquet", 0).await;
    let mut client = server.client().await;
    let err = get(&mut client, json!({"target": "parquet", "asset": "late"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(!server.data_dir().join("parquet/late.parquet").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_puts_commit() {
    use futures::SinkExt;
    let server = TestServer::start().await;
    let (mut tx, call) = open_put(server.client().await, path(&["parquet", "in-flight"]));
    tx.send(Ok(numbered(1, 100))).await.unwrap();
    // Stop only once the server is running the put.
    server.wait_for_puts_in_flight("parquet", 1).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the in-flight put"
    );
    tx.send(Ok(numbered(1, 100))).await.unwrap();
    drop(tx);
    let results = call.await.unwrap().expect("the in-flight put commits");
    let summary: serde_json::Value = serde_json::from_slice(&results[0].app_metadata).unwrap();
    assert_eq!(summary["rows"], 200);
    let dir = stopping.await.unwrap();
    assert!(dir.path().join("data/parquet/in-flight.parquet").is_file());
}

#[tokio::test]
async fn grpc_health_reports_the_server_and_each_target() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel);
    // The first probe runs at start-up; give it a moment.
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        let answer = health
            .check(HealthCheckRequest {
                service: "quiver.target.duckdb".into(),
            })
            .await;
        if let Ok(answer) = answer {
            status = answer.into_inner().status();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::Serving);
    for service in [
        "",
        "arrow.flight.protocol.FlightService",
        "quiver.target.parquet",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "quiver.target.nope".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn grpc_reflection_describes_flight_quiver_and_health() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut reflection = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        answers
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response
            .unwrap()
    };

    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    services.sort();
    assert_eq!(
        services,
        [
            "arrow.flight.protocol.FlightService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );

    let MessageResponse::FileDescriptorResponse(files) = ask(MessageRequest::FileContainingSymbol(
        "arrow.flight.protocol.FlightService".into(),
    ))
    .await
    else {
        panic!("not a file descriptor");
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let flight = files
        .iter()
        .find(|f| f.package() == "arrow.flight.protocol")
        .expect("the Flight file");
    let service = &flight.service[0];
    let methods: Vec<(&str, bool, bool)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.client_streaming(), m.server_streaming()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Handshake", true, true),
            ("ListFlights", false, true),
            ("GetFlightInfo", false, false),
            ("PollFlightInfo", false, false),
            ("GetSchema", false, false),
            ("DoGet", false, true),
            ("DoPut", true, true),
            ("DoExchange", true, true),
            ("DoAction", false, true),
            ("ListActions", false, true),
        ]
    );
    // The wire numbers tools encode with must be Flight's own.
    let field = |message: &str, name: &str| {
        flight
            .message_type
            .iter()
            .find(|m| m.name() == message)
            .and_then(|m| m.field.iter().find(|f| f.name() == name))
            .map(|f| f.number())
    };
    assert_eq!(field("FlightData", "data_body"), Some(1000));
    assert_eq!(field("FlightDescriptor", "cmd"), Some(2));
    assert_eq!(field("FlightInfo", "total_records"), Some(4));

    // Quiver's own command messages are described too, for tools that build descriptors.
    let MessageResponse::FileDescriptorResponse(files) = ask(MessageRequest::FileContainingSymbol(
        "quiver.v1.AssetCommand".into(),
    ))
    .await
    else {
        panic!("not a file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn metrics_and_probes_answer_over_http() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (status, body) = server.http_get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    // Ready once the first round of target health checks has passed.
    let mut ready = 0;
    for _ in 0..100 {
        ready = server.http_get("/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);

    let b = numbered(0, 5);
    put(
        &mut client,
        path(&["parquet", "m", "one"]),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    let refused = put(&mut client, path(&["nowhere", "m"]), b.schema(), vec![b]).await;
    assert!(refused.is_err());
    get(&mut client, json!({"target": "parquet", "asset": "m/one"}))
        .await
        .unwrap();
    let (status, text) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "quiver_puts_total{target=\"parquet\",status=\"Ok\"} 1",
        "quiver_puts_total{target=\"unknown\",status=\"NotFound\"} 1",
        "quiver_rows_written_total{target=\"parquet\"} 5",
        "quiver_gets_total{target=\"parquet\",status=\"Ok\"} 1",
        "quiver_rows_read_total{target=\"parquet\"} 5",
        "quiver_puts_in_flight{target=\"parquet\"} 0",
        "quiver_put_duration_seconds_count{target=\"parquet\"} 1",
        "quiver_target_up{target=\"duckdb\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert_eq!(server.http_get("/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_client_goes_away_is_counted() {
    use futures::SinkExt;
    let server = TestServer::start().await;
    let (mut tx, call) = open_put(server.client().await, path(&["parquet", "gone"]));
    tx.send(Ok(numbered(0, 3))).await.unwrap();
    server.wait_for_puts_in_flight("parquet", 1).await;
    // The client goes away mid-put: its call is dropped, which resets the stream.
    call.abort();
    let _ = call.await;
    let mut counted = Vec::new();
    for _ in 0..200 {
        let (_, text) = server.http_get("/metrics").await;
        counted = text
            .lines()
            .filter(|l| l.starts_with("quiver_puts_total{target=\"parquet\""))
            .map(str::to_string)
            .collect();
        if !counted.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert!(counted[0].ends_with(" 1"), "{counted:?}");
    assert!(!counted[0].contains("status=\"Ok\""), "{counted:?}");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_beyond_the_limit_are_refused_with_resource_exhausted() {
    use futures::SinkExt;
    let server =
        TestServer::start_with_toml("[limits]\nmax_concurrent_puts_per_target = 1\n").await;
    // The first put is held open.
    let (mut tx, first) = open_put(server.client().await, path(&["parquet", "held"]));
    let b = numbered(0, 3);
    tx.send(Ok(b.clone())).await.unwrap();
    server.wait_for_puts_in_flight("parquet", 1).await;

    let mut client = server.client().await;
    let refused = put(
        &mut client,
        path(&["parquet", "other"]),
        b.schema(),
        vec![b.clone()],
    )
    .await;
    assert_status(refused, Code::ResourceExhausted, "target 'parquet'");
    // Other targets are not affected.
    put(
        &mut client,
        path(&["arrow", "other"]),
        b.schema(),
        vec![b.clone()],
    )
    .await
    .unwrap();
    drop(tx);
    first.await.unwrap().expect("the held put commits");
    put(
        &mut client,
        path(&["parquet", "other"]),
        b.schema(),
        vec![b],
    )
    .await
    .expect("admitted once the first put finished");
}

/// How much a DoPut stream may send before the server reads it — the smaller of what the
/// server grants per stream and per connection, as `[transport]` configures — once the grant
/// reaches `expected` or stops growing.
async fn put_send_window(addr: std::net::SocketAddr, expected: usize) -> usize {
    let wanted = 64 << 20;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // h2 caps what it grants a stream at its send buffer (400 KiB by default).
    let (client, connection) = h2::client::Builder::new()
        .max_send_buffer_size(wanted)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{addr}/arrow.flight.protocol.FlightService/DoPut"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_response, mut stream) = client.send_request(request, false).unwrap();
    stream.reserve_capacity(wanted);
    // The grant grows as the server's SETTINGS and WINDOW_UPDATE frames arrive. A grant
    // beyond `expected` comes in the same frame that would reach it, so stopping there
    // misses nothing; on a busy machine a frame may take seconds.
    let mut granted = 0;
    while granted < expected {
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            std::future::poll_fn(|cx| stream.poll_capacity(cx)),
        )
        .await
        {
            Ok(Some(Ok(capacity))) => granted = capacity,
            _ => break,
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_streams_get_the_configured_flow_control_windows() {
    let server = TestServer::start().await;
    assert_eq!(put_send_window(server.addr, 16 << 20).await, 16 << 20);
    server.stop().await;

    let server = TestServer::start_with_toml(
        "[transport]\nstream_window_bytes = 3000000\nconnection_window_bytes = 5000000",
    )
    .await;
    assert_eq!(put_send_window(server.addr, 3_000_000).await, 3_000_000);
    server.stop().await;

    let server = TestServer::start_with_toml(
        "[transport]\nstream_window_bytes = 3000000\nconnection_window_bytes = 2000000",
    )
    .await;
    assert_eq!(put_send_window(server.addr, 2_000_000).await, 2_000_000);
    server.stop().await;
}

/// A batch larger than `limits.max_message_bytes` is refused as the message arrives, and the
/// put writes nothing; batches under the limit pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_and_writes_nothing() {
    let server = TestServer::start_with_toml("[limits]\nmax_message_bytes = 65536\n").await;
    let mut client = server.client().await;
    let small = numbered(0, 100);
    let large = numbered(1, 20_000);
    let refused = put(
        &mut client,
        path(&["parquet", "sized"]),
        small.schema(),
        vec![small.clone(), large],
    )
    .await;
    assert_status(refused, Code::ResourceExhausted, "limits.max_message_bytes");
    let missing = get(&mut client, json!({"target": "parquet", "asset": "sized"})).await;
    assert_status(missing, Code::NotFound, "sized");
    let result = put(
        &mut client,
        path(&["parquet", "sized"]),
        small.schema(),
        vec![small.clone(), small],
    )
    .await
    .unwrap();
    assert_eq!(result["rows"], 200);
}

/// Encodes `batches` (schema first) under `descriptor` as the messages of one DoPut.
fn encoded(
    descriptor: Option<FlightDescriptor>,
    batches: Vec<arrow_array::RecordBatch>,
) -> Vec<arrow_flight::FlightData> {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    let input = futures::stream::iter(batches.into_iter().map(Ok));
    futures::executor::block_on(
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(descriptor)
            .build(input)
            .try_collect(),
    )
    .expect("encode")
}

/// Sends raw DoPut messages; the status the server answers with.
async fn put_raw(
    client: &mut arrow_flight::FlightClient,
    messages: Vec<arrow_flight::FlightData>,
) -> Result<Vec<arrow_flight::PutResult>, tonic::Status> {
    let stream = futures::stream::iter(messages.into_iter().map(Ok));
    client
        .do_put(stream)
        .await
        .map_err(status)?
        .try_collect()
        .await
        .map_err(status)
}

/// The bad-input catalogue: each malformed put gets the right status, a message naming the
/// problem, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_catalogue() {
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(1, 3);
    let descriptor = |target: &str, asset: &str| Some(path(&[target, asset]));

    // An unknown mode.
    let result = put(
        &mut client,
        cmd(json!({"target": "duckdb", "asset": "a", "mode": "merge"})),
        batch.schema(),
        vec![batch.clone()],
    )
    .await;
    assert_status(result, Code::InvalidArgument, "merge");

    // Path traversal and other unsafe names.
    for name in ["..", "a/../../etc", ".hidden", "a\\b", "a b"] {
        let result = put(
            &mut client,
            cmd(json!({"target": "parquet", "asset": name})),
            batch.schema(),
            vec![batch.clone()],
        )
        .await;
        assert_status(result, Code::InvalidArgument, "asset key");
    }

    // An empty stream, and a stream with a descriptor but no schema.
    assert_status(
        put_raw(&mut client, vec![]).await,
        Code::InvalidArgument,
        "empty",
    );
    let descriptor_only = vec![arrow_flight::FlightData {
        flight_descriptor: descriptor("parquet", "a"),
        ..Default::default()
    }];
    assert_status(
        put_raw(&mut client, descriptor_only).await,
        Code::InvalidArgument,
        "schema",
    );

    // A second schema in the middle of the stream.
    let other = RecordBatch::try_from_iter([(
        "name",
        Arc::new(StringArray::from(vec!["x"])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let mut messages = encoded(descriptor("parquet", "two-schemas"), vec![batch.clone()]);
    messages.extend(encoded(None, vec![other.clone()]));
    assert_status(
        put_raw(&mut client, messages).await,
        Code::InvalidArgument,
        "second schema",
    );

    // A batch whose body does not match the announced schema.
    let mut messages = encoded(descriptor("duckdb", "mismatch"), vec![batch.clone()]);
    let foreign = encoded(None, vec![other]);
    messages.truncate(1);
    messages.push(foreign[1].clone());
    let result = put_raw(&mut client, messages).await;
    assert!(
        matches!(
            result.as_ref().map_err(|s| s.code()),
            Err(Code::InvalidArgument)
        ),
        "{result:?}"
    );

    // A schema with no columns.
    let empty = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(2)),
    )
    .unwrap();
    let result = put(
        &mut client,
        path(&["duckdb", "no-columns"]),
        empty.schema(),
        vec![empty],
    )
    .await;
    assert_status(result, Code::InvalidArgument, "column");

    // A partition key that the partition column's type cannot hold.
    let ids = RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from(vec![1])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let result = put(
        &mut client,
        cmd(json!({"target": "duckdb", "asset": "by-id", "partition": "abc", "partition_column": "id"})),
        ids.schema(),
        vec![ids],
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("abc"),
        "the message names the key: {err}"
    );

    // A huge string is stored whole.
    // 3 MiB: under the 4 MiB a default gRPC client accepts per message on the way back.
    let huge = "x".repeat(3 * 1024 * 1024);
    let big = RecordBatch::try_from_iter([(
        "text",
        Arc::new(StringArray::from(vec![huge.as_str()])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    put(
        &mut client,
        path(&["parquet", "huge"]),
        big.schema(),
        vec![big],
    )
    .await
    .unwrap();
    let (_, got) = get(&mut client, json!({"target": "parquet", "asset": "huge"}))
        .await
        .unwrap();
    let text = got[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(text.value(0).len(), huge.len());

    // Nothing of the refused puts exists.
    let all: Vec<_> = client
        .list_flights(Vec::<u8>::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let paths: Vec<Vec<String>> = all
        .iter()
        .map(|i| i.flight_descriptor.clone().unwrap().path)
        .collect();
    assert_eq!(
        paths,
        [["parquet", "huge"]],
        "only the huge string was stored"
    );
}

/// A put whose client stops sending is aborted after `put_idle_timeout_secs`, freeing its
/// slot, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_puts_time_out() {
    use futures::SinkExt;
    let server = TestServer::start_with_toml("[limits]\nput_idle_timeout_secs = 1\n").await;
    let (mut tx, call) = open_put(server.client().await, path(&["parquet", "stalled"]));
    tx.send(Ok(numbered(1, 10))).await.unwrap();
    let err = status(call.await.unwrap().unwrap_err());
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("put_idle_timeout_secs"), "{err}");
    assert!(server.files().is_empty(), "{:?}", server.files());
    drop(tx);
}

/// A read that fails half-way ends the stream with the error after the batches before it:
/// a client never takes a truncated read for the whole asset.
#[tokio::test]
async fn a_read_failing_mid_stream_reports_the_error_after_its_batches() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(7, 40_000);
    put(
        &mut client,
        path(&["json", "feeds", "broken"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    // Damaged on disk after the commit: the first read batches are fine, a later one is not.
    let file = server.data_dir().join("json/feeds/broken.json");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{\"id\": this is not json}\n");
    std::fs::write(&file, text).unwrap();

    let mut stream = client
        .do_get(Ticket::new(
            json!({"target": "json", "asset": "feeds/broken"}).to_string(),
        ))
        .await
        .unwrap();
    let mut rows = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(batch)) => rows += batch.num_rows(),
            Some(Err(e)) => break status(e),
            None => panic!("the damaged read ended as if complete after {rows} rows"),
        }
    };
    assert!(rows > 0 && rows < 40_000, "{rows} rows before the error");
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("json"), "{err:?}");
}

/// A batch whose body is cut short (the first 100 of its 8,000 bytes) is refused with
/// INVALID_ARGUMENT naming the batch, by every file target and DuckDB, and nothing of it
/// becomes visible; the server goes on serving puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_batch_body_is_refused_and_writes_nothing() {
    use arrow_array::{Int64Array, RecordBatch};
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ids = RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from_iter_values(0..1000)) as arrow_array::ArrayRef,
    )])
    .unwrap();
    for target in ["parquet", "arrow", "csv", "json", "duckdb"] {
        let mut messages = encoded(Some(path(&[target, "cut"])), vec![ids.clone()]);
        assert_eq!(messages.len(), 2, "the schema, then the batch");
        assert_eq!(messages[1].data_body.len(), 8000);
        messages[1].data_body = messages[1].data_body.slice(..100);
        assert_status(
            put_raw(&mut client, messages).await,
            Code::InvalidArgument,
            "record batch 1 (message 2) of the DoPut stream could not be decoded: column 'id': \
             buffer 1 says 8000 bytes at offset 0, but the message body has 100 bytes",
        );
        assert_status(
            client
                .get_flight_info(path(&[target, "cut"]))
                .await
                .map_err(status),
            Code::NotFound,
            "cut",
        );
    }
    let listed: Vec<_> = client
        .list_flights(Vec::<u8>::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert!(server.files().is_empty(), "{:?}", server.files());

    for target in ["parquet", "duckdb"] {
        let result = put(
            &mut client,
            path(&[target, "cut"]),
            ids.schema(),
            vec![ids.clone()],
        )
        .await
        .unwrap();
        assert_eq!(result["rows"], 1000);
    }
}

/// Values of 10 kB and 1 MB sent where a name, key, mode or field belongs come back in errors
/// as their first characters and their length: the status keeps its code and a short message
/// (a long one would exceed what clients accept in a trailer, and they would report
/// RESOURCE_EXHAUSTED instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_repeat_long_values_only_in_part() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let batch = numbered(1, 3);
    put(
        &mut client,
        path(&["parquet", "kept"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    put(
        &mut client,
        cmd(json!({"target": "parquet", "asset": "parted", "partition": "2024-01-01"})),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    let short = |result: Result<(), tonic::Status>, code: Code, needle: &str| {
        let message = assert_status(result, code, needle);
        assert!(message.len() < 1000, "{} bytes: {message}", message.len());
    };
    for size in [10_000, 1 << 20] {
        let long = "v".repeat(size);
        let shown = format!("… ({size} bytes)");
        let puts = [
            json!({"target": long, "asset": "a"}),
            json!({"target": "parquet", "asset": "a", "partition": long}),
            json!({"target": "parquet", "asset": "a", "mode": long}),
            json!({"target": "parquet", "asset": "a", long.clone(): 1}),
            json!({"target": "duckdb", "asset": "a", "mode": "upsert", "key": [long]}),
            json!({"target": "duckdb", "asset": "a", "partition": "p", "partition_column": long}),
        ];
        for command in puts {
            let result = put(
                &mut client,
                cmd(command),
                batch.schema(),
                vec![batch.clone()],
            )
            .await;
            short(result.map(drop), Code::InvalidArgument, &shown);
        }
        let info = client
            .get_flight_info(cmd(json!({"target": long, "asset": "a"})))
            .await
            .map(drop)
            .map_err(status);
        short(info, Code::InvalidArgument, &shown);
        let ticket = json!({"target": "parquet", "asset": "kept", long.clone(): 1});
        short(
            get(&mut client, ticket).await.map(drop),
            Code::InvalidArgument,
            &shown,
        );
        let criteria = client
            .list_flights(json!({ "target": long }).to_string())
            .await
            .map(drop)
            .map_err(status);
        short(criteria, Code::InvalidArgument, &shown);
        let described = action(
            &mut client,
            "describe",
            json!({"target": "parquet", "asset": "kept", "partition": long}),
        )
        .await;
        short(described.map(drop), Code::InvalidArgument, &shown);

        let columns = get(
            &mut client,
            json!({"target": "parquet", "asset": "kept", "columns": [long]}),
        )
        .await;
        short(columns.map(drop), Code::InvalidArgument, &shown);

        // A partition of many valid dimensions that does not exist: NOT_FOUND, named in part.
        let dimensions: serde_json::Map<String, serde_json::Value> = (0..size / 10)
            .map(|i| (format!("d{i}"), json!("k")))
            .collect();
        let missing = get(
            &mut client,
            json!({"target": "parquet", "asset": "parted", "partition": dimensions}),
        )
        .await;
        short(
            missing.map(drop),
            Code::NotFound,
            "asset 'parted' not found in target 'parquet' (partition 'd0=k|d1=k|",
        );
    }
}

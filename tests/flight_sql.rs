//! Flight SQL over the catalog, through arrow-flight's own Flight SQL client.
#![cfg(feature = "duckdb")]

mod common;
mod conformance;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch};
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use serde_json::json;
use tonic::Code;

use common::*;
use conformance::numbered;

async fn rows(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    info: FlightInfo,
) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("an endpoint has a ticket");
        let batches: Vec<RecordBatch> = client
            .do_get(ticket)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.extend(batches);
    }
    out
}

async fn loaded() -> (
    TestServer,
    FlightSqlServiceClient<tonic::transport::Channel>,
) {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (target, asset, n) in [
        ("parquet", "sales/daily", 100),
        ("duckdb", "sales/monthly", 10),
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
    let sql = FlightSqlServiceClient::new(server.channel().await);
    (server, sql)
}

fn first_i64(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn statements_query_and_join_assets_of_several_targets() {
    let (_server, mut sql) = loaded().await;
    let info = sql
        .execute(
            r#"SELECT count(*) FROM "parquet"."sales/daily" d JOIN "duckdb"."sales/monthly" m USING (id)"#
                .to_string(),
            None,
        )
        .await
        .unwrap();
    let schema = info.clone().try_decode_schema().unwrap();
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(first_i64(&rows(&mut sql, info).await), 10);
}

#[tokio::test]
async fn prepared_statements_take_parameters() {
    let (_server, mut sql) = loaded().await;
    let mut prepared = sql
        .prepare(
            r#"SELECT count(*) FROM "parquet"."sales/daily" WHERE id >= ?"#.to_string(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(prepared.dataset_schema().unwrap().fields().len(), 1);
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![90]))],
    )
    .unwrap();
    prepared.set_parameters(params).unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(first_i64(&rows(&mut sql, info).await), 10);
    prepared.close().await.unwrap();
}

#[tokio::test]
async fn metadata_lists_targets_and_readable_assets() {
    let (_server, mut sql) = loaded().await;
    let info = sql.get_catalogs().await.unwrap();
    let catalogs = rows(&mut sql, info).await;
    assert_eq!(catalogs[0].column(0).as_string::<i32>().value(0), "quiver");

    let info = sql
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("par%".to_string()),
        })
        .await
        .unwrap();
    let schemas = rows(&mut sql, info).await;
    let names: Vec<&str> = schemas[0]
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(names, ["parquet"]);

    let info = sql
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("sales/%".to_string()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = rows(&mut sql, info).await;
    let mut found: Vec<(String, String)> = (0..tables[0].num_rows())
        .map(|i| {
            (
                tables[0].column(1).as_string::<i32>().value(i).to_string(),
                tables[0].column(2).as_string::<i32>().value(i).to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("duckdb".to_string(), "sales/monthly".to_string()),
            ("parquet".to_string(), "sales/daily".to_string()),
        ]
    );
    assert_eq!(
        tables[0].num_columns(),
        5,
        "include_schema adds the table_schema column"
    );
}

#[tokio::test]
async fn writes_and_unknown_commands_are_refused_clearly() {
    let (_server, mut sql) = loaded().await;
    let err = sql
        .execute(r#"DELETE FROM "parquet"."sales/daily""#.to_string(), None)
        .await
        .unwrap_err();
    let refused = status(err);
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("only queries"), "{refused:?}");

    let err = sql
        .execute_update("UPDATE t SET x = 1".to_string(), None)
        .await
        .unwrap_err();
    let refused = status(err);
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(
        refused.message().contains("CommandStatementUpdate"),
        "{refused:?}"
    );

    let err = sql
        .execute(r#"SELECT * FROM "parquet"."missing""#.to_string(), None)
        .await
        .unwrap_err();
    let refused = status(err);
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("missing"), "{refused:?}");
}

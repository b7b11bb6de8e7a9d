//! The Excel target: the conformance suite, sheets beyond the row limit, and refusals.
#![cfg(feature = "excel")]

mod common;
mod conformance;

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema};
use calamine::{Reader, Xlsx};
use common::*;
use conformance::{Profile, numbered, run_on};
use serde_json::json;
use tonic::Code;

const CONFIG: &str = "[targets.excel]\nkind = \"excel\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excel_conforms() {
    run_on(
        TestServer::start_with_toml(CONFIG).await,
        &Profile {
            target: "excel",
            extension: Some("xlsx"),
            refuses: &["binary", "list", "struct"],
            extra_modes: &[],
        },
    )
    .await;
}

/// The sheet names of a stored workbook, and the rows (header included) of each.
fn sheets(server: &TestServer, asset: &str) -> Vec<(String, usize)> {
    let path = server
        .data_dir()
        .join("excel")
        .join(format!("{asset}.xlsx"));
    let mut book: Xlsx<_> = calamine::open_workbook(&path).expect("a workbook");
    book.sheet_names()
        .into_iter()
        .map(|name| {
            let rows = book.worksheet_range(&name).unwrap().height();
            (name, rows)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_beyond_a_sheet_continue_on_the_next() {
    let server = TestServer::start_with_toml(CONFIG).await;
    let mut client = server.client().await;
    let batch = numbered(1, 10);
    let descriptor = |asset: &str, options: serde_json::Value| {
        cmd(json!({"target": "excel", "asset": asset, "options": options}))
    };
    // Three batches, so a sheet fills up in the middle of one.
    let batches = vec![batch.slice(0, 4), batch.slice(4, 4), batch.slice(8, 2)];
    put(
        &mut client,
        descriptor("split", json!({"sheet_rows": "3"})),
        batch.schema(),
        batches.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        sheets(&server, "split"),
        [
            ("Sheet1".to_string(), 4),
            ("Sheet2".to_string(), 4),
            ("Sheet3".to_string(), 4),
            ("Sheet4".to_string(), 2)
        ]
    );
    let (schema, got) = get(&mut client, json!({"target": "excel", "asset": "split"}))
        .await
        .unwrap();
    assert_eq!(concat(&schema, &got), batch, "every sheet, in order");

    put(
        &mut client,
        descriptor("named", json!({"sheet": "Sales", "sheet_rows": 5})),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    let names: Vec<String> = sheets(&server, "named").into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["Sales", "Sales (2)"]);

    let refused = put(
        &mut client,
        descriptor("capped", json!({"sheet_rows": 3, "max_sheets": 2})),
        batch.schema(),
        batches,
    )
    .await;
    assert_status(refused, Code::InvalidArgument, "max_sheets");
    let missing = get(&mut client, json!({"target": "excel", "asset": "capped"})).await;
    assert_status(missing, Code::NotFound, "capped");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_cell_cannot_hold_is_refused_by_column() {
    let server = TestServer::start_with_toml(CONFIG).await;
    let mut client = server.client().await;
    let one = |name: &str, array: ArrayRef| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                name,
                array.data_type().clone(),
                true,
            )])),
            vec![array],
        )
        .unwrap()
    };
    let cases: Vec<(&str, RecordBatch, &str)> = vec![
        (
            "nested",
            one(
                "tags",
                Arc::new(ListArray::from_iter_primitive::<
                    arrow_array::types::Int32Type,
                    _,
                    _,
                >(vec![Some(vec![Some(1)])])),
            ),
            "column 'tags' has type List",
        ),
        (
            "nan",
            one("ratio", Arc::new(Float64Array::from(vec![1.0, f64::NAN]))),
            "column 'ratio' holds NaN",
        ),
        (
            "long-text",
            one(
                "body",
                Arc::new(StringArray::from(vec!["x".repeat(40_000)])),
            ),
            "column 'body' holds text of 40000 characters",
        ),
    ];
    for (asset, batch, message) in cases {
        let result = put(
            &mut client,
            cmd(json!({"target": "excel", "asset": asset})),
            batch.schema(),
            vec![batch],
        )
        .await;
        assert_status(result, Code::InvalidArgument, message);
    }
    let batch = numbered(1, 1);
    for (options, message) in [
        (json!({"sheet": "a:b"}), "contains ':'"),
        (
            json!({"freeze": "maybe"}),
            "option 'freeze' must be true or false",
        ),
        (
            json!({"colour": "red"}),
            "option 'colour' is not understood by excel targets",
        ),
    ] {
        let result = put(
            &mut client,
            cmd(json!({"target": "excel", "asset": "options", "options": options})),
            batch.schema(),
            vec![batch.clone()],
        )
        .await;
        assert_status(result, Code::InvalidArgument, message);
    }
    assert!(
        server.files().iter().all(|f| !f.ends_with(".xlsx")),
        "a refused put leaves no workbook: {:?}",
        server.files()
    );
    server.stop().await;
}

/// Values a cell cannot hold exactly come back exactly, through text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_millisecond_moments_and_long_decimals_round_trip() {
    let server = TestServer::start_with_toml(CONFIG).await;
    let mut client = server.client().await;
    let decimals = arrow_array::Decimal128Array::from(vec![
        Some(123_456_789_012_345),
        Some(1_234_567_890_123_456),
        None,
    ])
    .with_precision_and_scale(20, 4)
    .unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "at",
                DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("amount", decimals.data_type().clone(), true),
        ])),
        vec![
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(1_700_000_000_000_000),
                Some(1_700_000_000_000_001),
                None,
            ])),
            Arc::new(decimals),
        ],
    )
    .unwrap();
    put(
        &mut client,
        path(&["excel", "exact"]),
        batch.schema(),
        vec![batch.clone()],
    )
    .await
    .unwrap();
    let (schema, got) = get(&mut client, json!({"target": "excel", "asset": "exact"}))
        .await
        .unwrap();
    assert_eq!(concat(&schema, &got), batch);
    // What the sheet shows: a date cell, ISO text for the microsecond, a number for the
    // 15-digit decimal, text for the 16-digit one.
    let file = server.data_dir().join("excel/exact.xlsx");
    let mut book: Xlsx<_> = calamine::open_workbook(&file).unwrap();
    let range = book.worksheet_range("Sheet1").unwrap();
    use calamine::Data;
    assert!(
        matches!(range.get((1, 0)), Some(Data::DateTime(_))),
        "{:?}",
        range.get((1, 0))
    );
    assert_eq!(
        range.get((2, 0)),
        Some(&Data::String("2023-11-14T22:13:20.000001".into()))
    );
    assert_eq!(range.get((1, 1)), Some(&Data::Float(12_345_678_901.234_5)));
    assert_eq!(
        range.get((2, 1)),
        Some(&Data::String("123456789012.3456".into()))
    );
    server.stop().await;
}

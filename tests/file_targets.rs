//! The conformance suite for each file target.

mod common;
mod conformance;

use conformance::{Profile, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_conforms() {
    run(&Profile {
        target: "parquet",
        extension: Some("parquet"),
        refuses: &[],
        extra_modes: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_conforms() {
    run(&Profile {
        target: "arrow",
        extension: Some("arrow"),
        refuses: &[],
        extra_modes: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_conforms() {
    run(&Profile {
        target: "json",
        extension: Some("json"),
        refuses: &[],
        extra_modes: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_conforms() {
    run(&Profile {
        target: "csv",
        extension: Some("csv"),
        refuses: &["binary", "list", "struct"],
        extra_modes: &[],
    })
    .await;
}

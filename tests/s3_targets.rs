//! File targets on S3: the conformance suite against a real S3 API server (s3s-fs), and the
//! bucket holding only whole, committed files afterwards.

mod common;
mod conformance;

use common::s3::S3Server;
use common::*;
use conformance::{Profile, run_on};

async fn conforms_on_s3(kind: &'static str, extension: &str) {
    let s3 = S3Server::start();
    let server = TestServer::start_with_toml(&s3.target_toml(kind, kind, "lake")).await;
    run_on(
        server,
        &Profile {
            target: kind,
            refuses: &[],
            extra_modes: &[],
            // Locations are s3:// URLs, not files under the data directory.
            extension: None,
        },
    )
    .await;
    let objects = s3.objects();
    assert!(!objects.is_empty());
    for object in &objects {
        assert!(
            object.starts_with("lake/") && object.ends_with(&format!(".{extension}")),
            "only committed asset files remain in the bucket: {objects:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_conforms_on_s3() {
    conforms_on_s3("parquet", "parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_conforms_on_s3() {
    conforms_on_s3("arrow", "arrow").await;
}

//! The `quiver` client commands against an in-process server.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use common::TestServer;

fn quiver(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .env("QUIVER_SERVER", format!("grpc://{}", server.addr))
        .output()
        .expect("run quiver")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "quiver failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn sample() -> RecordBatch {
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as _,
        ),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_ls_rm_and_targets() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&input).unwrap(),
        sample().schema(),
        None,
    )
    .unwrap();
    writer.write(&sample()).unwrap();
    writer.close().unwrap();

    let input_s = input.to_str().unwrap();
    let put = ok(&quiver(
        &server,
        &[
            "put",
            input_s,
            "--asset",
            "sales/daily",
            "--target",
            "parquet",
        ],
    ));
    let result: serde_json::Value = serde_json::from_str(put.trim()).unwrap();
    assert_eq!(result["rows"], 3);

    // CSV in, with a partition, into DuckDB.
    let csv = work.path().join("day.csv");
    std::fs::write(&csv, "day,v\n2024-01-01,1\n2024-01-01,2\n").unwrap();
    ok(&quiver(
        &server,
        &[
            "put",
            csv.to_str().unwrap(),
            "--asset",
            "events",
            "--target",
            "duckdb",
            "--partition",
            "2024-01-01",
            "--partition-column",
            "day",
        ],
    ));

    let out = work.path().join("out.csv");
    let got = ok(&quiver(
        &server,
        &[
            "get",
            "sales/daily",
            "--target",
            "parquet",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    assert!(got.contains("3 rows"), "{got}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id,name\n1,a\n2,\n3,c\n"
    );
    let arrow_out = work.path().join("events.arrow");
    ok(&quiver(
        &server,
        &[
            "get",
            "events",
            "-o",
            arrow_out.to_str().unwrap(),
            "--columns",
            "v",
        ],
    ));
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&arrow_out).unwrap(), None)
            .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().fields().len(), 1);

    let ls = ok(&quiver(&server, &["ls"]));
    assert!(ls.contains("sales/daily") && ls.contains("events"), "{ls}");
    let ls_json = ok(&quiver(&server, &["ls", "--target", "duckdb", "--json"]));
    assert_eq!(ls_json.lines().count(), 1);

    let targets = ok(&quiver(&server, &["targets"]));
    assert!(
        targets
            .lines()
            .any(|l| l.starts_with("duckdb") && l.contains("overwrite,append,upsert")),
        "{targets}"
    );

    ok(&quiver(
        &server,
        &["rm", "sales/daily", "--target", "parquet"],
    ));
    let ls = ok(&quiver(&server, &["ls"]));
    assert!(!ls.contains("sales/daily"), "{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_fail_the_command() {
    let server = TestServer::start().await;
    let missing = quiver(
        &server,
        &[
            "get",
            "nope",
            "--target",
            "parquet",
            "-o",
            "/tmp/never.parquet",
        ],
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("asset 'nope' not found in target 'parquet'"),
        "{stderr}"
    );

    let unknown_ext = quiver(
        &server,
        &["put", "data.xlsx", "--asset", "a", "--target", "parquet"],
    );
    assert!(String::from_utf8_lossy(&unknown_ext.stderr).contains("--format"));

    let down = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["ls", "--server", "grpc://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("is `quiver serve` running there?"));
}

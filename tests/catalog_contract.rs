//! The catalog contract: what every [`Catalog`] backend must do, written once as plain async
//! functions over `&dyn Catalog` and run against SQLite and PostgreSQL alike (the PostgreSQL
//! ones on a fresh database of the server named by `QUIVER_TEST_POSTGRES_URL`, see
//! [`linguistic_database`]).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, TimeZone, Utc};
use quiver::asset::{AssetKey, Partition, PartitionColumns};
use quiver::catalog::{
    AssetRecord, Catalog, Commit, HistoryEntry, Layout, PendingPut, PostgresCatalog, SqliteCatalog,
};
use quiver::protocol::{Mode, PutSummary};
use serde_json::json;

use common::postgres::TestDb;

/// Generates, for each contract function, one test per backend: `sqlite::<name>` and
/// `postgres::<name>`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let catalog = super::open_sqlite(&dir);
                    super::$name(&catalog).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_postgres(|catalog| Box::pin(super::$name(catalog))).await;
                }
            )*
        }
    };
}

contract!(
    a_new_asset_is_visible,
    list_filters_by_target_and_prefix_in_byte_order,
    versions_increase_by_one_per_commit,
    overwrite_replaces_totals_and_append_adds,
    concurrent_commits_get_distinct_versions,
    single_key_partitions,
    multi_dimension_partitions,
    total_rows_overrides_the_sum,
    schema_changes_are_recorded_exactly,
    history_is_newest_first,
    replay_by_idempotency_key,
    a_repeated_idempotency_key_is_refused_and_changes_nothing,
    delete_one_partition,
    delete_the_whole_asset,
    deleting_the_last_partitions_removes_the_asset,
    locks_are_released_on_drop,
    pending_puts_round_trip_every_field,
    pending_puts_filter_by_target_and_asset_oldest_first,
    abandon_put_forgets_only_that_put,
    commit_finishes_its_pending_put,
);

// ---- backends ----

fn open_sqlite(dir: &tempfile::TempDir) -> SqliteCatalog {
    SqliteCatalog::open(&dir.path().join("catalog.sqlite")).expect("open the SQLite catalog")
}

/// The schema name needs quoting, so every statement is checked to quote it.
const PG_SCHEMA: &str = "quiver catalog";

/// A fresh database whose text sorts as English does (ICU `en-US`: `eu` before `US`, and
/// punctuation weighed last), as production databases often do; the catalog must still order
/// byte by byte, as SQLite does.
async fn linguistic_database() -> TestDb {
    let admin = common::postgres::connect(&common::postgres::admin_url()).await;
    let name = format!("quiver_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
             LOCALE 'C.UTF-8'"
        ))
        .await
        .unwrap_or_else(|e| {
            panic!("create a database with ICU collation en-US (PostgreSQL 15 or later, built with ICU): {e}")
        });
    let mut url =
        url::Url::parse(&common::postgres::admin_url()).expect("QUIVER_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    TestDb {
        name,
        url: url.to_string(),
    }
}

async fn open_postgres(db: &TestDb) -> PostgresCatalog {
    PostgresCatalog::open(&db.url, PG_SCHEMA, None, 4)
        .await
        .expect("open the PostgreSQL catalog")
}

type Check = for<'a> fn(
    &'a dyn Catalog,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Runs `check` on a catalog in a fresh database, and drops the database even when it fails.
async fn on_postgres(check: Check) {
    use futures::FutureExt;
    let db = linguistic_database().await;
    let catalog = open_postgres(&db).await;
    let outcome = std::panic::AssertUnwindSafe(check(&catalog))
        .catch_unwind()
        .await;
    drop(catalog);
    db.drop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---- helpers ----

fn key(text: &str) -> AssetKey {
    AssetKey::parse(text).unwrap()
}

fn single(k: &str) -> Partition {
    Partition::single(k).unwrap()
}

fn multi(dims: &[(&str, &str)]) -> Partition {
    Partition::multi(
        dims.iter()
            .map(|(d, k)| (d.to_string(), k.to_string()))
            .collect(),
    )
    .unwrap()
}

fn ids(record: &AssetRecord) -> Vec<String> {
    record.partitions.iter().map(|p| p.partition.id()).collect()
}

fn simple_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

/// A schema with the details a careless encoding loses: metadata on the schema and on a
/// field, time zones, dictionaries, decimals, nesting, view types.
fn rich_schema() -> SchemaRef {
    let point = Fields::from(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, true),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("Europe/Paris".into())),
                false,
            ),
            Field::new_dictionary("tag", DataType::Int16, DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(38, 9), true)
                .with_metadata(HashMap::from([("unit".into(), "EUR".into())])),
            Field::new_list(
                "tags",
                Field::new_list_field(DataType::Utf8View, true),
                true,
            ),
            Field::new_struct("point", point, true),
            Field::new("raw", DataType::BinaryView, true),
        ],
        HashMap::from([("pandas".into(), "{\"index\": []}".into())]),
    ))
}

/// A write of `rows`/`bytes` to an unpartitioned asset; change fields with `..`.
fn commit(target: &str, asset: &str, mode: Mode, rows: u64, bytes: u64) -> Commit {
    let location = format!("mem://{target}/{asset}");
    Commit {
        target: target.to_string(),
        asset: key(asset),
        schema: simple_schema(),
        partition: None,
        mode,
        rows,
        bytes,
        location: location.clone(),
        asset_location: location,
        total_rows: None,
        partition_columns: None,
        duration_ms: 7,
        idempotency_key: None,
        put_id: None,
    }
}

/// A write of `rows`/`bytes` to one partition of an asset.
fn partition_commit(
    target: &str,
    asset: &str,
    partition: Partition,
    mode: Mode,
    rows: u64,
    bytes: u64,
) -> Commit {
    let base = commit(target, asset, mode, rows, bytes);
    Commit {
        location: format!("{}/{}", base.asset_location, partition.id()),
        partition: Some(partition),
        ..base
    }
}

async fn get(catalog: &dyn Catalog, target: &str, asset: &str) -> AssetRecord {
    catalog
        .get(target, &key(asset))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{target}/{asset} is in the catalog"))
}

async fn totals(catalog: &dyn Catalog, target: &str, asset: &str) -> (u64, u64, u64) {
    let record = get(catalog, target, asset).await;
    (record.version, record.rows, record.bytes)
}

/// What a timestamp taken before a commit can be compared with: the catalogs may keep only
/// microseconds.
fn just_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t - chrono::Duration::milliseconds(1)
}

// ---- the contract ----

async fn a_new_asset_is_visible(catalog: &dyn Catalog) {
    assert!(
        catalog
            .get("files", &key("sales/daily"))
            .await
            .unwrap()
            .is_none()
    );
    let before = Utc::now();
    let c = Commit {
        asset_location: "mem://files/sales/daily.parquet".into(),
        location: "mem://files/sales/daily.parquet".into(),
        ..commit("files", "sales/daily", Mode::Overwrite, 10, 1000)
    };
    assert_eq!(catalog.commit(c).await.unwrap(), 1);
    let after = Utc::now();

    let record = get(catalog, "files", "sales/daily").await;
    assert_eq!(record.target, "files");
    assert_eq!(record.asset, key("sales/daily"));
    assert_eq!(record.schema, simple_schema());
    assert_eq!(record.layout, Layout::Unpartitioned);
    assert_eq!(record.version, 1);
    assert_eq!((record.rows, record.bytes), (10, 1000));
    assert_eq!(record.location, "mem://files/sales/daily.parquet");
    assert!(record.partitions.is_empty());
    assert_eq!(record.partition_columns, None);
    assert_eq!(record.created_at, record.updated_at);
    assert!(
        just_before(before) <= record.created_at && record.created_at <= after,
        "created at {} (commit between {before} and {after})",
        record.created_at
    );

    // The same key under another target, or a neighbouring key, is another asset.
    assert!(
        catalog
            .get("tables", &key("sales/daily"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(catalog.get("files", &key("sales")).await.unwrap().is_none());
    assert_eq!(catalog.list(None, None).await.unwrap(), vec![record]);
}

async fn list_filters_by_target_and_prefix_in_byte_order(catalog: &dyn Catalog) {
    // Committed out of order; listed by target, then key, byte by byte.
    let assets = [
        ("parquet", "salesman"),
        ("parquet", "sales/weekly"),
        ("csv", "sales/daily"),
        ("parquet", "Sales"),
        ("parquet", "sales_x"),
        ("parquet", "sales/daily"),
        ("parquet", "sales-eu"),
        ("parquet-eu", "hr/people"),
        ("csv", "a_b"),
        ("csv", "axb"),
    ];
    for (target, asset) in assets {
        catalog
            .commit(commit(target, asset, Mode::Overwrite, 1, 1))
            .await
            .unwrap();
    }
    let listed = |target: Option<&'static str>, prefix: Option<&'static str>| async move {
        let records = catalog.list(target, prefix).await.unwrap();
        records
            .iter()
            .map(|r| format!("{}:{}", r.target, r.asset))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(None, None).await,
        [
            "csv:a_b",
            "csv:axb",
            "csv:sales/daily",
            "parquet:Sales",
            "parquet:sales-eu",
            "parquet:sales/daily",
            "parquet:sales/weekly",
            "parquet:sales_x",
            "parquet:salesman",
            "parquet-eu:hr/people",
        ]
    );
    assert_eq!(
        listed(Some("parquet"), Some("sales")).await,
        [
            "parquet:sales-eu",
            "parquet:sales/daily",
            "parquet:sales/weekly",
            "parquet:sales_x",
            "parquet:salesman",
        ]
    );
    assert_eq!(
        listed(Some("parquet"), Some("sales/")).await,
        ["parquet:sales/daily", "parquet:sales/weekly"]
    );
    // A prefix is text, not a pattern.
    assert_eq!(listed(Some("csv"), Some("a_")).await, ["csv:a_b"]);
    assert_eq!(
        listed(Some("parquet"), Some("sales_")).await,
        ["parquet:sales_x"]
    );
    assert_eq!(
        listed(None, Some("sales/daily")).await,
        ["csv:sales/daily", "parquet:sales/daily"]
    );
    assert_eq!(
        listed(Some("csv"), None).await,
        ["csv:a_b", "csv:axb", "csv:sales/daily"]
    );
    assert!(listed(Some("json"), None).await.is_empty());
    assert!(listed(None, Some("nothing")).await.is_empty());

    // Listed records are the records `get` returns.
    for record in catalog.list(None, None).await.unwrap() {
        assert_eq!(
            get(catalog, &record.target, &record.asset.to_string()).await,
            record
        );
    }
}

async fn versions_increase_by_one_per_commit(catalog: &dyn Catalog) {
    let modes = [Mode::Overwrite, Mode::Append, Mode::Upsert, Mode::Overwrite];
    for (expected, mode) in (1..).zip(modes) {
        let version = catalog
            .commit(commit("files", "events", mode, 1, 1))
            .await
            .unwrap();
        assert_eq!(version, expected);
        assert_eq!(get(catalog, "files", "events").await.version, expected);
    }
    // Every asset counts on its own.
    assert_eq!(
        catalog
            .commit(commit("files", "other", Mode::Append, 1, 1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        catalog
            .commit(commit("tables", "events", Mode::Append, 1, 1))
            .await
            .unwrap(),
        1
    );
    // Partitioned assets: one version per commit to any partition.
    for (expected, p) in (1..).zip(["a", "b", "a", "c"]) {
        let version = catalog
            .commit(partition_commit(
                "files",
                "parts",
                single(p),
                Mode::Overwrite,
                1,
                1,
            ))
            .await
            .unwrap();
        assert_eq!(version, expected);
    }
    let versions: Vec<u64> = catalog
        .history("files", &key("events"))
        .await
        .unwrap()
        .iter()
        .map(|h| h.version)
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
}

async fn overwrite_replaces_totals_and_append_adds(catalog: &dyn Catalog) {
    let steps = [
        (Mode::Overwrite, 10, 100, (10, 100)),
        (Mode::Append, 5, 50, (15, 150)),
        (Mode::Upsert, 2, 20, (17, 170)),
        (Mode::Append, 0, 0, (17, 170)),
        (Mode::Overwrite, 3, 30, (3, 30)),
    ];
    for (i, (mode, rows, bytes, expected)) in steps.into_iter().enumerate() {
        let c = Commit {
            asset_location: format!("mem://files/events/{i}"),
            ..commit("files", "events", mode, rows, bytes)
        };
        catalog.commit(c).await.unwrap();
        let record = get(catalog, "files", "events").await;
        assert_eq!((record.rows, record.bytes), expected, "after {mode} #{i}");
        assert_eq!(record.location, format!("mem://files/events/{i}"));
    }
    // A first write is whole whatever its mode.
    catalog
        .commit(commit("files", "fresh", Mode::Append, 4, 40))
        .await
        .unwrap();
    assert_eq!(totals(catalog, "files", "fresh").await, (1, 4, 40));
}

async fn concurrent_commits_get_distinct_versions(catalog: &dyn Catalog) {
    catalog
        .commit(commit("files", "events", Mode::Overwrite, 1, 10))
        .await
        .unwrap();
    let appends = (0..8).map(|_| catalog.commit(commit("files", "events", Mode::Append, 1, 10)));
    let mut versions: Vec<u64> = futures::future::join_all(appends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=9).collect::<Vec<_>>());
    assert_eq!(totals(catalog, "files", "events").await, (9, 9, 90));
    assert_eq!(
        catalog
            .history("files", &key("events"))
            .await
            .unwrap()
            .len(),
        9
    );
}

async fn single_key_partitions(catalog: &dyn Catalog) {
    let (d1, d2, d3) = (
        single("2024-01-01"),
        single("2024-01-02"),
        single("2024-01-03"),
    );
    let write = |p: &Partition, mode, rows, bytes| {
        partition_commit("files", "daily", p.clone(), mode, rows, bytes)
    };
    let before = Utc::now();
    catalog
        .commit(write(&d2, Mode::Overwrite, 20, 200))
        .await
        .unwrap();
    catalog
        .commit(write(&d1, Mode::Overwrite, 10, 100))
        .await
        .unwrap();
    let record = get(catalog, "files", "daily").await;
    assert_eq!(record.layout, Layout::Single);
    assert_eq!((record.version, record.rows, record.bytes), (2, 30, 300));
    assert_eq!(record.location, "mem://files/daily");
    assert_eq!(ids(&record), ["2024-01-01", "2024-01-02"]);
    let p1 = &record.partitions[0];
    assert_eq!(p1.partition, d1);
    assert_eq!((p1.rows, p1.bytes, p1.version), (10, 100, 2));
    assert_eq!(p1.location, "mem://files/daily/2024-01-01");
    assert!(just_before(before) <= p1.updated_at && p1.updated_at <= Utc::now());
    let p2 = &record.partitions[1];
    assert_eq!((p2.rows, p2.bytes, p2.version), (20, 200, 1));

    // Append and upsert add to the partition; the other partitions keep their version.
    catalog
        .commit(write(&d1, Mode::Append, 5, 50))
        .await
        .unwrap();
    catalog
        .commit(write(&d1, Mode::Upsert, 1, 10))
        .await
        .unwrap();
    let record = get(catalog, "files", "daily").await;
    assert_eq!((record.version, record.rows, record.bytes), (4, 36, 360));
    assert_eq!(
        (
            record.partitions[0].rows,
            record.partitions[0].bytes,
            record.partitions[0].version
        ),
        (16, 160, 4)
    );
    assert_eq!(record.partitions[1].version, 1);

    // Overwrite replaces one partition only; an append to a new partition starts from zero.
    catalog
        .commit(write(&d2, Mode::Overwrite, 2, 20))
        .await
        .unwrap();
    catalog
        .commit(write(&d3, Mode::Append, 3, 30))
        .await
        .unwrap();
    let record = get(catalog, "files", "daily").await;
    assert_eq!((record.version, record.rows, record.bytes), (6, 21, 210));
    let parts: Vec<_> = record
        .partitions
        .iter()
        .map(|p| (p.partition.id(), p.rows, p.bytes, p.version))
        .collect();
    assert_eq!(
        parts,
        [
            ("2024-01-01".to_string(), 16, 160, 4),
            ("2024-01-02".to_string(), 2, 20, 5),
            ("2024-01-03".to_string(), 3, 30, 6),
        ]
    );
}

async fn multi_dimension_partitions(catalog: &dyn Catalog) {
    let columns = PartitionColumns::PerDimension(BTreeMap::from([
        ("date".to_string(), "day".to_string()),
        ("region".to_string(), "region".to_string()),
    ]));
    // Keys sorted by their canonical id, byte by byte: `US` before `eu`.
    let parts = [
        (multi(&[("region", "eu"), ("date", "2024-01-02")]), 1, 10),
        (multi(&[("date", "2024-01-01"), ("region", "eu")]), 2, 20),
        (multi(&[("region", "US"), ("date", "2024-01-01")]), 4, 40),
    ];
    for (p, rows, bytes) in &parts {
        let c = Commit {
            partition_columns: Some(columns.clone()),
            ..partition_commit("tables", "sales", p.clone(), Mode::Overwrite, *rows, *bytes)
        };
        catalog.commit(c).await.unwrap();
    }
    let record = get(catalog, "tables", "sales").await;
    assert_eq!(
        record.layout,
        Layout::Multi(vec!["date".into(), "region".into()])
    );
    assert_eq!(record.partition_columns, Some(columns.clone()));
    assert_eq!((record.version, record.rows, record.bytes), (3, 7, 70));
    assert_eq!(
        ids(&record),
        [
            "date=2024-01-01|region=US",
            "date=2024-01-01|region=eu",
            "date=2024-01-02|region=eu",
        ]
    );
    assert_eq!(record.partitions[0].partition, parts[2].0);
    assert_eq!(record.partitions[2].partition, parts[0].0);

    // One dimension's key changing makes another partition.
    let c = Commit {
        partition_columns: Some(columns),
        ..partition_commit("tables", "sales", parts[1].0.clone(), Mode::Append, 8, 80)
    };
    catalog.commit(c).await.unwrap();
    let record = get(catalog, "tables", "sales").await;
    assert_eq!((record.version, record.rows, record.bytes), (4, 15, 150));
    assert_eq!(record.partitions.len(), 3);
    assert_eq!(
        (record.partitions[1].rows, record.partitions[1].version),
        (10, 4)
    );

    // A single partition column is kept as such.
    let c = Commit {
        partition_columns: Some(PartitionColumns::Single("day".into())),
        ..partition_commit(
            "tables",
            "daily",
            single("2024-01-01"),
            Mode::Overwrite,
            1,
            1,
        )
    };
    catalog.commit(c).await.unwrap();
    assert_eq!(
        get(catalog, "tables", "daily").await.partition_columns,
        Some(PartitionColumns::Single("day".into()))
    );
}

async fn total_rows_overrides_the_sum(catalog: &dyn Catalog) {
    // A table target counts its rows itself (an upsert replaces some).
    catalog
        .commit(commit("tables", "users", Mode::Overwrite, 10, 100))
        .await
        .unwrap();
    let upsert = Commit {
        total_rows: Some(12),
        ..commit("tables", "users", Mode::Upsert, 5, 50)
    };
    catalog.commit(upsert).await.unwrap();
    assert_eq!(totals(catalog, "tables", "users").await, (2, 12, 150));
    // The next commit without a count builds on the recorded one.
    catalog
        .commit(commit("tables", "users", Mode::Append, 3, 30))
        .await
        .unwrap();
    assert_eq!(totals(catalog, "tables", "users").await, (3, 15, 180));
    let overwrite = Commit {
        total_rows: Some(0),
        ..commit("tables", "users", Mode::Overwrite, 4, 40)
    };
    catalog.commit(overwrite).await.unwrap();
    assert_eq!(totals(catalog, "tables", "users").await, (4, 0, 40));

    // Partitioned: the asset's rows are the count; the partitions keep their own.
    catalog
        .commit(partition_commit(
            "tables",
            "daily",
            single("a"),
            Mode::Overwrite,
            10,
            100,
        ))
        .await
        .unwrap();
    let upsert = Commit {
        total_rows: Some(11),
        ..partition_commit("tables", "daily", single("b"), Mode::Upsert, 5, 50)
    };
    catalog.commit(upsert).await.unwrap();
    let record = get(catalog, "tables", "daily").await;
    assert_eq!((record.rows, record.bytes), (11, 150));
    let rows: Vec<u64> = record.partitions.iter().map(|p| p.rows).collect();
    assert_eq!(rows, [10, 5]);
    // History keeps what each put sent.
    let history = catalog.history("tables", &key("daily")).await.unwrap();
    assert_eq!((history[0].rows, history[0].bytes), (5, 50));
}

async fn schema_changes_are_recorded_exactly(catalog: &dyn Catalog) {
    let first = rich_schema();
    let c = Commit {
        schema: Arc::clone(&first),
        ..commit("files", "wide", Mode::Overwrite, 1, 1)
    };
    catalog.commit(c).await.unwrap();
    assert_eq!(get(catalog, "files", "wide").await.schema, first);

    // A column added, one made nullable, metadata changed: the newest schema, exactly.
    let mut fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[0] = fields[0].clone().with_nullable(true);
    fields.push(Field::new(
        "added",
        DataType::Timestamp(TimeUnit::Microsecond, None),
        true,
    ));
    let second = Arc::new(Schema::new_with_metadata(
        fields,
        HashMap::from([("pandas".into(), "{\"index\": [\"ts\"]}".into())]),
    ));
    assert_ne!(first, second);
    let c = Commit {
        schema: Arc::clone(&second),
        ..commit("files", "wide", Mode::Append, 1, 1)
    };
    catalog.commit(c).await.unwrap();
    assert_eq!(get(catalog, "files", "wide").await.schema, second);
    assert_eq!(catalog.list(None, None).await.unwrap()[0].schema, second);

    // And back to a narrower one.
    catalog
        .commit(commit("files", "wide", Mode::Overwrite, 1, 1))
        .await
        .unwrap();
    assert_eq!(get(catalog, "files", "wide").await.schema, simple_schema());
}

async fn history_is_newest_first(catalog: &dyn Catalog) {
    assert!(
        catalog
            .history("files", &key("daily"))
            .await
            .unwrap()
            .is_empty()
    );
    let region = multi(&[("date", "2024-01-01"), ("region", "eu")]);
    let commits = [
        Commit {
            duration_ms: 11,
            idempotency_key: Some("run-1".into()),
            ..partition_commit("files", "daily", region.clone(), Mode::Overwrite, 10, 100)
        },
        Commit {
            duration_ms: 22,
            ..partition_commit("files", "daily", region.clone(), Mode::Append, 5, 50)
        },
        Commit {
            duration_ms: 33,
            idempotency_key: Some("run-3".into()),
            ..partition_commit(
                "files",
                "daily",
                multi(&[("date", "2024-01-02"), ("region", "eu")]),
                Mode::Upsert,
                1,
                10,
            )
        },
    ];
    let before = Utc::now();
    for c in commits.iter().cloned() {
        catalog.commit(c).await.unwrap();
    }
    let after = Utc::now();
    // Another asset's history is its own.
    catalog
        .commit(commit("files", "other", Mode::Overwrite, 1, 1))
        .await
        .unwrap();

    let history = catalog.history("files", &key("daily")).await.unwrap();
    let expected: Vec<HistoryEntry> = commits
        .iter()
        .enumerate()
        .rev()
        .zip(&history)
        .map(|((i, c), got)| HistoryEntry {
            version: i as u64 + 1,
            mode: c.mode,
            partition: c.partition.as_ref().map(Partition::to_json),
            rows: c.rows,
            bytes: c.bytes,
            location: c.location.clone(),
            duration_ms: c.duration_ms,
            written_at: got.written_at,
            idempotency_key: c.idempotency_key.clone(),
        })
        .collect();
    assert_eq!(history, expected);
    assert_eq!(
        history[0].partition,
        Some(json!({"date": "2024-01-02", "region": "eu"}))
    );
    for entry in &history {
        assert!(just_before(before) <= entry.written_at && entry.written_at <= after);
    }
    assert!(history[0].written_at >= history[1].written_at);
    assert!(history[1].written_at >= history[2].written_at);

    // Single-key partitions read back as strings, unpartitioned writes as none.
    catalog
        .commit(partition_commit(
            "files",
            "single",
            single("2024-01-01"),
            Mode::Overwrite,
            1,
            1,
        ))
        .await
        .unwrap();
    let history = catalog.history("files", &key("single")).await.unwrap();
    assert_eq!(history[0].partition, Some(json!("2024-01-01")));
    let history = catalog.history("files", &key("other")).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].partition, None);
}

async fn replay_by_idempotency_key(catalog: &dyn Catalog) {
    let asset = key("sales/daily");
    assert_eq!(catalog.replay("files", &asset, "k1").await.unwrap(), None);
    catalog
        .commit(commit("files", "sales/daily", Mode::Overwrite, 10, 100))
        .await
        .unwrap();
    let keyed = Commit {
        idempotency_key: Some("k1".into()),
        duration_ms: 42,
        ..partition_commit(
            "files",
            "sales/daily",
            single("2024-01-01"),
            Mode::Append,
            5,
            50,
        )
    };
    catalog.commit(keyed).await.unwrap();
    catalog
        .commit(commit("files", "sales/daily", Mode::Append, 1, 1))
        .await
        .unwrap();

    let replayed = catalog.replay("files", &asset, "k1").await.unwrap();
    assert_eq!(
        replayed,
        Some(PutSummary {
            asset: "sales/daily".into(),
            target: "files".into(),
            mode: Mode::Append,
            partition: Some(json!("2024-01-01")),
            rows: 5,
            bytes: 50,
            location: "mem://files/sales/daily/2024-01-01".into(),
            version: 2,
            duration_ms: 42,
            idempotency_key: Some("k1".into()),
            replayed: true,
        })
    );
    // Keys belong to one asset of one target.
    assert_eq!(catalog.replay("files", &asset, "k2").await.unwrap(), None);
    assert_eq!(catalog.replay("tables", &asset, "k1").await.unwrap(), None);
    assert_eq!(
        catalog
            .replay("files", &key("sales/weekly"), "k1")
            .await
            .unwrap(),
        None
    );
    let elsewhere = Commit {
        idempotency_key: Some("k1".into()),
        ..commit("files", "sales/weekly", Mode::Overwrite, 3, 30)
    };
    assert_eq!(catalog.commit(elsewhere).await.unwrap(), 1);
    let replayed = catalog
        .replay("files", &key("sales/weekly"), "k1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (replayed.version, replayed.rows, replayed.partition),
        (1, 3, None)
    );
}

async fn a_repeated_idempotency_key_is_refused_and_changes_nothing(catalog: &dyn Catalog) {
    let first = Commit {
        idempotency_key: Some("k".into()),
        ..partition_commit("files", "daily", single("a"), Mode::Overwrite, 10, 100)
    };
    catalog.commit(first).await.unwrap();
    let pending = pending_put("put-1", Utc::now());
    catalog.begin_put(&pending).await.unwrap();
    let before = get(catalog, "files", "daily").await;

    let again = Commit {
        idempotency_key: Some("k".into()),
        put_id: Some("put-1".into()),
        ..partition_commit("files", "daily", single("b"), Mode::Overwrite, 5, 50)
    };
    assert!(catalog.commit(again).await.is_err());
    // Nothing of the refused commit stays: not its partition, version, history, nor the
    // removal of its pending put.
    assert_eq!(get(catalog, "files", "daily").await, before);
    assert_eq!(
        catalog.history("files", &key("daily")).await.unwrap().len(),
        1
    );
    assert_eq!(
        catalog.pending_puts("files", None).await.unwrap().len(),
        1,
        "the pending put of a refused commit stays"
    );
    // The catalog still takes commits to the asset.
    catalog
        .commit(partition_commit(
            "files",
            "daily",
            single("b"),
            Mode::Overwrite,
            5,
            50,
        ))
        .await
        .unwrap();
    assert_eq!(totals(catalog, "files", "daily").await, (2, 15, 150));
}

async fn delete_one_partition(catalog: &dyn Catalog) {
    for (p, rows) in [("a", 1), ("b", 2), ("c", 4), ("d", 8)] {
        catalog
            .commit(partition_commit(
                "files",
                "daily",
                single(p),
                Mode::Overwrite,
                rows,
                rows * 10,
            ))
            .await
            .unwrap();
    }
    let before = get(catalog, "files", "daily").await;
    assert_eq!((before.version, before.rows, before.bytes), (4, 15, 150));

    catalog
        .delete("files", &key("daily"), &[single("b")])
        .await
        .unwrap();
    let record = get(catalog, "files", "daily").await;
    assert_eq!((record.version, record.rows, record.bytes), (5, 13, 130));
    assert_eq!(ids(&record), ["a", "c", "d"]);
    assert_eq!(record.partitions, {
        let mut kept = before.partitions.clone();
        kept.remove(1);
        kept
    });
    assert_eq!(record.created_at, before.created_at);
    assert_eq!(record.schema, before.schema);
    assert_eq!(record.layout, before.layout);

    // Several at once: one version.
    catalog
        .delete("files", &key("daily"), &[single("a"), single("d")])
        .await
        .unwrap();
    let record = get(catalog, "files", "daily").await;
    assert_eq!((record.version, record.rows, record.bytes), (6, 4, 40));
    assert_eq!(ids(&record), ["c"]);
    // Deleting keeps the history of the writes.
    assert_eq!(
        catalog.history("files", &key("daily")).await.unwrap().len(),
        4
    );
    // And the next commit continues the versions.
    assert_eq!(
        catalog
            .commit(partition_commit(
                "files",
                "daily",
                single("e"),
                Mode::Overwrite,
                1,
                10
            ))
            .await
            .unwrap(),
        7
    );
    assert_eq!(totals(catalog, "files", "daily").await, (7, 5, 50));
}

async fn delete_the_whole_asset(catalog: &dyn Catalog) {
    let keyed = Commit {
        idempotency_key: Some("k".into()),
        ..commit("files", "sales/daily", Mode::Overwrite, 10, 100)
    };
    catalog.commit(keyed).await.unwrap();
    catalog
        .commit(commit("files", "sales/daily", Mode::Append, 10, 100))
        .await
        .unwrap();
    for (target, asset) in [("files", "sales/weekly"), ("tables", "sales/daily")] {
        catalog
            .commit(commit(target, asset, Mode::Overwrite, 1, 1))
            .await
            .unwrap();
    }
    catalog
        .commit(partition_commit(
            "files",
            "parts",
            single("a"),
            Mode::Overwrite,
            1,
            1,
        ))
        .await
        .unwrap();

    let asset = key("sales/daily");
    catalog.delete("files", &asset, &[]).await.unwrap();
    assert_eq!(catalog.get("files", &asset).await.unwrap(), None);
    assert!(catalog.history("files", &asset).await.unwrap().is_empty());
    assert_eq!(catalog.replay("files", &asset, "k").await.unwrap(), None);
    let left: Vec<String> = catalog
        .list(None, None)
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}:{}", r.target, r.asset))
        .collect();
    assert_eq!(
        left,
        ["files:parts", "files:sales/weekly", "tables:sales/daily"]
    );

    // A partitioned asset, whole.
    catalog.delete("files", &key("parts"), &[]).await.unwrap();
    assert_eq!(catalog.get("files", &key("parts")).await.unwrap(), None);

    // Deleting what is not there is not an error.
    catalog.delete("files", &asset, &[]).await.unwrap();
    catalog
        .delete("files", &key("never"), &[single("a")])
        .await
        .unwrap();
    assert_eq!(catalog.get("files", &key("never")).await.unwrap(), None);

    // Written again, the asset starts over.
    let again = Commit {
        idempotency_key: Some("k".into()),
        ..commit("files", "sales/daily", Mode::Append, 3, 30)
    };
    assert_eq!(catalog.commit(again).await.unwrap(), 1);
    assert_eq!(totals(catalog, "files", "sales/daily").await, (1, 3, 30));
    assert_eq!(catalog.history("files", &asset).await.unwrap().len(), 1);
}

async fn deleting_the_last_partitions_removes_the_asset(catalog: &dyn Catalog) {
    for p in ["a", "b"] {
        catalog
            .commit(partition_commit(
                "files",
                "daily",
                single(p),
                Mode::Overwrite,
                1,
                1,
            ))
            .await
            .unwrap();
    }
    catalog
        .delete("files", &key("daily"), &[single("a")])
        .await
        .unwrap();
    assert!(catalog.get("files", &key("daily")).await.unwrap().is_some());
    catalog
        .delete("files", &key("daily"), &[single("b")])
        .await
        .unwrap();
    assert_eq!(catalog.get("files", &key("daily")).await.unwrap(), None);
    assert!(
        catalog
            .history("files", &key("daily"))
            .await
            .unwrap()
            .is_empty()
    );

    // Every remaining partition in one call.
    let dims = [
        multi(&[("date", "1"), ("region", "eu")]),
        multi(&[("date", "1"), ("region", "us")]),
    ];
    for p in &dims {
        catalog
            .commit(partition_commit(
                "files",
                "grid",
                p.clone(),
                Mode::Overwrite,
                1,
                1,
            ))
            .await
            .unwrap();
    }
    catalog.delete("files", &key("grid"), &dims).await.unwrap();
    assert_eq!(catalog.get("files", &key("grid")).await.unwrap(), None);
    assert!(catalog.list(None, None).await.unwrap().is_empty());
}

async fn locks_are_released_on_drop(catalog: &dyn Catalog) {
    let soon = Duration::from_secs(5);
    let held = catalog
        .lock_asset("files", &key("sales/daily"))
        .await
        .unwrap();
    // Other assets, and the same key in another target, are not held.
    let other = tokio::time::timeout(soon, catalog.lock_asset("files", &key("sales/weekly")))
        .await
        .expect("another asset's lock does not wait")
        .unwrap();
    let elsewhere = tokio::time::timeout(soon, catalog.lock_asset("tables", &key("sales/daily")))
        .await
        .expect("another target's lock does not wait")
        .unwrap();
    drop((held, other, elsewhere));
    let again = tokio::time::timeout(soon, catalog.lock_asset("files", &key("sales/daily")))
        .await
        .expect("a dropped lock is released")
        .unwrap();
    drop(again);
}

/// A pending put with every field set to something other than its default.
fn pending_put(id: &str, started_at: DateTime<Utc>) -> PendingPut {
    PendingPut {
        id: id.to_string(),
        commit: Commit {
            schema: rich_schema(),
            partition_columns: Some(PartitionColumns::PerDimension(BTreeMap::from([
                ("date".to_string(), "day".to_string()),
                ("region".to_string(), "area".to_string()),
            ]))),
            duration_ms: 0,
            idempotency_key: Some(format!("key-of-{id}")),
            put_id: Some(id.to_string()),
            asset_location: "s3://bucket/sales/daily".into(),
            ..partition_commit(
                "files",
                "sales/daily",
                multi(&[("date", "2024-01-01"), ("region", "eu")]),
                Mode::Upsert,
                123,
                4567,
            )
        },
        mark: "etag=\"abc\"; size=42".into(),
        started_at,
    }
}

/// Every field a pending put keeps. `total_rows` is the target's to count after its commit,
/// so none is kept.
fn assert_same_put(got: &PendingPut, want: &PendingPut) {
    let PendingPut {
        id,
        commit,
        mark,
        started_at,
    } = want;
    let Commit {
        target,
        asset,
        schema,
        partition,
        mode,
        rows,
        bytes,
        location,
        asset_location,
        total_rows: _,
        partition_columns,
        duration_ms,
        idempotency_key,
        put_id,
    } = commit;
    let c = &got.commit;
    assert_eq!(&got.id, id);
    assert_eq!(&got.mark, mark);
    assert_eq!(&got.started_at, started_at);
    assert_eq!(&c.target, target);
    assert_eq!(&c.asset, asset);
    assert_eq!(&c.schema, schema);
    assert_eq!(&c.partition, partition);
    assert_eq!(&c.mode, mode);
    assert_eq!((c.rows, c.bytes), (*rows, *bytes));
    assert_eq!(&c.location, location);
    assert_eq!(&c.asset_location, asset_location);
    assert_eq!(c.total_rows, None);
    assert_eq!(&c.partition_columns, partition_columns);
    assert_eq!(&c.duration_ms, duration_ms);
    assert_eq!(&c.idempotency_key, idempotency_key);
    assert_eq!(&c.put_id, put_id);
}

async fn pending_puts_round_trip_every_field(catalog: &dyn Catalog) {
    assert!(
        catalog
            .pending_puts("files", None)
            .await
            .unwrap()
            .is_empty()
    );
    let started_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    let put = pending_put("7b0c6f2e-put", started_at);
    catalog.begin_put(&put).await.unwrap();
    let found = catalog.pending_puts("files", None).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_same_put(&found[0], &put);

    // Each shape of partition, and none; a single partition column; an overwrite.
    let shapes = [
        (None, None, Mode::Overwrite),
        (
            Some(single("2024-01-01")),
            Some(PartitionColumns::Single("day".into())),
            Mode::Append,
        ),
    ];
    for (i, (partition, partition_columns, mode)) in shapes.into_iter().enumerate() {
        let id = format!("shape-{i}");
        let mut put = pending_put(&id, started_at + chrono::Duration::seconds(i as i64 + 1));
        put.commit.partition = partition;
        put.commit.partition_columns = partition_columns;
        put.commit.mode = mode;
        put.commit.idempotency_key = None;
        put.commit.schema = simple_schema();
        catalog.begin_put(&put).await.unwrap();
        let found = catalog
            .pending_puts("files", Some(&key("sales/daily")))
            .await
            .unwrap();
        assert_same_put(&found[i + 1], &put);
    }

    // An id names one put.
    assert!(catalog.begin_put(&put).await.is_err());
}

async fn pending_puts_filter_by_target_and_asset_oldest_first(catalog: &dyn Catalog) {
    let t0 = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
    let at = |millis: i64, nanos: i64| {
        t0 + chrono::Duration::milliseconds(millis) + chrono::Duration::nanoseconds(nanos)
    };
    // (id, target, asset, started_at), begun in this order.
    let puts = [
        ("p4", "files", "sales/daily", at(1000, 1)),
        ("p1", "files", "sales/daily", at(0, 0)),
        ("x1", "tables", "sales/daily", at(-5000, 0)),
        ("p3", "files", "sales/weekly", at(1000, 0)),
        ("p2", "files", "sales/daily", at(500, 0)),
        ("p5", "files", "sales/weekly", at(10_000, 0)),
        ("p0", "files", "sales", at(-1, 0)),
    ];
    for (id, target, asset, started_at) in puts {
        let mut put = pending_put(id, started_at);
        put.commit.target = target.to_string();
        put.commit.asset = key(asset);
        catalog.begin_put(&put).await.unwrap();
    }
    let found = |target: &'static str, asset: Option<&'static str>| async move {
        let puts = catalog
            .pending_puts(target, asset.map(key).as_ref())
            .await
            .unwrap();
        puts.into_iter().map(|p| p.id).collect::<Vec<_>>()
    };
    assert_eq!(
        found("files", None).await,
        ["p0", "p1", "p2", "p3", "p4", "p5"]
    );
    assert_eq!(
        found("files", Some("sales/daily")).await,
        ["p1", "p2", "p4"]
    );
    assert_eq!(found("files", Some("sales/weekly")).await, ["p3", "p5"]);
    assert_eq!(found("files", Some("sales")).await, ["p0"]);
    assert_eq!(found("tables", None).await, ["x1"]);
    assert!(found("json", None).await.is_empty());
    assert!(found("tables", Some("sales/weekly")).await.is_empty());
    // Each carries its own target and asset.
    let tables = catalog.pending_puts("tables", None).await.unwrap();
    assert_eq!(
        (
            tables[0].commit.target.as_str(),
            tables[0].commit.asset.to_string()
        ),
        ("tables", "sales/daily".to_string())
    );
}

async fn abandon_put_forgets_only_that_put(catalog: &dyn Catalog) {
    let t0 = Utc::now();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        catalog
            .begin_put(&pending_put(id, t0 + chrono::Duration::seconds(i as i64)))
            .await
            .unwrap();
    }
    catalog.abandon_put("b").await.unwrap();
    let ids = |puts: Vec<PendingPut>| puts.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(catalog.pending_puts("files", None).await.unwrap()),
        ["a", "c"]
    );
    // Forgetting twice, or a put never begun, is not an error.
    catalog.abandon_put("b").await.unwrap();
    catalog.abandon_put("never").await.unwrap();
    assert_eq!(
        ids(catalog.pending_puts("files", None).await.unwrap()),
        ["a", "c"]
    );
    // Abandoning records nothing.
    assert_eq!(
        catalog.get("files", &key("sales/daily")).await.unwrap(),
        None
    );
    // An abandoned id can be begun again.
    catalog
        .begin_put(&pending_put("b", t0 + chrono::Duration::seconds(5)))
        .await
        .unwrap();
    assert_eq!(
        ids(catalog.pending_puts("files", None).await.unwrap()),
        ["a", "c", "b"]
    );
}

async fn commit_finishes_its_pending_put(catalog: &dyn Catalog) {
    let t0 = Utc::now();
    let first = pending_put("first", t0);
    let second = pending_put("second", t0 + chrono::Duration::seconds(1));
    catalog.begin_put(&first).await.unwrap();
    catalog.begin_put(&second).await.unwrap();

    // The pending put is what a recovery commits: its commit as the catalog kept it.
    let kept = catalog.pending_puts("files", None).await.unwrap().remove(0);
    let version = catalog.commit(kept.commit).await.unwrap();
    assert_eq!(version, 1);
    let left: Vec<String> = catalog
        .pending_puts("files", None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, ["second"]);
    let record = get(catalog, "files", "sales/daily").await;
    assert_eq!(record.schema, first.commit.schema);
    assert_eq!(record.partition_columns, first.commit.partition_columns);
    assert_eq!((record.rows, record.bytes), (123, 4567));
    assert_eq!(
        catalog
            .replay("files", &key("sales/daily"), "key-of-first")
            .await
            .unwrap()
            .map(|s| s.version),
        Some(1)
    );

    // A commit without a put id leaves pending puts alone; one naming a put that is gone
    // still commits.
    catalog
        .commit(commit("files", "sales/daily", Mode::Append, 1, 1))
        .await
        .unwrap();
    assert_eq!(catalog.pending_puts("files", None).await.unwrap().len(), 1);
    let late = Commit {
        put_id: Some("first".into()),
        ..commit("files", "sales/daily", Mode::Append, 1, 1)
    };
    assert_eq!(catalog.commit(late).await.unwrap(), 3);
    let finish = Commit {
        put_id: Some("second".into()),
        ..commit("files", "sales/daily", Mode::Append, 1, 1)
    };
    assert_eq!(catalog.commit(finish).await.unwrap(), 4);
    assert!(
        catalog
            .pending_puts("files", None)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- what differs between the backends: locking ----

/// Servers sharing a PostgreSQL catalog take turns writing one asset.
#[tokio::test]
async fn postgres_second_lock_waits_until_the_first_is_dropped() {
    on_postgres(|catalog| Box::pin(second_lock_waits(catalog))).await;
}

async fn second_lock_waits(catalog: &dyn Catalog) {
    let asset = key("sales/daily");
    let wait = Duration::from_millis(500);
    let soon = Duration::from_secs(5);
    let first = catalog.lock_asset("files", &asset).await.unwrap();

    let mut second = std::pin::pin!(catalog.lock_asset("files", &asset));
    assert!(
        tokio::time::timeout(wait, &mut second).await.is_err(),
        "a second lock on a held asset must wait"
    );
    drop(first);
    let second = tokio::time::timeout(soon, second)
        .await
        .expect("the second lock is granted once the first is dropped")
        .unwrap();

    // A waiter given up on withdraws its request: it never takes the lock later.
    let abandoned = tokio::time::timeout(wait, catalog.lock_asset("files", &asset)).await;
    assert!(abandoned.is_err(), "the lock is still held");
    drop(second);
    let third = tokio::time::timeout(soon, catalog.lock_asset("files", &asset))
        .await
        .expect("nobody holds the lock after its holder dropped it")
        .unwrap();
    drop(third);
}

/// Two servers: two catalogs on one database.
#[tokio::test]
async fn postgres_lock_is_shared_by_every_server() {
    let db = linguistic_database().await;
    let (one, two) = (open_postgres(&db).await, open_postgres(&db).await);
    let asset = key("sales/daily");
    let (waited, granted) = {
        let held = one.lock_asset("files", &asset).await.unwrap();
        let mut waiting = std::pin::pin!(two.lock_asset("files", &asset));
        let waited = tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err();
        drop(held);
        let granted = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        (waited, granted.map(|lock| lock.is_ok()))
    };
    drop((one, two));
    db.drop().await;
    assert!(waited, "another server's lock on the asset must wait");
    assert_eq!(
        granted.ok(),
        Some(true),
        "the other server gets the lock once it is released"
    );
}

/// Only one server opens a SQLite catalog: its lock never waits.
#[tokio::test]
async fn sqlite_lock_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open_sqlite(&dir);
    let asset = key("sales/daily");
    let first = catalog.lock_asset("files", &asset).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), catalog.lock_asset("files", &asset))
        .await
        .expect("SQLite's lock does not wait")
        .unwrap();
    drop((first, second));
}

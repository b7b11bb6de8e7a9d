//! The Hyper target: the conformance suite against a real hyperd, the one the
//! `tableauhyperapi` wheel ships (pip-installed into the test virtualenv), or `$QUIVER_HYPERD`.
#![cfg(feature = "hyper")]

mod common;
mod conformance;

use std::path::PathBuf;

use common::*;
use conformance::{Profile, run_on};

/// hyperd: `$QUIVER_HYPERD`, else the one in the test virtualenv (`$QUIVER_VENV`, default
/// `~/.cache/quiver/venv`), where scripts/test installs tableauhyperapi.
fn hyperd() -> PathBuf {
    if let Some(path) = std::env::var_os("QUIVER_HYPERD") {
        return PathBuf::from(path);
    }
    let venv = std::env::var_os("QUIVER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/quiver/venv")
        });
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/tableauhyperapi/bin/hyper/hyperd")
        })
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no hyperd in {}: pip install -r tests/python/requirements.txt into that \
                 virtualenv, or set QUIVER_HYPERD",
                lib.display()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_conforms() {
    let config = format!(
        "[targets.hyper]\nkind = \"hyper\"\nhyperd = {:?}\n",
        hyperd().display().to_string()
    );
    run_on(
        TestServer::start_with_toml(&config).await,
        &Profile {
            target: "hyper",
            extension: Some("hyper"),
            refuses: &[
                "ts_ns",
                "ts_ns_offset",
                "time64_ns",
                "list",
                "struct",
                "nulls",
            ],
            extra_modes: &["append"],
        },
    )
    .await;
}

//! The Delta Lake target: the conformance suite, appends, and the table as other Delta
//! readers see it (the pytest suite reads it with the `deltalake` package).

mod common;
mod conformance;

use conformance::{Profile, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_conforms() {
    run(&Profile {
        target: "delta",
        // Delta has no time-of-day or null type, and its timestamps are microseconds: the
        // matrix's nanosecond columns hold values below a microsecond.
        refuses: &["ts_ns", "ts_ns_offset", "time64_us", "time64_ns", "nulls"],
        extra_modes: &["append"],
        extension: None,
    })
    .await;
}

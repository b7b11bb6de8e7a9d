//! Prometheus metrics, and the HTTP endpoints Kubernetes probes: `/metrics`, `/healthz`
//! (the process answers) and `/readyz` (every target answered its last health check).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// Labels of a call: the target (or `unknown` when the request named none that exists) and the
/// gRPC status code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub target: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

fn put_duration_histogram() -> Histogram {
    // 5 ms to ~20 min.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    puts: Family<CallLabels, Counter>,
    gets: Family<CallLabels, Counter>,
    rows_written: Family<TargetLabels, Counter>,
    bytes_written: Family<TargetLabels, Counter>,
    rows_read: Family<TargetLabels, Counter>,
    bytes_read: Family<TargetLabels, Counter>,
    put_seconds: Family<TargetLabels, Histogram, fn() -> Histogram>,
    puts_in_flight: Family<TargetLabels, Gauge>,
    target_up: Family<TargetLabels, Gauge>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(target: &str) -> TargetLabels {
    TargetLabels {
        target: target.to_string(),
    }
}

/// The status label of a result: `Ok`, `InvalidArgument`, ...
pub fn status_label<T>(result: &Result<T>) -> String {
    match result {
        Ok(_) => "Ok".to_string(),
        Err(e) => format!("{:?}", e.code()),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quiver");
        let metrics = Self {
            puts: Family::default(),
            gets: Family::default(),
            rows_written: Family::default(),
            bytes_written: Family::default(),
            rows_read: Family::default(),
            bytes_read: Family::default(),
            put_seconds: Family::new_with_constructor(put_duration_histogram),
            puts_in_flight: Family::default(),
            target_up: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "puts",
            "DoPut calls by target and status",
            metrics.puts.clone(),
        );
        registry.register(
            "gets",
            "DoGet calls by target and status",
            metrics.gets.clone(),
        );
        registry.register(
            "rows_written",
            "Rows committed by puts",
            metrics.rows_written.clone(),
        );
        registry.register(
            "bytes_written",
            "Bytes targets reported storing",
            metrics.bytes_written.clone(),
        );
        registry.register("rows_read", "Rows sent by DoGet", metrics.rows_read.clone());
        registry.register(
            "bytes_read",
            "Arrow bytes sent by DoGet",
            metrics.bytes_read.clone(),
        );
        registry.register(
            "put_duration_seconds",
            "Time from a put's first message to its commit or failure",
            metrics.put_seconds.clone(),
        );
        registry.register(
            "puts_in_flight",
            "Puts running now",
            metrics.puts_in_flight.clone(),
        );
        registry.register(
            "target_up",
            "1 when the target answered its last health check",
            metrics.target_up.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a finished put.
    pub fn put_finished(
        &self,
        target: &str,
        status: String,
        elapsed: Duration,
        rows: u64,
        bytes: u64,
    ) {
        self.puts
            .get_or_create(&CallLabels {
                target: target.to_string(),
                status: status.clone(),
            })
            .inc();
        self.put_seconds
            .get_or_create(&labels(target))
            .observe(elapsed.as_secs_f64());
        if status == "Ok" {
            self.rows_written
                .get_or_create(&labels(target))
                .inc_by(rows);
            self.bytes_written
                .get_or_create(&labels(target))
                .inc_by(bytes);
        }
    }

    /// Counts a put as running until the returned guard is dropped.
    pub fn put_running(self: &Arc<Self>, target: &str) -> InFlight {
        let gauge = self.puts_in_flight.get_or_create(&labels(target)).clone();
        gauge.inc();
        InFlight(gauge)
    }

    pub fn get_opened(&self, target: &str, status: String) {
        self.gets
            .get_or_create(&CallLabels {
                target: target.to_string(),
                status,
            })
            .inc();
    }

    pub fn batch_read(&self, target: &str, rows: u64, bytes: u64) {
        self.rows_read.get_or_create(&labels(target)).inc_by(rows);
        self.bytes_read.get_or_create(&labels(target)).inc_by(bytes);
    }

    /// Records a round of target health checks.
    pub fn health_checked(&self, results: &[(String, bool)]) {
        for (target, up) in results {
            self.target_up
                .get_or_create(&labels(target))
                .set(i64::from(*up));
        }
        self.ready
            .store(results.iter().all(|(_, up)| *up), Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::internal(format!("the metrics server failed: {e}")))
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a target failed its health check, or none has run yet\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_target_and_status() {
        let metrics = Arc::new(Metrics::new());
        metrics.put_finished("lake", "Ok".into(), Duration::from_millis(30), 10, 100);
        metrics.put_finished(
            "lake",
            "InvalidArgument".into(),
            Duration::from_millis(1),
            5,
            0,
        );
        {
            let _running = metrics.put_running("lake");
            assert!(
                metrics
                    .render()
                    .contains("quiver_puts_in_flight{target=\"lake\"} 1")
            );
        }
        let text = metrics.render();
        assert!(
            text.contains("quiver_puts_total{target=\"lake\",status=\"Ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("quiver_puts_total{target=\"lake\",status=\"InvalidArgument\"} 1"));
        assert!(text.contains("quiver_rows_written_total{target=\"lake\"} 10"));
        assert!(text.contains("quiver_puts_in_flight{target=\"lake\"} 0"));
        assert!(text.contains("quiver_put_duration_seconds_count{target=\"lake\"} 2"));
        assert!(!metrics.is_ready());
        metrics.health_checked(&[("lake".into(), true)]);
        assert!(metrics.is_ready());
        assert!(
            metrics
                .render()
                .contains("quiver_target_up{target=\"lake\"} 1")
        );
    }
}

//! What puts and readers wait on: the caps on puts running at once, the per-asset locks, and
//! the DoPut call a put task serves, with the client's deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::asset::AssetKey;
use crate::config::LimitsConfig;
use crate::error::{Error, Result};

/// Caps on puts running at once, for the server and per target.
pub(super) struct PutLimits {
    /// How long a put waits for the client's next message.
    pub(super) idle: std::time::Duration,
    /// The most bytes one batch may hold decoded (`limits.max_message_bytes`).
    pub(super) batch_bytes: usize,
    all: Arc<tokio::sync::Semaphore>,
    max_all: usize,
    per_target: usize,
    by_target: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl PutLimits {
    pub(super) fn new(limits: &LimitsConfig) -> Self {
        Self {
            idle: std::time::Duration::from_secs(limits.put_idle_timeout_secs),
            batch_bytes: limits.max_message_bytes,
            all: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_puts)),
            max_all: limits.max_concurrent_puts,
            per_target: limits.max_concurrent_puts_per_target,
            by_target: Mutex::default(),
        }
    }

    /// Admits a put into `target` now, or refuses it with RESOURCE_EXHAUSTED.
    pub(super) fn admit(
        &self,
        target: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let busy = |scope: String, limit: usize| Error::ResourceExhausted {
            message: format!(
                "{limit} puts are already running {scope}, the configured limit; retry shortly \
                 (limits.max_concurrent_puts / max_concurrent_puts_per_target)"
            ),
        };
        let target_semaphore = Arc::clone(
            self.by_target
                .lock()
                .expect("limits map")
                .entry(target.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_target))),
        );
        let one = target_semaphore
            .try_acquire_owned()
            .map_err(|_| busy(format!("into target '{target}'"), self.per_target))?;
        let all = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| busy("on this server".to_string(), self.max_all))?;
        Ok((one, all))
    }
}

/// Per-asset locks: puts to one asset run one at a time, and the short commit step excludes
/// readers that are opening the asset, so a reader always pins one whole version.
#[derive(Default)]
pub(super) struct Locks {
    by_asset: Mutex<HashMap<(String, String), Arc<AssetLock>>>,
}

#[derive(Default)]
pub(super) struct AssetLock {
    pub(super) put: tokio::sync::Mutex<()>,
    pub(super) visible: tokio::sync::RwLock<()>,
}

impl Locks {
    pub(super) fn get(&self, target: &str, asset: &AssetKey) -> Arc<AssetLock> {
        let mut map = self.by_asset.lock().expect("lock map");
        Arc::clone(
            map.entry((target.to_string(), asset.to_string()))
                .or_default(),
        )
    }
}

/// The DoPut call a put task serves. Once the client has given up on the call, a put must not
/// commit, even when its request stream looks finished: a client whose deadline passed may
/// still close the stream cleanly, and a reset stream can end like a finished one. The call is
/// over when tonic dropped its handler (the client cancelled or the connection broke) or when
/// the deadline the client sent in `grpc-timeout` has passed.
pub(super) struct Call {
    pub(super) handler: oneshot::Receiver<()>,
    pub(super) deadline: Option<Instant>,
}

impl Call {
    /// Why the call is over, if it is.
    pub(super) fn ended(&mut self) -> Option<Error> {
        if let Err(oneshot::error::TryRecvError::Closed) = self.handler.try_recv() {
            return Some(Error::Cancelled {
                message: "the call ended before the put finished; nothing was written".into(),
            });
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Error::Timeout {
                message: "the put's deadline (grpc-timeout) passed before it finished; \
                          nothing was written"
                    .into(),
            });
        }
        None
    }
}

/// The deadline a client sent as `grpc-timeout` (e.g. `500m`), from when the call arrived.
pub(super) fn call_deadline(
    metadata: &tonic::metadata::MetadataMap,
    arrived: Instant,
) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_become_deadlines() {
        let now = Instant::now();
        let deadline = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            call_deadline(&metadata, now).map(|d| d - now)
        };
        assert_eq!(deadline("500m"), Some(Duration::from_millis(500)));
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline("30u"), Some(Duration::from_micros(30)));
        assert_eq!(deadline("12x"), None);
        assert_eq!(deadline("m"), None);
        assert_eq!(
            call_deadline(&tonic::metadata::MetadataMap::new(), now),
            None
        );
    }
}

//! Settling puts the catalog still holds as pending: a server died, or a catalog commit
//! failed, between a target's commit and the catalog's.
//!
//! A pending put goes to its target's [`Target::resolve`]: if the target has the put's data,
//! the catalog records the put (roll forward); otherwise the target has removed what the put
//! left and the catalog forgets it (roll back). Either way the catalog and the data agree
//! again. This runs for every target before a server accepts calls, and for one asset before
//! each put to it (`Inner::put`), always with the asset's write lock held.

use std::time::Duration;

use tracing::{info, warn};

use crate::catalog::{Catalog, PendingPut};
use crate::error::Result;
use crate::targets::Target;
use crate::targets::registry::Targets;

/// What settling one pending put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The target had the data: the catalog recorded the put as this version.
    RolledForward(u64),
    /// The target did not: what the put left is gone and the catalog forgot it.
    RolledBack,
}

/// Settles one pending put. The caller holds the asset's write lock.
pub async fn settle(
    target: &dyn Target,
    catalog: &dyn Catalog,
    put: PendingPut,
) -> Result<Settled> {
    let (id, asset) = (put.id.clone(), put.commit.asset.clone());
    let settled = match target.resolve(&put).await? {
        Some(written) => {
            let mut commit = put.commit;
            commit.bytes = written.bytes;
            commit.location = written.location;
            commit.total_rows = written.total_rows;
            Settled::RolledForward(catalog.commit(commit).await?)
        }
        None => {
            catalog.abandon_put(&id).await?;
            Settled::RolledBack
        }
    };
    info!(
        target = target.name(),
        asset = %asset,
        put = %id,
        outcome = ?settled,
        "settled an interrupted put"
    );
    Ok(settled)
}

/// How long start-up waits for another server's lock on an asset with a pending put: that
/// server is committing the put itself.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest one target's settling may delay start-up.
const TARGET_TIMEOUT: Duration = Duration::from_secs(60);

/// Settles every pending put, before the server accepts calls. A target that cannot be
/// reached keeps its pending puts; they are settled at the next start or before the next put
/// to their asset.
pub async fn settle_all(targets: &Targets, catalog: &dyn Catalog) {
    for target in targets.iter() {
        let work = async {
            for put in catalog.pending_puts(target.name(), None).await? {
                let asset = put.commit.asset.clone();
                // Another server of a cluster may be committing this very put.
                let Ok(guard) =
                    tokio::time::timeout(LOCK_WAIT, catalog.lock_asset(target.name(), &asset))
                        .await
                else {
                    warn!(target = target.name(), asset = %asset,
                          "another server holds the asset; it settles its own put");
                    continue;
                };
                let _guard = guard?;
                let still_pending = catalog
                    .pending_puts(target.name(), Some(&asset))
                    .await?
                    .into_iter()
                    .find(|p| p.id == put.id);
                if let Some(put) = still_pending {
                    settle(target.as_ref(), catalog, put).await?;
                }
            }
            Ok::<_, crate::error::Error>(())
        };
        match tokio::time::timeout(TARGET_TIMEOUT, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(
                target = target.name(),
                error = %e,
                "could not settle interrupted puts; they are settled at the next start or put"
            ),
            Err(_) => warn!(
                target = target.name(),
                "settling interrupted puts timed out; they are settled at the next start or put"
            ),
        }
    }
}

//! The repair of Service allocations (cluster IPs, node ports), as
//! upstream's repair controllers: at the start of a leadership term and
//! every 3 minutes, what stored Services hold is claimed and claims
//! nobody holds are dropped (see `registry::ranges`).

use super::client::Client;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PERIOD: Duration = Duration::from_secs(180);

/// Run until `stop`.
pub async fn run(c: Client, cache: Arc<Cache>, stop: CancellationToken) {
    tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
    let rt = kinds::SERVICES.resource_type();
    let Some(alloc) = c.reg.allocator(&rt) else {
        return;
    };
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
        let live: Vec<serde_json::Value> = cache
            .list("/registry/services/")
            .into_iter()
            .map(|(_, v)| std::sync::Arc::unwrap_or_clone(v))
            .collect();
        alloc.repair(&live).await;
    }
}

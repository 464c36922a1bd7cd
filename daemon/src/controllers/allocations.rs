//! The repair of Service allocations (cluster IPs, node ports), as
//! upstream's repair controllers: at the start of a leadership term and
//! every 3 minutes, what stored Services hold is claimed and claims
//! nobody holds are dropped (see `registry::ranges`).

use super::client::Client;
use super::runtime::{single, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use std::sync::Arc;
use std::time::Duration;

const PERIOD: Duration = Duration::from_secs(180);

/// The repair as a controller of one key, every [`PERIOD`].
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    Controller::new("service-allocations", move |_key: String| {
        let (c, cache) = (c.clone(), cache.clone());
        async move {
            let rt = kinds::SERVICES.resource_type();
            if let Some(alloc) = c.reg.allocator(&rt) {
                let live: Vec<serde_json::Value> = cache
                    .list(&kinds::SERVICES.prefix(None))
                    .into_iter()
                    .map(|(_, v)| std::sync::Arc::unwrap_or_clone(v))
                    .collect();
                alloc.repair(&live).await;
            }
            Ok(Requeue::After(PERIOD))
        }
    })
    .lists(single("services"), None)
}

//! What the kubelet's API answers from: the runtime, and the pods the
//! kubelet follows (its watch), found by namespace and name as the API's
//! paths name them, and the latest usage sample. Shared by every endpoint.

use super::desired::Desired;
use super::usage::Usage;
use crate::agent::runtime::cri::Cri;
use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

#[derive(Clone)]
pub struct Lookup {
    pub cri: Cri,
    pub desired: Arc<Desired>,
    /// Resource usage, sampled every housekeeping interval.
    pub usage: Arc<Usage>,
}

impl Lookup {
    /// The pod `ns/name` as the kubelet's watch last saw it.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.desired
            .snapshot()
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })
    }
}

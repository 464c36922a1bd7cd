//! Kubernetes values and rules both sides share: quantities, names, YAML
//! documents, where a pod fits (the scheduler's and the kubelet's
//! admission), which sysctls a pod may set, the kubelet's usage summary
//! and the metrics API's objects.

pub mod log_options;
pub mod metrics_api;
pub mod names;
pub mod placement;
pub mod quantity;
pub mod stats_summary;
pub mod sysctls;
pub mod yaml;

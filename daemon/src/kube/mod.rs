//! Kubernetes values and rules both sides share: quantities, names, YAML
//! documents, where a pod fits (the scheduler's and the kubelet's
//! admission), and which sysctls a pod may set.

pub mod log_options;
pub mod names;
pub mod placement;
pub mod quantity;
pub mod sysctls;
pub mod yaml;

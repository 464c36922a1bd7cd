//! Wire types shared by `rk3sd` and `rk3sctl`.
//!
//! Every message that crosses a process boundary is defined once here: the
//! admin-socket API (`admin`), the agent tunnel protocol (`tunnel`), route and
//! header constants (`routes`) and default filesystem paths (`paths`). Both
//! sides import these, so a field rename is a compile error, not a silent
//! protocol break.

pub mod admin;
pub mod paths;
pub mod routes;
pub mod tunnel;

/// The rk3s release, reported in node info, `/version` and `rk3sctl status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Kubernetes release whose API and kubelet rk3s implements.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";
pub const KUBE_PATCH: &str = "0";

/// `v1.32.0+rk3s.0.1.0`: the Kubernetes version with rk3s's own in the
/// build metadata, as K3s reports `v1.32.5+k3s1`. It is `/version`'s
/// gitVersion and every node's kubelet and kube-proxy version, so that
/// tools comparing versions with semver (kubectl's skew warning, Helm's
/// `semverCompare`, operators gating features) see Kubernetes 1.32.
pub fn kube_version() -> String {
    format!("v{KUBE_MAJOR}.{KUBE_MINOR}.{KUBE_PATCH}+rk3s.{VERSION}")
}

/// rk3s's own release as a node reports it (`rk3sctl node list`, the
/// node label [`VERSION_LABEL`] without the build part): `v0.1.0+rk3s`.
pub fn node_version() -> String {
    format!("v{VERSION}+rk3s")
}

/// The node label carrying the rk3s release the node runs (`v0.1.0`).
pub const VERSION_LABEL: &str = "rk3s.io/version";

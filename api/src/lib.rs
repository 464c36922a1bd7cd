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

/// The version string nodes report as their kubelet version (kubectl's
/// VERSION column), in the `v<semver>+rk3s` shape K3s uses.
pub fn node_version() -> String {
    format!("v{VERSION}+rk3s")
}

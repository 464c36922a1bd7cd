//! Values a kind's objects hold exclusively across the cluster (a
//! Service's cluster IP and node ports): claimed on the write path before
//! the object is stored, given back when it changes or goes. The registry
//! calls the allocator registered for a kind; the allocators live with
//! their kinds (`ranges` for Services).

use super::error::KubeError;
use serde_json::Value;

/// What one write claimed, to give back if the write fails.
#[derive(Debug, Default)]
pub struct Claims(pub Vec<String>);

#[async_trait::async_trait]
pub trait Allocate: Send + Sync {
    /// Fill in and claim what `obj` needs (`old` is the stored object on
    /// an update). An error leaves nothing claimed.
    async fn claim(&self, obj: &mut Value, old: Option<&Value>) -> Result<Claims, KubeError>;

    /// The write that made `claims` failed: give them back.
    async fn undo(&self, claims: Claims);

    /// `old` was replaced by `new` (`None`: removed): give back what only
    /// `old` held.
    async fn release(&self, old: &Value, new: Option<&Value>);

    /// Make the claims match `live`, every stored object of the kind.
    async fn repair(&self, live: &[Value]);
}

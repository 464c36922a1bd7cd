//! What nodes and servers prove themselves with: certificates and the
//! cluster CA, kubeconfigs, the join token, and node passwords.

pub mod certs;
pub mod kubeconfig;
pub mod nodepassword;
pub mod sealed;
pub mod token;

//! The Kubernetes API that kubectl talks to.

pub mod patch;
pub mod selectors;

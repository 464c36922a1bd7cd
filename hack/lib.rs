//! Empty on purpose: this crate only unifies dependency features across
//! the workspace (see `tools/unify-features`).

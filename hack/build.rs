// Empty: a build script makes cargo resolve this crate's build-dependencies,
// so proc-macros and build scripts also get the workspace's features.
fn main() {}

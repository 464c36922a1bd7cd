//! Builds the pause program (`pause/pause.c`) as a static executable; the
//! daemon embeds it and makes the pause image from it, so pod sandboxes
//! need no registry.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("pause");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg("pause/pause.c")
        .status()
        .unwrap_or_else(|e| {
            panic!("running {cc} for the pause program: {e} (install build-essential)")
        });
    assert!(
        status.success(),
        "{cc} could not build the static pause program (install build-essential: gcc and libc6-dev)"
    );
}

//! The manifests compiled into rk3sd (written to the manifests directory at
//! start, applied by `deploy`), and the names `--disable` accepts for them.

/// Manifests compiled into the binary: (file name, text).
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "rk3s-crds.yaml",
        include_str!("../../../manifests/rk3s-crds.yaml"),
    ),
    (
        "cluster-info.yaml",
        include_str!("../../../manifests/cluster-info.yaml"),
    ),
];

/// `--disable` values name bundled files with or without the extension.
pub fn disabled(name: &str, disable: &[String]) -> bool {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    disable.iter().any(|d| d == name || d == stem)
}

/// `--disable` values that name no bundled manifest: a typo to report.
pub fn unknown_disables(disable: &[String]) -> Vec<String> {
    disable
        .iter()
        .filter(|d| {
            !BUNDLED
                .iter()
                .any(|(n, _)| disabled(n, std::slice::from_ref(d)))
        })
        .cloned()
        .collect()
}

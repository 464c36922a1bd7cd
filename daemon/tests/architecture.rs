//! The shape of `daemon/src`, checked from its text (docs/architecture.md
//! says why each rule holds):
//! - the root holds the entry points and one folder per layer, and a
//!   layer imports only from its own or lower ones (the server nothing of
//!   the agent but its state);
//! - no import cycles between the modules of any folder, the root
//!   included (`crate::` and `super::` paths alike);
//! - every write of an API object goes through the registry; only
//!   liveness (Lease renewals, agents' Node status) takes
//!   `Objects::raw()` (and node password rotation), only in the modules
//!   that own them;
//! - outside the registry, kinds are named by their typed handles
//!   (`kinds::PODS`), not by `resource == "pods"` matches or
//!   `"/registry/..."` key literals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's module path: `registry/kinds.rs` → [registry, kinds].
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file's code without its test module (by convention the last item).
fn code(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    }
}

struct Source {
    rel: PathBuf,
    module: Vec<String>,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = src();
    let mut all = vec![];
    files(&root, &mut all);
    all.sort();
    all.into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_path_buf();
            let text = std::fs::read_to_string(&p).unwrap();
            Source {
                module: module_of(&rel),
                code: code(&text).to_string(),
                rel,
            }
        })
        .collect()
}

/// The modules a file's code names: `crate::a::b` and `super::x` paths,
/// resolved to absolute module paths (as deep as they go).
fn references(s: &Source) -> Vec<Vec<String>> {
    let ident = |t: &str| -> Vec<String> {
        t.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| {
                !p.is_empty() && p.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            })
            .collect()
    };
    let mut out = vec![];
    let text = &s.code;
    for (i, _) in text.match_indices("crate::") {
        out.push(ident(&text[i + "crate::".len()..]));
    }
    // `super::` from a file `a/b.rs` (module a::b) names siblings a::x;
    // from `a/mod.rs` (module a) it names the crate root's a's siblings.
    for (i, _) in text.match_indices("super::") {
        if text[..i].ends_with("super::") {
            continue;
        }
        let mut base = s.module.clone();
        base.pop();
        let mut rest = &text[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
        }
        let ups = (text[i..].len() - rest.len()) / "super::".len();
        for _ in 1..ups {
            base.pop();
        }
        // `use super::{a, b}` names several.
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(0);
            for item in group[..end].split(',') {
                let mut m = base.clone();
                m.extend(ident(item.trim()));
                out.push(m);
            }
        } else {
            let mut m = base.clone();
            m.extend(ident(rest));
            out.push(m);
        }
    }
    out
}

/// Cycles in `edges` (each cycle once, as its sorted member list).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components.
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(t: &mut T, v: &str) {
        t.index.insert(v.into(), t.next);
        t.low.insert(v.into(), t.next);
        t.next += 1;
        t.stack.push(v.into());
        t.on.insert(v.into());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v.into(), l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v.into(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = vec![];
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    let nodes: Vec<String> = edges.keys().cloned().collect();
    for v in nodes {
        if !t.index.contains_key(&v) {
            visit(&mut t, &v);
        }
    }
    t.out
}

/// Every import edge between modules: `crate::` and `super::` paths
/// resolved to the deepest module of the crate they name.
fn edges() -> Vec<(Vec<String>, Vec<String>)> {
    let all = sources();
    let known: BTreeSet<Vec<String>> = all.iter().map(|s| s.module.clone()).collect();
    let mut out = vec![];
    for s in &all {
        for r in references(s) {
            // The longest prefix of the path that is a module of the crate.
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|m| known.contains(m));
            if let Some(target) = target {
                out.push((s.module.clone(), target));
            }
        }
    }
    out
}

#[test]
fn no_import_cycles_between_modules_or_within_a_folder() {
    // In each folder (the crate root included), `f::a` → `f::b` when a
    // module under `f::a` names one under `f::b`.
    let mut folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in edges() {
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common < from.len() && common < to.len() {
            folders
                .entry(from[..common].join("::"))
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    let mut found = vec![];
    for (folder, edges) in &folders {
        for c in cycles(edges) {
            let folder = if folder.is_empty() { "crate" } else { folder };
            found.push(format!("{folder}: {}", c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The layers of `daemon/src`, lowest first; a module imports only from
/// its own layer or below (docs/architecture.md).
const LAYERS: &[&[&str]] = &[
    &["kube", "host", "streams"],
    &["datastore", "credentials"],
    &["registry"],
    &["auth", "apiserver", "controllers"],
    &["agent", "server"],
    &["admin", "config"],
];

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

#[test]
fn the_root_holds_entry_points_and_layers_that_only_point_down() {
    let mut found = vec![];
    for e in std::fs::read_dir(src()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let known = if e.path().is_dir() {
            layer(&name).is_some()
        } else {
            name == "lib.rs" || name == "main.rs"
        };
        if !known {
            found.push(format!(
                "{name}: neither an entry point nor a layer's folder"
            ));
        }
    }
    for (from, to) in edges() {
        let (Some(f), Some(t)) = (from.first(), to.first()) else {
            continue;
        };
        if let (Some(lf), Some(lt)) = (layer(f), layer(t)) {
            if lt > lf {
                found.push(format!(
                    "{} imports {} (a higher layer)",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
        // The server reads its own agent's state, and nothing else of it.
        if f == "server" && t == "agent" && to.get(1).map(String::as_str) != Some("state") {
            found.push(format!("{} imports {}", from.join("::"), to.join("::")));
        }
    }
    found.sort();
    found.dedup();
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

/// Where API objects may be written without the registry.
fn writes_allowed(rel: &Path) -> bool {
    rel.starts_with("registry") || rel.starts_with("datastore")
}

#[test]
fn every_write_goes_through_the_registry_but_the_named_raw_ones() {
    let mut raw = vec![];
    let mut liveness = BTreeSet::new();
    for s in sources() {
        if writes_allowed(&s.rel) {
            continue;
        }
        let flat: String = s.code.chars().filter(|c| !c.is_whitespace()).collect();
        for verb in ["create", "create_if_absent", "update", "modify", "delete"] {
            if flat.contains(&format!("objects.{verb}(")) {
                raw.push(format!("{}: objects.{verb}", s.rel.display()));
            }
        }
        if flat.contains(".raw().") {
            liveness.insert(s.rel.display().to_string());
        }
    }
    assert!(
        raw.is_empty(),
        "writes beside the registry:\n{}",
        raw.join("\n")
    );
    // The named raw writes: the Leases and Node status of liveness, and
    // node password rotation.
    let expected: BTreeSet<String> = [
        "server/cluster.rs",
        "server/lifecycle.rs",
        "server/nodepasswords.rs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        liveness, expected,
        "Objects::raw() callers changed: update docs/architecture.md and this list"
    );
}

#[test]
fn outside_the_registry_kinds_are_named_by_handles() {
    let mut found = vec![];
    for s in sources() {
        if writes_allowed(&s.rel) {
            continue;
        }
        for (n, line) in s.code.lines().enumerate() {
            let at = format!("{}:{}", s.rel.display(), n + 1);
            if line.contains("\"/registry/") {
                found.push(format!("{at}: key literal: {}", line.trim()));
            }
            let flat: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if flat.contains("resource==\"")
                || flat.contains("resource!=\"")
                || flat.contains("resource.as_str()")
            {
                found.push(format!("{at}: kind-name match: {}", line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_cycles() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            m.entry(a.to_string()).or_default().insert(b.to_string());
        }
        m
    };
    assert!(cycles(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    assert_eq!(
        cycles(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    // `super::` from a file names its siblings, `crate::` the crate's.
    let s = Source {
        rel: "registry/kinds.rs".into(),
        module: vec!["registry".into(), "kinds".into()],
        code: "use super::{crd, resource::Builtin};\nuse crate::objects::prefix;".into(),
    };
    let refs = references(&s);
    for want in [
        &["registry", "crd"][..],
        &["registry", "resource"],
        &["objects", "prefix"],
    ] {
        let want: Vec<String> = want.iter().map(|x| x.to_string()).collect();
        assert!(
            refs.iter().any(|r| r.starts_with(&want)),
            "{want:?} not in {refs:?}"
        );
    }
}

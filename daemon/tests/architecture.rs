//! The shape of `daemon/src`, checked from its text (docs/architecture.md
//! says why each rule holds):
//! - no import cycles between top-level modules, nor between the modules
//!   of one folder (`crate::` and `super::` paths alike);
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

#[test]
fn no_import_cycles_between_modules_or_within_a_folder() {
    let all = sources();
    let known: BTreeSet<Vec<String>> = all.iter().map(|s| s.module.clone()).collect();
    // Top level: `a` → `b` when a file under `a` names `b`.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Within a folder `f`: `f::a` → `f::b`.
    let mut inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for s in &all {
        let Some(from_top) = s.module.first() else {
            continue;
        };
        for r in references(s) {
            // The longest prefix of the path that is a module of the crate.
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|m| known.contains(m));
            let Some(target) = target else { continue };
            let to_top = &target[0];
            if to_top != from_top {
                top.entry(from_top.clone())
                    .or_default()
                    .insert(to_top.clone());
            } else if s.module.len() >= 2 && target.len() >= 2 && s.module[1] != target[1] {
                inner
                    .entry(from_top.clone())
                    .or_default()
                    .entry(s.module[1].clone())
                    .or_default()
                    .insert(target[1].clone());
            }
        }
    }
    let mut found = vec![];
    for c in cycles(&top) {
        found.push(format!("crate: {}", c.join(" <-> ")));
    }
    for (folder, edges) in &inner {
        for c in cycles(edges) {
            found.push(format!("{folder}: {}", c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// Where API objects may be written without the registry.
fn writes_allowed(rel: &Path) -> bool {
    rel.starts_with("registry") || rel.starts_with("datastore") || rel == Path::new("objects.rs")
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
    let expected: BTreeSet<String> = ["cluster.rs", "lifecycle.rs", "nodepassword/secrets.rs"]
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

//! Manifest files on disk: which files count, what their Addon is called,
//! and the objects they hold.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One manifest file found in the directory.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub addon: String,
    pub content: Vec<u8>,
    /// SHA-256 of the content, hex.
    pub checksum: String,
}

fn is_manifest(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The Addon name of a file: its path under the directory without the
/// extension, `/` turned into `-`, lowercased, anything else a Kubernetes
/// name cannot hold turned into `-`.
pub fn addon_name(rel: &Path) -> String {
    let text = rel.to_string_lossy();
    let stem = match text.rfind('.') {
        Some(i) if i > 0 => &text[..i],
        _ => &text,
    };
    let mut name: String = stem
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    name.truncate(253);
    name
}

pub fn checksum(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Every manifest under `dir`, recursively, sorted by path. Dotfiles and
/// dot-directories are ignored; `X.skip` beside `X` disables `X`.
pub fn scan(dir: &Path) -> Vec<ManifestFile> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if !is_manifest(&name) || d.join(format!("{name}.skip")).exists() {
                continue;
            }
            let Ok(content) = std::fs::read(&path) else {
                continue;
            };
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            out.push(ManifestFile {
                addon: addon_name(rel),
                checksum: checksum(&content),
                path,
                content,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The objects of a file, in order: multi-document YAML (or JSON), empty
/// and comment-only documents skipped, `kind: List` expanded. An error
/// names the document (1-based).
pub fn parse(content: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(content).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut out = Vec::new();
    for doc in crate::kube::yaml::documents(text) {
        let n = doc.number;
        let v = crate::kube::yaml::parse_document(doc.text, doc.line_offset)
            .map_err(|e| format!("document {n}: {e}"))?;
        match v {
            Value::Null => continue,
            Value::Object(_) => {}
            _ => {
                return Err(format!(
                    "document {n}: expected an object (apiVersion, kind, metadata...)"
                ))
            }
        }
        if v["kind"] == "List"
            || v["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("List") && v.get("items").is_some())
        {
            for item in v["items"].as_array().into_iter().flatten() {
                if !item.is_object() {
                    return Err(format!("document {n}: a List item is not an object"));
                }
                out.push((n, item.clone()));
            }
        } else {
            out.push((n, v));
        }
    }
    for (n, obj) in &out {
        if obj["apiVersion"].as_str().unwrap_or("").is_empty()
            || obj["kind"].as_str().unwrap_or("").is_empty()
        {
            return Err(format!("document {n}: apiVersion and kind are required"));
        }
    }
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// Apply order: Namespaces, then CRDs, then everything else (stable), so
/// objects find their namespace and their kind.
pub fn order(objects: &mut [Value]) {
    objects.sort_by_key(|o| match o["kind"].as_str() {
        Some("Namespace") => 0,
        Some("CustomResourceDefinition") => 1,
        _ => 2,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_path() {
        assert_eq!(addon_name(Path::new("traefik.yaml")), "traefik");
        assert_eq!(addon_name(Path::new("apps/Web_App.YML")), "apps-web-app");
        assert_eq!(addon_name(Path::new("a.b.json")), "a.b");
    }

    #[test]
    fn documents_lists_and_errors() {
        let text = b"# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: c}}\n";
        let objs = parse(text).unwrap();
        let names: Vec<&str> = objs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let mut objs = objs;
        order(&mut objs);
        assert_eq!(objs[0]["kind"], "Namespace");
        let e = parse(b"apiVersion: v1\nkind: ConfigMap\n---\nkey: [unclosed\n").unwrap_err();
        assert!(e.starts_with("document 2:"), "{e}");
        let e = parse(b"kind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
        assert!(e.contains("document 1: apiVersion"), "{e}");
    }

    #[test]
    fn scan_skips_dotfiles_skip_markers_and_other_extensions() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str| {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        };
        for p in [
            "a.yaml",
            "b.JSON",
            ".hidden.yaml",
            "c.yaml",
            "c.yaml.skip",
            "notes.txt",
            "sub/d.yml",
            ".git/e.yaml",
        ] {
            w(p);
        }
        let found: Vec<String> = scan(d.path()).into_iter().map(|f| f.addon).collect();
        assert_eq!(found, ["a", "b", "sub-d"]);
    }
}

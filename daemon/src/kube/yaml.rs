//! YAML in, as JSON values: manifests on disk and server-side apply bodies.
//! serde-saphyr replaces the deprecated serde_yaml: it is pure Rust, aims to
//! be panic-free on any input and enforces a budget on aliases and nesting,
//! which matters for bytes that come from the network.
//!
//! Multi-document streams are split here, at the `---` / `...` markers that
//! YAML only allows at the start of a line, so each document keeps its own
//! number (1-based, as kubectl names them) and its errors their real line.

use serde_json::Value;
use serde_saphyr::{render_options, SnippetMode};

/// One document of a stream.
pub struct Document<'a> {
    /// 1-based, counting only documents that hold something.
    pub number: usize,
    /// Lines before this document in the stream.
    pub line_offset: usize,
    pub text: &'a str,
}

fn is_marker(line: &str) -> bool {
    ["---", "..."].iter().any(|m| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    })
}

/// Whether a piece of text has anything besides blank lines, comments,
/// directives and bare markers.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = if is_marker(l) { &l[3..] } else { l }.trim();
        !t.is_empty() && !t.starts_with('#') && !l.starts_with('%')
    })
}

/// The documents of a stream. Text before the first marker is a document
/// only if it holds something (comments and directives before `---` are
/// the stream's, not a document's).
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs: Vec<Document<'_>> = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0usize;
    let mut explicit = false; // the current piece began at a `---`
    let mut pos = 0usize;
    let mut push = |from: usize, to: usize, line: usize, explicit: bool| {
        let piece = &text[from..to];
        if explicit || has_content(piece) {
            docs.push(Document {
                number: docs.len() + 1,
                line_offset: line,
                text: piece,
            });
        }
    };
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line) {
            if pos > 0 {
                push(start, pos, start_line, explicit);
            }
            start = pos;
            start_line = line_no;
            explicit = line.starts_with("---");
        }
        pos += line.len();
    }
    if start < text.len() {
        push(start, text.len(), start_line, explicit);
    }
    docs
}

/// Parse one document. `line_offset` makes the line in an error the line
/// in the whole stream. An empty document is `null`.
pub fn parse_document(text: &str, line_offset: usize) -> Result<Value, String> {
    if !has_content(text) {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Option<Value>>(text)
        .map(|v| v.unwrap_or(Value::Null))
        .map_err(|e| {
            e.render_with_options(render_options! {
                snippets: SnippetMode::Off,
                line_offset: line_offset as u64,
            })
            .replace('\n', " ")
        })
}

/// Parse a body that must be one document (a server-side apply patch).
pub fn from_slice(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    match documents(text).as_slice() {
        [] => Ok(Value::Null),
        [one] => parse_document(one.text, one.line_offset),
        more => Err(format!(
            "expected one YAML document, found {} (a `---` at line {})",
            more.len(),
            more[1].line_offset + 1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_numbered_and_keep_their_lines() {
        let text = "# a comment\n---\na: 1\n---\n---\nb: [1, 2]\n...\n";
        let docs = documents(text);
        let parsed: Vec<Value> = docs
            .iter()
            .map(|d| parse_document(d.text, d.line_offset).unwrap())
            .collect();
        assert_eq!(parsed, [json!({"a": 1}), Value::Null, json!({"b": [1, 2]})]);
        assert_eq!(docs[2].number, 3);
        assert_eq!(docs[2].line_offset, 4);
    }

    #[test]
    fn an_error_names_the_line_in_the_whole_stream() {
        let text = "a: 1\n---\nkey: [unclosed\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        let e = parse_document(docs[1].text, docs[1].line_offset).unwrap_err();
        assert!(e.contains('3') && !e.contains('\n'), "{e}");
    }

    #[test]
    fn json_is_yaml_and_markers_need_a_line_start() {
        assert_eq!(
            from_slice(br#"{"a": "--- b"}"#).unwrap(),
            json!({"a": "--- b"})
        );
        assert_eq!(
            from_slice(b"a: |\n  text\n  ---x\n").unwrap(),
            json!({"a": "text\n---x\n"})
        );
        assert!(from_slice(b"a: 1\n---\nb: 2\n")
            .unwrap_err()
            .contains("line 2"));
        assert_eq!(from_slice(b"").unwrap(), Value::Null);
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb += &format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n");
        }
        assert!(from_slice(bomb.as_bytes()).is_err());
    }
}

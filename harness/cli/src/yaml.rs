//! YAML output for the generated Envoy bootstraps and Istio resources.
//!
//! A small emitter over an order-preserving JSON tree ([`Node`]) rather than a YAML library:
//! the output must keep the user's configuration key order (Istio's `pluginConfig`), embed the
//! filter configuration text byte for byte (Envoy's `configuration.value`, written as a literal
//! block scalar), and be stable for golden tests. Every scalar that YAML could read as something
//! else (`yes`, `3600s`, `0.5`, `@type`, `a: b`) is double-quoted with JSON escapes, which YAML's
//! double-quoted style shares.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    /// Parses JSON text, keeping key order. Duplicate keys are an error: YAML forbids them and
    /// JSON parsers disagree on which one wins.
    pub fn parse_json(text: &str) -> Result<Node, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let node = Node::deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(node)
    }

    /// Converts a `serde_json::Value` (whose objects are sorted by key). `name` and `@type` come
    /// first in every object, as people write Envoy configs; the other keys stay sorted.
    pub fn from_value(value: &serde_json::Value) -> Node {
        match value {
            serde_json::Value::Null => Node::Null,
            serde_json::Value::Bool(flag) => Node::Bool(*flag),
            serde_json::Value::Number(number) => Node::Number(number.clone()),
            serde_json::Value::String(text) => Node::String(text.clone()),
            serde_json::Value::Array(items) => {
                Node::Array(items.iter().map(Node::from_value).collect())
            }
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, Node)> = map
                    .iter()
                    .map(|(key, value)| (key.clone(), Node::from_value(value)))
                    .collect();
                entries.sort_by_key(|(key, _)| match key.as_str() {
                    "@type" => 0,
                    "name" => 1,
                    _ => 2,
                });
                Node::Object(entries)
            }
        }
    }

    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(entries) => entries
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// Calls `visit` on this node and every node below it.
    pub fn walk(&self, visit: &mut dyn FnMut(&Node)) {
        visit(self);
        match self {
            Node::Array(items) => items.iter().for_each(|item| item.walk(visit)),
            Node::Object(entries) => entries.iter().for_each(|(_, value)| value.walk(visit)),
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Node, E> {
        Ok(Node::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(value)
            .map(Node::Number)
            .ok_or_else(|| E::custom("a number JSON cannot represent"))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Node, E> {
        Ok(Node::String(value.to_string()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Node, E> {
        Ok(Node::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(existing, _)| *existing == key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Object(entries))
    }
}

/// A YAML document (block style, two-space indentation) for `node`.
pub fn to_yaml(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Object(entries) if !entries.is_empty() => write_mapping(&mut out, entries, 0, false),
        Node::Array(items) if !items.is_empty() => write_sequence(&mut out, items, 0),
        other => write_after_indicator(&mut out, other, 0, false),
    }
    out
}

/// Writes `entries` as `key: value` lines at `indent`. With `inline_first`, the first key
/// continues the current line (after a sequence's `- `).
fn write_mapping(out: &mut String, entries: &[(String, Node)], indent: usize, inline_first: bool) {
    for (index, (key, value)) in entries.iter().enumerate() {
        if index > 0 || !inline_first {
            push_indent(out, indent);
        }
        out.push_str(&scalar_string(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

/// Writes `- item` lines at `indent`.
fn write_sequence(out: &mut String, items: &[Node], indent: usize) {
    for item in items {
        push_indent(out, indent);
        out.push('-');
        match item {
            Node::Object(entries) if !entries.is_empty() => {
                out.push(' ');
                write_mapping(out, entries, indent + 2, true);
            }
            Node::Array(nested) if !nested.is_empty() => {
                out.push('\n');
                write_sequence(out, nested, indent + 2);
            }
            scalar => write_after_indicator(out, scalar, indent, true),
        }
    }
}

/// Writes the value of a mapping key whose line is at `indent` (the `:` is written).
fn write_value(out: &mut String, value: &Node, indent: usize) {
    match value {
        Node::Object(entries) if !entries.is_empty() => {
            out.push('\n');
            write_mapping(out, entries, indent + 2, false);
        }
        Node::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_sequence(out, items, indent + 2);
        }
        scalar => write_after_indicator(out, scalar, indent, false),
    }
}

/// Writes a scalar (or an empty collection) after `key:` or `-`, ending the line. Multi-line
/// strings become literal block scalars indented under the line at `indent` (in a sequence, only
/// when no indentation indicator is needed: its base differs there, so such rare strings are
/// double-quoted instead).
fn write_after_indicator(out: &mut String, node: &Node, indent: usize, in_sequence: bool) {
    if indent == 0 && out.is_empty() {
        // A document that is a bare scalar.
        out.push_str(&inline_scalar(node));
        out.push('\n');
        return;
    }
    if let Node::String(text) = node {
        if let Some(block) = literal_block(text, indent + 2) {
            if !(in_sequence && block.starts_with(" |2")) {
                out.push_str(&block);
                return;
            }
        }
    }
    out.push(' ');
    out.push_str(&inline_scalar(node));
    out.push('\n');
}

fn inline_scalar(node: &Node) -> String {
    match node {
        Node::Null => "null".to_string(),
        Node::Bool(flag) => flag.to_string(),
        Node::Number(number) => number.to_string(),
        Node::String(text) => scalar_string(text),
        Node::Array(_) => "[]".to_string(),
        Node::Object(_) => "{}".to_string(),
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A string as a plain scalar when YAML reads it back as that same string, else double-quoted.
fn scalar_string(text: &str) -> String {
    if is_plain_safe(text) {
        text.to_string()
    } else {
        // JSON string escapes are valid in YAML's double-quoted style.
        serde_json::Value::String(text.to_string()).to_string()
    }
}

fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let reserved_start = "-?:,[]{}#&*!|>'\"%@`+.0123456789 \t";
    let ambiguous = [
        "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    !reserved_start.contains(first)
        && !text.ends_with(' ')
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.chars().any(|c| c.is_control() || c == '\u{feff}')
        && !ambiguous.contains(&text.to_ascii_lowercase().as_str())
}

/// The string as a literal block scalar (`|`, `|-` or `|+`, with an indentation indicator when
/// the first line starts with a space), content indented by `indent`; `None` when a literal
/// block cannot carry it exactly (no line break, control characters, nothing but line breaks).
fn literal_block(text: &str, indent: usize) -> Option<String> {
    if !text.contains('\n')
        || text
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
        || text
            .chars()
            .any(|c| matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}'))
    {
        return None;
    }
    let body = text.trim_end_matches('\n');
    if body.is_empty() {
        return None;
    }
    let trailing_breaks = text.len() - body.len();
    let chomping = match trailing_breaks {
        0 => "-",
        1 => "",
        _ => "+",
    };
    // YAML infers the indentation from the first non-empty line; a leading space (or a leading
    // empty line) would mislead it, so the indentation is then given explicitly (relative to the
    // parent, which is `indent - 2`).
    let needs_indicator = body.starts_with(' ') || body.starts_with('\n') || body.starts_with('\t');
    let mut out = String::from(" |");
    if needs_indicator {
        out.push('2');
    }
    out.push_str(chomping);
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            push_indent(&mut out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing_breaks {
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_rejects_duplicate_keys() {
        let node = Node::parse_json(r#"{"b": 1, "a": {"z": true, "x": null}}"#).unwrap();
        assert_eq!(to_yaml(&node), "b: 1\na:\n  z: true\n  x: null\n");

        let error = Node::parse_json(r#"{"a": 1, "a": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("duplicate key `a`"), "{error}");
    }

    #[test]
    fn quotes_every_scalar_yaml_would_read_differently() {
        let node = Node::parse_json(
            r#"{"@type": "x", "d": "3600s", "b": "yes", "n": "null", "On": 1, "c": "a: b", "e": "",
                "t": "x #y", "p": "type.googleapis.com/envoy.Foo", "neg": "-1", "dot": ".5"}"#,
        )
        .unwrap();
        assert_eq!(
            to_yaml(&node),
            "\"@type\": x\nd: \"3600s\"\nb: \"yes\"\n\"n\": \"null\"\n\"On\": 1\nc: \"a: b\"\ne: \"\"\n\
             t: \"x #y\"\np: type.googleapis.com/envoy.Foo\nneg: \"-1\"\ndot: \".5\"\n"
        );
    }

    #[test]
    fn sequences_of_mappings_and_empty_collections() {
        let node =
            Node::parse_json(r#"{"l": [{"a": 1, "b": [2, 3]}, "s", [], {}], "e": {}}"#).unwrap();
        assert_eq!(
            to_yaml(&node),
            "l:\n  - a: 1\n    b:\n      - 2\n      - 3\n  - s\n  - []\n  - {}\ne: {}\n"
        );
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_with_the_right_chomping() {
        let cases = [
            ("{\n  \"a\": 1\n}\n", "v: |\n  {\n    \"a\": 1\n  }\n"),
            ("x\ny", "v: |-\n  x\n  y\n"),
            ("x\n\ny\n\n\n", "v: |+\n  x\n\n  y\n\n\n"),
            ("  lead\nnext\n", "v: |2\n    lead\n  next\n"),
        ];
        for (text, expected) in cases {
            let node = Node::Object(vec![("v".to_string(), Node::String(text.to_string()))]);
            assert_eq!(to_yaml(&node), expected, "for {text:?}");
        }
        // Only line breaks, or a carriage return: a literal block cannot carry them exactly.
        for text in ["\n\n", "a\r\nb"] {
            let node = Node::Object(vec![("v".to_string(), Node::String(text.to_string()))]);
            let expected = format!("v: {}\n", serde_json::Value::String(text.to_string()));
            assert_eq!(to_yaml(&node), expected);
        }
    }

    #[test]
    fn envoy_style_objects_put_type_and_name_first() {
        let value = serde_json::json!({"z": 1, "name": "nm", "@type": "t"});
        assert_eq!(
            to_yaml(&Node::from_value(&value)),
            "\"@type\": t\nname: nm\nz: 1\n"
        );
    }
}

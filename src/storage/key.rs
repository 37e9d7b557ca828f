//! Keys of entries: `json.dumps([metric_name, name, labels, help], sort_keys=True)`.

/// Appends `s` as a JSON string the way Python's `json.dumps` writes it
/// (`ensure_ascii=True`), so that keys match prometheus_client's byte for byte.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The key of one sample. `labels` need not be sorted; they are written sorted.
pub fn encode(metric_name: &str, sample_name: &str, labels: &[(&str, &str)], help: &str) -> String {
    let mut sorted: Vec<&(&str, &str)> = labels.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(128);
    out.push('[');
    push_json_str(&mut out, metric_name);
    out.push_str(", ");
    push_json_str(&mut out, sample_name);
    out.push_str(", {");
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_str(&mut out, k);
        out.push_str(": ");
        push_json_str(&mut out, v);
    }
    out.push_str("}, ");
    push_json_str(&mut out, help);
    out.push(']');
    out
}

/// A key read back from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedKey {
    /// The family's name.
    pub metric_name: String,
    /// The sample's name, suffix included.
    pub sample_name: String,
    /// Sorted by label name, as prometheus_client's reader sorts them.
    pub labels: Vec<(String, String)>,
    /// The family's help text.
    pub help: String,
}

/// Parses a key; `None` for anything that is not the four-element form.
pub fn parse(key: &str) -> Option<ParsedKey> {
    let value: serde_json::Value = serde_json::from_str(key).ok()?;
    let items = value.as_array()?;
    if items.len() != 4 {
        return None;
    }
    let mut labels: Vec<(String, String)> = items[2]
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect::<Option<_>>()?;
    labels.sort();
    Some(ParsedKey {
        metric_name: items[0].as_str()?.to_owned(),
        sample_name: items[1].as_str()?.to_owned(),
        labels,
        help: items[3].as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_python_json_dumps_sort_keys() {
        let key = encode("a", "a_total", &[("z", "1"), ("m", "GET")], "Help \"x\"\n");
        assert_eq!(
            key,
            r#"["a", "a_total", {"m": "GET", "z": "1"}, "Help \"x\"\n"]"#
        );
    }

    #[test]
    fn escapes_non_ascii_as_utf16_units() {
        let mut s = String::new();
        push_json_str(&mut s, "é😀\u{1}");
        assert_eq!(s, r#""\u00e9\ud83d\ude00\u0001""#);
    }

    #[test]
    fn parse_round_trips_and_sorts_labels() {
        let key = encode("m", "m_sum", &[("b", "2"), ("a", "1")], "h");
        let parsed = parse(&key).unwrap();
        assert_eq!(
            parsed.labels,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(parsed.sample_name, "m_sum");
    }

    #[test]
    fn parse_rejects_foreign_shapes() {
        assert!(parse("[1, 2, 3]").is_none());
        assert!(parse(r#"["a", "b", {"x": 1}, "h"]"#).is_none());
        assert!(parse("not json").is_none());
    }
}

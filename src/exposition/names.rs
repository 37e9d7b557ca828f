//! Metric and label names as prometheus_client 0.26 writes them by default
//! (`escaping=underscores`): a name outside the classic character set has
//! each offending character replaced by `_`, so the output always parses.
//! The check is strict where prometheus_client's regex lets a trailing
//! newline through.

fn is_label_rune(c: char, i: usize) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (c.is_ascii_digit() && i > 0)
}

fn is_metric_rune(c: char, i: usize) -> bool {
    is_label_rune(c, i) || c == ':'
}

fn push_escaped(out: &mut String, name: &str, valid: fn(char, usize) -> bool) {
    // Python indexes characters, not bytes: a digit is allowed after any character.
    if name.chars().enumerate().all(|(i, c)| valid(c, i)) {
        out.push_str(name);
        return;
    }
    out.extend(
        name.chars()
            .enumerate()
            .map(|(i, c)| if valid(c, i) { c } else { '_' }),
    );
}

/// A metric (family or sample) name.
pub fn push_metric_name(out: &mut String, name: &str) {
    push_escaped(out, name, is_metric_rune);
}

/// A label name.
pub fn push_label_name(out: &mut String, name: &str) {
    push_escaped(out, name, is_label_rune);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str) -> String {
        let mut s = String::new();
        push_metric_name(&mut s, name);
        s
    }

    fn label(name: &str) -> String {
        let mut s = String::new();
        push_label_name(&mut s, name);
        s
    }

    #[test]
    fn classic_names_are_written_as_they_are() {
        assert_eq!(metric("http_requests_total"), "http_requests_total");
        assert_eq!(metric("job:rate5m"), "job:rate5m");
        assert_eq!(label("__name"), "__name");
    }

    #[test]
    fn other_characters_become_underscores_one_per_character() {
        assert_eq!(
            metric("http.server.requests_total"),
            "http_server_requests_total"
        );
        assert_eq!(metric("9lives"), "_lives");
        assert_eq!(metric("größe"), "gr__e");
        assert_eq!(metric("a\nb"), "a_b");
        assert_eq!(label("http.method"), "http_method");
        assert_eq!(label("a:b"), "a_b");
        assert_eq!(label("0x"), "_x");
    }
}

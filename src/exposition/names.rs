//! Metric and label names as prometheus_client 0.26 writes them by default
//! (`escaping=underscores`): a name outside the classic character set has
//! each offending character replaced by `_`, so the output always parses.
//! The check is strict where prometheus_client's regex lets a trailing
//! newline through.

#[inline]
fn is_label_rune(c: char, i: usize) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (c.is_ascii_digit() && i > 0)
}

#[inline]
fn is_metric_rune(c: char, i: usize) -> bool {
    is_label_rune(c, i) || c == ':'
}

const LABEL: u8 = 1;
const METRIC: u8 = 2;
const DIGIT: u8 = 4;

/// Per byte: `LABEL` if valid in a label name anywhere, `METRIC` if valid in
/// a metric name anywhere; `DIGIT` if valid in both, but not first.
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() || c == b'_' {
            LABEL | METRIC
        } else if c == b':' {
            METRIC
        } else if c.is_ascii_digit() {
            DIGIT
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Whether `name` is all ASCII and valid as a name of `class`.
#[inline]
fn all_valid(name: &str, class: u8) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return true;
    };
    CLASSES[first as usize] & class != 0
        && rest
            .iter()
            .all(|&b| CLASSES[b as usize] & (class | DIGIT) != 0)
}

/// `class`: `LABEL` or `METRIC`, checked by table; `valid` says the same of
/// a character at an index, for a name that needs escaping.
#[inline]
fn push_escaped(out: &mut String, name: &str, class: u8, valid: fn(char, usize) -> bool) {
    // Python indexes characters, not bytes: a digit is allowed after any character.
    if all_valid(name, class) {
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
    push_escaped(out, name, METRIC, is_metric_rune);
}

/// A label name.
pub fn push_label_name(out: &mut String, name: &str) {
    push_escaped(out, name, LABEL, is_label_rune);
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

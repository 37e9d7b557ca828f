//! The Prometheus text format 0.0.4, written as prometheus_client's
//! `generate_latest` writes it.

use super::names::{push_label_name, push_metric_name};
use crate::model::{Family, Kind};
use crate::storage::float::push_go_float;

/// Content-Type of a text 0.0.4 body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn push_escaped(out: &mut String, s: &str, quote: bool) {
    if !s
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `{k="v",...}`, nothing for no labels; shared with OpenMetrics.
pub fn push_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut labels = labels.peekable();
    if labels.peek().is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_label_name(out, k);
        out.push_str("=\"");
        push_escaped(out, v, true);
        out.push('"');
    }
    out.push('}');
}

/// Appends the families to `out`.
pub fn encode(families: &[Family], out: &mut String) {
    for family in families {
        let total;
        let name = if family.kind == Kind::Counter {
            total = format!("{}_total", family.name);
            &total
        } else {
            &family.name
        };
        out.push_str("# HELP ");
        push_metric_name(out, name);
        out.push(' ');
        push_escaped(out, &family.help, false);
        out.push_str("\n# TYPE ");
        push_metric_name(out, name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        for sample in &family.samples {
            push_metric_name(out, &sample.name);
            push_labels(out, sample.label_pairs());
            out.push(' ');
            push_go_float(out, sample.value);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_counter_with_total_suffix_and_escapes() {
        let mut f = Family::new("req", "Requests \\ seen\nok", Kind::Counter);
        f.push("_total", vec![("path".into(), "a\"b\\c\nd".into())], 3.0);
        let mut out = String::new();
        encode(&[f], &mut out);
        assert_eq!(
            out,
            "# HELP req_total Requests \\\\ seen\\nok\n# TYPE req_total counter\n\
             req_total{path=\"a\\\"b\\\\c\\nd\"} 3.0\n"
        );
    }

    #[test]
    fn names_outside_the_classic_set_are_escaped_as_prometheus_client_does() {
        let mut f = Family::new("http.server.requests", "h", Kind::Counter);
        f.push(
            "_total",
            vec![("http.request.method".into(), "GET".into())],
            1.0,
        );
        let mut out = String::new();
        encode(&[f], &mut out);
        assert_eq!(
            out,
            "# HELP http_server_requests_total h\n# TYPE http_server_requests_total counter\n\
             http_server_requests_total{http_request_method=\"GET\"} 1.0\n"
        );
    }
}

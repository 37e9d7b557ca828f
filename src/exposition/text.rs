//! The Prometheus text format 0.0.4, written as prometheus_client's
//! `generate_latest` writes it.

use super::names::{push_label_name, push_metric_name};
use std::sync::Arc;

use crate::model::{Family, Kind, Labels, Sample};
use crate::storage::float::push_go_float;

/// Content-Type of a text 0.0.4 body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn push_escaped(out: &mut String, s: &str, quote: bool) {
    // Bytes that need escaping: 1 always, 2 in a quoted label value.
    const SPECIAL: [u8; 256] = {
        let mut t = [0u8; 256];
        t[b'\\' as usize] = 1;
        t[b'\n' as usize] = 1;
        t[b'"' as usize] = 2;
        t
    };
    let mask = if quote { 3 } else { 1 };
    if !s.bytes().any(|b| SPECIAL[b as usize] & mask != 0) {
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
    push_pairs(out, labels);
    out.push('}');
}

/// Writes the labels of samples one after the other, rendering a label set
/// once for the samples that share it (a series' samples are contiguous and
/// share one `Arc<Labels>`): most of a scrape's bytes are labels.
#[derive(Default)]
pub struct SampleLabels {
    /// The label set rendered last (compared by address only, never read).
    last: Option<*const Labels>,
    /// Its labels, `k="v",...`, without braces.
    rendered: String,
}

impl SampleLabels {
    /// `{k="v",...}` of `sample`, its extra label last; nothing for no labels.
    pub fn push(&mut self, out: &mut String, sample: &Sample) {
        let set = Arc::as_ptr(&sample.labels);
        if self.last != Some(set) {
            self.rendered.clear();
            push_pairs(
                &mut self.rendered,
                sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            self.last = Some(set);
        }
        if self.rendered.is_empty() && sample.extra.is_none() {
            return;
        }
        out.push('{');
        out.push_str(&self.rendered);
        if let Some((k, v)) = &sample.extra {
            if !self.rendered.is_empty() {
                out.push(',');
            }
            push_pairs(out, std::iter::once((*k, v.as_ref())));
        }
        out.push('}');
    }
}

/// `k="v",...`
fn push_pairs<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_label_name(out, k);
        out.push_str("=\"");
        push_escaped(out, v, true);
        out.push('"');
    }
}

/// Appends the families to `out`.
pub fn encode(families: &[Family], out: &mut String) {
    let mut labels = SampleLabels::default();
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
            labels.push(out, sample);
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

//! The Prometheus text format 0.0.4, written as prometheus_client's
//! `generate_latest` writes it.

use super::names::{push_label_name, push_metric_name};
use std::sync::Arc;

use rustc_hash::FxHashMap;

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

/// Label sets rendered once (`k="v",...`, without braces) and kept across
/// scrapes: most of a scrape's bytes are labels, and a series keeps its
/// label set (the aggregator interns them) for as long as it lives.
#[derive(Default)]
pub struct LabelCache {
    /// By the address of the set; the `Arc` kept here keeps that address
    /// from being reused by another set.
    rendered: FxHashMap<usize, (Arc<Labels>, Box<str>)>,
    /// Label sets asked for since `end_scrape` (a set asked for by several
    /// series is counted for each).
    asked: usize,
    last: usize,
}

impl LabelCache {
    /// `{k="v",...}` of `sample`, its extra label last; nothing for no labels.
    pub fn push(&mut self, out: &mut String, sample: &Sample) {
        let key = Arc::as_ptr(&sample.labels) as usize;
        if key != self.last {
            self.asked += 1;
            self.last = key;
        }
        let rendered = &*self
            .rendered
            .entry(key)
            .or_insert_with(|| {
                let mut text = String::new();
                push_pairs(
                    &mut text,
                    sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                );
                (Arc::clone(&sample.labels), text.into())
            })
            .1;
        if rendered.is_empty() && sample.extra.is_none() {
            return;
        }
        out.push('{');
        out.push_str(rendered);
        if let Some((k, v)) = &sample.extra {
            if !rendered.is_empty() {
                out.push(',');
            }
            push_pairs(out, std::iter::once((*k, v.as_ref())));
        }
        out.push('}');
    }

    /// Ends a scrape: the sets of series gone are forgotten once they are most.
    pub fn end_scrape(&mut self) {
        if self.rendered.len() > 2 * self.asked + 1024 {
            self.rendered.clear();
        }
        (self.asked, self.last) = (0, 0);
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
#[cfg(test)]
pub fn encode(families: &[Family], out: &mut String) {
    encode_with(families, &mut LabelCache::default(), out)
}

/// Appends the families to `out`, with label sets rendered before in `labels`.
pub fn encode_with(families: &[Family], labels: &mut LabelCache, out: &mut String) {
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

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
    /// Text lines' beginnings (`name{labels} `), by the addresses of the
    /// sample's name, label set and extra label (the aggregator interns all
    /// three, so they stay the same across scrapes).
    lines: FxHashMap<[usize; 4], LineStart>,
    /// Lines asked for since `end_scrape`.
    asked_lines: usize,
    /// The lines of the last scrape, in the order asked, one after the other:
    /// a scrape that asks for the same lines in the same order (the steady
    /// state) reads them front to back, without a lookup in `lines`.
    sequence: LineSequence,
    /// Label sets asked for since `end_scrape` (a set asked for by several
    /// series is counted for each).
    asked: usize,
    last: usize,
}

impl LabelCache {
    /// `{k="v",...}` of `sample`, its extra label last; nothing for no labels.
    pub fn push(&mut self, out: &mut String, sample: &Sample) {
        let rendered = self.rendered(sample);
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

    /// `{k="v",...}` of `sample`'s label set alone (its extra label left
    /// out); nothing for no labels.
    pub fn push_set(&mut self, out: &mut String, sample: &Sample) {
        let rendered = self.rendered(sample);
        if !rendered.is_empty() {
            out.push('{');
            out.push_str(rendered);
            out.push('}');
        }
    }

    /// `name{labels} ` of `sample`: what its text line holds before the value.
    pub fn push_line_start(&mut self, out: &mut String, sample: &Sample) {
        let extra = sample.extra.as_ref();
        let key = [
            Arc::as_ptr(&sample.name) as *const u8 as usize,
            Arc::as_ptr(&sample.labels) as usize,
            extra.map_or(0, |(k, _)| k.as_ptr() as usize),
            extra.map_or(0, |(_, v)| Arc::as_ptr(v) as *const u8 as usize),
        ];
        self.asked_lines += 1;
        if self.sequence.push_next(out, &key) {
            return;
        }
        if let Some(line) = self.lines.get(&key) {
            out.push_str(&line.text);
            return;
        }
        let mut text = String::new();
        push_metric_name(&mut text, &sample.name);
        self.push(&mut text, sample);
        text.push(' ');
        out.push_str(&text);
        let line = LineStart {
            _name: Arc::clone(&sample.name),
            _labels: Arc::clone(&sample.labels),
            _extra: extra.map(|(k, v)| (*k, Arc::clone(v))),
            text: text.into(),
        };
        self.lines.insert(key, line);
    }

    /// `k="v",...` of `sample`'s label set, rendered once.
    fn rendered(&mut self, sample: &Sample) -> &str {
        let key = Arc::as_ptr(&sample.labels) as usize;
        if key != self.last {
            self.asked += 1;
            self.last = key;
        }
        &self
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
            .1
    }

    /// Ends a scrape: the sets of series gone are forgotten once they are most.
    pub fn end_scrape(&mut self) {
        if self.rendered.len() > 2 * self.asked + 1024 {
            self.rendered.clear();
        }
        self.sequence.end_scrape(&self.lines);
        if self.lines.len() > 2 * self.asked_lines + 4096 {
            // The sequence's keys are addresses that only `lines` keeps taken.
            self.lines.clear();
            self.sequence = LineSequence::default();
        }
        (self.asked, self.last, self.asked_lines) = (0, 0, 0);
    }
}

/// Line starts in the order a scrape asked for them, in one buffer.
#[derive(Default)]
struct LineSequence {
    /// Key and end (in `text`) of each line; a line starts where the one before ends.
    keys: Vec<([usize; 4], usize)>,
    text: String,
    /// The next line this scrape should ask for, if it follows the sequence.
    next: usize,
    /// Where this scrape left the sequence, and the keys it asked for since.
    left_at: Option<usize>,
    asked_since: Vec<[usize; 4]>,
}

impl LineSequence {
    /// Pushes the next line if its key is `key`; else leaves the sequence
    /// for this scrape (false: the caller looks the line up).
    #[inline]
    fn push_next(&mut self, out: &mut String, key: &[usize; 4]) -> bool {
        if self.left_at.is_none() {
            if let Some((next_key, end)) = self.keys.get(self.next) {
                if next_key == key {
                    let start = self.next.checked_sub(1).map_or(0, |i| self.keys[i].1);
                    out.push_str(&self.text[start..*end]);
                    self.next += 1;
                    return true;
                }
            }
            self.left_at = Some(self.next);
        }
        self.asked_since.push(*key);
        false
    }

    /// Makes this scrape's order the sequence, if it differed: what it
    /// followed is kept, the rest rewritten.
    fn end_scrape(&mut self, lines: &FxHashMap<[usize; 4], LineStart>) {
        let kept = self.left_at.take().unwrap_or(self.next);
        if kept < self.keys.len() || !self.asked_since.is_empty() {
            self.keys.truncate(kept);
            self.text
                .truncate(kept.checked_sub(1).map_or(0, |i| self.keys[i].1));
            for key in self.asked_since.drain(..) {
                // Every key asked for was put in `lines` when it was asked.
                if let Some(line) = lines.get(&key) {
                    self.text.push_str(&line.text);
                    self.keys.push((key, self.text.len()));
                }
            }
        }
        self.next = 0;
    }
}

/// A text line's beginning, with the `Arc`s whose addresses are its key
/// kept, so that no other name or set can take those addresses.
struct LineStart {
    _name: Arc<str>,
    _labels: Arc<Labels>,
    _extra: Option<(&'static str, Arc<str>)>,
    text: Box<str>,
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
            labels.push_line_start(out, sample);
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
    fn kept_line_starts_give_the_same_bytes_as_a_fresh_encoding() {
        // Interned parts, as the aggregator hands them: the same Arcs each scrape.
        let name: Arc<str> = Arc::from("d_bucket");
        let label_sets: Vec<Arc<Labels>> = (0..4)
            .map(|i| Arc::new(vec![("w".to_string(), i.to_string())]))
            .collect();
        let les: Vec<Arc<str>> = ["0.1", "1.0", "+Inf"].into_iter().map(Arc::from).collect();
        let family = |series: &[usize], value: f64| {
            let mut f = Family::new("d", "h", Kind::Histogram);
            for &s in series {
                for le in &les {
                    f.samples.push(Sample {
                        name: Arc::clone(&name),
                        labels: Arc::clone(&label_sets[s]),
                        extra: Some(("le", Arc::clone(le))),
                        value,
                    });
                }
            }
            f
        };
        // Same order, a series gone, one added in the middle, a new family
        // made fresh each time (process_*), then the first order again.
        let scrapes: [&[usize]; 5] = [&[0, 1, 2], &[0, 1, 2], &[0, 2], &[0, 3, 2], &[0, 1, 2]];
        let mut cache = LabelCache::default();
        for (i, series) in scrapes.iter().enumerate() {
            let mut fresh_family = Family::new("p", "h", Kind::Gauge);
            fresh_family.push("", vec![], i as f64);
            let families = [family(series, i as f64 + 0.5), fresh_family];
            let (mut kept, mut fresh) = (String::new(), String::new());
            encode_with(&families, &mut cache, &mut kept);
            cache.end_scrape();
            encode(&families, &mut fresh);
            assert_eq!(kept, fresh, "scrape {i}");
        }
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

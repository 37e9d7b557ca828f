//! The Prometheus text format 0.0.4, written as prometheus_client's
//! `generate_latest` writes it.

use super::names::{push_label_name, push_metric_name};

use crate::model::{self, Family, Sample};
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

/// The beginnings of text lines (`name{labels} `: all a line holds but its
/// value), rendered once and kept by the sample's line rank, one after the
/// other in one buffer; OpenMetrics shares them (the two formats write the
/// same samples) and keeps its `_created` lines' beginnings by series rank.
/// Ranks hold for one generation of the registry's order: what was kept for
/// another is dropped (`begin`). A scrape then costs, per sample, a copy and
/// a number.
#[derive(Default)]
pub struct LineStarts {
    generation: u64,
    text: String,
    /// Where each line's beginning is in `text`, by line rank.
    lines: Vec<Span>,
    /// Where each `_created` line's beginning is, by series rank.
    created: Vec<Span>,
}

/// A range of `LineStarts::text`; `NOT_YET` if not rendered.
type Span = [u32; 2];
const NOT_YET: Span = [u32::MAX; 2];

impl LineStarts {
    /// Starts an encoding of samples ranked in `generation`: what was kept
    /// for another generation is dropped.
    pub fn begin(&mut self, generation: u64) {
        if generation != self.generation {
            *self = LineStarts {
                generation,
                ..LineStarts::default()
            };
        }
    }

    /// `name{labels} ` of `sample`.
    #[inline]
    pub fn push_line_start(&mut self, out: &mut String, sample: &Sample) {
        let render = |text: &mut String| {
            push_metric_name(text, &sample.name);
            push_labels(text, sample.label_pairs());
            text.push(' ');
        };
        match sample.id {
            Some(id) => self.push_kept(out, Start::Line, id.line, render),
            None => render(out),
        }
    }

    /// `<family>_created{labels} ` of `sample`'s series.
    pub fn push_created_start(&mut self, out: &mut String, family: &str, sample: &Sample) {
        let render = |text: &mut String| {
            push_metric_name(text, family);
            text.push_str("_created");
            push_labels(text, sample.series_labels());
            text.push(' ');
        };
        match sample.id {
            Some(id) => self.push_kept(out, Start::Created, id.series, render),
            None => render(out),
        }
    }

    /// Pushes what is kept at `rank` of `kind`, rendered first if it is not.
    #[inline]
    fn push_kept(
        &mut self,
        out: &mut String,
        kind: Start,
        rank: u32,
        render: impl FnOnce(&mut String),
    ) {
        let spans = match kind {
            Start::Line => &mut self.lines,
            Start::Created => &mut self.created,
        };
        let at = rank as usize;
        if spans.len() <= at {
            spans.resize(at + 1, NOT_YET);
        }
        if spans[at] == NOT_YET {
            let start = self.text.len();
            render(&mut self.text);
            spans[at] = [start as u32, self.text.len() as u32];
        }
        let [start, end] = spans[at];
        out.push_str(&self.text[start as usize..end as usize]);
    }
}

/// What `LineStarts` keeps by rank.
#[derive(Clone, Copy)]
enum Start {
    Line,
    Created,
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
    encode_with(families, 0, &mut LineStarts::default(), out)
}

/// Appends the families to `out`, whose samples are ranked in `generation`,
/// with the line starts kept in `starts`.
pub fn encode_with(
    families: &[Family],
    generation: u64,
    starts: &mut LineStarts,
    out: &mut String,
) {
    starts.begin(generation);
    for family in families {
        let total;
        let name = if family.kind == model::Kind::Counter {
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
            starts.push_line_start(out, sample);
            push_go_float(out, sample.value);
            out.push('\n');
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Kind;
    use std::sync::Arc;

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

    /// A histogram family `d` of the series `series` (label `w`), its
    /// samples ranked as a registry of generation `generation` would rank
    /// them: the ranks of one generation are not another's.
    pub(crate) fn ranked_family(series: &[usize], generation: u64, value: f64) -> Family {
        let mut f = Family::new("d", "h", Kind::Histogram);
        for &s in series {
            let rank = if generation % 2 == 1 { s } else { 9 - s };
            let labels = Arc::new(vec![("w".to_string(), s.to_string())]);
            for (k, le) in ["0.1", "1.0", "+Inf"].into_iter().enumerate() {
                f.samples.push(Sample {
                    name: Arc::from("d_bucket"),
                    labels: Arc::clone(&labels),
                    extra: Some(("le", Arc::from(le))),
                    value,
                    id: Some(model::SampleId {
                        line: (rank * 3 + k) as u32,
                        series: rank as u32,
                    }),
                });
            }
        }
        f
    }

    #[test]
    fn kept_line_starts_give_the_same_bytes_as_a_fresh_encoding() {
        // Same order, a series gone, then a new generation with a series
        // added (ranks mean other lines), a family made fresh each time
        // (process_*), then the first order again.
        let scrapes: [(u64, &[usize]); 5] = [
            (1, &[0, 1, 2]),
            (1, &[0, 1, 2]),
            (1, &[0, 2]),
            (2, &[0, 3, 2]),
            (3, &[0, 1, 2]),
        ];
        let mut starts = LineStarts::default();
        for (i, (generation, series)) in scrapes.into_iter().enumerate() {
            let mut fresh_family = Family::new("p", "h", Kind::Gauge);
            fresh_family.push("", vec![], i as f64);
            let families = [
                ranked_family(series, generation, i as f64 + 0.5),
                fresh_family,
            ];
            let (mut kept, mut fresh) = (String::new(), String::new());
            encode_with(&families, generation, &mut starts, &mut kept);
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

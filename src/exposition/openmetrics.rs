//! OpenMetrics 1.0 text, as prometheus_client's openmetrics exposition writes it.

use super::names::push_metric_name;
use super::text::LineStarts;
use crate::model::{Exemplars, Family, Kind};
use crate::storage::float::push_go_float;
use std::fmt::Write as _;

/// Content-Type of an OpenMetrics body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn push_help(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Appends the families and `# EOF`, each sample's exemplar (if any) after
/// its value. `created` (Unix seconds) is written as `_created` of every
/// counter, histogram and summary series that started counting then. The
/// samples are ranked in `generation`; line starts are kept in `starts`.
pub fn encode_with_exemplars(
    families: &[Family],
    generation: u64,
    created: Option<f64>,
    exemplars: Option<&Exemplars>,
    starts: &mut LineStarts,
    out: &mut String,
) {
    starts.begin(generation);
    // The same for every series: formatted once.
    let created = created.map(|c| {
        let mut text = String::new();
        push_go_float(&mut text, c);
        text
    });
    for family in families {
        out.push_str("# HELP ");
        push_metric_name(out, &family.name);
        out.push(' ');
        push_help(out, &family.help);
        out.push_str("\n# TYPE ");
        push_metric_name(out, &family.name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        let created = created.as_deref().filter(|_| has_created(family));
        let samples = &family.samples;
        for (i, sample) in samples.iter().enumerate() {
            starts.push_line_start(out, sample);
            push_go_float(out, sample.value);
            if let Some(e) = exemplars.and_then(|e| e.get(sample)) {
                out.push_str(" # {trace_id=\"");
                out.push_str(e.trace_hex().as_str());
                out.push_str("\",span_id=\"");
                out.push_str(e.span_hex().as_str());
                out.push_str("\"} ");
                push_go_float(out, e.value);
                // Plain decimal seconds: parsers of exemplar timestamps take no exponent.
                out.push(' ');
                push_fixed3(out, e.timestamp);
            }
            out.push('\n');
            // A series' samples are contiguous: `_created` follows its last one.
            let last_of_series = samples
                .get(i + 1)
                .is_none_or(|next| !next.same_series(sample));
            if let (Some(created), true) = (created, last_of_series) {
                starts.push_created_start(out, &family.name, sample);
                out.push_str(created);
                out.push('\n');
            }
        }
    }
    out.push_str("# EOF\n");
}

/// `{:.3}` of `v`: the exact value rounded to thousandths, ties to even.
/// Done here for a non-negative `v` below 2^64 thousandths (every Unix
/// time): the formatting machinery takes its slow exact path for such
/// numbers, about 2,000 instructions each, once per exemplar per scrape.
fn push_fixed3(out: &mut String, v: f64) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1 << 52) - 1);
    // v = m * 2^e, exactly.
    let (m, e) = match exp {
        0 => (mantissa, -1074),
        _ => (mantissa | 1 << 52, exp - 1075),
    };
    // m * 1000 < 2^63: thousandths as a quotient and an exact remainder.
    let scaled = u128::from(m) * 1000;
    let thousandths = match e {
        _ if v.is_sign_negative() || exp == 0x7ff => None,
        0..=60 => Some(scaled << e),
        -127..=-1 => {
            let k = (-e) as u32;
            let (q, r, half) = (scaled >> k, scaled & ((1 << k) - 1), 1u128 << (k - 1));
            Some(if r > half || (r == half && q & 1 == 1) {
                q + 1
            } else {
                q
            })
        }
        _ => Some(0).filter(|_| m == 0),
    };
    match thousandths.and_then(|t| u64::try_from(t).ok()) {
        Some(t) => {
            let _ = write!(out, "{}.{:03}", t / 1000, t % 1000);
        }
        None => {
            let _ = write!(out, "{v:.3}");
        }
    }
}

fn has_created(family: &Family) -> bool {
    matches!(family.kind, Kind::Counter | Kind::Histogram | Kind::Summary)
        && !family.name.starts_with("process_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::text::tests::ranked_family;
    use crate::model::{Sample, SampleId};
    use std::sync::Arc;

    #[test]
    fn timestamps_are_written_as_the_formatter_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            5e-324,
            1e-300,
            0.0005,
            0.0015,
            0.0625,
            0.1875,
            1.0005,
            2.5e-4,
            1.7e9,
            1_700_000_000.062_5,
            1_700_000_000.187_5,
            1_700_000_000.123_456_7,
            1e15,
            1.8e16,
            1e19,
            1e300,
            -1.5,
            f64::NAN,
            f64::INFINITY,
        ];
        // Times around now, each fraction a few units in the last place apart.
        let mut t = 1.7e9;
        for _ in 0..5000 {
            values.push(t);
            t = f64::from_bits(t.to_bits() + 7919);
        }
        for v in values {
            let mut ours = String::new();
            push_fixed3(&mut ours, v);
            assert_eq!(ours, format!("{v:.3}"), "{v:e}");
        }
    }

    #[test]
    fn counter_family_has_no_total_suffix_and_output_ends_with_eof() {
        let mut c = Family::new("req", "Requests \"seen\"", Kind::Counter);
        c.push("_total", vec![("a".into(), "1".into())], 2.0);
        c.push("_total", vec![("a".into(), "2".into())], 3.0);
        let mut h = Family::new("dur", "d", Kind::Histogram);
        h.push("_bucket", vec![("le".into(), "1.0".into())], 1.0);
        h.push("_bucket", vec![("le".into(), "+Inf".into())], 1.0);
        h.push("_count", vec![], 1.0);
        h.push("_sum", vec![], 0.5);
        let mut out = String::new();
        encode_with_exemplars(
            &[c, h],
            0,
            Some(100.0),
            None,
            &mut LineStarts::default(),
            &mut out,
        );
        assert_eq!(
            out,
            "# HELP req Requests \\\"seen\\\"\n# TYPE req counter\n\
             req_total{a=\"1\"} 2.0\nreq_created{a=\"1\"} 100.0\n\
             req_total{a=\"2\"} 3.0\nreq_created{a=\"2\"} 100.0\n\
             # HELP dur d\n# TYPE dur histogram\n\
             dur_bucket{le=\"1.0\"} 1.0\ndur_bucket{le=\"+Inf\"} 1.0\ndur_count 1.0\ndur_sum 0.5\ndur_created 100.0\n\
             # EOF\n"
        );
    }

    #[test]
    fn text_and_openmetrics_scrapes_sharing_kept_lines_match_fresh_encodings() {
        let mut kept = LineStarts::default();
        let scrapes: [(u64, &[usize]); 4] =
            [(1, &[0, 1]), (1, &[0, 1]), (2, &[1, 2]), (3, &[0, 2])];
        for (i, (generation, series)) in scrapes.into_iter().enumerate() {
            let mut family = ranked_family(series, generation, 1.0);
            // A count and a sum after each series' buckets.
            let mut samples = Vec::new();
            for s in family.samples.chunks(3) {
                samples.extend_from_slice(s);
                let id = s[0].id.unwrap();
                for (k, name) in ["d_count", "d_sum"].into_iter().enumerate() {
                    samples.push(Sample {
                        name: Arc::from(name),
                        extra: None,
                        value: 2.5,
                        id: Some(SampleId {
                            line: 100 + 2 * id.series + k as u32,
                            series: id.series,
                        }),
                        ..s[0].clone()
                    });
                }
            }
            family.samples = samples;
            let families = [family];
            let (mut om, mut om_fresh) = (String::new(), String::new());
            encode_with_exemplars(&families, generation, Some(1.7e9), None, &mut kept, &mut om);
            let fresh = &mut LineStarts::default();
            encode_with_exemplars(
                &families,
                generation,
                Some(1.7e9),
                None,
                fresh,
                &mut om_fresh,
            );
            assert_eq!(om, om_fresh, "OpenMetrics scrape {i}");
            let (mut text, mut text_fresh) = (String::new(), String::new());
            super::super::text::encode_with(&families, generation, &mut kept, &mut text);
            super::super::text::encode(&families, &mut text_fresh);
            assert_eq!(text, text_fresh, "text scrape {i}");
        }
        // And without ranks, as a fresh rendering.
        let mut plain = ranked_family(&[0], 1, 1.0);
        plain.samples.iter_mut().for_each(|s| s.id = None);
        let (mut om, mut om_kept) = (String::new(), String::new());
        encode_with_exemplars(
            &[plain.clone()],
            1,
            None,
            None,
            &mut LineStarts::default(),
            &mut om,
        );
        encode_with_exemplars(&[plain], 1, None, None, &mut kept, &mut om_kept);
        assert_eq!(om, om_kept);
    }
}

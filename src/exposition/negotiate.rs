//! Choosing the format and the encoding from a scrape's request headers.
//!
//! `Accept` and `Accept-Encoding` are read as HTTP lists of media ranges
//! (RFC 9110, sections 5.6 and 12.5): elements separated by commas, each with
//! `;`-separated parameters whose values are tokens or quoted strings
//! (`proto="io.prometheus.client.MetricFamily"`, with `\`-escapes). A comma or
//! semicolon inside a quoted string separates nothing. Types, subtypes and
//! parameter names are case-insensitive; parameter values are compared as
//! sent, except `encoding`. An element that does not parse is ignored.

use std::borrow::Cow;

/// An exposition format a scrape can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Delimited `io.prometheus.client.MetricFamily` messages.
    Protobuf,
}

/// The supported media range of `Accept` with the highest quality; the text
/// format when nothing supported is asked for. Of equal qualities, the first.
pub fn format(accept: Option<&str>) -> Format {
    let mut best = (Format::Text, 0.0f32);
    for range in elements(accept.unwrap_or("")) {
        let Some(q) = range.quality() else { continue };
        let format = match range.name.as_str() {
            "application/openmetrics-text"
                if matches!(range.param("version"), None | Some("1.0.0") | Some("0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "application/vnd.google.protobuf"
                if range.param("proto") == Some("io.prometheus.client.MetricFamily")
                    && range
                        .param("encoding")
                        .is_some_and(|e| e.eq_ignore_ascii_case("delimited")) =>
            {
                Format::Protobuf
            }
            "text/plain" | "*/*" | "text/*" => Format::Text,
            _ => continue,
        };
        if q > best.1 {
            best = (format, q);
        }
    }
    best.0
}

/// Whether `Accept-Encoding` allows gzip.
pub fn gzip(accept_encoding: Option<&str>) -> bool {
    elements(accept_encoding.unwrap_or(""))
        .any(|coding| coding.name == "gzip" && coding.quality().is_some_and(|q| q > 0.0))
}

/// One element of an HTTP list: a media range or a content coding, with its
/// parameters (the weight `q` among them).
struct Element<'a> {
    /// Lower-cased: `text/plain`, `gzip`.
    name: String,
    /// Lower-cased names; values unquoted.
    params: Vec<(String, Cow<'a, str>)>,
}

impl Element<'_> {
    /// The value of the parameter `name` (lower-case), the first if repeated.
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The weight, 1 when absent; `None` when it is not a qvalue (0 to 1, at
    /// most three decimals), which makes the element unusable.
    fn quality(&self) -> Option<f32> {
        let Some(q) = self.param("q") else {
            return Some(1.0);
        };
        let (int, frac) = q.split_once('.').unwrap_or((q, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !matches!(int, "0" | "1") || frac.len() > 3 || !digits(frac) {
            return None;
        }
        let q: f32 = q.trim_end_matches('.').parse().ok()?;
        (q <= 1.0).then_some(q)
    }
}

/// The elements of a comma-separated list; empty and unparsable ones skipped.
fn elements(list: &str) -> impl Iterator<Item = Element<'_>> {
    split_unquoted(list, b',').filter_map(element)
}

fn element(text: &str) -> Option<Element<'_>> {
    let mut parts = split_unquoted(text, b';');
    let name = parts.next()?.trim_matches(OWS);
    if name.is_empty() || !name.bytes().all(|b| is_tchar(b) || b == b'/') {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let part = part.trim_matches(OWS);
        if part.is_empty() {
            continue; // `;;` is allowed
        }
        // White space around `=` is not in the grammar; it is tolerated.
        let (key, value) = part.split_once('=')?;
        let (key, value) = (key.trim_matches(OWS), value.trim_matches(OWS));
        if key.is_empty() || !key.bytes().all(is_tchar) {
            return None;
        }
        let value = if let Some(quoted) = value.strip_prefix('"') {
            unquote(quoted)?
        } else if !value.is_empty() && value.bytes().all(is_tchar) {
            Cow::Borrowed(value)
        } else {
            return None;
        };
        params.push((key.to_ascii_lowercase(), value));
    }
    Some(Element {
        name: name.to_ascii_lowercase(),
        params,
    })
}

/// Optional white space.
const OWS: &[char] = &[' ', '\t'];

/// A token's characters (RFC 9110, section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The content of a quoted string whose opening quote was consumed: up to
/// the closing quote, which must end `rest`, with `\x` read as `x`.
fn unquote(rest: &str) -> Option<Cow<'_, str>> {
    let end = closing_quote(rest.as_bytes(), 0)?;
    if end + 1 != rest.len() {
        return None;
    }
    let inner = &rest[..end];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(Cow::Owned(out))
}

/// The index of the quote that closes a quoted string whose content starts
/// at `from`; `None` if it is never closed.
fn closing_quote(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `text` split at each `separator` outside quoted strings. An unclosed
/// quote runs to the end (that piece then fails to parse).
fn split_unquoted(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut i = start;
        while i < bytes.len() && bytes[i] != separator {
            i = match bytes[i] {
                b'"' => closing_quote(bytes, i + 1).map_or(bytes.len(), |end| end + 1),
                _ => i + 1,
            };
        }
        let piece = &text[start..i.min(bytes.len())];
        if i >= bytes.len() {
            done = true;
        } else {
            start = i + 1;
        }
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_headers() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
            application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;q=0.4,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(format(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            format(Some(
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
            )),
            Format::Text
        );
        assert_eq!(
            format(Some("application/openmetrics-text; version=2.0.0")),
            Format::Text
        );
        assert_eq!(format(None), Format::Text);
        assert_eq!(format(Some("application/json")), Format::Text);
    }

    #[test]
    fn protobuf_when_prometheus_prefers_it() {
        // Prometheus 2.42 with --enable-feature=native-histograms.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
            encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(format(Some(native)), Format::Protobuf);
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        assert_eq!(
            format(Some(
                "application/openmetrics-text;version=1.0.0;q=0.9,application/vnd.google.protobuf;\
                 proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    /// What Prometheus 3 sends by default (its UTF-8 names allowed).
    const PROMETHEUS_3: &str =
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
        application/openmetrics-text;version=0.0.1;q=0.5,\
        text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
        text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

    #[test]
    fn prometheus_3_gets_openmetrics() {
        assert_eq!(format(Some(PROMETHEUS_3)), Format::OpenMetrics);
        // With native histograms, protobuf first (scrape_protocols).
        let native = format!(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
             encoding=delimited;q=0.7,{PROMETHEUS_3}"
        );
        assert_eq!(format(Some(&native)), Format::Protobuf);
    }

    #[test]
    fn quoted_parameter_values_are_unquoted() {
        let quoted = "application/vnd.google.protobuf;proto=\"io.prometheus.client.MetricFamily\";\
            encoding=\"delimited\";q=0.7,text/plain;version=0.0.4;q=0.3";
        assert_eq!(format(Some(quoted)), Format::Protobuf);
        // Optional white space between parameters, any case in names.
        let spaced =
            "Application/Vnd.Google.Protobuf ; Proto=\"io.prometheus.client.MetricFamily\" ; \
            ENCODING=\"Delimited\" ; q=0.7 , text/plain ; q=0.3";
        assert_eq!(format(Some(spaced)), Format::Protobuf);
        // A quoted-pair stands for the character after the backslash.
        let escaped =
            "application/vnd.google.protobuf;proto=\"io.prometheus.client.\\MetricFamily\";\
            encoding=delimited";
        assert_eq!(format(Some(escaped)), Format::Protobuf);
        assert_eq!(
            format(Some(
                "application/openmetrics-text;version=\"1.0.0\";q=0.9,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        // The value is compared unquoted, as sent: a different message is not ours.
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf;proto=\"io.prometheus.client.metricfamily\";\
                 encoding=delimited"
            )),
            Format::Text
        );
    }

    #[test]
    fn separators_inside_quoted_strings_separate_nothing() {
        // Split naively at commas and semicolons, this would be text/plain at q=1.
        let header = "application/openmetrics-text;version=1.0.0;note=\"a, text/plain;q=1\";q=0.5,\
            text/plain;q=0.4";
        assert_eq!(format(Some(header)), Format::OpenMetrics);
        let escaped_quote = "application/openmetrics-text;note=\"say \\\", text/plain\";q=0.5,\
            text/plain;q=0.4";
        assert_eq!(format(Some(escaped_quote)), Format::OpenMetrics);
    }

    #[test]
    fn malformed_elements_are_ignored() {
        for header in [
            // Unclosed quote: the rest of the header is one broken element.
            "application/openmetrics-text;version=\"1.0.0;q=0.9,text/plain;q=0.5",
            // Something after the closing quote.
            "application/openmetrics-text;version=\"1.0.0\"x;q=0.9",
            // Weights that are not qvalues.
            "application/openmetrics-text;q=1.5",
            "application/openmetrics-text;q=0.1234",
            "application/openmetrics-text;q=high",
            "application/openmetrics-text;q=",
            // A parameter without a value, a name that is not a token.
            "application/openmetrics-text;version",
            "application/openmetrics text;q=0.9",
        ] {
            assert_eq!(format(Some(header)), Format::Text, "{header}");
        }
        // The good elements of a list with a bad one still count.
        assert_eq!(
            format(Some(
                ",, application/openmetrics-text;q=2, application/openmetrics-text;q=0.8 ,"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn gzip_when_allowed() {
        assert!(gzip(Some("gzip, deflate")));
        assert!(gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(!gzip(Some("gzip;q=0")));
        assert!(!gzip(Some("identity")));
        assert!(!gzip(None));
        assert!(gzip(Some("deflate;q=\"0.5\", gzip;q=0.5")));
    }
}

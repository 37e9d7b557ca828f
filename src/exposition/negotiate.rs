//! Choosing the format and the encoding from a scrape's request headers.

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
/// format when nothing supported is asked for.
pub fn format(accept: Option<&str>) -> Format {
    let mut best = (Format::Text, -1.0f32);
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        let (mut proto, mut encoding) = (None, None);
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().to_owned()),
                    "proto" => proto = Some(v.trim().to_owned()),
                    "encoding" => encoding = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "application/vnd.google.protobuf"
                if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                    && encoding.as_deref() == Some("delimited") =>
            {
                Format::Protobuf
            }
            "text/plain" | "*/*" | "text/*" => Format::Text,
            _ => continue,
        };
        if q > best.1 && q > 0.0 {
            best = (format, q);
        }
    }
    best.0
}

/// Whether `Accept-Encoding` allows gzip.
pub fn gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.unwrap_or("").split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .map(|q| q.parse::<f32>().unwrap_or(0.0))
            .unwrap_or(1.0);
        name.eq_ignore_ascii_case("gzip") && q > 0.0
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

    #[test]
    fn gzip_when_allowed() {
        assert!(gzip(Some("gzip, deflate")));
        assert!(gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(!gzip(Some("gzip;q=0")));
        assert!(!gzip(Some("identity")));
        assert!(!gzip(None));
    }
}

//! Settings from environment variables (README: Configuration). A bad value is an error that
//! names the variable; nothing falls back silently.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::worker::exclude::ExcludePaths;
use crate::worker::histogram::DEFAULT_DURATION_BUCKETS;
use crate::worker::native_histogram;
use crate::worker::route::DEFAULT_MAX_LABEL_VALUES;

/// Largest cap on distinct label values per worker: route ids are 16-bit.
pub const MAX_LABEL_VALUES: usize = 10_000;

/// Port of the metrics server when none is set.
pub const DEFAULT_PORT: u16 = 9091;
/// Address of the metrics server when none is set: loopback only.
pub const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1";
/// Prefix of every metric name when none is set.
pub const DEFAULT_PREFIX: &str = "gunicorn";

/// The exporter's settings, parsed from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `None`: a private directory is made for this master.
    pub directory: Option<PathBuf>,
    /// 0 disables the built-in server.
    pub port: u16,
    /// Address the built-in server listens on.
    pub bind_address: IpAddr,
    /// TLS and basic auth (exporter-toolkit format).
    pub web_config_file: Option<PathBuf>,
    /// Upper bounds of the request duration histogram, in seconds.
    pub duration_buckets: Vec<f64>,
    /// Prefix of every metric name.
    pub prefix: String,
    /// Cap on distinct `route` and `error_type` values per worker.
    pub max_label_values: usize,
    /// Schema of the native duration histogram (`PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA`).
    pub native_histogram_schema: i8,
    /// Whether request-level families carry `worker_id` (`PROMETHEUS_WORKER_ID_LABEL`).
    pub worker_id_label: bool,
    /// Requests not counted in request series (`PROMETHEUS_EXCLUDE_PATHS`).
    pub exclude_paths: ExcludePaths,
    /// The request duration and requests in flight under OpenTelemetry's
    /// HTTP semantic conventions (`PROMETHEUS_METRIC_NAMES=otel`).
    pub otel_names: bool,
}

impl Settings {
    /// Reads the settings through `lookup` (the environment, or flags).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let directory = get("PROMETHEUS_MULTIPROC_DIR").map(PathBuf::from);
        let port = match get("PROMETHEUS_METRICS_PORT") {
            None => DEFAULT_PORT,
            Some(v) => v.trim().parse::<u16>().map_err(|_| {
                format!("PROMETHEUS_METRICS_PORT={v:?} is not a port number (0-65535)")
            })?,
        };
        let bind_address = match get("PROMETHEUS_BIND_ADDRESS") {
            None => DEFAULT_BIND_ADDRESS.parse().unwrap(),
            Some(v) => v.trim().trim_matches(['[', ']']).parse().map_err(|_| {
                format!("PROMETHEUS_BIND_ADDRESS={v:?} is not an IPv4 or IPv6 address")
            })?,
        };
        // Loaded, and checked, where the server starts (start-up of the master).
        let web_config_file = get("PROMETHEUS_WEB_CONFIG_FILE").map(PathBuf::from);
        let duration_buckets = match get("PROMETHEUS_DURATION_BUCKETS") {
            None => DEFAULT_DURATION_BUCKETS.to_vec(),
            Some(v) => parse_buckets(&v)
                .map_err(|why| format!("PROMETHEUS_DURATION_BUCKETS={v:?} {why}"))?,
        };
        let prefix = match get("PROMETHEUS_METRICS_PREFIX") {
            None => DEFAULT_PREFIX.to_owned(),
            Some(v) if is_metric_name(v.trim()) => v.trim().to_owned(),
            Some(v) => {
                return Err(format!("PROMETHEUS_METRICS_PREFIX={v:?} is not a valid metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)"))
            }
        };
        let max_label_values = match get("PROMETHEUS_MAX_LABEL_VALUES") {
            None => DEFAULT_MAX_LABEL_VALUES,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LABEL_VALUES).contains(n))
                .ok_or_else(|| {
                    format!("PROMETHEUS_MAX_LABEL_VALUES={v:?} is not a whole number from 1 to {MAX_LABEL_VALUES}")
                })?,
        };
        let native_histogram_schema = match get(native_histogram::SCHEMA_VARIABLE) {
            None => native_histogram::DEFAULT_SCHEMA,
            Some(v) => native_histogram::parse_schema(&v)
                .map_err(|why| format!("{}={v:?} {why}", native_histogram::SCHEMA_VARIABLE))?,
        };
        let worker_id_label = match get("PROMETHEUS_WORKER_ID_LABEL") {
            None => true,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| format!("PROMETHEUS_WORKER_ID_LABEL={v:?} is not true or false"))?,
        };
        let exclude_paths = match get("PROMETHEUS_EXCLUDE_PATHS") {
            None => ExcludePaths::default(),
            Some(v) => ExcludePaths::parse(&v)
                .map_err(|why| format!("PROMETHEUS_EXCLUDE_PATHS={v:?} {why}"))?,
        };
        let otel_names = match get("PROMETHEUS_METRIC_NAMES").map(|v| v.trim().to_owned()) {
            None => false,
            Some(v) if v == "gunicorn" => false,
            Some(v) if v == "otel" => true,
            Some(v) => {
                return Err(format!(
                    "PROMETHEUS_METRIC_NAMES={v:?} is not gunicorn or otel"
                ))
            }
        };
        Ok(Settings {
            max_label_values,
            worker_id_label,
            otel_names,
            exclude_paths,
            directory,
            port,
            bind_address,
            web_config_file,
            duration_buckets,
            prefix,
            native_histogram_schema,
        })
    }
}

fn parse_buckets(v: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let b: f64 = part
            .trim()
            .parse()
            .map_err(|_| format!("has {:?}, which is not a number", part.trim()))?;
        if !b.is_finite() {
            return Err("must list finite bounds (+Inf is always added)".into());
        }
        if out.last().is_some_and(|&last| b <= last) {
            return Err("is not strictly increasing".into());
        }
        out.push(b);
    }
    Ok(out)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults() {
        let s = from(&[]).unwrap();
        assert_eq!(
            (s.port, s.bind_address.to_string(), s.prefix.as_str()),
            (9091, "127.0.0.1".into(), "gunicorn")
        );
        assert_eq!(s.duration_buckets.len(), 14);
        assert_eq!(s.max_label_values, 100);
        assert_eq!(s.native_histogram_schema, 3);
        assert!(s.worker_id_label && s.exclude_paths.is_empty());
        let s = from(&[("PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA", "-4")]).unwrap();
        assert_eq!(s.native_histogram_schema, -4);
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        for (k, v) in [
            ("PROMETHEUS_METRICS_PORT", "abc"),
            ("PROMETHEUS_METRICS_PORT", "70000"),
            ("PROMETHEUS_BIND_ADDRESS", "not-an-ip"),
            ("PROMETHEUS_DURATION_BUCKETS", "0.1,0.05"),
            ("PROMETHEUS_DURATION_BUCKETS", "0.1,x"),
            ("PROMETHEUS_METRICS_PREFIX", "9bad"),
            ("PROMETHEUS_MAX_LABEL_VALUES", "0"),
            ("PROMETHEUS_MAX_LABEL_VALUES", "lots"),
            ("PROMETHEUS_MAX_LABEL_VALUES", "100000"),
            ("PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA", "9"),
            ("PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA", "-5"),
            ("PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA", "3.5"),
            ("PROMETHEUS_WORKER_ID_LABEL", "maybe"),
            ("PROMETHEUS_METRIC_NAMES", "opentelemetry"),
            ("PROMETHEUS_EXCLUDE_PATHS", "/a, /b c"),
        ] {
            let err = from(&[(k, v)]).unwrap_err();
            assert!(err.starts_with(k), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn custom_values() {
        let s = from(&[
            ("PROMETHEUS_DURATION_BUCKETS", "0.1, 1,10"),
            ("PROMETHEUS_BIND_ADDRESS", "::1"),
            ("PROMETHEUS_WORKER_ID_LABEL", "False"),
            ("PROMETHEUS_EXCLUDE_PATHS", "/healthz,/internal/*"),
        ])
        .unwrap();
        assert!(!s.worker_id_label);
        assert!(s.exclude_paths.excludes(b"/internal/x", None));
        assert_eq!(s.duration_buckets, vec![0.1, 1.0, 10.0]);
        assert!(s.bind_address.is_ipv6());
    }
}

//! Requests that are not counted in request series (health checks, probes):
//! `PROMETHEUS_EXCLUDE_PATHS` names them by path or route template, exactly
//! or, with a trailing `*`, by prefix.

use rustc_hash::FxHashSet;

/// The paths and route templates whose requests are not counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExcludePaths {
    exact: FxHashSet<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl ExcludePaths {
    /// From a comma-separated list (`/healthz,/ready,/internal/*`); empty
    /// entries are ignored. An entry is matched against the request's path
    /// and against the route template it matched.
    pub fn parse(list: &str) -> Result<ExcludePaths, String> {
        let mut out = ExcludePaths::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.chars().any(char::is_whitespace) {
                return Err(format!("has {entry:?}, a path with whitespace"));
            }
            match entry.strip_suffix('*') {
                Some(prefix) => out.prefixes.push(prefix.into()),
                None => {
                    out.exact.insert(entry.into());
                }
            }
        }
        Ok(out)
    }

    /// Whether nothing is excluded (the hot path then checks nothing).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether a request of `path` (UTF-8 bytes) or of the route template
    /// `route` is excluded.
    pub fn excludes(&self, path: &[u8], route: Option<&[u8]>) -> bool {
        [Some(path), route].into_iter().flatten().any(|name| {
            std::str::from_utf8(name).is_ok_and(|name| {
                self.exact.contains(name) || self.prefixes.iter().any(|p| name.starts_with(&**p))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_paths_prefixes_and_route_templates_are_excluded() {
        let x = ExcludePaths::parse(" /healthz, /internal/*,users/<int:uid>,, ").unwrap();
        assert!(x.excludes(b"/healthz", None));
        assert!(!x.excludes(b"/healthz/deep", None));
        assert!(x.excludes(b"/internal/", None));
        assert!(x.excludes(b"/internal/a/b", None));
        assert!(!x.excludes(b"/internals", None));
        assert!(x.excludes(b"/users/7", Some(b"users/<int:uid>")));
        assert!(!x.excludes(b"/users/7", Some(b"/users/{uid}")));
        assert!(ExcludePaths::parse("").unwrap().is_empty());
        assert!(ExcludePaths::parse("/a b").is_err());
    }
}

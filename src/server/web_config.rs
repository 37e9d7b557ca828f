//! `PROMETHEUS_WEB_CONFIG_FILE`: the Prometheus exporter-toolkit web
//! configuration (TLS and basic auth). Errors name the variable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// bcrypt's cost doubles the work at each step: 14 is about a second a
/// check on a server core, 31 would be days.
pub const MAX_BCRYPT_COST: u32 = 14;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    basic_auth_users: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
}

/// A loaded web configuration.
pub struct WebConfig {
    /// The TLS server configuration; `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// User name -> bcrypt hash. Empty: no authentication.
    pub users: HashMap<String, String>,
}

impl WebConfig {
    /// No TLS, no authentication.
    pub fn open() -> WebConfig {
        WebConfig {
            tls: None,
            users: HashMap::new(),
        }
    }

    /// Reads the web config file at `path`; an error is one line naming the variable and the file.
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let fail = |why: String| {
            format!(
                "PROMETHEUS_WEB_CONFIG_FILE={:?}: {why}",
                path.display().to_string()
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| fail(e.to_string().replace('\n', " ")))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) => Some(Arc::new(t.build(base).map_err(fail)?)),
            None => None,
        };
        let users = file.basic_auth_users.unwrap_or_default();
        let mut names: Vec<&String> = users.keys().collect();
        names.sort();
        for user in names {
            let Ok(parts) = users[user].parse::<bcrypt::HashParts>() else {
                return Err(fail(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash"
                )));
            };
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(fail(format!(
                    "basic_auth_users: the bcrypt hash of {user:?} has cost {}, above the \
                     limit of {MAX_BCRYPT_COST} (each step doubles the time a check takes; \
                     {MAX_BCRYPT_COST} is about a second): hash it again with a cost of 10 to \
                     {MAX_BCRYPT_COST}",
                    parts.get_cost()
                )));
            }
        }
        Ok(WebConfig { tls, users })
    }
}

fn resolve(base: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_owned()
    } else {
        base.join(file)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

impl TlsServerConfig {
    fn build(self, base: &Path) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version.as_deref() {
            None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Some("TLS13") => &[&rustls::version::TLS13],
            Some(other) => {
                return Err(format!(
                    "tls_server_config.min_version {other:?} is not supported (TLS12 or TLS13)"
                ))
            }
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let auth_type = self.client_auth_type.as_deref().unwrap_or("NoClientCert");
        let builder = match (auth_type, &self.client_ca_file) {
            ("NoClientCert", _) => builder.with_no_client_auth(),
            ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(&resolve(base, ca))? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("client_ca_file: {e}"))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth_type == "VerifyClientCertIfGiven" {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| format!("client_ca_file: {e}"))?,
                )
            }
            ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", None) => {
                return Err(format!(
                    "tls_server_config.client_auth_type {auth_type} needs client_ca_file"
                ))
            }
            (other, _) => {
                return Err(format!(
                    "tls_server_config.client_auth_type {other:?} is not supported \
                     (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                ))
            }
        };
        let certs = read_certs(&resolve(base, &self.cert_file))?;
        let key_path = resolve(base, &self.key_file);
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| format!("cannot read a private key from {}: {e}", key_path.display()))?;
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("cert_file/key_file: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        WebConfig::load(&path)
    }

    #[test]
    fn errors_name_the_variable_and_stay_on_one_line() {
        for yaml in [
            "tls_server_config: {cert_file: nope.pem, key_file: nope.key}",
            "basic_auth_users: {alice: plaintext}",
            "unknown_setting: 1",
            "tls_server_config: [",
        ] {
            let err = load(yaml).err().unwrap();
            assert!(err.starts_with("PROMETHEUS_WEB_CONFIG_FILE="), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn hashes_too_costly_to_check_are_refused_naming_the_user() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        for (cost, refused) in [("14", false), ("15", true), ("31", true)] {
            let costly = format!("$2b${cost}${}", &hash[7..]);
            let yaml = format!("basic_auth_users:\n  alice: '{hash}'\n  bob: '{costly}'\n");
            match load(&yaml) {
                Ok(config) => assert!(!refused && config.users.len() == 2),
                Err(err) => {
                    assert!(refused, "{err}");
                    assert!(err.starts_with("PROMETHEUS_WEB_CONFIG_FILE="), "{err}");
                    assert!(err.contains("\"bob\" has cost"), "{err}");
                    assert!(err.contains(&format!("cost {cost}")), "{err}");
                    assert!(!err.contains('\n'), "{err}");
                }
            }
        }
    }

    #[test]
    fn users_with_bcrypt_hashes_load() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let config = load(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        assert!(config.tls.is_none());
        assert!(bcrypt::verify("secret", &config.users["alice"]).unwrap());
    }
}

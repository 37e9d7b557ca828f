//! HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose, so checking is split in two: [`BasicAuth::check`]
//! is cheap and answers from a cache of credentials that verified before;
//! [`BasicAuth::verify`] runs bcrypt and belongs on a bounded blocking pool,
//! never on the serving thread. A user name that is not configured costs one
//! bcrypt too (against a dummy hash of the same cost), so answers do not tell
//! which user names exist.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use parking_lot::Mutex;
use ring::hmac;
use ring::rand::SystemRandom;

/// Distinct verified credentials kept; a full cache starts over.
const CACHE_ENTRIES: usize = 64;

/// HMAC-SHA256 of a credential under the process's own random key.
type CacheTag = [u8; 32];

/// The users of a web config and a cache of credentials already verified.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Verified for a user name that is not configured: same cost as the most
    /// expensive configured hash, never matches a password.
    dummy_hash: String,
    /// Random per process: a cache entry reveals nothing about a password.
    cache_key: hmac::Key,
    verified: Mutex<HashSet<CacheTag>>,
}

/// The outcome of the cheap check.
pub enum Check {
    /// A credential verified before (cached).
    Allowed,
    /// No credential, or not basic auth.
    Denied,
    /// Needs bcrypt: hand it to [`BasicAuth::verify`] off the serving thread.
    Verify(Credential),
}

/// A user name and password from an `Authorization` header, not yet verified.
pub struct Credential {
    user: String,
    password: String,
    tag: CacheTag,
}

impl BasicAuth {
    /// `users`: user name -> bcrypt hash, already validated by the web config.
    pub fn new(users: HashMap<String, String>) -> Self {
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(4);
        // A real hash at the cheapest cost, relabelled: bcrypt then spends the
        // chosen cost on it and never matches, without paying that cost here.
        let cheap = bcrypt::hash(b"gunicorn-prometheus-exporter", 4).expect("cost 4 is valid");
        let dummy_hash = format!("$2b${cost:02}${}", &cheap[7..]);
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .expect("the system's random source works");
        BasicAuth {
            users,
            dummy_hash,
            cache_key,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Whether any user is configured (else every request is allowed).
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Cheap: a missing or malformed header is denied, a credential that
    /// verified before is allowed, anything else needs [`Self::verify`].
    pub fn check(&self, authorization: Option<&[u8]>) -> Check {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return Check::Denied;
        };
        let mut context = hmac::Context::with_key(&self.cache_key);
        context.update(&(user.len() as u64).to_le_bytes());
        context.update(user.as_bytes());
        context.update(password.as_bytes());
        let mut tag = [0u8; 32];
        tag.copy_from_slice(context.sign().as_ref());
        if self.verified.lock().contains(&tag) {
            return Check::Allowed;
        }
        Check::Verify(Credential {
            user,
            password,
            tag,
        })
    }

    /// Slow (one bcrypt, known user or not): run it off the serving thread.
    pub fn verify(&self, credential: Credential) -> bool {
        let hash = self.users.get(&credential.user);
        let matches =
            bcrypt::verify(&credential.password, hash.unwrap_or(&self.dummy_hash)).unwrap_or(false);
        let ok = matches && hash.is_some();
        if ok {
            let mut verified = self.verified.lock();
            if verified.len() >= CACHE_ENTRIES {
                verified.clear();
            }
            verified.insert(credential.tag);
        }
        ok
    }

    /// Both steps at once, for tests.
    #[cfg(test)]
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        match self.check(authorization) {
            Check::Allowed => true,
            Check::Denied => false,
            Check::Verify(credential) => self.verify(credential),
        }
    }
}

fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    fn auth(cost: u32) -> BasicAuth {
        BasicAuth::new(HashMap::from([(
            "alice".into(),
            bcrypt::hash("s3cret", cost).unwrap(),
        )]))
    }

    #[test]
    fn right_wrong_and_missing_credentials() {
        let auth = auth(4);
        assert!(auth.allows(Some(&header("alice", "s3cret"))));
        assert!(auth.allows(Some(&header("alice", "s3cret")))); // from the cache
        assert!(!auth.allows(Some(&header("alice", "wrong"))));
        assert!(!auth.allows(Some(&header("bob", "s3cret"))));
        assert!(!auth.allows(Some(b"Bearer x")));
        assert!(!auth.allows(None));
    }

    #[test]
    fn only_verified_credentials_skip_bcrypt() {
        let auth = auth(4);
        assert!(matches!(
            auth.check(Some(&header("alice", "s3cret"))),
            Check::Verify(_)
        ));
        assert!(auth.allows(Some(&header("alice", "s3cret"))));
        assert!(matches!(
            auth.check(Some(&header("alice", "s3cret"))),
            Check::Allowed
        ));
        // A wrong password is never cached either way.
        assert!(!auth.allows(Some(&header("alice", "s3cre"))));
        assert!(matches!(
            auth.check(Some(&header("alice", "s3cre"))),
            Check::Verify(_)
        ));
        assert!(matches!(auth.check(Some(b"Basic !!!")), Check::Denied));
    }

    #[test]
    fn unknown_users_pay_the_same_cost() {
        let auth = auth(6);
        assert!(auth.dummy_hash.starts_with("$2b$06$"));
        assert_eq!(auth.dummy_hash.len(), 60);
        let parts: bcrypt::HashParts = auth.dummy_hash.parse().unwrap();
        assert_eq!(parts.get_cost(), 6);
        assert!(!auth.allows(Some(&header("mallory", "gunicorn-prometheus-exporter"))));
        assert!(!auth.allows(Some(&header("mallory", ""))));
    }
}

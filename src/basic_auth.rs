//! HTTP basic authentication against bcrypt hashes, with a cache of recent
//! successes so a scrape does not pay bcrypt's cost every time.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use parking_lot::Mutex;

const CACHE_ENTRIES: usize = 64;

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// SHA-256 of "user\0password" pairs that verified.
    verified: Mutex<HashSet<Vec<u8>>>,
}

impl BasicAuth {
    pub fn new(users: HashMap<String, String>) -> Self {
        BasicAuth {
            users,
            verified: Mutex::new(HashSet::new()),
        }
    }

    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether an `Authorization` header value grants access.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{user}\0{password}").as_bytes(),
        );
        if self.verified.lock().contains(digest.as_ref()) {
            return true;
        }
        let ok = match self.users.get(&user) {
            Some(hash) => bcrypt::verify(&password, hash).unwrap_or(false),
            None => false,
        };
        if ok {
            let mut verified = self.verified.lock();
            if verified.len() >= CACHE_ENTRIES {
                verified.clear();
            }
            verified.insert(digest.as_ref().to_vec());
        }
        ok
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

    #[test]
    fn right_wrong_and_missing_credentials() {
        let auth = BasicAuth::new(HashMap::from([(
            "alice".into(),
            bcrypt::hash("s3cret", 4).unwrap(),
        )]));
        assert!(auth.allows(Some(&header("alice", "s3cret"))));
        assert!(auth.allows(Some(&header("alice", "s3cret")))); // from the cache
        assert!(!auth.allows(Some(&header("alice", "wrong"))));
        assert!(!auth.allows(Some(&header("bob", "s3cret"))));
        assert!(!auth.allows(Some(b"Bearer x")));
        assert!(!auth.allows(None));
    }
}

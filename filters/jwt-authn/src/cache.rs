//! `jwt_cache_config`: a bounded least-recently-used cache of verified tokens, so a repeated
//! token skips parsing and signature verification (claims and time are still checked on every
//! request). Expired entries are dropped when looked up.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::jwt::Jwt;

/// Default `jwt_cache_size`.
pub const DEFAULT_SIZE: usize = 100;
/// Default `jwt_max_token_size`.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 4096;

/// The cache of one provider.
#[derive(Debug)]
pub struct JwtCache {
    capacity: usize,
    max_token_size: usize,
    entries: HashMap<String, (Rc<Jwt>, u64)>,
    // Use order: stamp -> token. The smallest stamp is the least recently used.
    order: BTreeMap<u64, String>,
    next_stamp: u64,
}

impl JwtCache {
    /// A cache of `capacity` tokens of at most `max_token_size` bytes.
    pub fn new(capacity: usize, max_token_size: usize) -> Self {
        JwtCache {
            capacity: capacity.max(1),
            max_token_size,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// The verified token, if cached and not expired at `now` (Unix seconds).
    pub fn lookup(&mut self, token: &str, now: u64) -> Option<Rc<Jwt>> {
        let (jwt, old_stamp) = self
            .entries
            .get(token)
            .map(|(jwt, stamp)| (jwt.clone(), *stamp))?;
        if jwt.exp.is_some_and(|exp| exp < now) {
            self.entries.remove(token);
            self.order.remove(&old_stamp);
            return None;
        }
        let stamp = self.stamp();
        self.order.remove(&old_stamp);
        self.order.insert(stamp, token.to_string());
        if let Some(entry) = self.entries.get_mut(token) {
            entry.1 = stamp;
        }
        Some(jwt)
    }

    /// Remembers a verified token (too large tokens are not kept).
    pub fn insert(&mut self, token: &str, jwt: Rc<Jwt>) {
        if token.len() > self.max_token_size || self.entries.contains_key(token) {
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let stamp = self.stamp();
        self.order.insert(stamp, token.to_string());
        self.entries.insert(token.to_string(), (jwt, stamp));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{encode_base64url, parse};

    fn jwt(exp: u64) -> Rc<Jwt> {
        let header = encode_base64url(br#"{"alg":"HS256"}"#);
        let payload = encode_base64url(format!(r#"{{"exp":{exp}}}"#).as_bytes());
        Rc::new(parse(&format!("{header}.{payload}.c2ln")).unwrap())
    }

    #[test]
    fn least_recently_used_entry_is_evicted() {
        let mut cache = JwtCache::new(2, DEFAULT_MAX_TOKEN_SIZE);
        cache.insert("a", jwt(100));
        cache.insert("b", jwt(100));
        assert!(cache.lookup("a", 10).is_some());
        cache.insert("c", jwt(100));
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("b", 10).is_none());
        assert!(cache.lookup("a", 10).is_some());
        assert!(cache.lookup("c", 10).is_some());
    }

    #[test]
    fn expired_entries_are_dropped_and_large_tokens_skipped() {
        let mut cache = JwtCache::new(10, 3);
        cache.insert("abc", jwt(100));
        assert!(cache.lookup("abc", 100).is_some());
        assert!(cache.lookup("abc", 101).is_none());
        assert!(cache.is_empty());
        cache.insert("abcd", jwt(100));
        assert!(cache.is_empty());
    }
}

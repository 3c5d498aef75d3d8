//! The decision cache: decisions keyed by request attributes, with a TTL, a bound on entries
//! (least recently used evicted first), a grace period for fail-static, and an optional second
//! tier in proxy-wasm shared data so that every worker VM sees every decision.
//!
//! Safety rule: a cached decision is only ever applied to a request whose keyed attributes are
//! all equal to those of the request it was made for. Entries store the full key material
//! (not only a hash of it) and a lookup compares it, so neither a hash collision nor an
//! ambiguous encoding can hand one request's decision to another: every attribute is written
//! with its name and length, absent values are distinct from empty ones.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::request::Request;
use wasmesh_sdk::shared::{update, SharedData, Update, DEFAULT_CAS_ATTEMPTS};

use crate::config::{CacheKey, DecisionCache};
use crate::verdict::Verdict;

/// Builds the key material of a request from the configured attributes.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    key: CacheKey,
}

impl KeyBuilder {
    /// A builder for `key`.
    pub fn new(key: CacheKey) -> Self {
        KeyBuilder { key }
    }

    /// The key material of `request`; `body` is the body sent with the check, if any (it is
    /// always part of the key: the service may decide on it).
    pub fn material(&self, request: &dyn Request, body: Option<&[u8]>) -> String {
        let mut material = String::from("v1");
        let mut put = |name: &str, value: Option<&str>| match value {
            Some(value) => {
                let _ = write!(material, "|{name}={}:{value}", value.len());
            }
            None => {
                let _ = write!(material, "|{name}!");
            }
        };
        if self.key.method {
            put("method", request.method());
        }
        if self.key.path {
            put("path", request.path());
        }
        if self.key.host {
            put("host", request.authority());
        }
        for name in &self.key.headers {
            let values = request.header_values(name);
            if values.is_empty() {
                put(&format!("h:{}", name.to_ascii_lowercase()), None);
            }
            for (index, value) in values.iter().enumerate() {
                put(
                    &format!("h:{}#{index}", name.to_ascii_lowercase()),
                    Some(value),
                );
            }
        }
        if self.key.principal {
            let principal = request.mtls().then(|| request.peer_identity()).flatten();
            put("principal", principal.as_deref());
        }
        if self.key.source_address {
            let ip = request
                .source_address()
                .map(|address| address.ip().to_string());
            put("source", ip.as_deref());
        }
        if let Some(claims) = &self.key.claims {
            let payload = request
                .header(&claims.header)
                .and_then(|value| decode_payload(&value));
            for name in &claims.names {
                let claim = payload
                    .as_ref()
                    .and_then(|payload| payload.get(name))
                    .map(serde_json::Value::to_string);
                put(&format!("claim:{name}"), claim.as_deref());
            }
        }
        if let Some(body) = body {
            let digest = hex(&Sha256::digest(body));
            put("body-sha256", Some(&digest));
        }
        material
    }
}

/// Decodes a base64url (padding optional) JSON object, as `jwt_authn` forwards payloads.
fn decode_payload(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let bytes = base64url_decode(text.trim())?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut output = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            output.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(output)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// A cached decision and its lifetime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The full key material, compared on every lookup.
    pub key: String,
    /// The decision.
    pub verdict: Verdict,
    /// Reused without asking until then (milliseconds since the Unix epoch).
    pub fresh_until_ms: u64,
    /// Kept for fail-static until then.
    pub stale_until_ms: u64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A decision within its TTL.
    Fresh(Verdict),
    /// Nothing usable without asking (absent, or past its TTL).
    Miss,
}

/// A bounded map evicting the least recently used entry.
#[derive(Debug)]
pub struct Lru<V> {
    capacity: usize,
    entries: HashMap<String, (V, u64)>,
    order: BTreeMap<u64, String>,
    clock: u64,
}

impl<V> Lru<V> {
    /// At most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
        }
    }

    fn touch(&mut self, key: &str) {
        self.clock += 1;
        if let Some((_, used)) = self.entries.get_mut(key) {
            self.order.remove(used);
            *used = self.clock;
            self.order.insert(self.clock, key.to_string());
        }
    }

    /// The value of `key`, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<&V> {
        if !self.entries.contains_key(key) {
            return None;
        }
        self.touch(key);
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Inserts (or replaces) `key`; returns how many entries were evicted to make room.
    pub fn insert(&mut self, key: String, value: V) -> usize {
        self.clock += 1;
        if let Some((_, used)) = self.entries.remove(&key) {
            self.order.remove(&used);
        }
        self.order.insert(self.clock, key.clone());
        self.entries.insert(key, (value, self.clock));
        let mut evicted = 0;
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some((_, used)) = self.entries.remove(key) {
            self.order.remove(&used);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn later(now_ms: u64, by: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX))
}

/// The decision cache of one worker VM, plus the shared tier when configured.
#[derive(Debug)]
pub struct Cache {
    local: Lru<Entry>,
    ttl: Duration,
    grace: Duration,
    shared: Option<SharedTier>,
}

/// What a store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Entries evicted from this worker's cache.
    pub evicted: usize,
}

impl Cache {
    /// A cache from its configuration; `grace` is the fail-static grace period (zero without
    /// fail-static); `namespace` scopes shared-data keys to this filter configuration.
    pub fn new(config: &DecisionCache, grace: Duration, namespace: &str) -> Self {
        let capacity = usize::try_from(config.max_entries).unwrap_or(usize::MAX);
        Cache {
            local: Lru::new(capacity),
            ttl: config.ttl,
            grace,
            shared: config.shared.then(|| SharedTier::new(namespace, capacity)),
        }
    }

    /// The default TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Entries held by this worker.
    pub fn len(&self) -> usize {
        self.local.len()
    }

    /// Whether this worker holds no entry.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    fn find(&mut self, key: &str, now_ms: u64, store: &dyn SharedData) -> Option<Entry> {
        let local = self
            .local
            .get(key)
            .filter(|entry| entry.key == key && now_ms < entry.stale_until_ms)
            .cloned();
        if local.is_some() {
            return local;
        }
        self.local.remove(key);
        let shared = self.shared.as_ref()?.get(store, key)?;
        if now_ms >= shared.stale_until_ms {
            return None;
        }
        self.local.insert(key.to_string(), shared.clone());
        Some(shared)
    }

    /// A decision for `key` within its TTL.
    pub fn lookup(&mut self, key: &str, now: SystemTime, store: &dyn SharedData) -> Lookup {
        let now_ms = millis(now);
        match self.find(key, now_ms, store) {
            Some(entry) if now_ms < entry.fresh_until_ms => Lookup::Fresh(entry.verdict),
            _ => Lookup::Miss,
        }
    }

    /// The last known decision for `key`, past its TTL but within the grace period
    /// (fail-static).
    pub fn last_known(
        &mut self,
        key: &str,
        now: SystemTime,
        store: &dyn SharedData,
    ) -> Option<Verdict> {
        let now_ms = millis(now);
        self.find(key, now_ms, store).map(|entry| entry.verdict)
    }

    /// Stores a decision for `ttl` (the default TTL when `None`).
    pub fn store(
        &mut self,
        key: &str,
        verdict: Verdict,
        ttl: Option<Duration>,
        now: SystemTime,
        store: &dyn SharedData,
    ) -> Result<Stored, Error> {
        let now_ms = millis(now);
        let ttl = ttl.unwrap_or(self.ttl);
        let fresh_until_ms = later(now_ms, ttl);
        let entry = Entry {
            key: key.to_string(),
            verdict,
            fresh_until_ms,
            stale_until_ms: later(fresh_until_ms, self.grace),
        };
        let evicted = self.local.insert(key.to_string(), entry.clone());
        if let Some(shared) = &self.shared {
            shared.put(store, &entry)?;
        }
        Ok(Stored { evicted })
    }
}

/// The shared-data tier: one key per decision (`<namespace>.<digest>`), and an index key
/// holding the digests in insertion order, so the tier stays bounded: when it is full, the
/// oldest decision's key is overwritten with an empty value (shared data has no delete).
/// Eviction in this tier is first-in first-out; each worker's own tier is LRU.
#[derive(Debug)]
struct SharedTier {
    namespace: String,
    capacity: usize,
}

/// Bytes of a digest in the shared index.
const DIGEST_BYTES: usize = 16;

impl SharedTier {
    fn new(namespace: &str, capacity: usize) -> Self {
        SharedTier {
            namespace: namespace.to_string(),
            capacity,
        }
    }

    fn digest(key: &str) -> [u8; DIGEST_BYTES] {
        let full = Sha256::digest(key.as_bytes());
        let mut digest = [0u8; DIGEST_BYTES];
        digest.copy_from_slice(full.get(..DIGEST_BYTES).unwrap_or(&[0u8; DIGEST_BYTES]));
        digest
    }

    fn entry_key(&self, digest: &[u8]) -> String {
        format!("{}.{}", self.namespace, hex(digest))
    }

    fn index_key(&self) -> String {
        format!("{}.index", self.namespace)
    }

    fn get(&self, store: &dyn SharedData, key: &str) -> Option<Entry> {
        let stored = store
            .get_shared_data(&self.entry_key(&Self::digest(key)))
            .ok()??;
        let entry: Entry = serde_json::from_slice(&stored.value).ok()?;
        // Same digest is not enough: the full key must match.
        (entry.key == key).then_some(entry)
    }

    fn put(&self, store: &dyn SharedData, entry: &Entry) -> Result<(), Error> {
        let digest = Self::digest(&entry.key);
        let bytes = serde_json::to_vec(entry)
            .map_err(|error| Error::InvalidArgument(format!("encoding a decision: {error}")))?;
        store.set_shared_data(&self.entry_key(&digest), &bytes, None)?;
        let capacity = self.capacity;
        let evicted = update(store, &self.index_key(), DEFAULT_CAS_ATTEMPTS, |current| {
            let mut digests: Vec<[u8; DIGEST_BYTES]> = current
                .unwrap_or_default()
                .chunks_exact(DIGEST_BYTES)
                .filter_map(|chunk| chunk.try_into().ok())
                .filter(|existing| *existing != digest)
                .collect();
            digests.push(digest);
            let overflow = digests.len().saturating_sub(capacity);
            let evicted: Vec<[u8; DIGEST_BYTES]> = digests.drain(..overflow).collect();
            Update::Write(digests.concat(), evicted)
        })?;
        for old in evicted {
            store.set_shared_data(&self.entry_key(&old), b"", None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Allow, Deny};
    use wasmesh_sdk::clock::Clock;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn allow() -> Verdict {
        Verdict::Allow(Allow::default())
    }

    fn deny(status: u16) -> Verdict {
        Verdict::Deny(Deny {
            status,
            headers: vec![],
            body: b"no".to_vec(),
        })
    }

    fn cache(json: &str, grace: Duration) -> Cache {
        let config: DecisionCache = load(json.as_bytes()).unwrap();
        Cache::new(&config, grace, "wasmesh.policy.test")
    }

    #[test]
    fn key_material_separates_every_attribute_unambiguously() {
        let key: CacheKey = load(
            br#"{"headers": ["authorization", "x-tenant"], "principal": true, "source_address": true}"#,
        )
        .unwrap();
        let builder = KeyBuilder::new(key);
        let base = MemoryRequest::get("/a?b=1")
            .with_header("authorization", "Bearer t")
            .with_source_address("10.0.0.1:5000".parse().unwrap());
        let material = builder.material(&base, None);
        assert_eq!(
            material,
            "v1|method=3:GET|path=6:/a?b=1|host=11:example.com|h:authorization#0=8:Bearer t|h:x-tenant!|principal!|source=8:10.0.0.1"
        );
        // The source port is not part of the key (every connection has its own).
        let other_port = MemoryRequest::get("/a?b=1")
            .with_header("authorization", "Bearer t")
            .with_source_address("10.0.0.1:6000".parse().unwrap());
        assert_eq!(builder.material(&other_port, None), material);
        let variants = [
            MemoryRequest::get("/a?b=2")
                .with_header("authorization", "Bearer t")
                .with_source_address("10.0.0.1:5000".parse().unwrap()),
            MemoryRequest::get("/a?b=1")
                .with_header("authorization", "Bearer u")
                .with_source_address("10.0.0.1:5000".parse().unwrap()),
            MemoryRequest::get("/a?b=1")
                .with_header("authorization", "Bearer t")
                .with_header("x-tenant", "")
                .with_source_address("10.0.0.1:5000".parse().unwrap()),
            MemoryRequest::get("/a?b=1")
                .with_header("authorization", "Bearer t")
                .with_header("authorization", "Bearer u")
                .with_source_address("10.0.0.1:5000".parse().unwrap()),
            MemoryRequest::get("/a?b=1")
                .with_header("authorization", "Bearer t")
                .with_source_address("10.0.0.2:5000".parse().unwrap()),
            MemoryRequest::get("/a?b=1")
                .with_header("authorization", "Bearer t")
                .with_source_address("10.0.0.1:5000".parse().unwrap())
                .with_mtls_peer("spiffe://x"),
        ];
        for variant in &variants {
            assert_ne!(builder.material(variant, None), material, "{variant:?}");
        }
        assert_ne!(builder.material(&base, Some(b"body")), material);
        assert_ne!(
            builder.material(&base, Some(b"body")),
            builder.material(&base, Some(b"body2"))
        );
    }

    #[test]
    fn a_value_cannot_forge_another_attribute() {
        let builder = KeyBuilder::new(load(br#"{"headers": ["a", "b"]}"#).unwrap());
        // Without lengths, `a = "1|h:b#0=2"` with b absent could read like a=1, b=2.
        let forged = MemoryRequest::get("/").with_header("a", "1|h:b#0=1:2");
        let honest = MemoryRequest::get("/")
            .with_header("a", "1")
            .with_header("b", "2");
        assert_ne!(
            builder.material(&forged, None),
            builder.material(&honest, None)
        );
    }

    #[test]
    fn claims_come_from_the_forwarded_payload() {
        let builder = KeyBuilder::new(
            load(br#"{"headers": [], "claims": {"header": "x-jwt-payload", "names": ["sub", "groups"]}}"#)
                .unwrap(),
        );
        // {"sub":"alice","groups":["a","b"],"iat":1} base64url without padding.
        let alice = "eyJzdWIiOiJhbGljZSIsImdyb3VwcyI6WyJhIiwiYiJdLCJpYXQiOjF9";
        // {"sub":"alice","groups":["a","b"],"iat":2}: only an unkeyed claim differs.
        let alice_later = "eyJzdWIiOiJhbGljZSIsImdyb3VwcyI6WyJhIiwiYiJdLCJpYXQiOjJ9";
        // {"sub":"bob","groups":["a","b"]}
        let bob = "eyJzdWIiOiJib2IiLCJncm91cHMiOlsiYSIsImIiXX0";
        let material = |payload: &str| {
            builder.material(
                &MemoryRequest::get("/").with_header("x-jwt-payload", payload),
                None,
            )
        };
        assert!(material(alice).contains(r#"|claim:sub=7:"alice"|claim:groups=9:["a","b"]"#));
        assert_eq!(material(alice), material(alice_later));
        assert_ne!(material(alice), material(bob));
        assert!(material("not base64!").contains("|claim:sub!|claim:groups!"));
        assert_eq!(base64url_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("aGk="), Some(b"hi".to_vec()));
    }

    #[test]
    fn entries_expire_after_their_ttl_and_linger_for_fail_static() {
        let host = MemoryHost::new();
        let mut cache = cache(r#"{"ttl": "10s"}"#, Duration::from_secs(60));
        let now = host.now();
        cache.store("k", allow(), None, now, &host).unwrap();
        assert_eq!(cache.lookup("k", now, &host), Lookup::Fresh(allow()));
        let later = now + Duration::from_secs(10);
        assert_eq!(cache.lookup("k", later, &host), Lookup::Miss);
        assert_eq!(cache.last_known("k", later, &host), Some(allow()));
        let too_late = now + Duration::from_secs(70);
        assert_eq!(cache.last_known("k", too_late, &host), None);
        assert!(
            cache.is_empty(),
            "an entry past its grace period is dropped"
        );
        // A per-decision TTL wins over the default.
        cache
            .store("short", deny(403), Some(Duration::from_secs(1)), now, &host)
            .unwrap();
        assert_eq!(
            cache.lookup("short", now + Duration::from_millis(999), &host),
            Lookup::Fresh(deny(403))
        );
        assert_eq!(
            cache.lookup("short", now + Duration::from_secs(1), &host),
            Lookup::Miss
        );
    }

    #[test]
    fn least_recently_used_entry_is_evicted() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut cache = cache(r#"{"max_entries": 2}"#, Duration::ZERO);
        cache.store("a", allow(), None, now, &host).unwrap();
        cache.store("b", deny(401), None, now, &host).unwrap();
        // Using `a` makes `b` the least recently used.
        assert_eq!(cache.lookup("a", now, &host), Lookup::Fresh(allow()));
        let stored = cache.store("c", allow(), None, now, &host).unwrap();
        assert_eq!(stored.evicted, 1);
        assert_eq!(cache.lookup("b", now, &host), Lookup::Miss);
        assert_eq!(cache.lookup("a", now, &host), Lookup::Fresh(allow()));
        assert_eq!(cache.lookup("c", now, &host), Lookup::Fresh(allow()));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn shared_tier_serves_other_workers_and_stays_bounded() {
        let host = MemoryHost::new();
        let now = host.now();
        let json = r#"{"max_entries": 2, "shared": true}"#;
        let mut first = cache(json, Duration::ZERO);
        let mut second = cache(json, Duration::ZERO);
        first.store("a", deny(401), None, now, &host).unwrap();
        assert_eq!(second.lookup("a", now, &host), Lookup::Fresh(deny(401)));
        first.store("b", allow(), None, now, &host).unwrap();
        first.store("c", allow(), None, now, &host).unwrap();
        // `a` left the shared tier (FIFO) but `second` copied it into its own tier.
        let mut third = cache(json, Duration::ZERO);
        assert_eq!(third.lookup("a", now, &host), Lookup::Miss);
        assert_eq!(third.lookup("c", now, &host), Lookup::Fresh(allow()));
        assert_eq!(second.lookup("a", now, &host), Lookup::Fresh(deny(401)));
        let index = host
            .get_shared_data("wasmesh.policy.test.index")
            .unwrap()
            .unwrap();
        assert_eq!(index.value.len(), 2 * DIGEST_BYTES);
    }

    #[test]
    fn a_shared_entry_with_another_key_is_never_used() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut cache = cache(r#"{"shared": true}"#, Duration::ZERO);
        // Plant an entry for key "b" under the digest of key "a" (a forged collision).
        let tier = SharedTier::new("wasmesh.policy.test", 10);
        let planted = Entry {
            key: "b".into(),
            verdict: allow(),
            fresh_until_ms: u64::MAX,
            stale_until_ms: u64::MAX,
        };
        host.set_shared_data(
            &tier.entry_key(&SharedTier::digest("a")),
            &serde_json::to_vec(&planted).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(cache.lookup("a", now, &host), Lookup::Miss);
    }

    #[test]
    fn lru_replaces_and_removes() {
        let mut lru = Lru::new(0);
        assert_eq!(lru.insert("a".into(), 1), 0);
        assert_eq!(lru.insert("a".into(), 2), 0);
        assert_eq!(lru.get("a"), Some(&2));
        assert_eq!(lru.insert("b".into(), 3), 1);
        assert_eq!(lru.get("a"), None);
        lru.remove("b");
        assert!(lru.is_empty());
    }
}

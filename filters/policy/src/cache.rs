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
use wasmesh_sdk::shared::{create_if_absent, SharedData, DEFAULT_CAS_ATTEMPTS};

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

    /// Creates the shared tier's slots that do not exist yet (nothing without `shared`). Run at
    /// start-up, before traffic: only a key that exists gets a CAS token, and makes every later
    /// store a compare-and-swap.
    pub fn create_shared_entries(&self, store: &dyn SharedData) -> Result<(), Error> {
        match &self.shared {
            Some(shared) => shared.create(store),
            None => Ok(()),
        }
    }

    /// Every shared-data key the shared tier uses (none without `shared`): its complete
    /// footprint, created at start-up.
    pub fn shared_keys(&self) -> Vec<String> {
        self.shared
            .as_ref()
            .map(|shared| shared.keys().collect())
            .unwrap_or_default()
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
            shared.put(store, &entry, now_ms)?;
        }
        Ok(Stored { evicted })
    }
}

/// The shared-data tier: a table of `max_entries` slots, keys `<namespace>.<index>`, every one
/// created (empty) at start-up by [`Cache::create_shared_entries`], so that every store is a
/// compare-and-swap on a key that exists. (The ABI has no "create if absent": two workers that
/// create one key at the same instant both succeed, and one silently replaces the other; a
/// store that rewrote a per-decision key, or emptied an evicted one, without a token would lose
/// what another worker wrote in between.)
///
/// A decision lives in one slot among the [`SHARED_PROBE_WINDOW`] slots from its home (its key
/// digest modulo the table size): its own slot if it has one, else the first free one (never
/// used, or holding a decision past its grace period), else the live decision closest to the end
/// of its grace period is replaced. A slot holds the key digest and the end of the grace period
/// (read by a probe without decoding JSON), then the JSON entry with its full key. Slots are never
/// emptied again, so nothing is ever placed past a never-used slot and a lookup stops there. The
/// tier holds exactly `max_entries` shared-data keys, whatever the traffic.
#[derive(Debug)]
struct SharedTier {
    namespace: String,
    slots: u32,
}

/// How many slots from its home a decision may live in.
pub const SHARED_PROBE_WINDOW: u32 = 8;

/// Bytes of a digest in a slot.
const DIGEST_BYTES: usize = 16;

/// Bytes of a slot before its JSON entry: the key digest, then the end of the grace period
/// (milliseconds since the Unix epoch, little-endian).
const SLOT_HEADER: usize = DIGEST_BYTES + 8;

/// A slot's value, decoded as far as a probe needs.
enum Slot<'a> {
    /// Empty: never used.
    Unused,
    /// A decision.
    Holds {
        digest: &'a [u8],
        stale_until_ms: u64,
        json: &'a [u8],
    },
    /// Not a slot this filter wrote: reusable.
    Malformed,
}

impl Slot<'_> {
    fn parse(bytes: &[u8]) -> Slot<'_> {
        if bytes.is_empty() {
            return Slot::Unused;
        }
        let Some((header, json)) = bytes.split_at_checked(SLOT_HEADER) else {
            return Slot::Malformed;
        };
        let Some((digest, until)) = header.split_at_checked(DIGEST_BYTES) else {
            return Slot::Malformed;
        };
        match until.try_into().map(u64::from_le_bytes) {
            Ok(stale_until_ms) => Slot::Holds {
                digest,
                stale_until_ms,
                json,
            },
            Err(_) => Slot::Malformed,
        }
    }
}

/// Where a store writes: a slot key and the CAS token it was read with.
struct Place {
    key: String,
    cas: Option<u32>,
    /// The end of the grace period of the live decision it replaces (eviction candidates).
    replaces_until_ms: u64,
}

impl SharedTier {
    fn new(namespace: &str, capacity: usize) -> Self {
        SharedTier {
            namespace: namespace.to_string(),
            slots: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
        }
    }

    fn digest(key: &str) -> [u8; DIGEST_BYTES] {
        let full = Sha256::digest(key.as_bytes());
        let mut digest = [0u8; DIGEST_BYTES];
        digest.copy_from_slice(full.get(..DIGEST_BYTES).unwrap_or(&[0u8; DIGEST_BYTES]));
        digest
    }

    fn slot_key(&self, index: u64) -> String {
        format!("{}.{index}", self.namespace)
    }

    /// Every key of the table.
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..u64::from(self.slots)).map(|index| self.slot_key(index))
    }

    /// The slot keys a decision with `digest` may live in, from its home.
    fn window(&self, digest: &[u8; DIGEST_BYTES]) -> impl Iterator<Item = String> + '_ {
        let slots = u64::from(self.slots);
        let mut home_bytes = [0u8; 8];
        for (byte, digest_byte) in home_bytes.iter_mut().zip(digest.iter()) {
            *byte = *digest_byte;
        }
        let home = u64::from_le_bytes(home_bytes) % slots;
        (0..u64::from(SHARED_PROBE_WINDOW.min(self.slots)))
            .map(move |step| self.slot_key((home + step) % slots))
    }

    /// Creates the slots that do not exist yet (empty), in order. Run at start-up, before
    /// traffic. Shared data has no delete, and every worker creates the slots in order, so when
    /// the last slot exists every slot does: the workers that start after the first read one key.
    fn create(&self, store: &dyn SharedData) -> Result<(), Error> {
        let last = self.slot_key(u64::from(self.slots).saturating_sub(1));
        if store.get_shared_data(&last)?.is_some() {
            return Ok(());
        }
        self.keys()
            .try_for_each(|key| create_if_absent(store, &key, b"").map(|_| ()))
    }

    fn get(&self, store: &dyn SharedData, key: &str) -> Option<Entry> {
        let digest = Self::digest(key);
        for slot_key in self.window(&digest) {
            // A slot that cannot be read (or was never created) ends the probe: a miss.
            let stored = store.get_shared_data(&slot_key).ok()??;
            match Slot::parse(&stored.value) {
                Slot::Unused => return None,
                Slot::Holds {
                    digest: owner,
                    json,
                    ..
                } if owner == digest => {
                    let entry: Entry = serde_json::from_slice(json).ok()?;
                    // Same digest is not enough: the full key must match.
                    return (entry.key == key).then_some(entry);
                }
                Slot::Holds { .. } | Slot::Malformed => {}
            }
        }
        None
    }

    /// Stores `entry` at host time `now_ms`: the slot is chosen and written with the CAS token
    /// it was read with; when another worker wrote it in between, the probe starts over.
    fn put(&self, store: &dyn SharedData, entry: &Entry, now_ms: u64) -> Result<(), Error> {
        let digest = Self::digest(&entry.key);
        let json = serde_json::to_vec(entry)
            .map_err(|error| Error::InvalidArgument(format!("encoding a decision: {error}")))?;
        let mut value = Vec::with_capacity(SLOT_HEADER + json.len());
        value.extend_from_slice(&digest);
        value.extend_from_slice(&entry.stale_until_ms.to_le_bytes());
        value.extend_from_slice(&json);
        for _ in 0..DEFAULT_CAS_ATTEMPTS {
            let place = self.place(store, &digest, now_ms)?;
            match store.set_shared_data(&place.key, &value, place.cas) {
                Ok(()) => return Ok(()),
                Err(Error::CasMismatch { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(Error::CasContention {
            key: self.namespace.clone(),
            attempts: DEFAULT_CAS_ATTEMPTS,
        })
    }

    /// The slot a decision with `digest` goes to: its own, else the first free one (never used,
    /// or past its grace period), else the live one closest to the end of its grace period.
    fn place(
        &self,
        store: &dyn SharedData,
        digest: &[u8; DIGEST_BYTES],
        now_ms: u64,
    ) -> Result<Place, Error> {
        let mut free: Option<Place> = None;
        let mut victim: Option<Place> = None;
        for key in self.window(digest) {
            let Some(current) = store.get_shared_data(&key)? else {
                // Never created (start-up could not create it): written without a token.
                return Ok(free.unwrap_or(Place {
                    key,
                    cas: None,
                    replaces_until_ms: 0,
                }));
            };
            let cas = Some(current.cas);
            match Slot::parse(&current.value) {
                Slot::Holds { digest: owner, .. } if owner == digest => {
                    return Ok(Place {
                        key,
                        cas,
                        replaces_until_ms: 0,
                    })
                }
                Slot::Unused => {
                    return Ok(free.unwrap_or(Place {
                        key,
                        cas,
                        replaces_until_ms: 0,
                    }))
                }
                Slot::Malformed => {
                    free.get_or_insert(Place {
                        key,
                        cas,
                        replaces_until_ms: 0,
                    });
                }
                Slot::Holds { stale_until_ms, .. } if stale_until_ms <= now_ms => {
                    free.get_or_insert(Place {
                        key,
                        cas,
                        replaces_until_ms: 0,
                    });
                }
                Slot::Holds { stale_until_ms, .. } => {
                    if victim
                        .as_ref()
                        .is_none_or(|victim| victim.replaces_until_ms > stale_until_ms)
                    {
                        victim = Some(Place {
                            key,
                            cas,
                            replaces_until_ms: stale_until_ms,
                        });
                    }
                }
            }
        }
        free.or(victim)
            .ok_or_else(|| Error::InvalidArgument("empty shared decision table".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Allow, Deny};
    use std::cell::{Cell, RefCell};
    use wasmesh_sdk::clock::Clock;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::shared::SharedValue;
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

    fn shared_cache(max_entries: u32, host: &dyn SharedData) -> Cache {
        let cache = cache(
            &format!(r#"{{"max_entries": {max_entries}, "shared": true}}"#),
            Duration::ZERO,
        );
        cache.create_shared_entries(host).unwrap();
        cache
    }

    /// What "another worker" does between a read and a write.
    type Meddle<'a> = Box<dyn FnOnce(&MemoryHost) + 'a>;

    /// A store that records every write and can let "another worker" write first.
    struct Recorder<'a> {
        inner: &'a MemoryHost,
        writes: RefCell<Vec<(String, Option<u32>)>>,
        reads: Cell<usize>,
        /// Run (once) just before the next write, after the reads that chose its slot.
        meddle: RefCell<Option<Meddle<'a>>>,
    }

    impl<'a> Recorder<'a> {
        fn new(inner: &'a MemoryHost) -> Self {
            Recorder {
                inner,
                writes: RefCell::new(Vec::new()),
                reads: Cell::new(0),
                meddle: RefCell::new(None),
            }
        }
    }

    impl SharedData for Recorder<'_> {
        fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get_shared_data(key)
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
            if let Some(meddle) = self.meddle.borrow_mut().take() {
                meddle(self.inner);
            }
            self.writes.borrow_mut().push((key.to_string(), cas));
            self.inner.set_shared_data(key, value, cas)
        }
    }

    fn stored(host: &MemoryHost, keys: &[String]) -> Vec<Entry> {
        keys.iter()
            .filter_map(|key| {
                let value = host.get_shared_data(key).unwrap()?.value;
                match Slot::parse(&value) {
                    Slot::Holds { json, .. } => Some(serde_json::from_slice(json).unwrap()),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn shared_tier_serves_other_workers_and_stays_bounded() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut first = shared_cache(2, &host);
        let mut second = shared_cache(2, &host);
        let keys = first.shared_keys();
        assert_eq!(
            keys,
            ["wasmesh.policy.test.0", "wasmesh.policy.test.1"],
            "the footprint, created at start-up"
        );
        for key in &keys {
            assert_eq!(host.get_shared_data(key).unwrap().unwrap().value, b"");
        }
        first.store("a", deny(401), None, now, &host).unwrap();
        assert_eq!(second.lookup("a", now, &host), Lookup::Fresh(deny(401)));
        first.store("b", allow(), None, now, &host).unwrap();
        first.store("c", allow(), None, now, &host).unwrap();
        // Two places for three decisions: one left the shared tier, but `second` copied `a`
        // into its own tier.
        let mut third = shared_cache(2, &host);
        let shared: Vec<String> = stored(&host, &keys).into_iter().map(|e| e.key).collect();
        assert_eq!(shared.len(), 2);
        assert!(shared.contains(&"c".to_string()), "{shared:?}");
        assert_eq!(third.lookup("c", now, &host), Lookup::Fresh(allow()));
        assert_eq!(second.lookup("a", now, &host), Lookup::Fresh(deny(401)));
        assert_eq!(
            host.get_shared_data("wasmesh.policy.test.2").unwrap(),
            None,
            "nothing outside the table"
        );
    }

    #[test]
    fn the_first_worker_creates_the_slots_and_the_others_read_one_key() {
        let host = MemoryHost::new();
        let first = Recorder::new(&host);
        shared_cache(100, &first);
        assert_eq!((first.reads.get(), first.writes.borrow().len()), (101, 100));
        let next = Recorder::new(&host);
        shared_cache(100, &next);
        assert_eq!((next.reads.get(), next.writes.borrow().len()), (1, 0));
        // A larger table (same namespace) creates what it lacks.
        let larger = Recorder::new(&host);
        shared_cache(150, &larger);
        assert_eq!(larger.writes.borrow().len(), 50);
        for index in 0..150 {
            let key = format!("wasmesh.policy.test.{index}");
            assert!(host.get_shared_data(&key).unwrap().is_some(), "{key}");
        }
    }

    #[test]
    fn every_shared_store_is_a_compare_and_swap_on_a_created_slot() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut cache = shared_cache(4, &host);
        let recorder = Recorder::new(&host);
        for (index, key) in ["a", "b", "a", "c", "d", "e", "f", "a"].iter().enumerate() {
            let at = now + Duration::from_secs(u64::try_from(index).unwrap());
            cache.store(key, allow(), None, at, &recorder).unwrap();
        }
        let writes = recorder.writes.borrow();
        assert_eq!(writes.len(), 8);
        for (key, cas) in writes.iter() {
            assert!(cas.is_some(), "{key} written without a token");
            assert!(cache.shared_keys().contains(key), "{key}");
        }
    }

    #[test]
    fn a_store_that_loses_a_race_for_a_slot_starts_over() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut cache = shared_cache(1, &host);
        let mut other = shared_cache(1, &host);
        // Between this worker's read of the slot and its write, another worker stores "b" there.
        let recorder = Recorder::new(&host);
        *recorder.meddle.borrow_mut() = Some(Box::new(move |host: &MemoryHost| {
            other.store("b", deny(403), None, now, host).unwrap();
        }));
        cache.store("a", allow(), None, now, &recorder).unwrap();
        let writes = recorder.writes.borrow();
        assert_eq!(
            writes.len(),
            2,
            "the first write failed its CAS and was retried"
        );
        // The retry saw "b" (live) and replaced it knowingly: one slot, "a" in it.
        let mut third = shared_cache(1, &host);
        assert_eq!(third.lookup("a", now, &host), Lookup::Fresh(allow()));
        assert_eq!(third.lookup("b", now, &host), Lookup::Miss);

        // The same key stored by two workers at once ends in one slot, not two.
        let host = MemoryHost::new();
        let mut cache = shared_cache(8, &host);
        let mut other = shared_cache(8, &host);
        let recorder = Recorder::new(&host);
        *recorder.meddle.borrow_mut() = Some(Box::new(move |host: &MemoryHost| {
            other.store("k", deny(403), None, now, host).unwrap();
        }));
        cache.store("k", allow(), None, now, &recorder).unwrap();
        let keys = cache.shared_keys();
        let entries = stored(&host, &keys);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].verdict, allow(), "the last store wins");
    }

    #[test]
    fn slots_past_their_grace_period_are_reused_before_live_ones() {
        let host = MemoryHost::new();
        let now = host.now();
        let grace = Duration::from_secs(60);
        let config: DecisionCache =
            load(br#"{"ttl": "10s", "max_entries": 2, "shared": true}"#.as_slice()).unwrap();
        let new_cache = || {
            let cache = Cache::new(&config, grace, "wasmesh.policy.test");
            cache.create_shared_entries(&host).unwrap();
            cache
        };
        let mut cache = new_cache();
        // "old" lives until now + 10 s + 60 s; "young" until 30 s later.
        cache.store("old", allow(), None, now, &host).unwrap();
        cache
            .store(
                "young",
                deny(403),
                None,
                now + Duration::from_secs(30),
                &host,
            )
            .unwrap();
        // Both live: the one closest to the end of its grace period ("old") gives way.
        let at = now + Duration::from_secs(40);
        cache.store("new", allow(), None, at, &host).unwrap();
        let mut reader = new_cache();
        assert_eq!(reader.last_known("old", at, &host), None);
        assert_eq!(reader.last_known("young", at, &host), Some(deny(403)));
        // Later, "young" is past its grace period: its slot is taken, "new" stays.
        let later = now + Duration::from_secs(101);
        cache.store("newer", allow(), None, later, &host).unwrap();
        let mut reader = new_cache();
        assert_eq!(reader.last_known("new", later, &host), Some(allow()));
        assert_eq!(reader.lookup("newer", later, &host), Lookup::Fresh(allow()));
    }

    #[test]
    fn a_shared_entry_with_another_key_is_never_used() {
        let host = MemoryHost::new();
        let now = host.now();
        let mut cache = shared_cache(1, &host);
        // Plant an entry for key "b" under the digest of key "a" (a forged collision).
        let planted = Entry {
            key: "b".into(),
            verdict: allow(),
            fresh_until_ms: u64::MAX,
            stale_until_ms: u64::MAX,
        };
        let mut value = SharedTier::digest("a").to_vec();
        value.extend_from_slice(&u64::MAX.to_le_bytes());
        value.extend_from_slice(&serde_json::to_vec(&planted).unwrap());
        host.set_shared_data("wasmesh.policy.test.0", &value, None)
            .unwrap();
        assert_eq!(cache.lookup("a", now, &host), Lookup::Miss);
        // A slot this filter did not write is reused, not trusted.
        host.set_shared_data("wasmesh.policy.test.0", b"junk", None)
            .unwrap();
        assert_eq!(cache.lookup("a", now, &host), Lookup::Miss);
        cache.store("a", deny(401), None, now, &host).unwrap();
        assert_eq!(
            shared_cache(1, &host).lookup("a", now, &host),
            Lookup::Fresh(deny(401))
        );
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

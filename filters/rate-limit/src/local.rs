//! Local mode: Envoy `local_ratelimit` semantics over the shared-data buckets of [`crate::bucket`].
//!
//! As Envoy's `LocalRateLimiterImpl`:
//! * configured descriptors are tried strictest first (fewest tokens per second, Envoy's integer
//!   arithmetic, configuration order among equals); each one matched by a request descriptor
//!   (same keys in order, equal values, an empty configured value matching any value) consumes
//!   that request descriptor's hits; the first that is empty denies the request and later ones
//!   are not consumed;
//! * the default bucket (`token_bucket`) is consumed (one token) when no descriptor matched, or
//!   always with `always_consume_default_token_bucket` (the default);
//! * the headers describe the denying bucket, else the first matched descriptor, else the
//!   default bucket.

use std::time::Duration;

use wasmesh_sdk::error::Error;
use wasmesh_sdk::shared::SharedData;

use crate::bucket::{self, acquire, create_entries, fingerprint, BucketQuota, Location};
use crate::config::{Config, DescriptorEntry, TokenBucket};
use crate::descriptor::RequestDescriptor;
use crate::headers::BucketState;

/// A configured bucket: its quota and where its state lives.
#[derive(Debug, Clone)]
struct Bucket {
    quota: BucketQuota,
    /// The shared-data key (fixed bucket) or key prefix (table of per-value buckets).
    key: String,
    /// `Some(slots)` for a wildcard descriptor.
    slots: Option<u32>,
    /// Name in the IETF headers.
    name: String,
    /// Envoy's sort key: tokens per second, integer division.
    fill_per_second: u64,
}

impl Bucket {
    fn new(bucket: &TokenBucket, key: String, slots: Option<u32>, name: String) -> Option<Self> {
        let seconds = bucket.fill_interval.as_secs().max(1);
        Some(Bucket {
            quota: BucketQuota::new(bucket)?,
            key,
            slots,
            name,
            fill_per_second: u64::from(bucket.tokens_per_fill()) / seconds,
        })
    }

    fn location(&self, request: Option<&RequestDescriptor>) -> Location {
        match (self.slots, request) {
            (Some(slots), Some(request)) => Location::Table {
                prefix: self.key.clone(),
                slots,
                fingerprint: fingerprint(
                    request
                        .entries
                        .iter()
                        .map(|(key, value)| (key.as_str(), value.as_str())),
                ),
            },
            _ => Location::Fixed(self.key.clone()),
        }
    }

    /// Every entry of the bucket, for creation at startup.
    fn all_entries(&self) -> Location {
        match self.slots {
            Some(slots) => Location::Table {
                prefix: self.key.clone(),
                slots,
                fingerprint: [0; 16],
            },
            None => Location::Fixed(self.key.clone()),
        }
    }

    fn state(&self, decision: &bucket::Decision) -> BucketState {
        BucketState {
            name: self.name.clone(),
            limit: decision.limit,
            remaining: decision.remaining,
            next_token: decision.reset,
            full_in: decision.full_in,
            window: Duration::from_nanos(
                self.quota
                    .period_nanos()
                    .saturating_mul(u64::from(self.quota.burst())),
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Descriptor {
    entries: Vec<DescriptorEntry>,
    bucket: Bucket,
}

impl Descriptor {
    fn matches(&self, request: &RequestDescriptor) -> bool {
        self.entries.len() == request.entries.len()
            && self
                .entries
                .iter()
                .zip(&request.entries)
                .all(|(configured, (key, value))| {
                    configured.key == *key
                        && (configured.value.is_empty() || configured.value == *value)
                })
    }
}

/// What a local check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The bucket the rate limit headers describe (`None`: no bucket applied).
    pub state: Option<BucketState>,
    /// Shared-data failures (the affected buckets failed open).
    pub errors: Vec<Error>,
    /// Live per-value buckets evicted to make room.
    pub evicted: u32,
}

/// The local limiter of one plugin configuration.
#[derive(Debug, Clone)]
pub struct LocalLimiter {
    default: Option<Bucket>,
    /// Strictest first.
    descriptors: Vec<Descriptor>,
    always_consume_default: bool,
    cas_attempts: u32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A bucket identity that changes when its entries or quota change, so a reconfigured bucket
/// starts fresh instead of inheriting another bucket's state.
fn bucket_id(entries: &[DescriptorEntry], bucket: &TokenBucket) -> String {
    let quota = format!(
        "{}/{}/{}",
        bucket.max_tokens,
        bucket.tokens_per_fill(),
        bucket.fill_interval.as_nanos()
    );
    let mut parts: Vec<(&str, &str)> = entries
        .iter()
        .map(|entry| (entry.key.as_str(), entry.value.as_str()))
        .collect();
    parts.push(("", quota.as_str()));
    hex(&fingerprint(parts)[..8])
}

fn descriptor_name(entries: &[DescriptorEntry]) -> String {
    entries
        .iter()
        .map(|entry| {
            let value = if entry.value.is_empty() {
                "*"
            } else {
                entry.value.as_str()
            };
            format!("{}={value}", entry.key)
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl LocalLimiter {
    /// Builds the limiter of a validated local configuration. Shared-data keys start with
    /// `wasmesh.rate_limit.<stat_prefix>.`.
    pub fn new(config: &Config) -> Self {
        let namespace = format!("wasmesh.rate_limit.{}", config.stat_prefix);
        let default = config.token_bucket.as_ref().and_then(|bucket| {
            Bucket::new(
                bucket,
                format!("{namespace}.default.{}", bucket_id(&[], bucket)),
                None,
                "default".to_string(),
            )
        });
        let mut descriptors: Vec<Descriptor> = config
            .descriptors
            .iter()
            .filter_map(|descriptor| {
                let slots = descriptor
                    .is_wildcard()
                    .then(|| config.max_dynamic_descriptors());
                let bucket = Bucket::new(
                    &descriptor.token_bucket,
                    format!(
                        "{namespace}.descriptor.{}",
                        bucket_id(&descriptor.entries, &descriptor.token_bucket)
                    ),
                    slots,
                    descriptor_name(&descriptor.entries),
                )?;
                Some(Descriptor {
                    entries: descriptor.entries.clone(),
                    bucket,
                })
            })
            .collect();
        // Stable: equal rates keep configuration order.
        descriptors.sort_by_key(|descriptor| descriptor.bucket.fill_per_second);
        LocalLimiter {
            default,
            descriptors,
            always_consume_default: config.always_consume_default_token_bucket(),
            cas_attempts: config.wasmesh.cas_attempts,
        }
    }

    /// Creates every shared-data entry this limiter uses (see [`bucket::create_entries`]).
    pub fn create_entries(&self, store: &dyn SharedData) -> Result<(), Error> {
        for bucket in self
            .default
            .iter()
            .chain(self.descriptors.iter().map(|descriptor| &descriptor.bucket))
        {
            create_entries(store, &bucket.all_entries())?;
        }
        Ok(())
    }

    /// The number of shared-data entries this limiter uses at most.
    pub fn entry_bound(&self) -> u64 {
        self.default
            .iter()
            .chain(self.descriptors.iter().map(|descriptor| &descriptor.bucket))
            .map(|bucket| u64::from(bucket.slots.unwrap_or(1)))
            .sum()
    }

    /// Every shared-data key this limiter may write: its complete footprint.
    pub fn shared_keys(&self) -> Vec<String> {
        self.default
            .iter()
            .chain(self.descriptors.iter().map(|descriptor| &descriptor.bucket))
            .flat_map(|bucket| match bucket.slots {
                Some(slots) => (0..slots)
                    .map(|index| format!("{}.{index}", bucket.key))
                    .collect(),
                None => vec![bucket.key.clone()],
            })
            .collect()
    }

    /// Whether any configured descriptor exists (Envoy only builds request descriptors then).
    pub fn has_descriptors(&self) -> bool {
        !self.descriptors.is_empty()
    }

    /// Decides one request at host time `now_nanos`.
    pub fn check(
        &self,
        store: &dyn SharedData,
        requests: &[RequestDescriptor],
        now_nanos: u64,
    ) -> Outcome {
        let mut outcome = Outcome {
            allowed: true,
            state: None,
            errors: Vec::new(),
            evicted: 0,
        };
        let mut take = |bucket: &Bucket, request: Option<&RequestDescriptor>, hits: u64| {
            let hits = u32::try_from(hits).unwrap_or(u32::MAX);
            let decision = acquire(
                store,
                &bucket.location(request),
                &bucket.quota,
                hits,
                now_nanos,
                self.cas_attempts,
            );
            outcome.evicted += u32::from(decision.evicted);
            if let Some(error) = decision.error.clone() {
                outcome.errors.push(error);
            }
            decision
        };
        let mut first_matched: Option<BucketState> = None;
        for descriptor in &self.descriptors {
            let Some(request) = requests.iter().find(|request| descriptor.matches(request)) else {
                continue;
            };
            let decision = take(&descriptor.bucket, Some(request), request.hits);
            let state = descriptor.bucket.state(&decision);
            if !decision.allowed {
                return Outcome {
                    allowed: false,
                    state: Some(state),
                    ..outcome
                };
            }
            first_matched.get_or_insert(state);
        }
        let mut state = first_matched;
        let matched = state.is_some();
        if let Some(default) = &self.default {
            if !matched || self.always_consume_default {
                let decision = take(default, None, 1);
                let default_state = default.state(&decision);
                if !decision.allowed {
                    return Outcome {
                        allowed: false,
                        state: Some(default_state),
                        ..outcome
                    };
                }
                state.get_or_insert(default_state);
            }
        }
        Outcome { state, ..outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::testing::MemoryHost;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn limiter(json: &str, host: &MemoryHost) -> LocalLimiter {
        let config = load::<Config>(json.as_bytes()).unwrap();
        let limiter = LocalLimiter::new(&config);
        limiter.create_entries(host).unwrap();
        limiter
    }

    fn descriptor(entries: &[(&str, &str)]) -> RequestDescriptor {
        RequestDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hits: 1,
        }
    }

    const CONFIG: &str = r#"{
      "stat_prefix": "rl",
      "token_bucket": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1s"},
      "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-client", "descriptor_key": "client"}}]}],
      "descriptors": [
        {"entries": [{"key": "client", "value": "vip"}], "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1s"}},
        {"entries": [{"key": "client"}], "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"}}
      ]
    }"#;

    #[test]
    fn fixed_and_wildcard_descriptors_have_separate_buckets() {
        let host = MemoryHost::new();
        let limiter = limiter(CONFIG, &host);
        let vip = [descriptor(&[("client", "vip")])];
        let alice = [descriptor(&[("client", "alice")])];
        let bob = [descriptor(&[("client", "bob")])];
        // "vip" matches both its fixed descriptor and the wildcard: the wildcard (strictest,
        // 2/60s = 0 tokens per second) is consumed first and limits it after two requests.
        let admitted = |requests: &[RequestDescriptor]| {
            (0..10)
                .filter(|_| limiter.check(&host, requests, NOW).allowed)
                .count()
        };
        assert_eq!(admitted(&alice), 2);
        assert_eq!(admitted(&bob), 2);
        assert_eq!(admitted(&vip), 2);
        // Unmatched requests only consume the default bucket: 100 minus the 6 admitted above.
        let none: [RequestDescriptor; 0] = [];
        assert_eq!(
            (0..200)
                .filter(|_| limiter.check(&host, &none, NOW).allowed)
                .count(),
            94
        );
        assert_eq!(limiter.entry_bound(), 1 + 1 + 20);
    }

    #[test]
    fn headers_describe_the_denying_or_first_matched_bucket() {
        let host = MemoryHost::new();
        let limiter = limiter(CONFIG, &host);
        let alice = [descriptor(&[("client", "alice")])];
        let first = limiter.check(&host, &alice, NOW);
        let state = first.state.unwrap();
        assert_eq!(
            (state.name.as_str(), state.limit, state.remaining),
            ("client=*", 2, 1)
        );
        limiter.check(&host, &alice, NOW);
        let denied = limiter.check(&host, &alice, NOW);
        assert!(!denied.allowed);
        let state = denied.state.unwrap();
        assert_eq!((state.limit, state.remaining), (2, 0));
        assert_eq!(state.next_token, Duration::from_secs(30));
        let none = limiter.check(&host, &[], NOW).state.unwrap();
        assert_eq!((none.name.as_str(), none.limit), ("default", 100));
    }

    #[test]
    fn default_bucket_is_skipped_for_matches_when_not_always_consumed() {
        let host = MemoryHost::new();
        let limiter = limiter(
            r#"{
              "stat_prefix": "rl",
              "always_consume_default_token_bucket": false,
              "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
              "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "g"}}]}],
              "descriptors": [{"entries": [{"key": "generic_key", "value": "g"}], "token_bucket": {"max_tokens": 3, "fill_interval": "60s"}}]
            }"#,
            &host,
        );
        let matched = [descriptor(&[("generic_key", "g")])];
        assert_eq!(
            (0..5)
                .filter(|_| limiter.check(&host, &matched, NOW).allowed)
                .count(),
            3
        );
        assert!(limiter.check(&host, &[], NOW).allowed);
        assert!(!limiter.check(&host, &[], NOW).allowed);
    }

    #[test]
    fn no_bucket_means_no_limit() {
        let host = MemoryHost::new();
        let limiter = limiter(r#"{"stat_prefix": "rl"}"#, &host);
        let outcome = limiter.check(&host, &[], NOW);
        assert!(outcome.allowed);
        assert_eq!(outcome.state, None);
        assert_eq!(limiter.entry_bound(), 0);
    }

    /// Records every key written.
    struct Recording<'a> {
        inner: &'a MemoryHost,
        written: std::cell::RefCell<std::collections::BTreeSet<String>>,
    }

    impl SharedData for Recording<'_> {
        fn get_shared_data(
            &self,
            key: &str,
        ) -> Result<Option<wasmesh_sdk::shared::SharedValue>, Error> {
            self.inner.get_shared_data(key)
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
            self.written.borrow_mut().insert(key.to_string());
            self.inner.set_shared_data(key, value, cas)
        }
    }

    #[test]
    fn unbounded_distinct_values_stay_within_the_table() {
        let host = MemoryHost::new();
        let limiter = limiter(
            &CONFIG.replace(
                "\"stat_prefix\"",
                "\"max_dynamic_descriptors\": 64, \"stat_prefix\"",
            ),
            &host,
        );
        let recording = Recording {
            inner: &host,
            written: Default::default(),
        };
        let (mut admitted, mut evicted) = (0, 0);
        for client in 0..5000 {
            let request = [descriptor(&[("client", &format!("client-{client}"))])];
            // Each value is seen twice, one millisecond apart.
            for at in [
                NOW + client * 2_000_000,
                NOW + client * 2_000_000 + 1_000_000,
            ] {
                let outcome = limiter.check(&recording, &request, at);
                admitted += u64::from(outcome.allowed);
                evicted += outcome.evicted;
            }
        }
        let footprint: std::collections::BTreeSet<String> =
            limiter.shared_keys().into_iter().collect();
        assert_eq!(footprint.len(), 1 + 1 + 64);
        let written = recording.written.into_inner();
        assert!(written.is_subset(&footprint), "{written:?}");
        assert_eq!(written.len(), 1 + 64, "the default bucket and every slot");
        // Per-client buckets never deny (two requests, burst 2); the default bucket (burst
        // 100, one token per 10ms) sees one request per ms for 9.999s: 100 + 999.
        assert_eq!(admitted, 1099);
        // 5000 live clients in 64 slots: most had to evict another client's bucket.
        assert!(evicted > 4000, "{evicted}");
    }

    #[test]
    fn hits_addend_consumes_several_tokens() {
        let host = MemoryHost::new();
        let limiter = limiter(CONFIG, &host);
        let heavy = [RequestDescriptor {
            hits: 2,
            ..descriptor(&[("client", "carol")])
        }];
        assert!(limiter.check(&host, &heavy, NOW).allowed);
        assert!(!limiter.check(&host, &heavy, NOW).allowed);
    }
}

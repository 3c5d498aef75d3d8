//! The filter's logic: which requirement applies to a request, verifying its tokens against
//! the requirement (with Envoy's semantics for `requires_any`/`requires_all`/`allow_missing*`
//! and multiple tokens), the reply on failure, what verified tokens add to the request, and the
//! remote key sets (fetched on demand by the first stream that needs them, refreshed and retried
//! by the root context).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::config::ConfigError;
use wasmesh_sdk::decision::{Decision, LocalReply};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::matcher::{normalize_path, StringMatcher};
use wasmesh_sdk::metrics::{stat_name, Counter, MetricSink};
use wasmesh_sdk::request::{validate_header_value, Request};

use crate::cache::{JwtCache, DEFAULT_MAX_TOKEN_SIZE, DEFAULT_SIZE};
use crate::config::{JwtAuthentication, JwtProvider};
use crate::extract::{remove_query_param, Extractor, FoundToken, Place};
use crate::jwks::{self, Jwks};
use crate::jwt::{self, Jwt};
use crate::keys::{FetchResult, RemoteKeys};
use crate::rules::{Audiences, Matcher, Requirement, Rule};
use crate::status::{Reason, Status, REASONS};
use crate::verify::verify_signature;

/// The filter name in stats and logs.
pub const FILTER: &str = "jwt_authn";
/// Response code details prefix, as Envoy: `jwt_authn_access_denied{<reason>}`.
pub const DENIED_DETAILS: &str = "jwt_authn_access_denied";
/// Details of the 400 for a `:path` that cannot be normalized for rule matching.
pub const INVALID_PATH_DETAILS: &str = "jwt_authn_invalid_path";
/// Envoy's default `clock_skew_seconds`.
pub const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Fastest tick (retries and refreshes are scheduled at tick granularity).
pub const MIN_TICK: Duration = Duration::from_millis(50);
/// Slowest tick when a remote key set exists.
pub const MAX_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Lifetime {
    Any,
    RequireExpiration,
    Max(Duration),
}

enum Keys {
    Local(Rc<Jwks>),
    Remote(Box<RefCell<RemoteKeys>>),
}

struct Provider {
    name: String,
    issuer: String,
    audiences: Audiences,
    subjects: Option<StringMatcher>,
    lifetime: Lifetime,
    clock_skew: u64,
    forward: bool,
    forward_payload_header: String,
    pad_forward_payload_header: bool,
    claim_to_headers: Vec<(String, String)>,
    extractor: Extractor,
    keys: Keys,
    cache: Option<RefCell<JwtCache>>,
}

struct Stats {
    allowed: Counter,
    denied: Counter,
    cors_preflight_bypassed: Counter,
    jwks_fetch_success: Counter,
    jwks_fetch_failed: Counter,
    jwt_cache_hit: Counter,
    jwt_cache_miss: Counter,
    reasons: Vec<Counter>,
}

impl Stats {
    fn define<S: MetricSink + ?Sized>(prefix: &str, sink: &mut S) -> Result<Self, Error> {
        let mut counter = |event: &str| Counter::define(sink, &stat_name(prefix, FILTER, event));
        let allowed = counter("allowed")?;
        let denied = counter("denied")?;
        let cors_preflight_bypassed = counter("cors_preflight_bypassed")?;
        let jwks_fetch_success = counter("jwks_fetch_success")?;
        let jwks_fetch_failed = counter("jwks_fetch_failed")?;
        let jwt_cache_hit = counter("jwt_cache_hit")?;
        let jwt_cache_miss = counter("jwt_cache_miss")?;
        let reasons = REASONS
            .iter()
            .map(|reason| counter(&format!("denied_{}", reason.name())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Stats {
            allowed,
            denied,
            cors_preflight_bypassed,
            jwks_fetch_success,
            jwks_fetch_failed,
            jwt_cache_hit,
            jwt_cache_miss,
            reasons,
        })
    }
}

/// Per-stream state.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Providers whose key set this stream waits for, with the fetch cycle count it saw.
    waiting: Vec<(usize, u64)>,
    /// Fetches this stream dispatched (they die with it).
    own_fetches: Vec<u32>,
    /// `WWW-Authenticate` realm: the request URI as received.
    realm: String,
    /// The requirement of the matched rule.
    requirement: Option<Rc<Requirement>>,
}

/// A change to the request, made once the request is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mutation {
    AddHeader(String, String),
    RemoveHeader(String),
    RemoveParam(String),
    SetHeader(String, String),
}

enum Step {
    Done(Status),
    NeedKeys,
}

/// The filter, built once per root context.
pub struct JwtAuthn {
    providers: Vec<Provider>,
    rules: Vec<Rule>,
    any_provider: Extractor,
    sanitized: Vec<String>,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
    principal_header: String,
    fetches: RefCell<HashMap<u32, usize>>,
    tick: Option<Duration>,
    stats: Stats,
}

fn compile_provider(
    name: &str,
    config: &JwtProvider,
    now: SystemTime,
) -> Result<Provider, ConfigError> {
    let path = format!("providers.{name}");
    let keys = match (&config.local_jwks, &config.remote_jwks) {
        (Some(local), _) => {
            let document = local
                .bytes()
                .map_err(|e| e.within(&format!("{path}.local_jwks")))?;
            let jwks = jwks::parse(&document).map_err(|status| {
                ConfigError::new(
                    format!("{path}.local_jwks"),
                    format!("invalid JWKS: {}", status.message()),
                )
            })?;
            Keys::Local(Rc::new(jwks))
        }
        (None, Some(remote)) => Keys::Remote(Box::new(RefCell::new(RemoteKeys::new(remote, now)))),
        (None, None) => {
            return Err(ConfigError::new(path, "no key source"));
        }
    };
    let lifetime = match (config.max_lifetime, config.require_expiration) {
        (Some(max), _) => Lifetime::Max(max),
        (None, true) => Lifetime::RequireExpiration,
        (None, false) => Lifetime::Any,
    };
    let cache = config.jwt_cache_config.as_ref().map(|cache| {
        let size = usize::try_from(cache.jwt_cache_size).unwrap_or(DEFAULT_SIZE);
        let max = usize::try_from(cache.jwt_max_token_size).unwrap_or(DEFAULT_MAX_TOKEN_SIZE);
        RefCell::new(JwtCache::new(
            if size == 0 { DEFAULT_SIZE } else { size },
            if max == 0 {
                DEFAULT_MAX_TOKEN_SIZE
            } else {
                max
            },
        ))
    });
    Ok(Provider {
        name: name.to_string(),
        issuer: config.issuer.clone(),
        audiences: Audiences::new(&config.audiences),
        subjects: config.subjects.clone(),
        lifetime,
        clock_skew: match config.clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW,
            skew => u64::from(skew),
        },
        forward: config.forward,
        forward_payload_header: config.forward_payload_header.to_ascii_lowercase(),
        pad_forward_payload_header: config.pad_forward_payload_header,
        claim_to_headers: config
            .claim_to_headers
            .iter()
            .map(|claim| {
                (
                    claim.header_name.to_ascii_lowercase(),
                    claim.claim_name.clone(),
                )
            })
            .collect(),
        extractor: Extractor::new([config]),
        keys,
        cache,
    })
}

/// How Envoy prints a claim in a header (`std::to_string(double)` for non-integral numbers, the
/// base64 of the JSON for lists and objects).
fn claim_header_value(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                return Some(unsigned.to_string());
            }
            let double = number.as_f64()?;
            if (0.0..18_446_744_073_709_551_615.0).contains(&double) && double.fract() == 0.0 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                return Some((double as u64).to_string());
            }
            Some(format!("{double:.6}"))
        }
        Value::Array(_) | Value::Object(_) => Some(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            value.to_string(),
        )),
        Value::Null => None,
    }
}

/// Base64 padding, as Envoy's `Base64::completePadding`.
fn padded(base64url: &str) -> String {
    let mut text = base64url.to_string();
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn is_cors_preflight(request: &dyn Request) -> bool {
    request.method() == Some("OPTIONS")
        && request.header("origin").is_some_and(|v| !v.is_empty())
        && request
            .header("access-control-request-method")
            .is_some_and(|v| !v.is_empty())
}

/// One evaluation of a request against a requirement.
struct Evaluation<'a> {
    filter: &'a JwtAuthn,
    request: &'a dyn Request,
    now: SystemTime,
    metrics: &'a dyn MetricSink,
    /// Providers whose awaited fetch failed: missing keys are a failure, not a wait.
    fetch_failed: &'a [usize],
    mutations: Vec<Mutation>,
    need_keys: Vec<usize>,
    principal: Option<String>,
}

impl Evaluation<'_> {
    fn requirement(&mut self, requirement: &Requirement) -> Step {
        match requirement {
            Requirement::AllowAll => Step::Done(Status::Ok),
            Requirement::Provider {
                provider,
                audiences,
            } => {
                let Some(data) = self.filter.providers.get(*provider) else {
                    return Step::Done(Status::JwtUnknownIssuer);
                };
                let tokens = data.extractor.extract(self.request);
                self.authenticate(tokens, Some(*provider), audiences.as_ref(), false, false)
            }
            Requirement::AllowMissingOrFailed => {
                let tokens = self.filter.any_provider.extract(self.request);
                self.authenticate(tokens, None, None, true, true)
            }
            Requirement::AllowMissing => {
                let tokens = self.filter.any_provider.extract(self.request);
                self.authenticate(tokens, None, None, false, true)
            }
            Requirement::Any {
                children,
                allow_missing_or_failed,
                allow_missing,
            } => {
                let mut statuses = Vec::new();
                let mut waiting = false;
                for child in children {
                    match self.requirement(child) {
                        Step::Done(Status::Ok) => return Step::Done(Status::Ok),
                        Step::Done(status) => statuses.push(status),
                        Step::NeedKeys => waiting = true,
                    }
                }
                if waiting {
                    return Step::NeedKeys;
                }
                // Envoy prefers a real error over "missing" and "unknown issuer", and
                // "unknown issuer" over "missing".
                let mut status = Status::JwtMissed;
                for child in statuses {
                    if (child != Status::JwtMissed && child != Status::JwtUnknownIssuer)
                        || status == Status::JwtMissed
                    {
                        status = child;
                    }
                }
                if *allow_missing_or_failed || (*allow_missing && status == Status::JwtMissed) {
                    status = Status::Ok;
                }
                Step::Done(status)
            }
            Requirement::All(children) => {
                let mut waiting = false;
                for child in children {
                    match self.requirement(child) {
                        Step::Done(Status::Ok) => {}
                        Step::Done(status) => return Step::Done(status),
                        Step::NeedKeys => waiting = true,
                    }
                }
                if waiting {
                    Step::NeedKeys
                } else {
                    Step::Done(Status::Ok)
                }
            }
        }
    }

    /// Envoy's `AuthenticatorImpl`: every token found is verified (last found first); without
    /// `allow_*`, the first failure decides.
    fn authenticate(
        &mut self,
        mut tokens: Vec<FoundToken<'_>>,
        provider: Option<usize>,
        audiences: Option<&Audiences>,
        allow_failed: bool,
        allow_missing: bool,
    ) -> Step {
        let mut status = Status::JwtMissed;
        while let Some(token) = tokens.pop() {
            status = match self.verify(&token, provider, audiences) {
                Ok(()) => Status::Ok,
                Err(Some(status)) => status,
                Err(None) => return Step::NeedKeys,
            };
            if status != Status::Ok && !allow_failed && !allow_missing {
                break;
            }
        }
        if allow_failed || (allow_missing && status == Status::JwtMissed) {
            return Step::Done(Status::Ok);
        }
        Step::Done(status)
    }

    fn provider_for_issuer(&self, issuer: &str) -> Option<usize> {
        let providers = &self.filter.providers;
        providers
            .iter()
            .position(|p| p.issuer == issuer)
            .or_else(|| {
                (!issuer.is_empty())
                    .then(|| providers.iter().position(|p| p.issuer.is_empty()))
                    .flatten()
            })
    }

    /// Verifies one token; `Err(None)` means the provider's keys must be fetched first.
    fn verify(
        &mut self,
        token: &FoundToken<'_>,
        provider: Option<usize>,
        audiences: Option<&Audiences>,
    ) -> Result<(), Option<Status>> {
        let stats = &self.filter.stats;
        let cached = provider
            .and_then(|index| self.filter.providers.get(index))
            .and_then(|data| data.cache.as_ref())
            .and_then(|cache| {
                let hit = cache
                    .borrow_mut()
                    .lookup(&token.token, unix_seconds(self.now));
                if hit.is_some() {
                    stats.jwt_cache_hit.increment(self.metrics);
                } else {
                    stats.jwt_cache_miss.increment(self.metrics);
                }
                hit
            });
        let jwt = match &cached {
            Some(jwt) => jwt.clone(),
            None => Rc::new(jwt::parse(&token.token).map_err(Some)?),
        };
        if !token.issuers.allows(&jwt.iss) {
            return Err(Some(Status::JwtUnknownIssuer));
        }
        let index = provider
            .or_else(|| self.provider_for_issuer(&jwt.iss))
            .ok_or(Some(Status::JwtUnknownIssuer))?;
        let data = self
            .filter
            .providers
            .get(index)
            .ok_or(Some(Status::JwtUnknownIssuer))?;

        let now = unix_seconds(self.now);
        if jwt
            .nbf
            .is_some_and(|nbf| now.saturating_add(data.clock_skew) < nbf)
        {
            return Err(Some(Status::JwtNotYetValid));
        }
        if jwt
            .exp
            .is_some_and(|exp| now > exp.saturating_add(data.clock_skew))
        {
            return Err(Some(Status::JwtExpired));
        }
        if !audiences.unwrap_or(&data.audiences).allows(&jwt.audiences) {
            return Err(Some(Status::JwtAudienceNotAllowed));
        }
        if data
            .subjects
            .as_ref()
            .is_some_and(|subjects| !subjects.matches(&jwt.sub))
        {
            return Err(Some(Status::JwtVerificationFail));
        }
        let lifetime_ok = match data.lifetime {
            Lifetime::Any => true,
            Lifetime::RequireExpiration => jwt.exp.is_some(),
            // The remaining lifetime must be below the maximum (an expired-within-skew token has
            // a negative one).
            Lifetime::Max(max) => jwt
                .exp
                .is_some_and(|exp| Duration::from_secs(exp.saturating_sub(now)) < max),
        };
        if !lifetime_ok {
            return Err(Some(Status::JwtVerificationFail));
        }

        if cached.is_none() {
            let jwks = match &data.keys {
                Keys::Local(jwks) => jwks.clone(),
                Keys::Remote(remote) => match remote.borrow().keys(self.now) {
                    Some(jwks) => jwks,
                    None if self.fetch_failed.contains(&index) => {
                        return Err(Some(Status::JwksFetchFail))
                    }
                    None => {
                        if !self.need_keys.contains(&index) {
                            self.need_keys.push(index);
                        }
                        return Err(None);
                    }
                },
            };
            let status = verify_signature(&jwt, &jwks);
            if status != Status::Ok {
                return Err(Some(status));
            }
        }

        self.accept(data, token, &jwt);
        if let (Some(cache), None) = (&data.cache, &cached) {
            if provider.is_some() {
                cache.borrow_mut().insert(&token.token, jwt);
            }
        }
        Ok(())
    }

    /// What a verified token does to the request.
    fn accept(&mut self, data: &Provider, token: &FoundToken<'_>, jwt: &Jwt) {
        if !data.forward_payload_header.is_empty() {
            let payload = if data.pad_forward_payload_header {
                padded(&jwt.payload_base64url)
            } else {
                jwt.payload_base64url.clone()
            };
            self.mutations.push(Mutation::AddHeader(
                data.forward_payload_header.clone(),
                payload,
            ));
        }
        for (header, claim) in &data.claim_to_headers {
            if let Some(value) = jwt.claim(claim).and_then(claim_header_value) {
                if !value.is_empty() && validate_header_value(&value).is_ok() {
                    self.mutations
                        .push(Mutation::AddHeader(header.clone(), value));
                }
            }
        }
        if !data.forward {
            match &token.place {
                Place::Header(name) => self.mutations.push(Mutation::RemoveHeader(name.clone())),
                Place::Param(name) => self.mutations.push(Mutation::RemoveParam(name.clone())),
                Place::Cookie => {}
            }
        }
        if self.principal.is_none() {
            self.principal = Some(format!("{}/{}", jwt.iss, jwt.sub));
        }
    }
}

impl JwtAuthn {
    /// Builds the filter from its validated configuration; defines the stats.
    pub fn new(config: JwtAuthentication, host: &mut dyn Host) -> Result<Self, Error> {
        let now = host.now();
        let mut providers = Vec::new();
        let mut index = BTreeMap::new();
        for (name, provider) in &config.providers {
            index.insert(name.clone(), providers.len());
            providers.push(compile_provider(name, provider, now)?);
        }
        let compile_rule = |rule: &crate::config::RequirementRule| {
            let requirement = match (&rule.requires, &rule.requirement_name) {
                (Some(requirement), _) => Requirement::compile(requirement, &index),
                (None, Some(name)) => config
                    .requirement_map
                    .get(name)
                    .map_or(Requirement::AllowAll, |requirement| {
                        Requirement::compile(requirement, &index)
                    }),
                (None, None) => Requirement::AllowAll,
            };
            Rule {
                matcher: Matcher::new(&rule.route_match),
                requirement: Rc::new(requirement),
            }
        };
        let rules = config.rules.iter().map(compile_rule).collect();
        let mut sanitized: Vec<String> = Vec::new();
        for provider in &providers {
            if !provider.forward_payload_header.is_empty() {
                sanitized.push(provider.forward_payload_header.clone());
            }
            sanitized.extend(
                provider
                    .claim_to_headers
                    .iter()
                    .map(|(header, _)| header.clone()),
            );
        }
        if !config.principal_header.is_empty() {
            sanitized.push(config.principal_header.to_ascii_lowercase());
        }
        sanitized.sort();
        sanitized.dedup();

        let mut tick: Option<Duration> = None;
        for provider in config.providers.values() {
            let Some(remote) = &provider.remote_jwks else {
                continue;
            };
            let mut period = MAX_TICK;
            if let Some(backoff) = remote
                .retry_policy
                .as_ref()
                .and_then(|p| p.retry_back_off.as_ref())
            {
                period = period.min(backoff.base_interval);
            }
            if let Some(refetch) = remote
                .async_fetch
                .as_ref()
                .and_then(|a| a.failed_refetch_duration)
            {
                period = period.min(refetch);
            }
            let period = period.max(MIN_TICK);
            tick = Some(tick.map_or(period, |current| current.min(period)));
        }

        Ok(JwtAuthn {
            any_provider: Extractor::new(config.providers.values()),
            providers,
            rules,
            sanitized,
            bypass_cors_preflight: config.bypass_cors_preflight,
            strip_failure_response: config.strip_failure_response,
            principal_header: config.principal_header.to_ascii_lowercase(),
            fetches: RefCell::new(HashMap::new()),
            tick,
            stats: Stats::define(&config.stat_prefix, host)?,
        })
    }

    /// The root tick period: set when a remote key set needs refreshing or retries.
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick
    }

    fn deny(&self, stream: &StreamState, status: Status, host: &dyn Host) -> Decision {
        self.stats.denied.increment(host);
        if let Some(counter) = self.stats.reasons.get(status.reason().index()) {
            counter.increment(host);
        }
        host.log(
            LogLevel::Debug,
            &format!("{FILTER}: request denied: {}", status.message()),
        );
        let mut reply = LocalReply::new(
            status.http_status(),
            format!("{DENIED_DETAILS}{{{}}}", status.message()),
        );
        if !self.strip_failure_response {
            let mut challenge = format!("Bearer realm=\"{}\"", stream.realm);
            if status != Status::JwtMissed {
                challenge.push_str(", error=\"invalid_token\"");
            }
            reply = reply
                .with_header("www-authenticate", challenge)
                .with_body(status.message());
        }
        Decision::Deny(reply)
    }

    fn allow(&self, host: &dyn Host) -> Decision {
        self.stats.allowed.increment(host);
        Decision::Continue
    }

    /// Request headers: pick the requirement and verify.
    pub fn on_request(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let scheme = request
            .header("x-forwarded-proto")
            .map(|value| value.into_owned())
            .or_else(|| request.scheme().map(str::to_string))
            .unwrap_or_else(|| "http".to_string());
        stream.realm = format!(
            "{scheme}://{}{}",
            request.authority().unwrap_or_default(),
            request.path().unwrap_or_default()
        );
        // Headers this filter produces never come from the client, whatever the route.
        for header in &self.sanitized {
            let _ = request.remove_request_header(header);
        }
        if self.bypass_cors_preflight && is_cors_preflight(request) {
            self.stats.cors_preflight_bypassed.increment(host);
            return self.allow(host);
        }
        let path = match request.path().map(normalize_path) {
            Some(Ok(path)) => path,
            Some(Err(_)) => {
                self.stats.denied.increment(host);
                if let Some(counter) = self.stats.reasons.get(Reason::InvalidPath.index()) {
                    counter.increment(host);
                }
                return Decision::Deny(LocalReply::bad_request(INVALID_PATH_DETAILS));
            }
            None => String::new(),
        };
        let Some(rule) = self
            .rules
            .iter()
            .find(|rule| rule.matcher.matches(&path, request))
        else {
            return self.allow(host);
        };
        let requirement = rule.requirement.clone();
        stream.requirement = Some(requirement.clone());
        self.run(stream, &requirement, request, host, &[])
    }

    fn run(
        &self,
        stream: &mut StreamState,
        requirement: &Requirement,
        request: &mut dyn Request,
        host: &mut dyn Host,
        fetch_failed: &[usize],
    ) -> Decision {
        let mut evaluation = Evaluation {
            filter: self,
            request: &*request,
            now: host.now(),
            metrics: &*host,
            fetch_failed,
            mutations: Vec::new(),
            need_keys: Vec::new(),
            principal: None,
        };
        let step = evaluation.requirement(requirement);
        let Evaluation {
            mutations,
            need_keys,
            principal,
            ..
        } = evaluation;
        match step {
            Step::Done(Status::Ok) => {
                self.apply(request, &mutations, principal);
                self.allow(host)
            }
            Step::Done(status) => self.deny(stream, status, host),
            Step::NeedKeys => self.wait_for_keys(stream, &need_keys, request, host),
        }
    }

    fn apply(&self, request: &mut dyn Request, mutations: &[Mutation], principal: Option<String>) {
        let mut mutations = mutations.to_vec();
        if let (false, Some(principal)) = (self.principal_header.is_empty(), principal) {
            if validate_header_value(&principal).is_ok() {
                mutations.push(Mutation::SetHeader(
                    self.principal_header.clone(),
                    principal,
                ));
            }
        }
        for mutation in mutations {
            let _ = match mutation {
                Mutation::AddHeader(name, value) => request.add_request_header(&name, &value),
                Mutation::SetHeader(name, value) => request.set_request_header(&name, &value),
                Mutation::RemoveHeader(name) => request.remove_request_header(&name),
                Mutation::RemoveParam(name) => {
                    let path = request.path().map(|path| remove_query_param(path, &name));
                    match path {
                        Some(path) => request.set_request_header(":path", &path),
                        None => Ok(()),
                    }
                }
            };
        }
    }

    /// Starts the fetches nobody started yet and pauses the stream until they end.
    fn wait_for_keys(
        &self,
        stream: &mut StreamState,
        providers: &[usize],
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let mut failed_now = Vec::new();
        stream.waiting.clear();
        for &index in providers {
            let Some(Provider {
                keys: Keys::Remote(remote),
                name,
                ..
            }) = self.providers.get(index)
            else {
                continue;
            };
            let cycles = remote.borrow().cycles();
            stream.waiting.push((index, cycles));
            if remote.borrow().busy() {
                continue;
            }
            let callout = remote.borrow().callout();
            match host.dispatch_http(&callout) {
                Ok(token) => {
                    remote.borrow_mut().started(token, host.now());
                    self.fetches.borrow_mut().insert(token, index);
                    stream.own_fetches.push(token);
                }
                Err(error) => {
                    let why = format!("dispatch failed: {error}");
                    self.fetch_ended(
                        name,
                        remote.borrow_mut().dispatch_failed(host.now(), &why),
                        host,
                    );
                    failed_now.push(index);
                }
            }
        }
        if !failed_now.is_empty() {
            // The key set cannot be had: decide now rather than wait.
            return self.resume(stream, request, host);
        }
        Decision::Pause
    }

    fn fetch_ended(&self, provider: &str, result: FetchResult, host: &dyn Host) {
        match result {
            FetchResult::Loaded => {
                self.stats.jwks_fetch_success.increment(host);
                host.log(
                    LogLevel::Debug,
                    &format!("{FILTER}: provider {provider}: JWKS fetched"),
                );
            }
            FetchResult::RetryScheduled(_) => host.log(
                LogLevel::Info,
                &format!("{FILTER}: provider {provider}: JWKS fetch failed, retry scheduled"),
            ),
            FetchResult::Failed(why) => {
                self.stats.jwks_fetch_failed.increment(host);
                host.log(
                    LogLevel::Warn,
                    &format!("{FILTER}: provider {provider}: JWKS fetch failed: {why}"),
                );
            }
        }
    }

    /// A paused stream may go on once a fetch cycle it waited for ended.
    pub fn resume(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        let mut progressed = false;
        let mut failed = Vec::new();
        for &(index, seen) in &stream.waiting {
            if let Some(Provider {
                keys: Keys::Remote(remote),
                ..
            }) = self.providers.get(index)
            {
                let remote = remote.borrow();
                if remote.cycles() > seen {
                    progressed = true;
                    if remote.last_cycle_failed() {
                        failed.push(index);
                    }
                }
            }
        }
        if !progressed {
            return Decision::Pause;
        }
        let Some(requirement) = stream.requirement.clone() else {
            return self.allow(host);
        };
        self.run(stream, &requirement, request, host, &failed)
    }

    /// A fetch answered (to the root or to the stream that dispatched it). Returns whether the
    /// token was one of ours.
    pub fn on_fetch_answer(&self, response: &CalloutResponse, host: &dyn Host) -> bool {
        let token = response.token();
        let Some(index) = self.fetches.borrow_mut().remove(&token) else {
            return false;
        };
        if let Some(Provider {
            keys: Keys::Remote(remote),
            name,
            ..
        }) = self.providers.get(index)
        {
            if remote.borrow().owns(token) {
                let result = remote.borrow_mut().answered(response, host.now());
                self.fetch_ended(name, result, host);
            }
        }
        true
    }

    /// The stream's own callout answered: record it, then see whether the stream can go on.
    pub fn on_stream_callout(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: &CalloutResponse,
    ) -> Decision {
        stream
            .own_fetches
            .retain(|token| *token != response.token());
        self.on_fetch_answer(response, host);
        self.resume(stream, request, host)
    }

    /// Root tick: retries, background refreshes, lost fetches.
    pub fn on_tick(&self, host: &mut dyn Host) {
        let now = host.now();
        for (index, provider) in self.providers.iter().enumerate() {
            let Keys::Remote(remote) = &provider.keys else {
                continue;
            };
            let due = remote.borrow_mut().due(now);
            match due {
                Some(true) => {
                    let callout = remote.borrow().callout();
                    match host.dispatch_http(&callout) {
                        Ok(token) => {
                            remote.borrow_mut().started(token, now);
                            self.fetches.borrow_mut().insert(token, index);
                        }
                        Err(error) => {
                            let why = format!("dispatch failed: {error}");
                            let result = remote.borrow_mut().dispatch_failed(now, &why);
                            self.fetch_ended(&provider.name, result, host);
                        }
                    }
                }
                Some(false) => self.fetch_ended(
                    &provider.name,
                    FetchResult::Failed("no answer in time".to_string()),
                    host,
                ),
                None => {}
            }
        }
    }

    /// The stream ended: fetches it dispatched die with it and are handed to the root.
    pub fn on_stream_done(&self, stream: &mut StreamState, host: &dyn Host) {
        for token in stream.own_fetches.drain(..) {
            let Some(index) = self.fetches.borrow_mut().remove(&token) else {
                continue;
            };
            if let Some(Provider {
                keys: Keys::Remote(remote),
                ..
            }) = self.providers.get(index)
            {
                remote.borrow_mut().abandoned(token, host.now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_print_like_envoy() {
        let cases = [
            (serde_json::json!("x"), Some("x")),
            (serde_json::json!(7), Some("7")),
            (serde_json::json!(1.5), Some("1.500000")),
            (serde_json::json!(-3), Some("-3.000000")),
            (
                serde_json::json!(1e20),
                Some("100000000000000000000.000000"),
            ),
            (serde_json::json!(3.0), Some("3")),
            (serde_json::json!(true), Some("true")),
            (serde_json::json!([1, 2]), Some("WzEsMl0=")),
            (serde_json::Value::Null, None),
        ];
        for (value, expected) in cases {
            assert_eq!(claim_header_value(&value).as_deref(), expected, "{value}");
        }
        assert_eq!(padded("abcde"), "abcde===");
        assert_eq!(padded("abcd"), "abcd");
    }
}

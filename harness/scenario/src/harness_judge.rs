//! The harness judge: a scenario run in `wasmesh-harness`, its clusters answered by mocks, the
//! clock virtual.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use std::net::SocketAddr;

use wasmesh_harness::{
    Action, CalloutReply, ClientRequest, GrpcCallout, GrpcReply, Harness, HarnessError,
    HttpCallout, HttpStream, LogLevel, MetricValue, PeerType, Plugin, StreamState, TcpConnection,
    UpstreamResponse,
};

use crate::format::{
    Answer, ClosedBy, Cluster, Connection, Failure, LogLevelName, Protocol, Request, Step,
    TcpReply, TcpUpstream, UpstreamAnswer,
};
use crate::load::{body_bytes, source_ip, ScenarioFile};
use crate::observe::{header, Callout, ConnectionSeen, Response, StepObservation, UpstreamRequest};
use crate::tls::client_hello;
use crate::ScenarioError;

/// How far the clock moves at a time while the module holds a request (a delay, a callout that
/// answers late or times out), and how long it may hold it.
const CLOCK_STEP: Duration = Duration::from_millis(5);
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// An answer a mock gives later (`delay_ms`), delivered when the virtual clock reaches it.
#[derive(Debug, Clone)]
enum Delayed {
    Http { token: u32, reply: CalloutReply },
    Grpc { token: u32, reply: GrpcReply },
}

/// The harness running one scenario.
pub struct HarnessJudge {
    plugin: Plugin,
    /// Answers waiting for their time: (elapsed virtual time due, answer).
    delayed: Rc<RefCell<Vec<(Duration, Delayed)>>>,
    /// Virtual time since the plugin started.
    elapsed: Rc<RefCell<Duration>>,
    race_seed: u64,
}

impl HarnessJudge {
    /// Starts the scenario's plugin (`module`: the resolved module file). The start-up's logs
    /// are dropped, so that each step sees its own.
    pub fn start(
        file: &ScenarioFile,
        module: &Path,
        race_seed: u64,
    ) -> Result<Self, ScenarioError> {
        let scenario = &file.scenario;
        let delayed: Rc<RefCell<Vec<(Duration, Delayed)>>> = Rc::default();
        let elapsed: Rc<RefCell<Duration>> = Rc::default();
        let mut builder = Harness::load(module)?
            .config(file.config_bytes()?)
            .vm_config(file.vm_config_bytes())
            .root_id(&scenario.root_id)
            .workers(scenario.workers)
            .failure_policy(scenario.failure_policy.for_harness())
            .log_level(log_level(scenario.log_level))
            .random_seed(scenario.seed);
        if let Some(start) = scenario.start_time {
            builder = builder.start_time(start.0);
        }
        for property in &scenario.properties {
            let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
            builder = builder.property(&path, property.value.to_harness());
        }
        for name in scenario.clusters.keys() {
            builder = builder.cluster(name);
        }
        let clusters = scenario.clusters.clone();
        let http_clusters = clusters.clone();
        let http_delayed = Rc::clone(&delayed);
        let http_elapsed = Rc::clone(&elapsed);
        builder = builder.http_callout_handler(move |callout: &HttpCallout| {
            let path = callout.header(":path").unwrap_or_default();
            let answer = find_answer(&http_clusters, &callout.upstream, Protocol::Http, path);
            let reply = http_reply(&http_clusters, &callout.upstream, path, answer);
            match answer.filter(|answer| answer.delay_ms > 0 && answer.fail.is_none()) {
                Some(answer) => {
                    let due = *http_elapsed.borrow() + Duration::from_millis(answer.delay_ms);
                    let token = callout.token;
                    http_delayed
                        .borrow_mut()
                        .push((due, Delayed::Http { token, reply }));
                    CalloutReply::Timeout
                }
                None => reply,
            }
        });
        let grpc_delayed = Rc::clone(&delayed);
        let grpc_elapsed = Rc::clone(&elapsed);
        builder = builder.grpc_callout_handler(move |callout: &GrpcCallout| {
            let path = grpc_path(callout);
            let answer = find_answer(&clusters, &callout.cluster, Protocol::Grpc, &path);
            let reply = grpc_reply(&clusters, &callout.cluster, &path, answer);
            match answer.filter(|answer| answer.delay_ms > 0 && answer.fail.is_none()) {
                Some(answer) => {
                    let due = *grpc_elapsed.borrow() + Duration::from_millis(answer.delay_ms);
                    let token = callout.token;
                    grpc_delayed
                        .borrow_mut()
                        .push((due, Delayed::Grpc { token, reply }));
                    GrpcReply::Timeout
                }
                None => reply,
            }
        });
        let plugin = builder.start()?;
        plugin.clear_logs();
        Ok(Self {
            plugin,
            delayed,
            elapsed,
            race_seed,
        })
    }

    /// The plugin (for `--update` and for reports).
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs one step and reports what happened.
    pub fn step(&mut self, index: usize, step: &Step) -> Result<StepObservation, ScenarioError> {
        let http_before = self.plugin.http_callouts().len();
        let grpc_before = self.plugin.grpc_callouts().len();
        self.plugin.clear_logs();
        let mut seen = StepObservation::default();
        if let Some(by) = step.advance_ms {
            self.advance(Duration::from_millis(by))?;
        }
        if let Some(connection) = &step.connection {
            seen.connection = Some(self.connection(step, connection)?);
        }
        if let Some(request) = &step.request {
            let upstream = step.upstream.clone().unwrap_or_default();
            match step.concurrent {
                Some(count) => seen.statuses = self.concurrent(step, request, &upstream, count)?,
                None => {
                    let (response, reached) = self.exchange(index, step, request, &upstream)?;
                    seen.response = Some(response);
                    seen.upstream = reached;
                }
            }
        }
        seen.callouts = self.callouts_since(http_before, grpc_before);
        seen.metrics = self
            .plugin
            .metrics()
            .into_iter()
            .filter_map(|(name, value)| match value {
                MetricValue::Counter(value) | MetricValue::Gauge(value) => Some((name, value)),
                MetricValue::Histogram(_) => None,
            })
            .collect();
        seen.logs = Some(
            self.plugin
                .logs()
                .into_iter()
                .map(|entry| entry.message)
                .collect(),
        );
        let keys = step
            .expect
            .iter()
            .flat_map(|expect| expect.shared_data.keys());
        seen.shared_data = Some(
            keys.map(|key| {
                let value = self
                    .plugin
                    .shared_data(key)
                    .map(|(bytes, _)| String::from_utf8_lossy(&bytes).into_owned());
                (key.clone(), value)
            })
            .collect(),
        );
        seen.vm_failed = Some(self.plugin.vm_failure(step.worker).is_some());
        Ok(seen)
    }

    /// Moves the virtual clock, delivering delayed answers as their time comes.
    fn advance(&self, by: Duration) -> Result<(), ScenarioError> {
        let target = *self.elapsed.borrow() + by;
        loop {
            let now = *self.elapsed.borrow();
            let next_due = self
                .delayed
                .borrow()
                .iter()
                .map(|(due, _)| *due)
                .filter(|due| *due <= target)
                .min();
            let until = next_due.unwrap_or(target).max(now);
            self.plugin.advance_clock(until - now)?;
            *self.elapsed.borrow_mut() = until;
            self.deliver_due()?;
            if until >= target {
                return Ok(());
            }
        }
    }

    fn deliver_due(&self) -> Result<(), ScenarioError> {
        let now = *self.elapsed.borrow();
        let due: Vec<Delayed> = {
            let mut delayed = self.delayed.borrow_mut();
            let (due, later) = delayed.drain(..).partition(|(at, _)| *at <= now);
            *delayed = later;
            due.into_iter().map(|(_, answer)| answer).collect()
        };
        for answer in due {
            // A call whose own timeout fired first is no longer pending: the late answer is
            // dropped, as Envoy drops it.
            let pending_http = self.plugin.pending_http_callouts();
            let pending_grpc = self.plugin.pending_grpc_callouts();
            match answer {
                Delayed::Http { token, reply } => {
                    if pending_http.iter().any(|callout| callout.token == token) {
                        self.plugin.respond_http_callout(token, reply)?;
                    }
                }
                Delayed::Grpc { token, reply } => {
                    if pending_grpc.iter().any(|callout| callout.token == token) {
                        self.plugin.respond_grpc_call(token, reply)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lets virtual time pass while the module holds this direction of `stream`.
    fn settle(
        &self,
        stream: &HttpStream,
        state: fn(&HttpStream) -> StreamState,
    ) -> Result<(), ScenarioError> {
        let mut held = Duration::ZERO;
        while state(stream) == StreamState::Paused && stream.local_reply().is_none() {
            if held >= HOLD_LIMIT {
                return Err(ScenarioError::Held {
                    limit: HOLD_LIMIT,
                    pending: self.pending_summary(),
                });
            }
            self.advance(CLOCK_STEP)?;
            held += CLOCK_STEP;
        }
        Ok(())
    }

    fn pending_summary(&self) -> String {
        let http = self
            .plugin
            .pending_http_callouts()
            .into_iter()
            .map(|callout| format!("HTTP call to {} without an answer", callout.upstream));
        let grpc = self
            .plugin
            .pending_grpc_callouts()
            .into_iter()
            .map(|callout| format!("gRPC call to {} without an answer", callout.cluster));
        let all: Vec<String> = http.chain(grpc).collect();
        if all.is_empty() {
            "nothing pending".to_string()
        } else {
            all.join(", ")
        }
    }

    /// One request through a new stream on the step's worker.
    fn exchange(
        &self,
        index: usize,
        step: &Step,
        request: &Request,
        upstream: &UpstreamAnswer,
    ) -> Result<(Response, Option<UpstreamRequest>), ScenarioError> {
        let mut stream = self.plugin.http_stream_on(step.worker);
        for property in &step.properties {
            let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
            stream.property(&path, property.value.to_harness());
        }
        tolerate_crash(send_request(&mut stream, request, index))?;
        self.settle(&stream, HttpStream::request_state)?;
        if let Some(reply) = stream.local_reply() {
            tolerate_crash(stream.complete())?;
            return Ok((
                Response {
                    status: u16::try_from(reply.status).unwrap_or(u16::MAX),
                    reset: false,
                    details: Some(reply.details),
                    headers: without_pseudo_headers(reply.headers),
                    body: reply.body,
                },
                None,
            ));
        }
        if stream.request_state() == StreamState::Reset {
            tolerate_crash(stream.reset())?;
            return Ok((
                Response {
                    reset: true,
                    ..Response::default()
                },
                None,
            ));
        }
        let reached = UpstreamRequest {
            headers: stream.request_headers_now(),
            body: stream.request_body_now(),
        };
        tolerate_crash(stream.upstream_response(&upstream_response(upstream)))?;
        self.settle(&stream, HttpStream::response_state)?;
        let response = match stream.local_reply() {
            Some(reply) => Response {
                status: u16::try_from(reply.status).unwrap_or(u16::MAX),
                reset: false,
                details: Some(reply.details),
                headers: without_pseudo_headers(reply.headers),
                body: reply.body,
            },
            None => {
                let headers = stream.response_headers_now();
                Response {
                    status: header(&headers, ":status")
                        .and_then(|status| status.parse().ok())
                        .unwrap_or(upstream.status),
                    reset: stream.response_state() == StreamState::Reset,
                    details: None,
                    headers: without_pseudo_headers(headers),
                    body: stream.response_body_now(),
                }
            }
        };
        tolerate_crash(stream.complete())?;
        Ok((response, Some(reached)))
    }

    /// One TCP connection on the step's worker: the client's actions, each followed by the
    /// upstream's answers; observed once the actions are done, then wound down (the client
    /// ends its side if it has not, the upstream answers that end) so the filter's last
    /// callbacks run within the step.
    fn connection(
        &self,
        step: &Step,
        connection: &Connection,
    ) -> Result<ConnectionSeen, ScenarioError> {
        let mut tcp = self.plugin.tcp_connection_on(step.worker);
        for property in &step.properties {
            let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
            tcp.property(&path, property.value.to_harness());
        }
        if let Some((ip, port)) = connection.source_address.as_deref().and_then(source_ip) {
            let port = port.unwrap_or(SOURCE_PORT);
            tcp.property(
                &["source", "address"],
                SocketAddr::new(ip, port).to_string(),
            );
            tcp.property(&["source", "port"], i64::from(port));
        }
        if let Some(sni) = &connection.sni {
            tcp.property(&["connection", "requested_server_name"], sni.as_str());
        }
        let mut upstream = TcpUpstreamPlay::new(connection.upstream.as_ref());
        tolerate_crash(tcp.open())?;
        upstream.react(&mut tcp)?;
        if let Some(sni) = &connection.sni {
            if tcp.closed().is_none() {
                tolerate_crash(tcp.downstream_data(&client_hello(sni), false))?;
                upstream.react(&mut tcp)?;
            }
        }
        for action in &connection.client {
            // A client still writes to a connection Envoy closed; nothing reaches the filter.
            if tcp.closed().is_some() {
                break;
            }
            let bytes = body_bytes(action.send.as_deref(), action.send_base64.as_deref())
                .unwrap_or_default();
            tolerate_crash(tcp.downstream_data(&bytes, action.end))?;
            upstream.react(&mut tcp)?;
        }
        let seen = ConnectionSeen {
            upstream_connected: upstream.connected,
            upstream_received: tcp.upstream_received(),
            client_received: tcp.downstream_received(),
            client_got_end: tcp.client_got_end() || tcp.closed().is_some(),
            closed: Some(match tcp.closed() {
                None => ClosedBy::Open,
                Some(PeerType::Remote) => ClosedBy::Client,
                Some(PeerType::Local | PeerType::Unknown) => ClosedBy::Proxy,
            }),
        };
        let client_ended = connection.client.iter().any(|action| action.end);
        if tcp.closed().is_none() && !client_ended {
            // The client closes its socket: Envoy reads its end.
            tolerate_crash(tcp.downstream_data(&[], true))?;
            upstream.react(&mut tcp)?;
        }
        Ok(seen)
    }

    /// `count` copies of the request at once, spread over the workers, raced on the seed's
    /// schedule; returns their statuses, sorted.
    fn concurrent(
        &self,
        step: &Step,
        request: &Request,
        upstream: &UpstreamAnswer,
        count: usize,
    ) -> Result<Vec<u16>, ScenarioError> {
        let workers = self.plugin.workers();
        let mut streams: Vec<HttpStream> = (0..count)
            .map(|index| self.plugin.http_stream_on(index % workers.max(1)))
            .collect();
        let client = client_request(request);
        let headers = client.presented_headers("concurrent");
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body = client.body_bytes().map(<[u8]>::to_vec);
        {
            let mut race = self.plugin.race(self.race_seed);
            for stream in &mut streams {
                for property in &step.properties {
                    let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
                    stream.property(&path, property.value.to_harness());
                }
                race.request_headers(stream, &pairs, body.is_none())?;
                if let Some(body) = &body {
                    race.request_body(stream, body, true)?;
                }
            }
            // Each outcome is read from its stream below; a VM crash is the failure policy's.
            race.run()?;
        }
        let mut statuses = Vec::with_capacity(count);
        for mut stream in streams {
            self.settle(&stream, HttpStream::request_state)?;
            let status = match stream.local_reply() {
                Some(reply) => u16::try_from(reply.status).unwrap_or(u16::MAX),
                None if stream.request_state() == StreamState::Reset => 0,
                None => {
                    tolerate_crash(stream.upstream_response(&upstream_response(upstream)))?;
                    self.settle(&stream, HttpStream::response_state)?;
                    match stream.local_reply() {
                        Some(reply) => u16::try_from(reply.status).unwrap_or(u16::MAX),
                        None if stream.response_state() == StreamState::Reset => 0,
                        None => upstream.status,
                    }
                }
            };
            statuses.push(status);
            tolerate_crash(stream.complete())?;
        }
        statuses.sort_unstable();
        Ok(statuses)
    }

    fn callouts_since(&self, http_before: usize, grpc_before: usize) -> Vec<Callout> {
        let http = self
            .plugin
            .http_callouts()
            .into_iter()
            .skip(http_before)
            .map(|callout| Callout {
                path: callout.header(":path").unwrap_or_default().to_string(),
                cluster: callout.upstream,
                headers: callout.headers,
                body: callout.body,
            });
        let grpc = self
            .plugin
            .grpc_callouts()
            .into_iter()
            .skip(grpc_before)
            .map(|callout| Callout {
                path: grpc_path(&callout),
                cluster: callout.cluster,
                headers: callout.initial_metadata,
                body: callout.messages.into_iter().next().unwrap_or_default(),
            });
        http.chain(grpc).collect()
    }
}

/// The client's port in `source.address` when the scenario names none (Envoy's is the
/// system's choice).
pub(crate) const SOURCE_PORT: u16 = 40000;

/// The upstream of a connection step, played against the harness's connection as the Envoy
/// judge's server plays it: each read answered (echoed, or by the next scripted reply), its
/// side ended after a reply that says so or once it reads the client's end.
struct TcpUpstreamPlay<'a> {
    /// `None`: echo.
    replies: Option<&'a [TcpReply]>,
    next: usize,
    /// How much of what went upstream it has read.
    read: usize,
    /// Its side is still open.
    open: bool,
    /// It got a connection.
    connected: bool,
}

impl<'a> TcpUpstreamPlay<'a> {
    fn new(upstream: Option<&'a TcpUpstream>) -> Self {
        Self {
            replies: upstream.and_then(|upstream| upstream.replies.as_deref()),
            next: 0,
            read: 0,
            open: true,
            connected: false,
        }
    }

    /// The answer to one read, and whether the upstream then ends its side.
    fn answer(&mut self, read: &[u8]) -> (Vec<u8>, bool) {
        let Some(replies) = self.replies else {
            return (read.to_vec(), false);
        };
        let Some(reply) = replies.get(self.next) else {
            return (Vec::new(), false);
        };
        self.next += 1;
        let bytes = body_bytes(reply.send.as_deref(), reply.send_base64.as_deref());
        (bytes.unwrap_or_default(), reply.end)
    }

    /// Reads what reached the upstream since last time and answers it, until nothing new
    /// arrives (an answer the filter turns into more upstream bytes is read too).
    fn react(&mut self, tcp: &mut TcpConnection) -> Result<(), ScenarioError> {
        // Bounded: each round needs new upstream bytes, which only the scenario's finite
        // answers can cause; a filter that answers every answer would loop forever in Envoy.
        for _ in 0..REACT_ROUNDS {
            // A connection the filter closed before it continued never reached `tcp_proxy`.
            if tcp.closed().is_some() {
                return Ok(());
            }
            if tcp.new_connection_action() == Some(Action::Continue) {
                self.connected = true;
            }
            if !self.connected {
                return Ok(());
            }
            let received = tcp.upstream_received();
            let fresh = received.get(self.read..).unwrap_or_default().to_vec();
            self.read = received.len();
            let got_end = tcp.upstream_got_end();
            if !self.open || (fresh.is_empty() && !got_end) {
                return Ok(());
            }
            let (answer, ended) = if fresh.is_empty() {
                (Vec::new(), false)
            } else {
                self.answer(&fresh)
            };
            // It reads the client's end with the last bytes, answers, and ends its side.
            let end = ended || got_end;
            self.open = !end;
            if !answer.is_empty() || end {
                tolerate_crash(tcp.upstream_data(&answer, end))?;
            }
            if fresh.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }
}

const REACT_ROUNDS: usize = 64;

/// A VM crash is not an error of the run: the harness applied the failure policy, and the step
/// reports what the client got. Anything else is.
fn tolerate_crash<T>(result: Result<T, HarnessError>) -> Result<(), ScenarioError> {
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.is_vm_crash() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Headers as the client reads them: `:status` is the status line, not a header.
fn without_pseudo_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .collect()
}

fn client_request(request: &Request) -> ClientRequest {
    let client = request.headers.0.iter().fold(
        ClientRequest::new(&request.method, &request.path).authority(&request.authority),
        |client, (name, value)| client.header(name.as_str(), value.as_str()),
    );
    let whole = body_bytes(request.body.as_deref(), request.body_base64.as_deref());
    // Chunks and trailers need chunked transfer encoding; a whole body alone goes with a length.
    if !request.chunks.is_empty() || !request.trailers.is_empty() {
        client.chunked_body(whole.unwrap_or_else(|| request.chunks.concat().into_bytes()))
    } else if let Some(body) = whole {
        client.body(body)
    } else {
        client
    }
}

/// Sends the request as Envoy's HTTP/1 codec presents it: a whole body as one chunk then an
/// empty one that ends the stream; given chunks one by one; trailers after the body.
fn send_request(
    stream: &mut HttpStream,
    request: &Request,
    index: usize,
) -> Result<(), HarnessError> {
    let client = client_request(request);
    if request.chunks.is_empty() && request.trailers.is_empty() {
        return stream.send_request(&client).map(drop);
    }
    let headers = client.presented_headers(&format!("scenario-step-{index}"));
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    stream.request_headers(&pairs, false)?;
    // A whole body sent with trailers arrives as one chunk, as Envoy's codec reads a small one.
    let whole = body_bytes(request.body.as_deref(), request.body_base64.as_deref());
    let chunks: Vec<&[u8]> = match &whole {
        Some(body) => vec![body.as_slice()],
        None => request.chunks.iter().map(String::as_bytes).collect(),
    };
    for chunk in chunks {
        stream.request_body(chunk, false)?;
    }
    if request.trailers.is_empty() {
        stream.request_body(&[], true).map(drop)
    } else {
        stream
            .request_trailers(&request.trailers.as_pairs())
            .map(drop)
    }
}

fn upstream_response(answer: &UpstreamAnswer) -> UpstreamResponse {
    let response = answer.headers.0.iter().fold(
        UpstreamResponse::new(answer.status),
        |response, (name, value)| response.header(name.as_str(), value.as_str()),
    );
    match body_bytes(answer.body.as_deref(), answer.body_base64.as_deref()) {
        Some(body) => response.body(body),
        None => response,
    }
}

fn grpc_path(callout: &GrpcCallout) -> String {
    format!("/{}/{}", callout.service, callout.method)
}

/// The first answer of `cluster` for a call to `path`.
pub(crate) fn find_answer<'a>(
    clusters: &'a BTreeMap<String, Cluster>,
    cluster: &str,
    protocol: Protocol,
    path: &str,
) -> Option<&'a Answer> {
    let cluster = clusters.get(cluster)?;
    if cluster.protocol != protocol {
        return None;
    }
    cluster
        .answers
        .iter()
        .find(|answer| answer.path.as_deref().is_none_or(|wanted| wanted == path))
}

/// What a cluster's server answers a call no answer of the scenario matches: a `503` (gRPC:
/// status 14) saying so. A server cannot refuse one call and accept the next, so the Envoy judge's
/// servers answer this too, and both judges agree.
pub(crate) fn unmatched(cluster: &str, path: &str) -> String {
    format!("wasmesh scenario: no answer of cluster {cluster} matches {path}")
}

/// The reply the module gets for `answer`, as Envoy hands it the answer of a local server:
/// `:status`, the server's headers, then the `content-length` it frames the body with.
fn http_reply(
    clusters: &BTreeMap<String, Cluster>,
    cluster: &str,
    path: &str,
    answer: Option<&Answer>,
) -> CalloutReply {
    if clusters
        .get(cluster)
        .is_some_and(Cluster::refuses_connections)
    {
        return CalloutReply::Refused;
    }
    let Some(answer) = answer else {
        let body = unmatched(cluster, path);
        return CalloutReply::Response {
            headers: vec![
                (":status".to_string(), "503".to_string()),
                ("content-length".to_string(), body.len().to_string()),
            ],
            body: body.into_bytes(),
            trailers: Vec::new(),
        };
    };
    match answer.fail {
        Some(Failure::Refused) => return CalloutReply::Refused,
        Some(Failure::Reset) => return CalloutReply::Reset,
        Some(Failure::Timeout) => return CalloutReply::Timeout,
        Some(Failure::ResetAfterHeaders) => return CalloutReply::Failure,
        None => {}
    }
    let body =
        body_bytes(answer.body.as_deref(), answer.body_base64.as_deref()).unwrap_or_default();
    let mut headers = vec![(
        ":status".to_string(),
        answer.status.unwrap_or(200).to_string(),
    )];
    headers.extend(answer.headers.0.iter().cloned());
    headers.push(("content-length".to_string(), body.len().to_string()));
    CalloutReply::Response {
        headers,
        body,
        trailers: answer.trailers.0.clone(),
    }
}

fn grpc_reply(
    clusters: &BTreeMap<String, Cluster>,
    cluster: &str,
    path: &str,
    answer: Option<&Answer>,
) -> GrpcReply {
    if clusters
        .get(cluster)
        .is_some_and(Cluster::refuses_connections)
    {
        return GrpcReply::Refused;
    }
    let Some(answer) = answer else {
        return GrpcReply::Error {
            status: 14,
            message: unmatched(cluster, path),
        };
    };
    match answer.fail {
        Some(Failure::Refused) => return GrpcReply::Refused,
        // The Envoy judge's gRPC server resets the call's stream: Envoy reports a remote reset.
        Some(Failure::Reset) => return GrpcReply::StreamReset,
        // `load::validate` keeps `reset_after_headers` to HTTP clusters.
        Some(Failure::Timeout | Failure::ResetAfterHeaders) => return GrpcReply::Timeout,
        None => {}
    }
    match answer.grpc_status.unwrap_or(0) {
        0 => GrpcReply::Response(
            body_bytes(answer.body.as_deref(), answer.body_base64.as_deref()).unwrap_or_default(),
        ),
        status => GrpcReply::Error {
            status,
            message: answer.grpc_message.clone().unwrap_or_default(),
        },
    }
}

fn log_level(name: LogLevelName) -> LogLevel {
    match name {
        LogLevelName::Trace => LogLevel::Trace,
        LogLevelName::Debug => LogLevel::Debug,
        LogLevelName::Info => LogLevel::Info,
        LogLevelName::Warn => LogLevel::Warn,
        LogLevelName::Error => LogLevel::Error,
        LogLevelName::Critical => LogLevel::Critical,
    }
}

//! Polling the control service: the live experiment and the kill switch.
//!
//! Each root context (one per worker VM) polls on its own tick: at most one poll in flight,
//! one every `poll_interval`. The state it keeps is what the request path reads:
//!
//! * before the first answer: faults off;
//! * `200` with `{"enabled": true}`: the configured experiment, or the one in the answer;
//! * `200` with `{"enabled": false}`: faults off (kill switch);
//! * anything else (other status, unreadable body, timeout, unreachable cluster, failed
//!   dispatch): faults off until a good answer. The filter fails safe.

use std::rc::Rc;
use std::time::SystemTime;

use wasmesh_sdk::callout::{CalloutResponse, HttpCallout};
use wasmesh_sdk::config::load;

use crate::config::{ControlConfig, ControlDocument, Experiment};

/// What the last poll said.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlVerdict {
    /// No answer yet.
    Pending,
    /// Faults on: `Some` replaces the configured experiment.
    Enabled(Option<Rc<Experiment>>),
    /// The kill switch is engaged.
    Disabled,
    /// The last poll failed (the reason is kept for logs); faults off.
    Failed(String),
}

/// What a control answer changed, for logs and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A good answer.
    Updated,
    /// A failed poll, with the reason.
    Failed(String),
    /// Not an answer to our poll.
    Ignored,
}

/// One root context's view of the control service.
#[derive(Debug)]
pub struct ControlState {
    config: ControlConfig,
    verdict: ControlVerdict,
    in_flight: Option<u32>,
    next_poll: Option<SystemTime>,
}

impl ControlState {
    /// Nothing polled yet: faults off.
    pub fn new(config: ControlConfig) -> Self {
        ControlState {
            config,
            verdict: ControlVerdict::Pending,
            in_flight: None,
            next_poll: None,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> &ControlVerdict {
        &self.verdict
    }

    /// The token of the poll in flight.
    pub fn in_flight(&self) -> Option<u32> {
        self.in_flight
    }

    /// The poll to dispatch now, if one is due. Call [`ControlState::dispatched`] or
    /// [`ControlState::dispatch_failed`] with the outcome.
    pub fn due(&self, now: SystemTime) -> Option<HttpCallout> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.next_poll.is_some_and(|at| now < at) {
            return None;
        }
        Some(
            HttpCallout::get(
                &self.config.cluster,
                self.config.authority(),
                &self.config.path,
                self.config.timeout,
            )
            .with_header("accept", "application/json"),
        )
    }

    /// The poll went out with `token`.
    pub fn dispatched(&mut self, token: u32, now: SystemTime) {
        self.in_flight = Some(token);
        self.next_poll = Some(now + self.config.poll_interval);
    }

    /// The poll could not be dispatched (e.g. unknown cluster): faults off.
    pub fn dispatch_failed(&mut self, reason: String, now: SystemTime) -> ControlEvent {
        self.next_poll = Some(now + self.config.poll_interval);
        self.verdict = ControlVerdict::Failed(reason.clone());
        ControlEvent::Failed(reason)
    }

    /// A root callout answered.
    pub fn on_response(&mut self, response: &CalloutResponse) -> ControlEvent {
        if self.in_flight != Some(response.token()) {
            return ControlEvent::Ignored;
        }
        self.in_flight = None;
        let failure = match response {
            CalloutResponse::Http(answer) => match answer.status() {
                Some(200) => match load::<ControlDocument>(&answer.body) {
                    Ok(document) => {
                        self.verdict = if document.enabled {
                            ControlVerdict::Enabled(
                                document
                                    .experiment
                                    .map(|experiment| Rc::new(experiment.experiment())),
                            )
                        } else {
                            ControlVerdict::Disabled
                        };
                        return ControlEvent::Updated;
                    }
                    Err(error) => format!("invalid control document: {error}"),
                },
                Some(status) => format!("control service answered {status}"),
                None => "control service unreachable (no response)".to_string(),
            },
            CalloutResponse::Grpc(_) => "unexpected gRPC answer".to_string(),
        };
        self.verdict = ControlVerdict::Failed(failure.clone());
        ControlEvent::Failed(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wasmesh_sdk::callout::HttpCalloutResponse;
    use wasmesh_sdk::config::load;

    fn state() -> ControlState {
        let config = load::<ControlConfig>(
            br#"{"cluster": "chaos", "authority": "chaos.internal", "path": "/exp", "poll_interval": "2s", "timeout": "0.25s"}"#,
        )
        .unwrap();
        ControlState::new(config)
    }

    fn answer(token: u32, status: &str, body: &str) -> CalloutResponse {
        CalloutResponse::Http(HttpCalloutResponse {
            token,
            headers: vec![(":status".into(), status.into())],
            body: body.as_bytes().to_vec(),
            trailers: vec![],
        })
    }

    #[test]
    fn polls_once_per_interval_with_one_in_flight() {
        let mut control = state();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let poll = control.due(start).unwrap();
        assert_eq!(poll.cluster, "chaos");
        assert_eq!(poll.timeout, Duration::from_millis(250));
        assert!(poll
            .headers
            .contains(&(":authority".into(), "chaos.internal".into())));
        assert!(poll.headers.contains(&(":path".into(), "/exp".into())));
        control.dispatched(7, start);
        assert_eq!(
            control.due(start + Duration::from_secs(5)),
            None,
            "one in flight"
        );
        assert_eq!(
            control.on_response(&answer(7, "200", r#"{"enabled": true}"#)),
            ControlEvent::Updated
        );
        assert_eq!(control.due(start + Duration::from_millis(1999)), None);
        assert!(control.due(start + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn verdicts_follow_the_answers_and_fail_safe() {
        let mut control = state();
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(control.verdict(), &ControlVerdict::Pending);
        let mut token = 0;
        let mut ask = |control: &mut ControlState, status: &str, body: &str| {
            token += 1;
            control.dispatched(token, now);
            control.on_response(&answer(token, status, body))
        };
        ask(&mut control, "200", r#"{"enabled": true}"#);
        assert_eq!(control.verdict(), &ControlVerdict::Enabled(None));
        ask(&mut control, "200", r#"{"enabled": false}"#);
        assert_eq!(control.verdict(), &ControlVerdict::Disabled);
        ask(
            &mut control,
            "200",
            r#"{"enabled": true, "experiment": {"abort": {"http_status": 418, "percentage": {"numerator": 100}}}}"#,
        );
        let ControlVerdict::Enabled(Some(experiment)) = control.verdict() else {
            panic!("expected an experiment, got {:?}", control.verdict());
        };
        assert!(experiment.abort.is_some());
        let event = ask(&mut control, "503", "");
        assert_eq!(
            event,
            ControlEvent::Failed("control service answered 503".into())
        );
        assert!(matches!(control.verdict(), ControlVerdict::Failed(_)));
        ask(&mut control, "200", r#"{"enabled": true}"#);
        let event = ask(&mut control, "200", r#"{"enabled": "yes"}"#);
        let ControlEvent::Failed(reason) = event else {
            panic!("expected a failure");
        };
        assert!(
            reason.starts_with("invalid control document: enabled: invalid type"),
            "{reason}"
        );
        assert!(matches!(control.verdict(), ControlVerdict::Failed(_)));
        // A reset/unreachable answer has no headers at all.
        ask(&mut control, "200", r#"{"enabled": true}"#);
        token += 1;
        control.dispatched(token, now);
        let unreachable = CalloutResponse::Http(HttpCalloutResponse {
            token,
            ..HttpCalloutResponse::default()
        });
        assert_eq!(
            control.on_response(&unreachable),
            ControlEvent::Failed("control service unreachable (no response)".into())
        );
    }

    #[test]
    fn foreign_answers_are_ignored() {
        let mut control = state();
        control.dispatched(3, SystemTime::UNIX_EPOCH);
        assert_eq!(
            control.on_response(&answer(4, "200", r#"{"enabled": true}"#)),
            ControlEvent::Ignored
        );
        assert_eq!(control.in_flight(), Some(3));
        assert_eq!(control.verdict(), &ControlVerdict::Pending);
    }

    #[test]
    fn dispatch_failure_disables_and_retries_later() {
        let mut control = state();
        let now = SystemTime::UNIX_EPOCH;
        let event = control.dispatch_failed("no such cluster".into(), now);
        assert_eq!(event, ControlEvent::Failed("no such cluster".into()));
        assert!(matches!(control.verdict(), ControlVerdict::Failed(_)));
        assert_eq!(control.due(now + Duration::from_secs(1)), None);
        assert!(control.due(now + Duration::from_secs(2)).is_some());
    }
}

//! The mock server's replies and the client's chunked requests through a real Envoy: what a
//! scenario runner relies on when it stands a `MockServer` behind Envoy.

use std::time::Duration;

use wasmesh_envoy::{
    self as envoy, client, EnvoyBuilder, HttpRequest, HttpResponse, MockReply, MockServer, Route,
};

#[test]
fn each_mock_reply_reaches_the_client_as_envoy_turns_it() {
    if envoy::skip_requested() {
        return;
    }
    let server = MockServer::start(|request| match request.path.as_str() {
        "/reset" => MockReply::Reset,
        "/reset-after-headers" => MockReply::ResetAfterHeaders,
        "/hang" => MockReply::Hang,
        _ => MockReply::respond(HttpResponse::new(200, request.body.clone())),
    })
    .unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(server.addr())
        .route(Route::Cluster {
            name: "upstream".to_string(),
            timeout: Duration::from_secs(1),
        })
        .start()
        .unwrap();
    let send = |request: HttpRequest| client::send(envoy.listener_addr(), &request).unwrap();

    let echoed =
        send(HttpRequest::new("POST", "/echo").chunks(vec![b"ab".to_vec(), b"cd".to_vec()]));
    assert_eq!(echoed.status, Some(200));
    assert_eq!(echoed.body, b"abcd");
    assert!(echoed.complete);

    // Reset before the headers: Envoy answers 503 itself.
    let reset = send(HttpRequest::get("/reset"));
    assert_eq!(reset.status, Some(503));
    assert!(reset.complete);
    assert!(
        reset
            .response_code_details()
            .unwrap_or_default()
            .contains("upstream_reset_before_response_started"),
        "{reset:?}"
    );

    // Reset after the headers: they went downstream, then Envoy resets the client's stream.
    let cut = send(HttpRequest::get("/reset-after-headers"));
    assert_eq!(cut.status, Some(200));
    assert!(!cut.complete);

    // No answer: the route's timeout fires.
    let hung = send(HttpRequest::get("/hang"));
    assert_eq!(hung.status, Some(504));
    assert_eq!(server.requests().len(), 4);
}

//! The gateway binary against real upstream HTTP servers: routing, ejection and return,
//! 502/503/504, health aggregation, request ids, edge auth, rate limits, body limits, SSE
//! timing, a WebSocket echo, graceful drain, the healthcheck subcommand and bad configuration.

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn bearer(request: http::request::Builder, token: &str) -> http::request::Builder {
    request.header("authorization", format!("Bearer {token}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_round_robin_and_protects_v1() {
    let a = Upstream::start("api-a").await;
    let b = Upstream::start("api-b").await;
    let inference = Upstream::start("inference").await;
    let port = testkit::free_port();
    let gw = start(
        "routing",
        gateway_command(port, &[a.url(), b.url()], &[inference.url()]),
    )
    .await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = get(&gw.url("/api/items/7?x=1")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let json = answer.json();
        assert_eq!(json["uri"], "/api/items/7?x=1", "path forwarded unchanged");
        seen.push(json["upstream"].as_str().expect("name").to_owned());
    }
    assert_ne!(seen[0], seen[1], "round robin: {seen:?}");
    assert_eq!(seen[0], seen[2], "round robin: {seen:?}");

    let missing = get(&gw.url("/elsewhere")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "not_found");

    let open = get(&gw.url("/v1/models")).await;
    assert_eq!(open.status, StatusCode::UNAUTHORIZED, "/v1 is never open");
    assert_eq!(open.headers["www-authenticate"], "Bearer");
    let wrong = send(
        bearer(http::Request::get(gw.url("/v1/models")), "nope")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let keyed = send(
        bearer(http::Request::get(gw.url("/v1/models")), API_KEY)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(keyed.status, StatusCode::OK, "{}", keyed.body);
    let json = keyed.json();
    assert_eq!(json["upstream"], "inference");
    assert_eq!(json["uri"], "/v1/models");
    assert_eq!(json["headers"]["x-cairn-user"], "api-key:0");
    assert!(
        json["headers"].get("authorization").is_none(),
        "credentials stay at the edge"
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    hs256::install();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "user-42", "iat": now, "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token");
    let with_jwt = send(
        bearer(http::Request::post(gw.url("/v1/chat/completions")), &token)
            .body(Body::from("{}"))
            .expect("req"),
    )
    .await;
    assert_eq!(with_jwt.status, StatusCode::OK, "{}", with_jwt.body);
    assert_eq!(with_jwt.json()["headers"]["x-cairn-user"], "user-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_forwarded_headers() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let gw = start("ids", gateway_command(port, &[api.url()], &[api.url()])).await;

    let request = http::Request::get(gw.url("/api/whoami"))
        .header("x-request-id", "test-id-8c1f")
        .header("x-cairn-user", "admin")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], "test-id-8c1f", "echoed");
    let seen = &answer.json()["headers"];
    assert_eq!(seen["x-request-id"], "test-id-8c1f", "forwarded");
    assert!(
        seen.get("x-cairn-user").is_none(),
        "internal header dropped: {seen}"
    );
    assert!(
        seen.get("x-private").is_none(),
        "hop-by-hop header dropped: {seen}"
    );
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], format!("127.0.0.1:{port}"));
    assert_eq!(seen["host"], format!("127.0.0.1:{}", api.port));

    let generated = get(&gw.url("/api/whoami")).await;
    let id = generated.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(generated.json()["headers"]["x-request-id"], id.as_str());
    let missing = get(&gw.url("/nowhere")).await;
    assert!(
        missing.headers.contains_key("x-request-id"),
        "errors carry the id too"
    );

    eventually("the id in the JSON log", Duration::from_secs(5), || async {
        gw.log().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["span"]["request_id"] == "test-id-8c1f" && v["fields"]["status"] == 200
            })
        })
    })
    .await;

    let metrics = get(&gw.url("/metrics")).await;
    assert!(
        metrics
            .body
            .contains("gateway_requests_total{route=\"api\",status=\"2xx\"}"),
        "{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejects_a_dead_instance_and_returns_it() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let port = testkit::free_port();
    let gw = start(
        "eject",
        gateway_command(port, &[a.url(), b.url()], &[a.url()]),
    )
    .await;

    let names = |n| async move {
        let mut names = Vec::new();
        for _ in 0..n {
            let answer = get(&format!("http://127.0.0.1:{port}/api/who")).await;
            names.push(
                answer
                    .json()
                    .get("upstream")
                    .and_then(|v| v.as_str())
                    .unwrap_or("error")
                    .to_owned(),
            );
        }
        names
    };
    let before = names(4).await;
    assert!(before.contains(&"b".to_owned()), "{before:?}");

    b.stop().await;
    eventually("b ejected", Duration::from_secs(10), || async {
        names(6).await.iter().all(|n| n == "a")
    })
    .await;
    let health = get(&gw.url("/api/health/all")).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "api still has an instance: {}",
        health.body
    );
    let json = health.json();
    assert_eq!(json["status"], "degraded");
    let api = &json["services"][0];
    assert_eq!(api["status"], "degraded");
    assert_eq!(api["instances"][1]["status"], "down");
    assert_eq!(api["instances"][1]["in_rotation"], false);

    b.restart().await;
    eventually("b back in rotation", Duration::from_secs(10), || async {
        names(4).await.contains(&"b".to_owned())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_then_503_and_slow_is_504() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[dead_url()]);
    command
        .env("GATEWAY_HEALTH_INTERVAL_MS", "60000")
        .env("GATEWAY_HEALTH_FAILURES_TO_EJECT", "5")
        .env("GATEWAY_API_RESPONSE_TIMEOUT_MS", "300");
    let gw = start("errors", command).await;
    let v1 = || {
        bearer(http::Request::get(gw.url("/v1/models")), API_KEY)
            .body(Body::empty())
            .expect("req")
    };

    let first = send(v1()).await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.body);
    assert_eq!(first.json()["error"]["code"], "upstream_connect_failed");
    let second = send(v1()).await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ejected after the connect error: {}",
        second.body
    );

    let started = Instant::now();
    let slow = get(&gw.url("/api/slow")).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_aggregates_every_instance() {
    let api = Upstream::start("api").await;
    let inference = Upstream::start("inference").await;
    let port = testkit::free_port();
    let gw = start(
        "health-ok",
        gateway_command(port, &[api.url(), dead_url()], &[inference.url()]),
    )
    .await;
    let answer = get(&gw.url("/api/health/all")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["services"][0]["name"], "api");
    assert_eq!(json["services"][0]["status"], "degraded");
    assert_eq!(json["services"][0]["instances"][0]["status"], "up");
    assert!(
        json["services"][0]["instances"][0]["latency_ms"]
            .as_f64()
            .is_some()
    );
    assert_eq!(json["services"][0]["instances"][1]["status"], "down");
    assert!(
        json["services"][0]["instances"][1]["error"]
            .as_str()
            .is_some()
    );
    assert_eq!(json["services"][1]["status"], "ok");

    let port = testkit::free_port();
    let gw = start(
        "health-down",
        gateway_command(port, &[api.url()], &[dead_url()]),
    )
    .await;
    let answer = get(&gw.url("/api/health/all")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(answer.json()["status"], "down");
    assert_eq!(answer.json()["services"][1]["status"], "down");

    let port = testkit::free_port();
    let mut optional = gateway_command(port, &[api.url()], &[dead_url()]);
    optional.env("GATEWAY_INFERENCE_CRITICAL", "false");
    let gw = start("health-optional", optional).await;
    let answer = get(&gw.url("/api/health/all")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["status"], "degraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_body_limit() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[api.url()]);
    command
        .env("GATEWAY_RATE_AUTH", "2/m")
        .env("GATEWAY_MAX_BODY_BYTES", "1024");
    let gw = start("limits", command).await;
    let login = || {
        http::Request::post(gw.url("/api/auth/login"))
            .body(Body::from("{}"))
            .expect("req")
    };
    assert_eq!(send(login()).await.status, StatusCode::OK);
    assert_eq!(send(login()).await.status, StatusCode::OK);
    let refused = send(login()).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let other_client = send(
        http::Request::post(gw.url("/api/auth/login"))
            .header("x-forwarded-for", "203.0.113.9")
            .body(Body::from("{}"))
            .expect("req"),
    )
    .await;
    assert_eq!(
        other_client.status,
        StatusCode::OK,
        "a different client behind the trusted proxy has its own bucket"
    );
    assert_eq!(
        get(&gw.url("/api/items")).await.status,
        StatusCode::OK,
        "other routes unaffected"
    );

    let small = send(
        http::Request::post(gw.url("/api/upload"))
            .body(Body::from(vec![b'x'; 1000]))
            .expect("req"),
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.json()["body_bytes"], 1000);
    let large = send(
        http::Request::post(gw.url("/api/upload"))
            .body(Body::from(vec![b'x'; 4096]))
            .expect("req"),
    )
    .await;
    assert_eq!(
        large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        large.body
    );
}

/// Every early answer to a large upload reaches the client: a body the gateway will not forward
/// (over the limit, declared or chunked; 401; 404; 429; an upstream that is down) is read and
/// dropped while the answer goes out. Answering and then closing with unread data makes the
/// kernel reset the connection, and the client loses the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_get_their_answer_not_a_reset() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[dead_url()]);
    command
        .env("GATEWAY_MAX_BODY_BYTES", "1024")
        .env("GATEWAY_RATE_AUTH", "1/m,burst=1");
    let gw = start("refusals", command).await;
    assert_eq!(
        send(
            http::Request::post(gw.url("/api/auth/login"))
                .body(Body::from("{}"))
                .expect("req")
        )
        .await
        .status,
        StatusCode::OK,
        "the one login the auth bucket allows"
    );
    const UPLOAD: usize = 8 * 1024 * 1024;
    let declared = || Body::from(vec![b'x'; UPLOAD]);
    let chunked = || {
        let chunks =
            (0..UPLOAD / 65536).map(|_| Ok::<_, std::convert::Infallible>(vec![b'x'; 65536]));
        Body::from_stream(futures_util::stream::iter(chunks))
    };
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        fn(StatusCode) -> bool,
        bool,
    );
    let cases: [Case; 6] = [
        (
            "declared over the limit",
            "/api/upload",
            None,
            |s| s == StatusCode::PAYLOAD_TOO_LARGE,
            true,
        ),
        (
            "chunked over the limit",
            "/api/upload",
            None,
            |s| s == StatusCode::PAYLOAD_TOO_LARGE,
            false,
        ),
        (
            "unauthenticated /v1",
            "/v1/models",
            None,
            |s| s == StatusCode::UNAUTHORIZED,
            true,
        ),
        (
            "unknown route",
            "/nowhere",
            None,
            |s| s == StatusCode::NOT_FOUND,
            true,
        ),
        (
            "rate limited",
            "/api/auth/login",
            None,
            |s| s == StatusCode::TOO_MANY_REQUESTS,
            true,
        ),
        (
            "upstream down",
            "/v1/models",
            Some(API_KEY),
            |s| s == StatusCode::BAD_GATEWAY || s == StatusCode::SERVICE_UNAVAILABLE,
            false,
        ),
    ];
    for (case, path, key, expected, declared_length) in cases {
        for attempt in 1..=3 {
            let mut request = http::Request::post(gw.url(path));
            if let Some(key) = key {
                request = bearer(request, key);
            }
            let body = if declared_length {
                declared()
            } else {
                chunked()
            };
            let answer = client()
                .request(request.body(body).expect("req"))
                .await
                .unwrap_or_else(|err| panic!("{case}, attempt {attempt}: the client saw an error instead of the answer: {err:?}"));
            assert!(
                expected(answer.status()),
                "{case}, attempt {attempt}: {}",
                answer.status()
            );
        }
    }
}

/// Reads an SSE response, returning each event's arrival time.
async fn event_arrivals(response: http::Response<hyper::body::Incoming>) -> Vec<(Instant, String)> {
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            let text = String::from_utf8_lossy(data).into_owned();
            for event in text.split("\n\n").filter(|e| !e.is_empty()) {
                arrivals.push((Instant::now(), event.to_owned()));
            }
        }
    }
    arrivals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_at_their_send_times() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let gw = start("sse", gateway_command(port, &[api.url()], &[api.url()])).await;
    let response = client()
        .request(
            http::Request::get(gw.url("/api/events?count=4"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let arrivals = event_arrivals(response).await;
    let sent = api.sse_sent.lock().expect("lock").clone();
    assert_eq!(arrivals.len(), 4, "{arrivals:?}");
    assert_eq!(sent.len(), 4);
    for (n, ((arrived, event), sent)) in arrivals.iter().zip(&sent).enumerate() {
        assert_eq!(event, &format!("data: event {n}"));
        let delay = arrived.duration_since(*sent);
        assert!(
            delay < Duration::from_millis(250),
            "event {n} arrived {delay:?} after it was sent"
        );
    }
    assert!(
        arrivals[3].0 - arrivals[0].0 >= Duration::from_millis(800),
        "events spread over time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_tunnel() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    let echo = format!("http://127.0.0.1:{echo_port}");
    let port = testkit::free_port();
    let mut command = gateway_command(
        port,
        std::slice::from_ref(&echo),
        std::slice::from_ref(&echo),
    );
    // The echo server speaks only WebSocket, so its health probes fail; keep it in rotation.
    command
        .env("GATEWAY_HEALTH_INTERVAL_MS", "60000")
        .env("GATEWAY_HEALTH_FAILURES_TO_EJECT", "5");
    let gw = start("ws", command).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/api/ws", gw.port))
            .await
            .expect("websocket handshake through the gateway");
    assert!(response.headers().contains_key("x-request-id"));
    for text in ["hello", "through the tunnel"] {
        ws.send(Message::text(text)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time");
        assert_eq!(reply.expect("message").expect("ok"), Message::text(text));
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time");
    assert_eq!(
        reply.expect("message").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_within_the_deadline() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut gw = start("drain", gateway_command(port, &[api.url()], &[api.url()])).await;
    let response = client()
        .request(
            http::Request::get(gw.url("/api/events?count=4"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("response");
    let reader = tokio::spawn(event_arrivals(response));
    eventually("first event sent", Duration::from_secs(5), || async {
        !api.sse_sent.lock().expect("lock").is_empty()
    })
    .await;
    let pid = gw.guard.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let arrivals = reader.await.expect("reader");
    assert_eq!(
        arrivals.len(),
        4,
        "the open stream finished after SIGTERM: {arrivals:?}"
    );
    let status = tokio::task::spawn_blocking(move || gw.guard.terminate(Duration::from_secs(5)))
        .await
        .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );

    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[api.url()]);
    command.env("GATEWAY_DRAIN_TIMEOUT_MS", "300");
    let mut gw = start("drain-deadline", command).await;
    let response = client()
        .request(
            http::Request::get(gw.url("/api/events?count=20"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("response");
    let reader = tokio::spawn(event_arrivals(response));
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &gw.guard.id().to_string()])
        .status()
        .expect("kill");
    let status = tokio::task::spawn_blocking(move || gw.guard.terminate(Duration::from_secs(5)))
        .await
        .expect("join");
    assert!(status.is_some(), "exited");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "deadline kept: {:?}",
        started.elapsed()
    );
    let arrivals = reader.await.expect("reader");
    assert!(
        arrivals.len() < 20,
        "the long stream was cut at the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_follows_the_running_gateway() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let gw = start(
        "healthcheck",
        gateway_command(port, &[api.url()], &[api.url()]),
    )
    .await;
    let mut check = gateway_command(port, &[api.url()], &[api.url()]);
    check.arg("healthcheck");
    let output = tokio::task::spawn_blocking(move || check.output())
        .await
        .expect("join")
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    drop(gw);
    let mut check = gateway_command(port, &[api.url()], &[api.url()]);
    check.arg("healthcheck");
    let output = tokio::task::spawn_blocking(move || check.output())
        .await
        .expect("join")
        .expect("run");
    assert!(
        !output.status.success(),
        "no gateway, no health: {output:?}"
    );
}

fn failure(mut command: std::process::Command) -> (i32, String) {
    let output = command.output().expect("run gateway");
    assert!(
        !output.status.success(),
        "gateway should refuse to start: {output:?}"
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let api = "http://127.0.0.1:9".to_owned();
    let port = testkit::free_port();

    let mut command = gateway_command(
        port,
        &["http://api:8000/".into(), "htp:/broken".into()],
        std::slice::from_ref(&api),
    );
    let (code, stderr) = failure({
        command.arg("serve");
        command
    });
    assert_eq!(code, 2);
    assert!(
        stderr.contains("GATEWAY_API_UPSTREAMS") && stderr.contains("htp:/broken"),
        "{stderr}"
    );

    let file = scratch("bad-config").join("gateway.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[health_check]\ninterval_ms = 100\nretries = 3\n",
    )
    .expect("write");
    let mut command = gateway_command(port, std::slice::from_ref(&api), std::slice::from_ref(&api));
    command.env("GATEWAY_CONFIG", &file);
    let (_, stderr) = failure(command);
    assert!(
        stderr.contains(file.to_str().expect("utf-8"))
            && stderr.contains("line 4")
            && stderr.contains("retries"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let command = gateway_command(
        taken_port,
        std::slice::from_ref(&api),
        std::slice::from_ref(&api),
    );
    let (_, stderr) = failure(command);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
        "{stderr}"
    );
}

// ---- Attacks (issue 17): each test is named for the attack it refuses. ----

/// An HS256 token for `sub`, as the api issues them.
fn user_token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    hs256::install();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "iat": now, "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

fn chat_request(url: String, token: &str, end_user: Option<&str>) -> http::Request<Body> {
    let mut request = bearer(http::Request::post(url), token);
    if let Some(user) = end_user {
        request = request.header("x-cairn-end-user", user);
    }
    request.body(Body::from("{}")).expect("req")
}

/// Item 1: the api calls `/v1` for every user from one address with one key; one user's burst
/// must not use up everyone's chat quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_chat_burst_leaves_other_users_their_quota() {
    let upstream = Upstream::start("inference").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[upstream.url()], &[upstream.url()]);
    command.env("GATEWAY_RATE_CHAT", "2/m");
    let gw = start("per-caller-quota", command).await;
    let chat = |token: String, end_user: Option<&'static str>| {
        let request = chat_request(gw.url("/v1/chat/completions"), &token, end_user);
        async move { send(request).await }
    };

    for _ in 0..2 {
        let answer = chat(API_KEY.into(), Some("alice")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let refused = chat(API_KEY.into(), Some("alice")).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "alice's third chat"
    );
    let bob = chat(API_KEY.into(), Some("bob")).await;
    assert_eq!(
        bob.status,
        StatusCode::OK,
        "bob has his own quota: {}",
        bob.body
    );
    assert_eq!(bob.json()["headers"]["x-cairn-user"], "api-key:0/user:bob");
    assert!(
        bob.json()["headers"].get("x-cairn-end-user").is_none(),
        "the end-user header stops at the gateway"
    );

    // Users holding their own tokens, from the same address, have their own quotas too.
    for _ in 0..2 {
        assert_eq!(
            chat(user_token("user-a"), None).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        chat(user_token("user-a"), None).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A token holder cannot borrow another identity's quota with the end-user header.
    let borrowed = chat(user_token("user-a"), Some("bob")).await;
    assert_eq!(
        borrowed.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        borrowed.body
    );
    let user_b = chat(user_token("user-b"), Some("alice")).await;
    assert_eq!(user_b.status, StatusCode::OK, "{}", user_b.body);
    assert_eq!(user_b.json()["headers"]["x-cairn-user"], "user-b");
}

/// Item 1: one caller opening stream after stream must not hold every inference slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_hold_more_than_its_share_of_streams() {
    let upstream = Upstream::start("inference").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[upstream.url()], &[upstream.url()]);
    command.env("GATEWAY_V1_STREAMS_PER_CALLER", "1");
    let gw = start("per-caller-streams", command).await;
    let open = |end_user: &'static str| {
        let request = bearer(http::Request::get(gw.url("/v1/events?count=3")), API_KEY)
            .header("x-cairn-end-user", end_user)
            .body(Body::empty())
            .expect("req");
        async move { client().request(request).await.expect("response") }
    };

    let first = open("alice").await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = open("alice").await;
    assert_eq!(
        second.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "alice's second stream while the first is open"
    );
    let bob = open("bob").await;
    assert_eq!(bob.status(), StatusCode::OK, "bob is not alice");
    drop(bob);

    // A stream counts until its body ends...
    let events = first
        .into_body()
        .collect()
        .await
        .expect("events")
        .to_bytes();
    assert!(String::from_utf8_lossy(&events).contains("event 2"));
    eventually("alice may stream again", Duration::from_secs(5), || async {
        open("alice").await.status() == StatusCode::OK
    })
    .await;
    // ...or is dropped by the client (the one `eventually` just dropped frees its slot too).
    let deadline = Instant::now() + Duration::from_secs(5);
    let abandoned = loop {
        let response = open("alice").await;
        if response.status() == StatusCode::OK {
            break response;
        }
        assert!(Instant::now() < deadline, "alice's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(abandoned);
    eventually(
        "a dropped stream frees its slot",
        Duration::from_secs(5),
        || async { open("alice").await.status() == StatusCode::OK },
    )
    .await;
}

/// Item 11: a client behind nginx names itself anew in `X-Forwarded-For` on every request
/// (nginx appends the address it saw); IPv6 clients rotate through their /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_x_forwarded_for_does_not_escape_the_rate_limit() {
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[api.url()]);
    command.env("GATEWAY_RATE_AUTH", "2/m");
    let gw = start("forged-xff", command).await;
    let login = |chain: String| {
        let request = http::Request::post(gw.url("/api/auth/login"))
            .header("x-forwarded-for", chain)
            .body(Body::from("{}"))
            .expect("req");
        async move { send(request).await.status }
    };
    let mut seen = Vec::new();
    for n in 0..4 {
        // A client on a private network (as nginx saw it) with a forged entry before it.
        seen.push(login(format!("198.51.100.{n}, 192.168.1.50")).await);
    }
    assert_eq!(
        seen,
        [200, 200, 429, 429].map(|s| StatusCode::from_u16(s).expect("status")),
        "the forged left-most entries must not name the client"
    );
    let mut seen = Vec::new();
    for n in 1..=3 {
        seen.push(login(format!("2001:db8:1:2::{n}")).await);
    }
    assert_eq!(
        seen,
        [200, 200, 429].map(|s| StatusCode::from_u16(s).expect("status")),
        "one IPv6 /64 is one client"
    );
    assert_eq!(
        login("2001:db8:1:3::1".into()).await,
        StatusCode::OK,
        "another /64"
    );
}

/// Item 12: error answers must not show where the upstreams are or what they said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reveal_no_internal_address() {
    let api = Upstream::start("api").await;
    let dead = dead_url();
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], std::slice::from_ref(&dead));
    command
        .env("GATEWAY_HEALTH_INTERVAL_MS", "60000")
        .env("GATEWAY_HEALTH_FAILURES_TO_EJECT", "5")
        .env("GATEWAY_API_RESPONSE_TIMEOUT_MS", "300");
    let gw = start("no-leaks", command).await;
    let bad_gateway = send(
        bearer(http::Request::get(gw.url("/v1/models")), API_KEY)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(bad_gateway.status, StatusCode::BAD_GATEWAY);
    let timeout = get(&gw.url("/api/slow")).await;
    assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
    for (answer, address) in [(&bad_gateway, &dead), (&timeout, &api.url())] {
        let body = answer.body.to_lowercase();
        for leak in [
            address.trim_start_matches("http://"),
            "127.0.0.1",
            "refused",
            "tcp",
        ] {
            assert!(!body.contains(leak), "{leak} in {}", answer.body);
        }
        assert!(
            answer.json()["error"]["code"].is_string(),
            "{}",
            answer.body
        );
    }
    eventually("the address in the log", Duration::from_secs(5), || async {
        gw.log().contains(dead.trim_start_matches("http://"))
    })
    .await;
}

/// Item 2: `/api/health/all` from outside shows no internal URLs, is rate-limited, and many
/// callers at once do not multiply the probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_tells_outsiders_only_a_bare_status_and_is_no_amplifier() {
    let api = Upstream::start("api").await;
    let inference = Upstream::start("inference").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[inference.url()]);
    command
        .env("GATEWAY_HEALTH_INTERVAL_MS", "60000")
        .env("GATEWAY_RATE_GENERAL", "5/m");
    let gw = start("health-outside", command).await;
    let through_nginx = |client: String| {
        let request = http::Request::get(gw.url("/api/health/all"))
            .header("x-forwarded-for", client)
            .body(Body::empty())
            .expect("req");
        async move { send(request).await }
    };

    let outside = through_nginx("203.0.113.7".into()).await;
    assert_eq!(outside.status, StatusCode::OK, "{}", outside.body);
    assert_eq!(
        outside.json(),
        serde_json::json!({"status": "ok"}),
        "bare status"
    );
    let inside = get(&gw.url("/api/health/all")).await;
    assert_eq!(
        inside.json()["services"][0]["instances"][0]["url"],
        api.url()
    );

    let probes_before = api.health_hits.load(std::sync::atomic::Ordering::SeqCst);
    let many = (0..20).map(|n| through_nginx(format!("198.51.100.{n}")));
    for answer in futures_util::future::join_all(many).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let probes = api.health_hits.load(std::sync::atomic::Ordering::SeqCst) - probes_before;
    assert!(probes <= 2, "20 callers caused {probes} probes of the api");

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(through_nginx("203.0.113.7".into()).await.status);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

/// Item 16: slowloris. Headers sent one byte at a time are cut off after the header timeout,
/// an idle keep-alive connection is closed after the idle timeout, and a stream that is busy
/// is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_and_idle_connections_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[api.url()]);
    command
        .env("GATEWAY_HEADER_READ_TIMEOUT_MS", "1000")
        .env("GATEWAY_IDLE_TIMEOUT_MS", "1500");
    let gw = start("slowloris", command).await;

    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"GET /api/items HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("first bytes");
    let started = Instant::now();
    let (mut reader, mut writer) = slow.into_split();
    let dribble = async {
        // One header byte every 200 ms, for at most 6 s.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let mut buffer = [0u8; 256];
    let cut = tokio::select! {
        read = reader.read(&mut buffer) => matches!(read, Ok(0) | Err(_)),
        () = dribble => false,
    };
    assert!(cut, "a header sent byte by byte was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    idle.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let n = idle.read(&mut buffer).await.expect("response");
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        // The rest of the answer, if it came in two parts, then the end of the connection.
        while matches!(idle.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "idle keep-alive connection still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    // A stream of 8 events 300 ms apart outlives both timeouts.
    let stream = client()
        .request(
            http::Request::get(gw.url("/api/events?count=8"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("stream");
    let events = stream
        .into_body()
        .collect()
        .await
        .expect("every event")
        .to_bytes();
    assert!(String::from_utf8_lossy(&events).contains("event 7"));
}

/// Item 16: one address opening connection after connection is refused beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_ip_cap_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[api.url()]);
    command
        .env("GATEWAY_MAX_CONNECTIONS_PER_IP", "4")
        // The test's own address is then an ordinary client, not a proxy.
        .env("GATEWAY_TRUSTED_PROXIES", "192.0.2.1");
    let gw = start("conn-cap", command).await;
    // Answered on a fresh connection that stays open afterwards (keep-alive)?
    let try_connection = || async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buffer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        buffer[..n].starts_with(b"HTTP/1.1 200").then_some(stream)
    };
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 4 {
        // The readiness probes' connections may still be closing.
        match try_connection().await {
            Some(stream) => held.push(stream),
            None => assert!(Instant::now() < deadline, "only {} connections", held.len()),
        }
    }
    for attempt in 1..=3 {
        assert!(
            try_connection().await.is_none(),
            "connection 5 (attempt {attempt}) was served"
        );
    }
    held.pop();
    eventually("a freed slot is usable", Duration::from_secs(5), || async {
        try_connection().await.is_some()
    })
    .await;
    drop(gw);
}

// ---- Server A to server B (issue 15): the gateway authenticates to inference. ----

/// Inference's `INFERENCE_API_KEY`, which only the gateway holds.
const UPSTREAM_KEY: &str = "b-side-key-Qx2-7f3e";

/// A chat completion for the tiny model, as a client of the gateway sends it.
fn completion(url: String, token: Option<&str>) -> http::Request<Body> {
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = bearer(request, token);
    }
    let body = serde_json::json!({
        "model": inference::MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "seed": 15,
    });
    request.body(Body::from(body.to_string())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_key_authenticates_the_gateway_to_inference() {
    let key = [("INFERENCE_API_KEY", UPSTREAM_KEY)];
    let Some(inference) = inference::Inference::start("upstream-key", &key).await else {
        return;
    };
    let api = Upstream::start("api").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[inference.url()]);
    command
        .env("GATEWAY_INFERENCE_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("RUST_LOG", "debug");
    let gw = start("upstream-key", command).await;

    // Callers show the gateway their own credential (an API key, a user's JWT); inference sees
    // only the gateway's.
    for token in [API_KEY.to_owned(), user_token("user-15")] {
        let answer = send(completion(gw.url("/v1/chat/completions"), Some(&token))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let json = answer.json();
        assert_eq!(json["object"], "chat.completion", "{json}");
        assert_eq!(json["model"], inference::MODEL);
        assert!(
            json["usage"]["completion_tokens"].as_u64() > Some(0),
            "{json}"
        );
    }
    let models = send(
        bearer(http::Request::get(gw.url("/v1/models")), API_KEY)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.body);
    assert_eq!(models.json()["data"][0]["id"], inference::MODEL);

    // Inference's health route is open: the probes need no key, and the instance stays up.
    let health = get(&gw.url("/api/health/all")).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(
        health.json()["services"][1]["status"],
        "ok",
        "{}",
        health.body
    );

    // Inference itself refuses anyone without the key, the gateway's own callers included.
    for token in [None, Some(API_KEY)] {
        let direct = send(completion(inference.url() + "/v1/chat/completions", token)).await;
        assert_eq!(direct.status, StatusCode::UNAUTHORIZED, "{}", direct.body);
    }

    let log = gw.log();
    assert!(
        log.contains("gateway listening"),
        "the log was written: {log}"
    );
    assert!(
        !log.contains(UPSTREAM_KEY),
        "the key leaked into the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_upstream_key_the_gateway_answers_for_itself() {
    let key = [("INFERENCE_API_KEY", UPSTREAM_KEY)];
    let Some(inference) = inference::Inference::start("no-upstream-key", &key).await else {
        return;
    };
    let api = Upstream::start("api").await;
    let wrong_key = "not-inference-s-key-9d1";
    for (name, upstream_key) in [
        ("no-upstream-key", None),
        ("wrong-upstream-key", Some(wrong_key)),
    ] {
        let port = testkit::free_port();
        let mut command = gateway_command(port, &[api.url()], &[inference.url()]);
        if let Some(upstream_key) = upstream_key {
            command.env("GATEWAY_INFERENCE_UPSTREAM_KEY", upstream_key);
        }
        let gw = start(name, command).await;
        let answer = send(completion(gw.url("/v1/chat/completions"), Some(API_KEY))).await;
        // Not inference's 401: the caller's credential was right, the gateway's was not.
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{name}: {}",
            answer.body
        );
        assert_eq!(
            answer.json()["error"]["code"],
            "upstream_unauthorized",
            "{name}: {}",
            answer.body
        );
        assert!(!answer.headers.contains_key("www-authenticate"), "{name}");
        let body = answer.body.to_lowercase();
        for leak in [
            "invalid_api_key",
            "api key",
            "127.0.0.1",
            &inference.port.to_string(),
        ] {
            assert!(!body.contains(leak), "{name}: {leak} in {}", answer.body);
        }
        eventually(
            "the refusal in the log, naming the variable",
            Duration::from_secs(5),
            || async { gw.log().contains("GATEWAY_INFERENCE_UPSTREAM_KEY") },
        )
        .await;
        assert!(
            !gw.log().contains(wrong_key),
            "{name}: the key leaked into the log"
        );
    }
}

#[test]
fn a_bad_upstream_key_is_named_and_never_shown() {
    let api = "http://127.0.0.1:9".to_owned();
    for bad in ["two words", "tab\there", "caf\u{e9}-key"] {
        let mut command = gateway_command(
            testkit::free_port(),
            std::slice::from_ref(&api),
            std::slice::from_ref(&api),
        );
        command.env("GATEWAY_INFERENCE_UPSTREAM_KEY", bad);
        let (code, stderr) = failure(command);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("GATEWAY_INFERENCE_UPSTREAM_KEY"),
            "{stderr}"
        );
        assert!(!stderr.contains(bad), "the key shown: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_key_goes_to_inference_only_and_never_with_the_callers_credential() {
    let api = Upstream::start("api").await;
    let inference = Upstream::start("inference").await;
    let port = testkit::free_port();
    let mut command = gateway_command(port, &[api.url()], &[inference.url()]);
    command.env("GATEWAY_INFERENCE_UPSTREAM_KEY", UPSTREAM_KEY);
    let gw = start("upstream-key-headers", command).await;
    let v1 = send(
        bearer(http::Request::get(gw.url("/v1/models")), API_KEY)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.body);
    let seen = &v1.json()["headers"];
    assert_eq!(seen["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(seen["x-cairn-user"], "api-key:0");
    // The api authenticates users itself: their token reaches it, the key never does.
    let token = user_token("user-15");
    let api_call = send(
        bearer(http::Request::get(gw.url("/api/me")), &token)
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(api_call.status, StatusCode::OK, "{}", api_call.body);
    assert_eq!(
        api_call.json()["headers"]["authorization"],
        format!("Bearer {token}")
    );
    // The health probes carry no key (the health paths are open).
    let probes = |upstream: &Upstream| {
        let load = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::SeqCst);
        (
            load(&upstream.health_hits),
            load(&upstream.health_authorized),
        )
    };
    eventually("inference probed", Duration::from_secs(5), || async {
        probes(&inference).0 > 0
    })
    .await;
    assert_eq!(probes(&inference).1, 0, "a probe carried Authorization");
    assert_eq!(probes(&api).1, 0, "a probe carried Authorization");
}

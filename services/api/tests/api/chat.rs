//! From register to a streamed, persisted chat reply; keep-alives; a disconnect mid-stream and
//! an LLM failure leaving a partial reply; the per-user stream limit.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::support::inference::Inference;
use crate::support::llm::FakeLlm;
use crate::support::{Api, Client, Postgres, parse_sse};

/// The path a user takes, end to end on real parts: the api streams what the real `inference`
/// server generates and stores exactly what it streamed, with the server's token usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_and_stores_what_the_real_inference_server_generates() {
    let Some(pg) = Postgres::start() else { return };
    let Some(inference) = Inference::start() else {
        return;
    };
    let api = Api::start(&pg.url, &inference.base, &[]);
    let ben = Client::new(&api)
        .register("ben@example.org", "correct horse")
        .await;
    let (status, text) = ben.chat(json!({ "message": "hello there" })).await;
    assert_eq!(status, 200, "{text}");
    let (events, _) = parse_sse(&text);
    assert_eq!(events[0].event, "session", "{text}");
    let session_id = events[0].data["session_id"].as_str().expect("session id");
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().expect("content"))
        .collect();
    let done = events.last().expect("events");
    assert_eq!(done.event, "done", "{text}");
    let completion_tokens = done.data["usage"]["completion_tokens"]
        .as_i64()
        .expect("usage from the server");
    assert!(completion_tokens > 0, "{text}");

    // `done` names the stored reply: it is in the database before the client hears of it.
    assert!(done.data["message_id"].is_string(), "{text}");
    let (status, stored) = ben.get(&format!("/api/sessions/{session_id}")).await;
    assert_eq!(status, 200, "{stored}");
    let reply = &stored["messages"][1];
    assert_eq!(reply["role"], "assistant", "{stored}\n{text}");
    assert_eq!(reply["content"].as_str(), Some(streamed.as_str()));
    assert_eq!(reply["status"], "complete");
    assert_eq!(reply["completion_tokens"].as_i64(), Some(completion_tokens));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_chat_stream_and_persist() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[("API_SSE_KEEPALIVE_MS", "100")]);
    let anon = Client::new(&api);
    anon.register("ann@example.org", "correct horse").await;
    let (status, login) = anon
        .post(
            "/api/auth/login",
            &json!({ "email": "ANN@example.org", "password": "correct horse" }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let ann = anon.with_token(login["token"].as_str().expect("token"));
    let (status, me) = ann.get("/api/auth/me").await;
    assert_eq!(
        (status, me["email"].as_str()),
        (200, Some("ann@example.org"))
    );

    // The first turn: deltas arrive as separate events, then `done`.
    let (status, text) = ann.chat(json!({ "message": "where does it hurt" })).await;
    assert_eq!(status, 200, "{text}");
    let (events, _) = parse_sse(&text);
    assert_eq!(events[0].event, "session");
    let session_id = events[0].data["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().expect("content"))
        .collect();
    assert!(deltas.len() >= 4, "one event per delta: {deltas:?}");
    assert_eq!(deltas.concat(), "Echo: where does it hurt");
    let done = events.last().expect("events");
    assert_eq!(done.event, "done", "{text}");
    assert_eq!(done.data["finish_reason"], "stop");
    assert_eq!(done.data["usage"]["completion_tokens"], 5);

    // The second turn in the same session sends the system prompt and the history.
    let (status, text) = ann
        .chat(json!({ "session_id": session_id, "message": "[wait] since when" }))
        .await;
    assert_eq!(status, 200, "{text}");
    let (events, comments) = parse_sse(&text);
    assert!(
        comments >= 1,
        "keep-alive comments while the LLM is slow: {text}"
    );
    assert_eq!(events.last().expect("events").event, "done");
    let sent = llm.requests();
    let prompt = &sent.last().expect("two requests")["messages"];
    assert_eq!(prompt[0]["role"], "system");
    let roles: Vec<&str> = prompt
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["model"], "test-model");

    // Everything is stored, with usage, in order.
    let (status, stored) = ann.get(&format!("/api/sessions/{session_id}")).await;
    assert_eq!(status, 200, "{stored}");
    let messages = stored["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1]["content"], "Echo: where does it hurt");
    assert_eq!(messages[1]["status"], "complete");
    assert_eq!(messages[1]["completion_tokens"], 5);
    assert_eq!(messages[3]["role"], "assistant");

    // Listing is paginated and deleting removes the session.
    for title in ["b", "c"] {
        let (status, _) = ann.post("/api/sessions", &json!({ "title": title })).await;
        assert_eq!(status, 201);
    }
    let (_, page) = ann.get("/api/sessions?limit=2&offset=0").await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["sessions"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );
    let (_, rest) = ann.get("/api/sessions?limit=2&offset=2").await;
    assert_eq!(rest["sessions"].as_array().map(Vec::len), Some(1));
    let (status, _) = ann.delete(&format!("/api/sessions/{session_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = ann.get(&format!("/api/sessions/{session_id}")).await;
    assert_eq!(status, 404);
}

/// Polls the session until its last message is an assistant reply, and returns it.
async fn stored_reply(client: &Client, session_id: &str) -> serde_json::Value {
    for _ in 0..250 {
        let (_, body) = client.get(&format!("/api/sessions/{session_id}")).await;
        if let Some(last) = body["messages"].as_array().and_then(|m| m.last())
            && last["role"] == "assistant"
        {
            return last.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no assistant reply stored for session {session_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_failures_and_stream_limits_leave_partial_replies() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(
        &pg.url,
        &llm.base,
        &[
            ("API_STREAMS_PER_USER", "1"),
            ("LLM_IDLE_TIMEOUT_MS", "300"),
        ],
    );
    let bob = Client::new(&api)
        .register("bob@example.org", "hunter2hunter2")
        .await;

    // The client reads a few deltas of a long answer, then goes away.
    let response = bob
        .request(reqwest::Method::POST, "/api/chat")
        .header("content-type", "application/json")
        .body(json!({ "message": "[slow] tell me everything" }).to_string())
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("event: delta").count() < 3 {
        let bytes = body.next().await.expect("more events").expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    let session_id = parse_sse(&seen).0[0].data["session_id"]
        .as_str()
        .expect("id")
        .to_owned();

    // While that stream is open, a second one for the same user is refused.
    let (status, refused) = bob.chat(json!({ "message": "again" })).await;
    assert_eq!(status, 429, "{refused}");
    drop(body);

    let reply = stored_reply(&bob, &session_id).await;
    assert_eq!(reply["status"], "partial");
    let content = reply["content"].as_str().expect("content");
    assert!(content.starts_with("tick0 tick1 tick2"), "{content}");
    assert!(
        !content.contains("tick599"),
        "stored before the LLM finished: {content}"
    );

    // An LLM that breaks mid-answer: `event: error`, the partial reply is stored. The slot of the
    // abandoned stream is free again.
    let (status, text) = bob
        .chat(json!({ "session_id": session_id, "message": "[break] go on" }))
        .await;
    assert_eq!(status, 200, "{text}");
    let (events, _) = parse_sse(&text);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{text}");
    assert_eq!(last.data["error"]["code"], "llm_stream_broken");
    let reply = stored_reply(&bob, &session_id).await;
    assert_eq!(
        (reply["status"].as_str(), reply["content"].as_str()),
        (Some("partial"), Some("half an answer"))
    );

    // An LLM that goes silent hits the idle timeout.
    let (_, text) = bob
        .chat(json!({ "session_id": session_id, "message": "[hang] and?" }))
        .await;
    let (events, _) = parse_sse(&text);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{text}");
    assert_eq!(last.data["error"]["code"], "llm_timeout", "{text}");
    assert!(
        last.data["error"]["message"]
            .as_str()
            .expect("message")
            .contains("sent nothing"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_llm_is_an_error_event_and_not_ready() {
    let Some(pg) = Postgres::start() else { return };
    let dead = format!("http://127.0.0.1:{}/v1", testkit::free_port());
    let api = Api::start(&pg.url, &dead, &[]);
    let client = Client::new(&api)
        .register("cy@example.org", "password123")
        .await;
    let (status, text) = client.chat(json!({ "message": "hello" })).await;
    assert_eq!(status, 200);
    let (events, _) = parse_sse(&text);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{text}");
    assert_eq!(last.data["error"]["code"], "llm_unavailable", "{text}");
    let (status, ready) = client.get("/api/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["storage"], "ok");
    assert_ne!(ready["checks"]["llm"], "ok");
}

/// A reply the database refuses is reported as an `error` event, never as `done` without an id:
/// the client must not believe a reply was saved when it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_cannot_be_stored_ends_in_an_error_event() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    // The api has migrated the schema by now; make PostgreSQL refuse this one reply.
    let db = sqlx::PgPool::connect(&pg.url).await.expect("connect");
    sqlx::query(
        "ALTER TABLE messages ADD CONSTRAINT no_unstorable_replies \
         CHECK (role <> 'assistant' OR content NOT LIKE 'Echo: unstorable%')",
    )
    .execute(&db)
    .await
    .expect("add constraint");
    let cid = Client::new(&api)
        .register("cid@example.org", "hunter2hunter2")
        .await;

    let (status, text) = cid.chat(json!({ "message": "unstorable words" })).await;
    assert_eq!(status, 200, "{text}");
    let (events, _) = parse_sse(&text);
    let deltas: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().expect("content"))
        .collect();
    assert_eq!(
        deltas, "Echo: unstorable words",
        "the stream itself is whole"
    );
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{text}");
    assert_eq!(last.data["error"]["code"], "internal", "{text}");
    assert!(last.data["message_id"].is_null(), "{text}");

    // A reply the database accepts still ends in `done` with its id.
    let (_, text) = cid.chat(json!({ "message": "fine words" })).await;
    let (events, _) = parse_sse(&text);
    let last = events.last().expect("events");
    assert_eq!(last.event, "done", "{text}");
    assert!(last.data["message_id"].is_string(), "{text}");
}

//! A user's path through the site as the stack tests take it: JSON posts, the id of a new
//! session, and `POST /api/chat` read as server-sent events, each with the read it arrived in
//! (shared by `tests/dev.rs` and `tests/servers.rs`).
#![allow(dead_code)]

use serde_json::{Value, json};

/// One server-sent event and the read (counted from 0) in which it was complete.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
    pub read: usize,
}

/// `POST url` with a JSON body (and a bearer token): the status and the answer (JSON, or its
/// text as a JSON string).
pub fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The id in the api's answer to `POST /api/sessions`.
pub fn session_id(session: &Value) -> String {
    session["id"]
        .as_str()
        .or_else(|| session["session"]["id"].as_str())
        .unwrap_or_else(|| panic!("no session id in {session}"))
        .to_owned()
}

/// `POST {site}/api/chat` with `message` in `session_id`: a 200 event stream, its events as
/// they arrived.
pub fn chat(
    client: &reqwest::blocking::Client,
    site: &str,
    token: &str,
    session_id: &str,
    message: &str,
) -> Vec<Event> {
    let response = client
        .post(format!("{site}/api/chat"))
        .bearer_auth(token)
        .json(&json!({ "message": message, "session_id": session_id }))
        .send()
        .expect("POST /api/chat");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    testkit::sse::read_blocks(response)
        .expect("reading the stream")
        .into_iter()
        .map(|arrived| Event {
            name: arrived.block.event,
            data: serde_json::from_str(&arrived.block.data).expect("event data is JSON"),
            read: arrived.read,
        })
        .collect()
}

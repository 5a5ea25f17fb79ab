//! Every error code the api promises, each from a real request, always as the uniform JSON
//! body; bad input of every kind; SQL-looking strings stored verbatim.

use serde_json::{Value, json};

use crate::support::llm::FakeLlm;
use crate::support::{Api, Client, JWT_SECRET, Postgres};

/// Asserts the status and the uniform error body, and returns the message.
fn expect_error(reply: &(u16, Value), status: u16, code: &str) -> String {
    let (got, body) = reply;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

fn token_with(secret: &str, sub: &str, iat: u64, exp: u64) -> String {
    hs256::install();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "iat": iat, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_from_a_real_request() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[("API_MAX_MESSAGE_CHARS", "50")]);
    let anon = Client::new(&api);
    let ann = anon.register("ann@example.org", "correct horse").await;
    let eve = anon.register("eve@example.org", "eavesdropper").await;

    // 400: malformed JSON, a path id that is no UUID, a bad query string.
    expect_error(
        &anon.post_raw("/api/auth/register", "{\"email\": ").await,
        400,
        "bad_request",
    );
    expect_error(
        &anon.post_raw("/api/auth/login", "\u{0}\u{1}garbage").await,
        400,
        "bad_request",
    );
    let message = expect_error(
        &ann.get("/api/sessions/not-a-uuid").await,
        400,
        "bad_request",
    );
    assert!(message.contains("id"), "{message}");
    expect_error(
        &ann.get("/api/sessions?limit=many").await,
        400,
        "bad_request",
    );

    // 401: no token, garbage, another secret, expired, a user that does not exist, wrong password.
    expect_error(&anon.get("/api/auth/me").await, 401, "unauthorized");
    expect_error(
        &anon.with_token("garbage").get("/api/auth/me").await,
        401,
        "unauthorized",
    );
    let now = jsonwebtoken::get_current_timestamp();
    let (_, me) = ann.get("/api/auth/me").await;
    let ann_id = me["id"].as_str().expect("id");
    let forged = token_with("some-other-secret-some-other-secret", ann_id, now, now + 60);
    expect_error(
        &anon.with_token(&forged).get("/api/auth/me").await,
        401,
        "unauthorized",
    );
    let expired = token_with(JWT_SECRET, ann_id, now - 7200, now - 3600);
    expect_error(
        &anon.with_token(&expired).get("/api/auth/me").await,
        401,
        "unauthorized",
    );
    let ghost = token_with(JWT_SECRET, &uuid::Uuid::new_v4().to_string(), now, now + 60);
    expect_error(
        &anon.with_token(&ghost).get("/api/auth/me").await,
        401,
        "unauthorized",
    );
    let wrong = anon
        .post(
            "/api/auth/login",
            &json!({ "email": "ann@example.org", "password": "wrong horse" }),
        )
        .await;
    let nobody = anon
        .post(
            "/api/auth/login",
            &json!({ "email": "nobody@example.org", "password": "wrong horse" }),
        )
        .await;
    assert_eq!(
        expect_error(&wrong, 401, "unauthorized"),
        expect_error(&nobody, 401, "unauthorized"),
        "login must not reveal which emails exist"
    );

    // 403: another user's session, to read, delete or chat into; nothing of it leaks.
    let (_, session) = ann
        .post(
            "/api/sessions",
            &json!({ "title": "ann's secret consultation" }),
        )
        .await;
    let path = format!("/api/sessions/{}", session["id"].as_str().expect("id"));
    let denied = eve.get(&path).await;
    expect_error(&denied, 403, "forbidden");
    assert!(
        !denied.1.to_string().contains("secret consultation"),
        "{}",
        denied.1
    );
    expect_error(&eve.delete(&path).await, 403, "forbidden");
    let chat_into = eve
        .post(
            "/api/chat",
            &json!({ "session_id": session["id"], "message": "hi" }),
        )
        .await;
    expect_error(&chat_into, 403, "forbidden");
    assert_eq!(ann.get(&path).await.0, 200, "still there for its owner");

    // 404: a missing session, an unknown route.
    expect_error(
        &ann.get(&format!("/api/sessions/{}", uuid::Uuid::new_v4()))
            .await,
        404,
        "not_found",
    );
    expect_error(&ann.get("/api/nothing-here").await, 404, "not_found");

    // 409: the same email again, in any case.
    let again = anon
        .post(
            "/api/auth/register",
            &json!({ "email": "Ann@Example.org", "password": "another one" }),
        )
        .await;
    expect_error(&again, 409, "conflict");

    // 413: a JSON body over the limit (64 KiB by default).
    let huge = json!({ "email": "x@example.org", "password": "p".repeat(100_000) });
    expect_error(
        &anon.post("/api/auth/register", &huge).await,
        413,
        "payload_too_large",
    );

    // 422: invalid fields, unknown fields, wrong types, a message over the limit, an empty one.
    let bad_email = anon
        .post(
            "/api/auth/register",
            &json!({ "email": "not-an-email", "password": "long enough" }),
        )
        .await;
    assert!(expect_error(&bad_email, 422, "unprocessable").contains("email"));
    let short = anon
        .post(
            "/api/auth/register",
            &json!({ "email": "sam@example.org", "password": "short" }),
        )
        .await;
    assert!(expect_error(&short, 422, "unprocessable").contains("password"));
    expect_error(
        &anon
            .post("/api/auth/register", &json!({ "email": 5, "password": [] }))
            .await,
        422,
        "unprocessable",
    );
    let extra = anon
        .post(
            "/api/auth/login",
            &json!({ "email": "ann@example.org", "password": "x", "admin": true }),
        )
        .await;
    expect_error(&extra, 422, "unprocessable");
    let long = ann
        .post("/api/chat", &json!({ "message": "m".repeat(51) }))
        .await;
    assert!(expect_error(&long, 422, "unprocessable").contains("50"));
    expect_error(
        &ann.post("/api/chat", &json!({ "message": "   " })).await,
        422,
        "unprocessable",
    );
    expect_error(
        &ann.get("/api/sessions?limit=0").await,
        422,
        "unprocessable",
    );

    // 429 is proven in chat::disconnects_failures_and_stream_limits_leave_partial_replies.

    // The api is still healthy after all of that.
    assert_eq!(anon.get("/api/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_looking_strings_are_stored_verbatim() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let anon = Client::new(&api);
    let nasty_email = "o'brien+test@example.org";
    let client = anon.register(nasty_email, "'; DROP TABLE users; --").await;
    let title = "Robert'); DROP TABLE chat_sessions;-- \u{1F600} \\x00 $1";
    let (status, session) = client
        .post("/api/sessions", &json!({ "title": title }))
        .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["title"], title);
    let message = "1' OR '1'='1'; SELECT * FROM users; --";
    let response = client
        .request(reqwest::Method::POST, "/api/chat")
        .header("content-type", "application/json")
        .body(json!({ "session_id": session["id"], "message": message }).to_string())
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("event: done"), "{text}");
    let (_, stored) = client
        .get(&format!(
            "/api/sessions/{}",
            session["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(stored["session"]["title"], title);
    assert_eq!(stored["messages"][0]["content"], message);
    assert_eq!(stored["messages"][1]["content"], format!("Echo: {message}"));
    let login = anon
        .post(
            "/api/auth/login",
            &json!({ "email": nasty_email, "password": "'; DROP TABLE users; --" }),
        )
        .await;
    assert_eq!(login.0, 200, "the users table is intact: {}", login.1);
}

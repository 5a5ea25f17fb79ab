//! The attacks and overloads of the hardening review (issue 17), each as the request an attacker
//! or a heavy user would send, against the real binary, PostgreSQL and object storage. Load-type
//! tests are bounded in count and time and stay on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::llm::{CONTEXT_TOKENS, FakeLlm, SECRET_BODY};
use crate::support::{Api, Client, Postgres, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, parse_sse};

async fn user_id(client: &Client) -> String {
    let (_, me) = client.get("/api/auth/me").await;
    me["id"].as_str().expect("user id").to_owned()
}

async fn metrics_text(api: &Api) -> String {
    crate::support::http_client()
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of an unlabelled counter in a Prometheus text exposition (0 when absent).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Item 1: the api calls the gateway with one API key for everyone, so the gateway can only
/// tell users apart if the api names the user on every LLM request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_users_chat_names_that_user_so_one_user_cannot_spend_everyones_budget() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let anon = Client::new(&api);
    let ann = anon.register("ann@example.org", "correct horse").await;
    let bob = anon.register("bob@example.org", "battery staple").await;
    for client in [&ann, &bob, &ann] {
        let (status, text) = client.chat(json!({ "message": "hello" })).await;
        assert_eq!(status, 200, "{text}");
    }
    let (ann_id, bob_id) = (user_id(&ann).await, user_id(&bob).await);
    assert_eq!(
        llm.end_users(),
        [Some(ann_id.clone()), Some(bob_id), Some(ann_id)]
    );
}

/// Item 2: `/api/health/ready` is public; a burst of it must not become a burst of LLM calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_burst_is_not_amplified_into_llm_calls() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[("API_READY_CACHE_MS", "1000")]);
    let anon = Client::new(&api);
    let started = Instant::now();
    let burst = (0..40).map(|_| anon.get("/api/health/ready"));
    let replies = futures_util::future::join_all(burst).await;
    let burst_time = started.elapsed();
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    // One check per TTL; a burst that straddles the TTL's end may take a second one.
    let calls = llm.models_calls();
    assert!(
        calls <= 1 + burst_time.as_millis() as usize / 1000,
        "40 readiness requests in {burst_time:?} made {calls} LLM calls"
    );
    // Once the cached answer is old, the next request checks again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = llm.models_calls();
    assert_eq!(anon.get("/api/health/ready").await.0, 200);
    assert_eq!(llm.models_calls(), before + 1, "the cache expires");
}

const MIB: usize = 1 << 20;

/// Bytes that are not text and not all alike, so a mix-up would show.
fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7919 + seed) % 251) as u8).collect()
}

/// Every regular file under `dir` with its size.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(meta) => found.push((path, meta.len())),
                Err(_) => {}
            }
        }
    }
    found
}

/// An upload whose body is fed by the test; dropping the sender ends the body.
struct OpenUpload {
    sender: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reply: tokio::task::JoinHandle<Result<(u16, Value), reqwest::Error>>,
}

fn open_upload(client: &Client, name: &str) -> OpenUpload {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let request = client
        .request(reqwest::Method::POST, &format!("/api/files?name={name}"))
        .header("content-type", "application/pdf")
        .body(reqwest::Body::wrap_stream(body));
    let reply = tokio::spawn(async move {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    });
    OpenUpload { sender, reply }
}

impl OpenUpload {
    /// Sends `bytes` in 1 MiB chunks; false when the api stopped reading.
    async fn send(&self, bytes: &[u8]) -> bool {
        for chunk in bytes.chunks(MIB) {
            if self.sender.send(Ok(chunk.to_vec())).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn finish(self) -> (u16, Value) {
        drop(self.sender);
        self.reply
            .await
            .expect("upload task")
            .expect("upload answered")
    }

    /// Breaks the body off with an error, as a client that crashes mid-upload does.
    async fn break_off(self) {
        let _ = self
            .sender
            .send(Err(std::io::Error::other("client crashed")))
            .await;
        let _ = self.reply.await;
    }
}

async fn download(client: &Client, id: &str) -> Vec<u8> {
    let response = client
        .request(reqwest::Method::GET, &format!("/api/files/{id}"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("bytes").to_vec()
}

const UPLOAD_LIMIT: (&str, &str) = ("API_MAX_UPLOAD_BYTES", "16777216");

/// Item 6: an upload is held whole in memory, so a few large ones at once exhaust the api's
/// memory. Streamed to the store, the object fills while the body is still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_the_store_instead_of_filling_memory() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[UPLOAD_LIMIT]);
    let ann = Client::new(&api)
        .register("ann@example.org", "correct horse")
        .await;
    let bytes = payload(13 * MIB, 1);
    let upload = open_upload(&ann, "scan.pdf");
    assert!(upload.send(&bytes[..12 * MIB]).await, "the api reads on");
    // The body is still open: a streaming api has already written most of it to the store.
    let stored = |dir: &Path| files_under(dir).iter().map(|(_, len)| *len).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored(api.storage_dir.path()) < 5 * MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "12 MiB sent, body still open, and the store holds {} bytes: the api buffers uploads",
            stored(api.storage_dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(upload.send(&bytes[12 * MIB..]).await);
    let (status, file) = upload.finish().await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["size_bytes"], 13 * MIB);
    let id = file["id"].as_str().expect("id");
    assert!(download(&ann, id).await == bytes, "the stored bytes differ");

    // Over the limit while streaming: 413, and the partial object is gone.
    let upload = open_upload(&ann, "huge.pdf");
    upload.send(&payload(17 * MIB, 2)).await;
    let (status, body) = upload.finish().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let left = files_under(api.storage_dir.path());
    assert_eq!(left.len(), 1, "only the finished upload stays: {left:?}");

    // A body that breaks off mid-upload (a part already written): the partial object goes too.
    let upload = open_upload(&ann, "broken.pdf");
    assert!(upload.send(&payload(7 * MIB, 6)).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_under(api.storage_dir.path()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the broken upload never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upload.break_off().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = files_under(api.storage_dir.path());
        if left.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "a broken upload left {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, listed) = ann.get("/api/files").await;
    assert_eq!(
        listed["files"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

/// Item 6 on S3: the streamed upload goes up in parts (a multipart upload) and a refused one
/// leaves no object in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_s3_in_parts() {
    let Some(s3) = S3Server::start() else { return };
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(
        &pg.url,
        &llm.base,
        &[
            UPLOAD_LIMIT,
            ("STORAGE_BACKEND", "s3"),
            ("S3_ENDPOINT", &s3.endpoint),
            ("S3_BUCKET", &s3.bucket),
            ("S3_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ],
    );
    let ann = Client::new(&api)
        .register("ann@example.org", "correct horse")
        .await;
    for (len, seed) in [(13 * MIB, 3), (100, 4)] {
        let bytes = payload(len, seed);
        let upload = open_upload(&ann, "scan.pdf");
        assert!(upload.send(&bytes).await);
        let (status, file) = upload.finish().await;
        assert_eq!(status, 201, "{file}");
        let id = file["id"].as_str().expect("id");
        assert!(download(&ann, id).await == bytes, "{len} bytes differ");
    }
    let upload = open_upload(&ann, "huge.pdf");
    upload.send(&payload(17 * MIB, 5)).await;
    let (status, body) = upload.finish().await;
    assert_eq!(status, 413, "{body}");
    let objects = files_under(&s3.root.join(&s3.bucket));
    assert_eq!(
        objects.len(),
        2,
        "only the two finished uploads: {objects:?}"
    );
}

/// Item 7: every login or register hashes with Argon2 (19 MiB each); a burst beyond the bound is
/// refused quickly with Retry-After instead of queueing without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_burst_beyond_the_hashing_bound_is_refused_fast() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(
        &pg.url,
        &llm.base,
        &[("API_PASSWORD_HASHES", "1"), ("API_PASSWORD_WAIT_MS", "10")],
    );
    let anon = Client::new(&api);
    anon.register("ann@example.org", "correct horse").await;
    let login = || async {
        let started = Instant::now();
        let response = anon
            .request(reqwest::Method::POST, "/api/auth/login")
            .header("content-type", "application/json")
            .body(json!({ "email": "ann@example.org", "password": "correct horse" }).to_string())
            .send()
            .await
            .expect("login");
        let retry_after = response.headers().get("retry-after").cloned();
        (response.status().as_u16(), retry_after, started.elapsed())
    };
    let replies = futures_util::future::join_all((0..8).map(|_| login())).await;
    let refused: Vec<_> = replies
        .iter()
        .filter(|(status, ..)| *status == 503)
        .collect();
    let served: Vec<_> = replies
        .iter()
        .filter(|(status, ..)| *status == 200)
        .collect();
    assert_eq!(refused.len() + served.len(), 8, "{replies:?}");
    assert!(!served.is_empty(), "{replies:?}");
    assert!(
        !refused.is_empty(),
        "8 logins at once all queued: {replies:?}"
    );
    let slowest_served = served.iter().map(|(.., took)| *took).max().expect("served");
    for (_, retry_after, took) in &refused {
        assert!(
            retry_after.is_some(),
            "503 without Retry-After: {replies:?}"
        );
        assert!(
            *took < slowest_served,
            "a refusal waited for the queue: {replies:?}"
        );
    }
}

/// Item 8: a session with many messages came back whole on every open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_session_is_paged_instead_of_loaded_whole() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let ann = Client::new(&api)
        .register("ann@example.org", "correct horse")
        .await;
    let (_, session) = ann.post("/api/sessions", &json!({ "title": "long" })).await;
    let session_id = session["id"].as_str().expect("id").to_owned();
    let db = sqlx::PgPool::connect(&pg.url).await.expect("connect");
    sqlx::query(
        "INSERT INTO messages (id, session_id, role, content) \
         SELECT gen_random_uuid(), $1, CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, 'm' || i \
         FROM generate_series(0, 249) AS i ORDER BY i",
    )
    .bind(uuid::Uuid::parse_str(&session_id).expect("uuid"))
    .execute(&db)
    .await
    .expect("insert 250 messages");

    let path = format!("/api/sessions/{session_id}");
    let (status, first) = ann.get(&path).await;
    assert_eq!(status, 200, "{first}");
    let page = first["messages"].as_array().expect("messages");
    assert_eq!(page.len(), 50, "the first page, not all 250");
    assert_eq!(first["session"]["id"], session_id.as_str());
    assert_eq!(
        (page[0]["content"].as_str(), page[49]["content"].as_str()),
        (Some("m200"), Some("m249"))
    );
    assert_eq!(first["has_more"], true);

    // Walking back with the cursor yields every message once, in order.
    let mut all: Vec<String> = Vec::new();
    let mut reply = first;
    loop {
        let contents = reply["messages"].as_array().expect("messages").iter();
        let mut page: Vec<String> = contents
            .map(|m| m["content"].as_str().expect("content").to_owned())
            .collect();
        page.append(&mut all);
        all = page;
        if reply["has_more"] == false {
            assert!(reply["next_before"].is_null(), "{reply}");
            break;
        }
        let before = reply["next_before"].as_str().expect("cursor").to_owned();
        let (status, next) = ann.get(&format!("{path}?limit=100&before={before}")).await;
        assert_eq!(status, 200, "{next}");
        reply = next;
    }
    let expected: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    assert_eq!(all, expected);
    for bad in [
        "limit=0",
        "limit=201",
        &format!("before={}", uuid::Uuid::new_v4()),
    ] {
        let (status, body) = ann.get(&format!("{path}?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
}

/// Item 9: the method label took the raw request method, so made-up methods grew one series
/// each without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_http_methods_do_not_grow_metric_series() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let http = crate::support::http_client();
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("ATTACK{i}").as_bytes()).expect("method");
        http.request(method, api.url("/api/health"))
            .send()
            .await
            .expect("request");
    }
    let metrics = metrics_text(&api).await;
    assert!(!metrics.contains("ATTACK"), "{metrics}");
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");
}

/// Item 10: twenty long messages overflowed the model's context, so every later message of the
/// session failed. The history is budgeted in tokens, oldest dropped first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_session_history_is_cut_to_fit_the_model_context() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let context = CONTEXT_TOKENS.to_string();
    let api = Api::start(&pg.url, &llm.base, &[("LLM_CONTEXT_TOKENS", &context)]);
    let ann = Client::new(&api)
        .register("ann@example.org", "correct horse")
        .await;
    let (_, session) = ann.post("/api/sessions", &json!({ "title": "long" })).await;
    let session_id = session["id"].as_str().expect("id").to_owned();
    let db = sqlx::PgPool::connect(&pg.url).await.expect("connect");
    sqlx::query(
        "INSERT INTO messages (id, session_id, role, content) \
         SELECT gen_random_uuid(), $1, CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, \
                i || ' ' || repeat('long words ', 727) \
         FROM generate_series(0, 19) AS i ORDER BY i",
    )
    .bind(uuid::Uuid::parse_str(&session_id).expect("uuid"))
    .execute(&db)
    .await
    .expect("insert 20 long messages");

    let (status, text) = ann
        .chat(json!({ "session_id": session_id, "message": "and now?" }))
        .await;
    assert_eq!(status, 200, "{text}");
    let (events, _) = parse_sse(&text);
    let last = events.last().expect("events");
    assert_eq!(last.event, "done", "{text}");
    let sent = llm.requests();
    let prompt = sent.last().expect("a request")["messages"]
        .as_array()
        .expect("messages")
        .clone();
    assert_eq!(prompt[0]["role"], "system");
    assert_eq!(prompt.last().expect("last")["content"], "and now?");
    assert!(
        prompt.len() > 3,
        "keeps as much history as fits: {} messages",
        prompt.len()
    );
    // The newest history survived, the oldest went.
    let second_last = prompt[prompt.len() - 2]["content"]
        .as_str()
        .expect("content");
    assert!(second_last.starts_with("19 "), "{second_last:.20}");
}

/// Item 12: the LLM's URL, its error bodies and raw dependency errors stayed in what the client
/// received (SSE `error` events, readiness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_urls_and_error_bodies_never_reach_the_client() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let ann = Client::new(&api)
        .register("ann@example.org", "correct horse")
        .await;
    let llm_address = llm
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    for (message, code) in [
        ("[fail] hi", "llm_unavailable"),
        ("[garbage] hi", "llm_bad_response"),
    ] {
        let (status, text) = ann.chat(json!({ "message": message })).await;
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains(SECRET_BODY), "{text}");
        assert!(
            !text.contains("SECRET") && !text.contains("/srv/"),
            "{text}"
        );
        assert!(!text.contains(&llm_address), "{text}");
        let (events, _) = parse_sse(&text);
        let last = events.last().expect("events");
        assert_eq!(
            (last.event.as_str(), &last.data["error"]["code"]),
            ("error", &json!(code)),
            "{text}"
        );
    }

    // An LLM nobody answers at: neither the chat nor readiness names where it was looked for.
    let dead_port = testkit::free_port();
    let dead = format!("http://127.0.0.1:{dead_port}/v1");
    let api = Api::start(&pg.url, &dead, &[]);
    let anon = Client::new(&api);
    let bob = anon.register("bob@example.org", "battery staple").await;
    let (_, text) = bob.chat(json!({ "message": "hello" })).await;
    assert!(
        !text.contains(&dead_port.to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );
    let (events, _) = parse_sse(&text);
    assert_eq!(
        events.last().expect("events").data["error"]["code"],
        "llm_unavailable",
        "{text}"
    );
    let (status, ready) = anon.get("/api/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["llm"], "llm_unavailable", "{ready}");
    let shown = ready.to_string();
    assert!(
        !shown.contains(&dead_port.to_string()) && !shown.contains("127.0.0.1"),
        "{shown}"
    );
}

/// Item 15: register's conflict named the email back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_conflict_does_not_confirm_the_email() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let anon = Client::new(&api);
    anon.register("ann@example.org", "correct horse").await;
    let (status, body) = anon
        .post(
            "/api/auth/register",
            &json!({ "email": "Ann@Example.org", "password": "other password" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_lowercase();
    assert!(!message.contains("ann@example.org"), "{message}");
}

/// Item 15: a login for an unknown email returned before hashing, so its speed told an attacker
/// which emails have accounts. Both paths must run the hash (structural) and take as long
/// (timing, bounded tries, medians, a loose factor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_for_an_unknown_email_does_the_same_work_as_a_wrong_password() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[]);
    let anon = Client::new(&api);
    anon.register("ann@example.org", "correct horse").await;
    let login = |email: &'static str| {
        let anon = anon.clone();
        async move {
            let started = Instant::now();
            let (status, body) = anon
                .post(
                    "/api/auth/login",
                    &json!({ "email": email, "password": "wrong password" }),
                )
                .await;
            assert_eq!(status, 401, "{body}");
            started.elapsed()
        }
    };
    let hashes = || async {
        counter(
            &metrics_text(&api).await,
            "api_password_verifications_total",
        )
    };
    let before = hashes().await;
    login("nobody@example.org").await;
    assert_eq!(
        hashes().await,
        before + 1.0,
        "an unknown email skipped the hash"
    );

    let (mut unknown, mut known) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        unknown.push(login("nobody@example.org").await);
        known.push(login("ann@example.org").await);
    }
    unknown.sort();
    known.sort();
    let (unknown, known) = (unknown[3], known[3]);
    assert!(
        unknown * 3 >= known,
        "median login: unknown email {unknown:?}, known email {known:?}"
    );
}

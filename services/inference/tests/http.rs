//! The inference server over HTTP, on a tiny random Qwen2 model written by the real binary
//! (`inference tiny-model`) and loaded through the real loading code: response shapes field by
//! field, determinism under a seed, finish reasons, usage, errors, the queue, cancellation on
//! disconnect, metrics and the healthcheck subcommand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::ProcessGuard;

const BINARY: &str = env!("CARGO_BIN_EXE_inference");
const MODEL: &str = "tiny";

fn write_tiny_model(dir: &Path) {
    let status = Command::new(BINARY)
        .args(["tiny-model", dir.to_str().expect("utf-8 path")])
        .status()
        .expect("run inference tiny-model");
    assert!(status.success(), "tiny-model failed: {status}");
}

struct Server {
    process: ProcessGuard,
    _dir: tempfile::TempDir,
    model_dir: PathBuf,
    base: String,
    port: u16,
    client: reqwest::Client,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let model_dir = dir.path().join("model");
        write_tiny_model(&model_dir);
        let port = testkit::free_port();
        let mut command = Command::new(BINARY);
        command
            .env("MODEL_DIR", &model_dir)
            .env("INFERENCE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SERVED_MODEL_NAME", MODEL)
            .env("RUST_LOG", "warn")
            .env_remove("INFERENCE_API_KEY");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut process = ProcessGuard::spawn("inference", &mut command);
        let base = format!("http://127.0.0.1:{port}");
        // `cargo test --workspace` unifies reqwest's features with the api's, which builds rustls
        // without a default crypto provider: install one, or building any client panics.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            process.assert_running();
            let health = client.get(format!("{base}/health")).send().await;
            if health.is_ok_and(|response| response.status() == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            process,
            _dir: dir,
            model_dir,
            base,
            port,
            client,
        }
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .json(body)
    }

    async fn complete(&self, body: &Value) -> Value {
        let response = self.post(body).send().await.expect("request");
        let status = response.status();
        let answer: Value = response.json().await.expect("json answer");
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// Every `data:` payload of a streamed answer, `[DONE]` included.
    async fn stream(&self, body: &Value) -> Vec<String> {
        let response = self.post(body).send().await.expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "SSE content type"
        );
        let text = response.text().await.expect("stream body");
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"))
                    .to_owned()
            })
            .collect()
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The number of prompt tokens the ChatML prompt of one user message has.
    fn prompt_tokens(&self, user: &str) -> u64 {
        let tokenizer = tokenizers::Tokenizer::from_file(self.model_dir.join("tokenizer.json"))
            .expect("tokenizer");
        let prompt = format!(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        );
        tokenizer.encode(prompt, false).expect("encode").len() as u64
    }
}

fn chat(user: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": user}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The value of the sample `name{…labels…}` in Prometheus text, 0 when absent.
fn sample(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn non_streaming_answer_has_openai_shape_and_usage() {
    let server = Server::start(&[]).await;
    let answer = server
        .complete(&chat(
            "Hello there",
            json!({"max_tokens": 8, "seed": 7, "ignore_eos": true}),
        ))
        .await;
    assert!(answer["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["created"].as_u64().expect("created") > 1_700_000_000);
    assert_eq!(answer["model"], MODEL);
    let choices = answer["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(choices[0]["message"]["content"].is_string());
    assert_eq!(choices[0]["finish_reason"], "length");
    assert!(choices[0]["logprobs"].is_null());
    let prompt_tokens = server.prompt_tokens("Hello there");
    assert_eq!(answer["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(answer["usage"]["completion_tokens"], 8);
    assert_eq!(answer["usage"]["total_tokens"], prompt_tokens + 8);

    let models: Value = server
        .client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
}

#[tokio::test]
async fn a_seed_makes_answers_repeat_and_streams_match() {
    let server = Server::start(&[]).await;
    let ask = |seed: u64| {
        chat(
            "Tell me a story",
            json!({"max_tokens": 16, "seed": seed, "temperature": 1.0, "top_k": 50, "ignore_eos": true}),
        )
    };
    let first = server.complete(&ask(42)).await;
    let again = server.complete(&ask(42)).await;
    let other = server.complete(&ask(43)).await;
    let content = |answer: &Value| answer["choices"][0]["message"]["content"].clone();
    assert_eq!(content(&first), content(&again), "same seed, same text");
    assert_ne!(content(&first), content(&other), "another seed, other text");

    let mut streamed = ask(42);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = server.stream(&streamed).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).expect("chunk json"))
        .collect();
    let id = &chunks[0]["id"];
    assert!(id.as_str().expect("id").starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(&chunk["id"], id, "one id for the whole stream");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL);
        assert!(
            chunk.get("usage").is_some(),
            "include_usage: usage on every chunk"
        );
    }
    let first_chunk = &chunks[0]["choices"][0];
    assert_eq!(first_chunk["delta"]["role"], "assistant");
    assert!(first_chunk["finish_reason"].is_null());
    let (usage_chunk, rest) = chunks.split_last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 16);
    assert_eq!(usage_chunk["usage"], first["usage"]);
    let (finish_chunk, content_chunks) = rest.split_last().expect("finish chunk");
    assert_eq!(finish_chunk["choices"][0]["delta"], json!({}));
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "length");
    assert!(finish_chunk["usage"].is_null());
    let text: String = content_chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(json!(text), content(&first), "stream and non-stream agree");
    for chunk in &content_chunks[1..] {
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
    }

    let mut plain = ask(42);
    plain["stream"] = json!(true);
    let events = server.stream(&plain).await;
    let last_chunk: Value = serde_json::from_str(&events[events.len() - 2]).expect("json");
    assert_eq!(last_chunk["choices"][0]["finish_reason"], "length");
    assert!(last_chunk.get("usage").is_none(), "no usage unless asked");
}

#[tokio::test]
async fn a_stop_string_ends_the_answer_and_never_leaks() {
    let server = Server::start(&[]).await;
    let greedy = json!({"max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let full = server.complete(&chat("Count", greedy.clone())).await;
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned();
    let chars: Vec<char> = text.chars().collect();
    let start = (2..chars.len().saturating_sub(2))
        .find(|&i| !chars[i..i + 2].contains(&'\u{FFFD}'))
        .expect("a clean two-character window in the greedy answer");
    let stop: String = chars[start..start + 2].iter().collect();
    let expected = &text[..text.find(&stop).expect("stop occurs")];

    let mut with_stop = greedy.clone();
    with_stop["stop"] = json!([stop.clone(), "never-generated-ßß"]);
    let stopped = server.complete(&chat("Count", with_stop.clone())).await;
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped["choices"][0]["message"]["content"], expected);
    assert!(
        stopped["usage"]["completion_tokens"]
            .as_u64()
            .expect("count")
            < 24
    );

    with_stop["stream"] = json!(true);
    let events = server.stream(&chat("Count", with_stop)).await;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).expect("chunk json"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, expected, "the stop text never reaches the stream");
    let finish = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!(finish["finish_reason"], "stop");
}

async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error json");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn bad_requests_get_openai_error_objects() {
    let server = Server::start(&[("MAX_MODEL_LEN", "64")]).await;
    let unknown = server
        .post(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("request");
    let body = expect_error(unknown, 404).await;
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("gpt-9")
    );

    let too_long = server
        .post(&chat("Hi", json!({"max_tokens": 60})))
        .send()
        .await
        .expect("request");
    let body = expect_error(too_long, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("maximum context length is 64 tokens"),
        "{body}"
    );
    let long_prompt = "word ".repeat(80);
    let too_long_prompt = server
        .post(&chat(&long_prompt, json!({})))
        .send()
        .await
        .expect("request");
    expect_error(too_long_prompt, 400).await;

    let bad_json = server
        .client
        .post(format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json")
        .body("{\"model\": \"tiny\", \"messages\": [")
        .send()
        .await
        .expect("request");
    let body = expect_error(bad_json, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("line 1"),
        "{body}"
    );

    let no_messages = server
        .post(&json!({"model": MODEL}))
        .send()
        .await
        .expect("request");
    expect_error(no_messages, 400).await;
    let bad_temperature = server
        .post(&chat("x", json!({"temperature": 5})))
        .send()
        .await
        .expect("request");
    let body = expect_error(bad_temperature, 400).await;
    assert_eq!(body["error"]["param"], "temperature");
}

/// An empty key is no key, as in the gateway (compose renders an unset `${INFERENCE_API_KEY}`
/// as ""): before, it let in exactly the callers who sent no key, and refused every key.
#[tokio::test]
async fn an_empty_api_key_is_no_key() {
    let server = Server::start(&[("INFERENCE_API_KEY", "")]).await;
    let body = chat("x", json!({"max_tokens": 2}));
    for key in [None, Some("anything")] {
        let mut request = server.post(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let answer = request.send().await.expect("request");
        assert_eq!(answer.status(), 200, "key {key:?}");
    }
}

#[tokio::test]
async fn an_api_key_guards_v1_but_not_health() {
    let server = Server::start(&[("INFERENCE_API_KEY", "s3cret")]).await;
    let body = chat("x", json!({"max_tokens": 2}));
    let anonymous = server.post(&body).send().await.expect("request");
    let error = expect_error(anonymous, 401).await;
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let wrong = server
        .post(&body)
        .bearer_auth("nope")
        .send()
        .await
        .expect("request");
    expect_error(wrong, 401).await;
    let right = server
        .post(&body)
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(right.status(), 200);
    let health = server
        .client
        .get(format!("{}/health", server.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

/// One worker, a queue of one: the third request is refused with 429; a client that goes away
/// stops its generation and frees the worker for the next request.
#[tokio::test]
async fn a_full_queue_refuses_and_a_disconnect_cancels() {
    let server = Server::start(&[("WORKERS", "1"), ("MAX_QUEUE", "1")]).await;
    let long = chat(
        "Go on",
        json!({"max_tokens": 3900, "ignore_eos": true, "stream": true}),
    );
    let running = server.post(&long).send().await.expect("first request");
    assert_eq!(running.status(), 200);
    let mut running_body = running.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        let piece = running_body
            .next()
            .await
            .expect("first stream goes on")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    let queued = server.post(&long).send().await.expect("second request");
    assert_eq!(
        queued.status(),
        200,
        "the second request waits in the queue"
    );
    let refused = server
        .post(&chat("x", json!({"max_tokens": 2})))
        .send()
        .await
        .expect("third request");
    let body = expect_error(refused, 429).await;
    assert_eq!(body["error"]["code"], "queue_full");
    let metrics = server.metrics().await;
    assert_eq!(
        sample(&metrics, "vllm:num_requests_running", MODEL),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "vllm:num_requests_waiting", MODEL),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cairn:requests_rejected_total", "queue_full"),
        1.0
    );

    drop(running_body);
    let mut queued_body = queued.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        let piece = queued_body
            .next()
            .await
            .expect("second stream starts")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    let metrics = server.metrics().await;
    assert_eq!(
        sample(&metrics, "vllm:request_success_total", "abort"),
        1.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "vllm:num_requests_waiting", MODEL), 0.0);
    drop(queued_body);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.metrics().await;
        if sample(&metrics, "vllm:request_success_total", "abort") == 2.0
            && sample(&metrics, "vllm:num_requests_running", MODEL) == 0.0
        {
            let generated = sample(&metrics, "vllm:generation_tokens_total", MODEL);
            assert!(
                generated < 2.0 * 3900.0,
                "cancelled before the end: {generated}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not cancelled: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_requests() {
    let server = Server::start(&[]).await;
    let before = server.metrics().await;
    assert!(before.contains("vllm:num_requests_running"), "{before}");
    assert_eq!(sample(&before, "vllm:generation_tokens_total", MODEL), 0.0);
    server
        .complete(&chat("Hi", json!({"max_tokens": 5, "ignore_eos": true})))
        .await;
    let after = server.metrics().await;
    assert_eq!(
        sample(&after, "vllm:generation_tokens_total", MODEL),
        5.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "vllm:prompt_tokens_total", MODEL),
        server.prompt_tokens("Hi") as f64
    );
    assert_eq!(sample(&after, "vllm:request_success_total", "length"), 1.0);
    assert_eq!(
        sample(&after, "vllm:time_to_first_token_seconds_count", MODEL),
        1.0
    );
    assert_eq!(
        sample(&after, "vllm:e2e_request_latency_seconds_count", MODEL),
        1.0
    );
}

#[tokio::test]
async fn the_healthcheck_subcommand_probes_the_server() {
    let server = Server::start(&[]).await;
    let healthy = Command::new(BINARY)
        .arg("healthcheck")
        .env("INFERENCE_LISTEN", format!("0.0.0.0:{}", server.port))
        .output()
        .expect("healthcheck");
    assert!(healthy.status.success(), "{healthy:?}");
    let dead = Command::new(BINARY)
        .arg("healthcheck")
        .env(
            "INFERENCE_LISTEN",
            format!("0.0.0.0:{}", testkit::free_port()),
        )
        .output()
        .expect("healthcheck");
    assert!(!dead.status.success());
}

#[test]
fn a_model_directory_without_weights_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("remove weights");
    let output = Command::new(BINARY)
        .env("MODEL_DIR", dir.path())
        .env(
            "INFERENCE_LISTEN",
            format!("127.0.0.1:{}", testkit::free_port()),
        )
        .output()
        .expect("run");
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("model.safetensors"), "{logs}");
}

/// SIGTERM with a stream still open: the stream ends and the process exits 0 promptly.
#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let mut server = Server::start(&[]).await;
    let long = chat(
        "Go on",
        json!({"max_tokens": 3900, "ignore_eos": true, "stream": true}),
    );
    let response = server.post(&long).send().await.expect("request");
    let mut body = response.bytes_stream();
    body.next().await.expect("first chunk").expect("bytes");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.process.terminate(Duration::from_secs(20));
        (status, server)
    })
    .await
    .expect("join")
    .0
    .expect("exited within the deadline");
    assert!(status.success(), "{status}");
    while let Some(piece) = body.next().await {
        if piece.is_err() {
            break;
        }
    }
}

/// Two workers serve two requests at once, each with its own KV cache over shared weights, and
/// a greedy answer is the same whether or not another request runs beside it.
#[tokio::test]
async fn two_workers_serve_two_requests_at_once() {
    let server = Server::start(&[("WORKERS", "2")]).await;
    let greedy = chat(
        "Same answer?",
        json!({"max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    let alone = server.complete(&greedy).await;
    let long = chat(
        "Go on",
        json!({"max_tokens": 3900, "ignore_eos": true, "stream": true}),
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = server.post(&long).send().await.expect("request");
        let mut body = response.bytes_stream();
        let mut seen = String::new();
        while seen.matches("data:").count() < 3 {
            let piece = body.next().await.expect("stream goes on").expect("bytes");
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
        streams.push(body);
    }
    let metrics = server.metrics().await;
    assert_eq!(
        sample(&metrics, "vllm:num_requests_running", MODEL),
        2.0,
        "{metrics}"
    );
    drop(streams);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sample(&server.metrics().await, "vllm:num_requests_running", MODEL) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "streams not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b) = tokio::join!(server.complete(&greedy), server.complete(&greedy));
    let content = |answer: &Value| answer["choices"][0]["message"]["content"].clone();
    assert_eq!(content(&a), content(&alone));
    assert_eq!(content(&b), content(&alone));
}

/// #17: a client that sends a streaming request and then never reads must not hold the engine:
/// with one sequence slot (`WORKERS=1`), another request still completes within a bound, because
/// the silent stream's bounded buffer fills and, stalled past `STALLED_STREAM_TIMEOUT`, it is
/// cancelled.
#[tokio::test]
async fn a_client_that_never_reads_cannot_stall_other_requests() {
    let server = Server::start(&[("WORKERS", "1"), ("STALLED_STREAM_TIMEOUT", "1")]).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut silent = socket
        .connect(([127, 0, 0, 1], server.port).into())
        .await
        .expect("connect");
    let body = chat(
        "Go on",
        json!({"max_tokens": 4000, "ignore_eos": true, "stream": true}),
    )
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut silent, request.as_bytes())
        .await
        .expect("send the request, then never read");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sample(&server.metrics().await, "vllm:num_requests_running", MODEL) != 1.0 {
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let other = tokio::time::timeout(
        Duration::from_secs(20),
        server.complete(&chat("Hi", json!({"max_tokens": 4, "ignore_eos": true}))),
    )
    .await;
    assert!(
        other.is_ok(),
        "another request waited {:?} behind a client that never reads",
        started.elapsed()
    );
    let metrics = server.metrics().await;
    assert_eq!(
        sample(&metrics, "vllm:request_success_total", "abort"),
        1.0,
        "the silent stream was cancelled: {metrics}"
    );
    drop(silent);
}

/// Reads a stream until it has shown `chunks` content chunks.
async fn read_chunks<S, B>(body: &mut S, chunks: usize)
where
    S: futures_util::Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    let mut seen = String::new();
    while seen.matches("\"content\":\"").count() < chunks + 1 {
        let piece = body.next().await.expect("stream goes on").expect("bytes");
        seen.push_str(&String::from_utf8_lossy(piece.as_ref()));
    }
}

async fn wait_for_metric(server: &Server, name: &str, label: &str, wanted: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.metrics().await;
        if sample(&metrics, name, label) == wanted {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {wanted}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn content(answer: &Value) -> Value {
    answer["choices"][0]["message"]["content"].clone()
}

/// #18: requests of different lengths and sampling settings decode in one batch (a long prompt
/// prefilled in chunks beside them), and each answer is exactly what it is alone.
#[tokio::test]
async fn answers_are_the_same_alone_and_in_a_mixed_batch() {
    let server = Server::start(&[("MAX_NUM_BATCHED_TOKENS", "48")]).await;
    let long_prompt = "the weather in Zürich ".repeat(20);
    let requests = [
        chat(
            "Hi",
            json!({"max_tokens": 20, "temperature": 0, "ignore_eos": true}),
        ),
        chat(
            &long_prompt,
            json!({"max_tokens": 12, "temperature": 0, "ignore_eos": true}),
        ),
        chat(
            "Tell me a story",
            json!({"max_tokens": 16, "seed": 5, "temperature": 0.9, "top_k": 40, "ignore_eos": true}),
        ),
        chat(
            "Count to ten",
            json!({"max_tokens": 30, "seed": 9, "temperature": 1.0, "top_p": 0.8, "ignore_eos": true}),
        ),
    ];
    let mut alone = Vec::new();
    for request in &requests {
        alone.push(content(&server.complete(request).await));
    }
    // A long stream keeps the batch busy while the four run together.
    let background = server
        .post(&chat(
            "Go on",
            json!({"max_tokens": 3900, "ignore_eos": true, "stream": true}),
        ))
        .send()
        .await
        .expect("background request");
    let mut background = background.bytes_stream();
    read_chunks(&mut background, 2).await;
    let together =
        futures_util::future::join_all(requests.iter().map(|r| server.complete(r))).await;
    for (index, (answer, expected)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(
            &content(answer),
            expected,
            "request {index} changed in a batch"
        );
    }
    read_chunks(&mut background, 2).await;
    drop(background);
}

/// #18: a request cancelled mid-batch leaves it at once and returns its KV blocks; the others
/// go on.
#[tokio::test]
async fn a_request_cancelled_mid_batch_frees_its_cache() {
    let server = Server::start(&[]).await;
    let long = chat(
        "Go on",
        json!({"max_tokens": 3900, "ignore_eos": true, "stream": true}),
    );
    let mut first = server
        .post(&long)
        .send()
        .await
        .expect("first")
        .bytes_stream();
    read_chunks(&mut first, 2).await;
    let one = sample(&server.metrics().await, "vllm:gpu_cache_usage_perc", MODEL);
    assert!(one > 0.0, "the running request holds blocks");
    let mut second = server
        .post(&long)
        .send()
        .await
        .expect("second")
        .bytes_stream();
    read_chunks(&mut second, 2).await;
    wait_for_metric(&server, "vllm:num_requests_running", MODEL, 2.0).await;
    drop(second);
    wait_for_metric(&server, "vllm:num_requests_running", MODEL, 1.0).await;
    read_chunks(&mut first, 5).await;
    drop(first);
    let metrics = wait_for_metric(&server, "vllm:num_requests_running", MODEL, 0.0).await;
    assert_eq!(sample(&metrics, "vllm:request_success_total", "abort"), 2.0);
    wait_for_metric(&server, "vllm:gpu_cache_usage_perc", MODEL, 0.0).await;
}

/// #18: when the KV cache cannot hold another prompt, the request waits in the queue (no 429,
/// no error) and runs once blocks are free, with the same answer it gets alone.
#[tokio::test]
async fn a_full_cache_makes_new_requests_wait_not_fail() {
    let server = Server::start(&[
        ("MAX_MODEL_LEN", "1024"),
        ("BLOCK_SIZE", "16"),
        ("NUM_GPU_BLOCKS_OVERRIDE", "64"),
    ])
    .await;
    // About 600 prompt tokens each: two cannot be cached at once.
    let prompt = "a b c d e f ".repeat(50);
    let second = chat(
        &prompt,
        json!({"max_tokens": 8, "temperature": 0, "ignore_eos": true}),
    );
    let alone = content(&server.complete(&second).await);
    let first = chat(
        &prompt,
        json!({"max_tokens": 400, "temperature": 0, "ignore_eos": true, "stream": true}),
    );
    let mut first = server
        .post(&first)
        .send()
        .await
        .expect("first")
        .bytes_stream();
    read_chunks(&mut first, 2).await;
    let waiting = server.complete(&second);
    let watch = async {
        let metrics = wait_for_metric(&server, "vllm:num_requests_waiting", MODEL, 1.0).await;
        assert_eq!(sample(&metrics, "vllm:num_requests_running", MODEL), 1.0);
        assert!(
            sample(&metrics, "vllm:gpu_cache_usage_perc", MODEL) > 0.5,
            "{metrics}"
        );
        while first.next().await.is_some() {}
    };
    let (answer, ()) = tokio::join!(waiting, watch);
    assert_eq!(content(&answer), alone);
    let metrics = server.metrics().await;
    assert_eq!(
        sample(&metrics, "cairn:requests_rejected_total", MODEL),
        0.0
    );
}

/// #18: two sequences that outgrow the cache together: the newer one is preempted, recomputed
/// later, and still gives its greedy answer.
#[tokio::test]
async fn a_preempted_request_resumes_with_the_same_answer() {
    let server = Server::start(&[
        ("MAX_MODEL_LEN", "512"),
        ("BLOCK_SIZE", "16"),
        ("NUM_GPU_BLOCKS_OVERRIDE", "40"),
    ])
    .await;
    let request = chat(
        "Go on",
        json!({"max_tokens": 400, "temperature": 0, "ignore_eos": true}),
    );
    let alone = content(&server.complete(&request).await);
    let (a, b) = tokio::join!(server.complete(&request), server.complete(&request));
    assert_eq!(content(&a), alone);
    assert_eq!(content(&b), alone);
    let metrics = server.metrics().await;
    assert!(
        sample(&metrics, "vllm:num_preemptions_total", MODEL) >= 1.0,
        "{metrics}"
    );
}

//! The binary's life: configuration errors that name the variable, `migrate status|up`,
//! `healthcheck`, readiness and metrics, and a graceful SIGTERM that ends open chat streams
//! with their partial reply stored.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::support::llm::FakeLlm;
use crate::support::{Api, Client, Postgres, api_env};

fn api_command(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = api_env(
        "postgres://127.0.0.1:1/x",
        "http://127.0.0.1:1/v1",
        dir.path(),
    );
    for (drop, expected) in [
        ("JWT_SECRET", "JWT_SECRET"),
        ("LLM_MODEL", "LLM_MODEL"),
        ("DATABASE_URL", "DATABASE_URL"),
    ] {
        let env: Vec<_> = full.iter().filter(|(k, _)| k != drop).cloned().collect();
        let output = api_command(&env).output().expect("run api");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{drop}: {stderr}");
    }
    let mut env = full.clone();
    env.push(("STORAGE_BACKEND".into(), "ftp".into()));
    let output = api_command(&env).output().expect("run api");
    assert!(String::from_utf8_lossy(&output.stderr).contains("STORAGE_BACKEND"));
    let mut env = full.clone();
    env.push(("JWT_SECRET".into(), "short".into()));
    let output = api_command(&env).output().expect("run api");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECRET") && !stderr.contains("short\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_health_metrics_and_graceful_shutdown() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = api_env(&pg.url, &llm.base, dir.path());

    let status = |env: &[(String, String)], args: &[&str]| {
        let output = api_command(env)
            .args(args)
            .output()
            .expect("run api migrate");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let before = status(&env, &["migrate", "status"]);
    assert!(
        before.contains("pending") && before.contains("init"),
        "{before}"
    );
    let after = status(&env, &["migrate", "up"]);
    assert!(
        after.contains("applied") && !after.contains("pending"),
        "{after}"
    );
    assert_eq!(status(&env, &["migrate", "status"]), after);

    // Start-up with the migrations already applied, in dev mode without a secret.
    let mut api = Api::start(
        &pg.url,
        &llm.base,
        &[("API_DEV_MODE", "1"), ("JWT_SECRET", "")],
    );
    let client = Client::new(&api);
    let (code, ready) = client.get("/api/health/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(
        ready["checks"],
        json!({ "database": "ok", "storage": "ok", "llm": "ok" })
    );
    let healthcheck = Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["healthcheck", "--port", &api.port.to_string()])
        .output()
        .expect("healthcheck");
    assert!(healthcheck.status.success(), "{healthcheck:?}");
    let metrics = crate::support::http_client()
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "api_http_requests_total{method=\"GET\",route=\"/api/health/ready\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("api_http_request_duration_seconds_bucket"),
        "histograms, not summaries"
    );

    // SIGTERM with a chat stream open: the stream ends, its partial reply is stored, exit 0.
    let user = client.register("dee@example.org", "password123").await;
    let response = user
        .request(reqwest::Method::POST, "/api/chat")
        .header("content-type", "application/json")
        .body(json!({ "message": "[slow] talk" }).to_string())
        .send()
        .await
        .expect("chat");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: delta") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.expect("event").expect("bytes"),
        ));
    }
    let exit = api
        .guard
        .terminate(Duration::from_secs(10))
        .expect("api exits within 10 s of SIGTERM");
    assert!(exit.success(), "{exit}");
    while let Some(Ok(bytes)) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(
        seen.contains("event: error") && seen.contains("shutting down"),
        "{seen}"
    );
    let down = Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["healthcheck", "--port", &api.port.to_string()])
        .output()
        .expect("healthcheck");
    assert!(
        !down.status.success(),
        "healthcheck fails once the api is gone"
    );

    let again = Api::start(
        &pg.url,
        &llm.base,
        &[("API_DEV_MODE", "1"), ("JWT_SECRET", "")],
    );
    let user = Client::new(&again).with_token(user.token.as_deref().expect("token"));
    let (_, sessions) = user.get("/api/sessions").await;
    let id = sessions["sessions"][0]["id"]
        .as_str()
        .expect("session")
        .to_owned();
    let (_, stored) = user.get(&format!("/api/sessions/{id}")).await;
    assert_eq!(stored["messages"][1]["status"], "partial", "{stored}");
}

/// Every character a URL reserves, and a space.
const DATABASE_PASSWORD: &str = "p@ss:w/rd?#%$ word";

/// A database password goes in `DATABASE_PASSWORD` (or `DATABASE_PASSWORD_FILE`) as it is, in
/// place of any password in `DATABASE_URL`; pasted into the URL it breaks, and it is never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_password_with_url_reserved_characters_logs_in() {
    let Some(pg) = Postgres::start_with_password_role("cairn", DATABASE_PASSWORD).await else {
        return;
    };
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("postgres://cairn@127.0.0.1:{}/cairn", pg.port);
    let migrate = |env: &[(String, String)], extra: &[(&str, &str)]| {
        let mut command = api_command(env);
        command.envs(extra.iter().copied()).args(["migrate", "up"]);
        command.output().expect("run api migrate up")
    };
    let env = api_env(&url, &llm.base, dir.path());

    // The password is really asked for: without it the login is refused.
    let output = migrate(&env, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
    // Pasted raw into the URL, as compose used to render it, it does not work, nor show.
    let pasted = format!(
        "postgres://cairn:{DATABASE_PASSWORD}@127.0.0.1:{}/cairn",
        pg.port
    );
    let output = migrate(&api_env(&pasted, &llm.base, dir.path()), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!stderr.contains("w/rd"), "{stderr}");

    // `migrate` with the password in a file (a Docker secret, with its trailing newline).
    let file = dir.path().join("db-password");
    std::fs::write(&file, format!("{DATABASE_PASSWORD}\n")).expect("write secret");
    let file = file.to_str().expect("utf-8 path");
    let output = migrate(&env, &[("DATABASE_PASSWORD_FILE", file)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Both at once is an error naming both.
    let output = migrate(
        &env,
        &[
            ("DATABASE_PASSWORD", DATABASE_PASSWORD),
            ("DATABASE_PASSWORD_FILE", file),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("DATABASE_PASSWORD and DATABASE_PASSWORD_FILE")
            && !stderr.contains("w/rd"),
        "{stderr}"
    );

    // `serve`, with a wrong password in the URL that DATABASE_PASSWORD overrides.
    let wrong = format!("postgres://cairn:wrong@127.0.0.1:{}/cairn", pg.port);
    let api = Api::start(
        &wrong,
        &llm.base,
        &[("DATABASE_PASSWORD", DATABASE_PASSWORD)],
    );
    let anon = Client::new(&api);
    let (code, ready) = anon.get("/api/health/ready").await;
    assert_eq!(
        (code, &ready["checks"]["database"]),
        (200, &json!("ok")),
        "{ready}"
    );
    anon.register("bea@example.org", "correct horse").await;
    let (status, login) = anon
        .post(
            "/api/auth/login",
            &json!({ "email": "bea@example.org", "password": "correct horse" }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert!(login["token"].is_string(), "{login}");
}

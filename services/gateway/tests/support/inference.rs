//! The real `inference` server on a tiny random Qwen2 model (written by `inference tiny-model`),
//! for the tests that need the gateway in front of the real thing rather than a scripted
//! upstream. The binary is the workspace's own, built beside this test binary by
//! `cargo test --workspace` (`cargo xtask test`); the api's tests find it the same way.

use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::ProcessGuard;

/// The model name the server answers to.
pub const MODEL: &str = "test-model";

/// A running inference server.
pub struct Inference {
    pub port: u16,
    _server: ProcessGuard,
}

impl Inference {
    /// `http://127.0.0.1:PORT`, what the gateway's `GATEWAY_INFERENCE_UPSTREAMS` names.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a tiny model under the test's scratch directory `name` and serves it with `env`
    /// added (e.g. `INFERENCE_API_KEY`); waits until `/health` answers 200 (the model is loaded).
    /// `None` (the test is skipped) outside CI when the binary has not been built.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Option<Inference> {
        let program = testkit::require_workspace_binary("inference")?;
        let model = super::scratch(name).join("model");
        let status = Command::new(&program)
            .arg("tiny-model")
            .arg(&model)
            .status()
            .expect("running inference tiny-model");
        assert!(status.success(), "inference tiny-model failed: {status}");
        let port = testkit::free_port();
        let mut command = Command::new(&program);
        command
            .env_clear()
            .env("MODEL_DIR", &model)
            .env("INFERENCE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SERVED_MODEL_NAME", MODEL)
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut server = ProcessGuard::spawn("inference", &mut command);
        let client = super::client();
        let health = format!("http://127.0.0.1:{port}/health");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            server.assert_running();
            let ready = client
                .get(health.parse().expect("uri"))
                .await
                .is_ok_and(|response| response.status() == StatusCode::OK);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "inference did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Inference {
            port,
            _server: server,
        })
    }
}

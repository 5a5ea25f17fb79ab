//! The real `inference` server on a tiny random Qwen2 model, for the tests that need a real
//! OpenAI-compatible streaming endpoint rather than a scripted one. The binary is the workspace's
//! own, built beside this test binary by `cargo test --workspace` (`cargo xtask test`).

use std::process::Command;
use std::time::Duration;

use testkit::ProcessGuard;

/// A running inference server; `base` is its OpenAI base URL (`http://127.0.0.1:PORT/v1`).
pub struct Inference {
    pub base: String,
    _server: ProcessGuard,
    _model: tempfile::TempDir,
}

impl Inference {
    /// Writes a tiny model and serves it as `test-model` (the api tests' LLM_MODEL); `None` (test
    /// skipped) outside CI when the binary has not been built.
    pub fn start() -> Option<Inference> {
        let program = testkit::require_workspace_binary("inference")?;
        let model = tempfile::Builder::new()
            .prefix("cairn-model")
            .tempdir()
            .expect("tempdir");
        let status = Command::new(&program)
            .arg("tiny-model")
            .arg(model.path())
            .status()
            .expect("running inference tiny-model");
        assert!(status.success(), "inference tiny-model failed: {status}");
        let listen = format!("127.0.0.1:{}", testkit::free_port());
        let mut server = ProcessGuard::spawn(
            "inference",
            Command::new(&program)
                .env("MODEL_DIR", model.path())
                .env("INFERENCE_LISTEN", &listen)
                .env("SERVED_MODEL_NAME", "test-model")
                .env("RUST_LOG", "warn"),
        );
        // Ready means the model is loaded: ask the way a compose health check does.
        testkit::wait_until("inference /health", Duration::from_secs(60), || {
            server.assert_running();
            Command::new(&program)
                .arg("healthcheck")
                .env("INFERENCE_LISTEN", &listen)
                .output()
                .is_ok_and(|output| output.status.success())
        });
        Some(Inference {
            base: format!("http://{listen}/v1"),
            _server: server,
            _model: model,
        })
    }
}

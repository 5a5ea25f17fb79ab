//! `cargo xtask bench inference`: starts the real `inference` binary on a random model shaped
//! like Qwen2.5-0.5B (written by `inference tiny-model --shape qwen2.5-0.5b`) and measures, over
//! HTTP, time to first token (a `max_tokens: 1` request) and decode tokens/s (the extra time of
//! a `max_tokens: 1 + N` request); then runs the same weights with PyTorch + transformers from
//! PyPI (a venv under target/) and prints both with their ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

use crate::project;

const REFERENCE_SCRIPT: &str = include_str!("inference_reference.py");

#[derive(Debug, clap::Args)]
pub struct InferenceBenchArgs {
    /// Approximate prompt length in tokens (the exact count is reported).
    #[arg(long, default_value_t = 200)]
    prompt_tokens: usize,
    /// Tokens decoded after the first one.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Measured runs per implementation (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Build the server in the release profile (about 15 min on 2 cores) instead of the dev
    /// profile, whose dependencies (candle, gemm) are already optimised at opt-level 2.
    #[arg(long)]
    release: bool,
    /// Measure only cairn's server.
    #[arg(long)]
    skip_reference: bool,
}

/// One implementation's medians.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    ttft: Duration,
    decode_tokens_per_s: f64,
}

pub fn run(args: &InferenceBenchArgs) -> Result<()> {
    let root = project::root();
    let binary = build_server(&root, args.release)?;
    let model_dir = root.join("target/bench/qwen2.5-0.5b-random");
    ensure_model(&binary, &model_dir)?;
    let (ours, prompt_tokens) = measure_server(&binary, &model_dir, args)?;
    println!(
        "cairn inference (candle): prompt {prompt_tokens} tokens, TTFT {:.3} s, decode {:.2} tokens/s",
        ours.ttft.as_secs_f64(),
        ours.decode_tokens_per_s
    );
    if args.skip_reference {
        return Ok(());
    }
    let python = ensure_reference_venv(&root)?;
    let reference = measure_reference(&python, &root, &model_dir, prompt_tokens, args)?;
    println!(
        "PyTorch + transformers:   prompt {prompt_tokens} tokens, TTFT {:.3} s, decode {:.2} tokens/s",
        reference.ttft.as_secs_f64(),
        reference.decode_tokens_per_s
    );
    println!(
        "ratio (cairn / reference): TTFT {:.2}x (lower is better), decode {:.2}x (higher is better)",
        ours.ttft.as_secs_f64() / reference.ttft.as_secs_f64(),
        ours.decode_tokens_per_s / reference.decode_tokens_per_s
    );
    Ok(())
}

fn build_server(root: &Path, release: bool) -> Result<PathBuf> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let (profile_flag, dir) = if release {
        (Some("--release"), "release")
    } else {
        (None, "debug")
    };
    eprintln!("==> building the inference server ({dir} profile)");
    cmd!(sh, "cargo build -p inference {profile_flag...}")
        .run()
        .context("building the inference server")?;
    Ok(root.join("target").join(dir).join("inference"))
}

fn ensure_model(binary: &Path, model_dir: &Path) -> Result<()> {
    if model_dir.join("model.safetensors").exists() && model_dir.join("config.json").exists() {
        eprintln!("==> reusing the random model in {}", model_dir.display());
        return Ok(());
    }
    eprintln!(
        "==> writing a random Qwen2.5-0.5B-shaped model (about 2 GB) to {}",
        model_dir.display()
    );
    let status = Command::new(binary)
        .arg("tiny-model")
        .arg(model_dir)
        .args(["--shape", "qwen2.5-0.5b"])
        .status()
        .context("running inference tiny-model")?;
    if !status.success() {
        bail!(
            "inference tiny-model {} failed: {status}",
            model_dir.display()
        );
    }
    Ok(())
}

fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .context("building the benchmark's HTTP client")
}

fn measure_server(
    binary: &Path,
    model_dir: &Path,
    args: &InferenceBenchArgs,
) -> Result<(Measurement, usize)> {
    let port = testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = testkit::ProcessGuard::spawn(
        "inference",
        Command::new(binary)
            .env("MODEL_DIR", model_dir)
            .env("INFERENCE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SERVED_MODEL_NAME", "bench")
            .env("WORKERS", "1")
            .env("RUST_LOG", "warn"),
    );
    let client = http_client()?;
    eprintln!("==> waiting for the server to load the model");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !client
        .get(format!("{base}/health"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        server.assert_running();
        if Instant::now() > deadline {
            bail!("the inference server did not become healthy within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The chat template adds about 25 tokens; "the weather " is about 8 with the bench tokenizer.
    let content = "the weather ".repeat(args.prompt_tokens.saturating_sub(25) / 8);
    let request = |max_tokens: usize| -> Result<(Duration, usize)> {
        let body = json!({
            "model": "bench",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true
        });
        let started = Instant::now();
        let answer: Value = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .context("posting a chat completion")?
            .json()
            .context("reading the answer")?;
        let elapsed = started.elapsed();
        let usage = &answer["usage"];
        if usage["completion_tokens"].as_u64() != Some(max_tokens as u64) {
            bail!("unexpected answer: {answer}");
        }
        Ok((
            elapsed,
            usage["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        ))
    };
    eprintln!(
        "==> measuring cairn's server ({} runs after a warm-up)",
        args.runs
    );
    let (_, prompt_tokens) = request(2)?;
    let mut ttfts = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let (first, _) = request(1)?;
        let (all, _) = request(1 + args.decode_tokens)?;
        ttfts.push(first.as_secs_f64());
        rates.push(args.decode_tokens as f64 / (all - first).as_secs_f64().max(1e-9));
    }
    let _ = server.terminate(Duration::from_secs(10));
    Ok((
        Measurement {
            ttft: Duration::from_secs_f64(median(&mut ttfts)),
            decode_tokens_per_s: median(&mut rates),
        },
        prompt_tokens,
    ))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The venv with torch and transformers from PyPI, created on first use.
fn ensure_reference_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python");
    let has_packages = |python: &Path| {
        Command::new(python)
            .args(["-c", "import torch, transformers"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_packages(&python) {
        return Ok(python);
    }
    eprintln!(
        "==> creating {} and installing torch + transformers from PyPI (several GB; minutes)",
        venv.display()
    );
    let sh = Shell::new()?;
    cmd!(sh, "python3 -m venv {venv}")
        .run()
        .context("python3 -m venv (install python3-venv)")?;
    cmd!(sh, "{python} -m pip install --quiet torch transformers")
        .run()
        .context("pip install torch transformers")?;
    if !has_packages(&python) {
        bail!("{} cannot import torch and transformers", python.display());
    }
    Ok(python)
}

fn measure_reference(
    python: &Path,
    root: &Path,
    model_dir: &Path,
    prompt_tokens: usize,
    args: &InferenceBenchArgs,
) -> Result<Measurement> {
    let script = root.join("target/bench/inference_reference.py");
    std::fs::write(&script, REFERENCE_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    eprintln!(
        "==> measuring PyTorch + transformers ({} runs after a warm-up)",
        args.runs
    );
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model_dir)
        .args(["--prompt-tokens", &prompt_tokens.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .output()
        .context("running the PyTorch reference")?;
    if !output.status.success() {
        bail!(
            "the PyTorch reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(line)
        .with_context(|| format!("parsing the reference's output {line:?}"))?;
    Ok(Measurement {
        ttft: Duration::from_secs_f64(result["ttft_s"].as_f64().unwrap_or(f64::NAN)),
        decode_tokens_per_s: result["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
    })
}

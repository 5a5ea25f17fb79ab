//! `cargo xtask bench inference`: starts the real `inference` binary on a random model shaped
//! like Qwen2.5-0.5B (written by `inference tiny-model --shape qwen2.5-0.5b`) and, for each
//! `--concurrency` level, sends that many streaming requests at once and measures aggregate
//! tokens/s, time to first token and the gaps between streamed chunks (median and p99); then the
//! time to first token of one request that arrives while the others decode. The same levels run
//! through PyTorch + transformers' batched `generate` on the same weights (a venv under target/),
//! and, with `--baseline-binary`, through another build of the server (the engine before
//! continuous batching), all in one run, printed side by side.

use std::io::{BufRead, BufReader};
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
    /// Concurrent streams to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    concurrency: Vec<usize>,
    /// Approximate prompt length in tokens (the exact count is reported).
    #[arg(long, default_value_t = 200)]
    prompt_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Rounds per concurrency level (all requests of all rounds are pooled), after one warm-up.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// The model's shape: `qwen2.5-0.5b` (the benchmark) or `tiny` (seconds, for a
    /// smoke run).
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    /// Build the server in the release profile (about 15 min on 2 cores) instead of the dev
    /// profile, whose dependencies (candle, gemm) are already optimised at opt-level 2.
    #[arg(long)]
    release: bool,
    /// Another `inference` binary to measure the same way, e.g. one built from the commit
    /// before continuous batching (`WORKERS=1`, one request at a time).
    #[arg(long)]
    baseline_binary: Option<PathBuf>,
    /// The baseline's environment, `NAME=VALUE`, repeatable (default `WORKERS=1`, the setting
    /// of the engine before continuous batching; give `MAX_NUM_SEQS=8` for a batching build).
    #[arg(long, value_parser = parse_setting)]
    baseline_env: Vec<(String, String)>,
    /// Measure only the servers.
    #[arg(long)]
    skip_reference: bool,
}

/// One implementation's numbers at one concurrency level.
#[derive(Debug, Clone)]
struct LevelResult {
    concurrency: usize,
    /// Completion tokens of all streams over the wall time, prompts' prefill included.
    tokens_per_s: f64,
    /// Tokens after each stream's first over the time some stream was between its first and
    /// its last token: the weights-bound rate batching is for, the wait before the first token
    /// left out (streams served one after another add their decoding times up).
    decode_tokens_per_s: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    itl_p50: f64,
    itl_p99: f64,
}

/// One streamed request as the client saw it.
struct StreamTiming {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
    /// When the first and the last text arrived.
    decoding: Option<(Instant, Instant)>,
}

pub fn run(args: &InferenceBenchArgs) -> Result<()> {
    let root = project::root();
    let binary = build_server(&root, args.release)?;
    let model_dir = root.join(format!("target/bench/{}-random", args.shape));
    ensure_model(&binary, &model_dir, &args.shape)?;
    let max_level = args.concurrency.iter().copied().max().unwrap_or(1);
    let mut tables = Vec::new();
    let (ours, loaded, prompt_tokens) = measure_server(
        &binary,
        &model_dir,
        &[("MAX_NUM_SEQS", &max_level.to_string())],
        args,
    )?;
    tables.push(("cairn (continuous batching)".to_owned(), ours));
    if let Some(baseline) = &args.baseline_binary {
        let mut env: Vec<(&str, &str)> = args
            .baseline_env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        if env.is_empty() {
            env.push(("WORKERS", "1"));
        }
        let (before, loaded_before, _) = measure_server(baseline, &model_dir, &env, args)?;
        tables.push(("cairn before (baseline binary)".to_owned(), before));
        print_loaded("baseline", &loaded_before);
    }
    if !args.skip_reference {
        let python = ensure_reference_venv(&root)?;
        let reference = measure_reference(&python, &root, &model_dir, prompt_tokens, args)?;
        tables.push(("PyTorch + transformers generate".to_owned(), reference));
    }
    println!(
        "\nprompt {prompt_tokens} tokens, {} generated per request, greedy, ignore_eos; shape {}",
        args.decode_tokens, args.shape
    );
    println!(
        "{:<34} {:>5} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "implementation",
        "conc",
        "tok/s",
        "decode t/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99"
    );
    for (name, levels) in &tables {
        for level in levels {
            println!(
                "{:<34} {:>5} {:>9.2} {:>10.2} {:>8.3}s {:>8.3}s {:>8.3}s {:>8.3}s",
                name,
                level.concurrency,
                level.tokens_per_s,
                level.decode_tokens_per_s,
                level.ttft_p50,
                level.ttft_p99,
                level.itl_p50,
                level.itl_p99
            );
        }
    }
    let single = tables[0].1.iter().find(|l| l.concurrency == 1);
    let widest = tables[0].1.iter().max_by_key(|l| l.concurrency);
    if let (Some(single), Some(widest)) = (single, widest) {
        println!(
            "cairn: {} streams give {:.2}x the single-stream tokens/s ({:.2}x while decoding)",
            widest.concurrency,
            widest.tokens_per_s / single.tokens_per_s,
            widest.decode_tokens_per_s / single.decode_tokens_per_s
        );
    }
    print_loaded("cairn", &loaded);
    Ok(())
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

fn print_loaded(name: &str, loaded: &Option<(usize, f64, f64)>) {
    if let Some((others, idle, busy)) = loaded {
        println!(
            "{name}: TTFT idle {idle:.3}s, arriving while {others} others decode {busy:.3}s ({:.2}x)",
            busy / idle
        );
    }
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
    Ok(crate::build::cargo::target_dir(root)
        .join(dir)
        .join("inference"))
}

fn ensure_model(binary: &Path, model_dir: &Path, shape: &str) -> Result<()> {
    if model_dir.join("model.safetensors").exists() && model_dir.join("config.json").exists() {
        eprintln!("==> reusing the random model in {}", model_dir.display());
        return Ok(());
    }
    eprintln!(
        "==> writing a random {shape}-shaped model to {}",
        model_dir.display()
    );
    let status = Command::new(binary)
        .arg("tiny-model")
        .arg(model_dir)
        .args(["--shape", shape])
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
        .timeout(Duration::from_secs(1800))
        .build()
        .context("building the benchmark's HTTP client")
}

/// Measures one server binary at every level; also the TTFT of a request arriving while the
/// others of the widest level decode (others, idle TTFT, loaded TTFT), and the prompt length.
#[allow(clippy::type_complexity)]
fn measure_server(
    binary: &Path,
    model_dir: &Path,
    env: &[(&str, &str)],
    args: &InferenceBenchArgs,
) -> Result<(Vec<LevelResult>, Option<(usize, f64, f64)>, usize)> {
    let port = testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
        .env("MODEL_DIR", model_dir)
        .env("INFERENCE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SERVED_MODEL_NAME", "bench")
        .env("MAX_MODEL_LEN", "4096")
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut server = testkit::ProcessGuard::spawn("inference", &mut command);
    let client = http_client()?;
    eprintln!("==> waiting for {} to load the model", binary.display());
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
    let body = json!({
        "model": "bench",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": args.decode_tokens, "temperature": 0, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true}
    });
    eprintln!("==> warming up {}", binary.display());
    let (_, prompt_tokens) = stream_once(&client, &base, &body)?;
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        eprintln!(
            "==> {concurrency} concurrent streams x {} rounds",
            args.runs
        );
        let mut timings = Vec::new();
        let mut tokens = 0;
        let mut wall = 0.0;
        let (mut decoded, mut decoding) = (0, 0.0);
        for _ in 0..args.runs {
            let started = Instant::now();
            let round = concurrent_streams(&client, &base, &body, concurrency)?;
            wall += started.elapsed().as_secs_f64();
            tokens += round.iter().map(|t| t.tokens).sum::<usize>();
            let (round_decoded, round_decoding) = decoding_time(&round);
            decoded += round_decoded;
            decoding += round_decoding;
            timings.extend(round);
        }
        let decode_rate = decoded as f64 / decoding;
        levels.push(summarise(
            concurrency,
            tokens as f64 / wall,
            decode_rate,
            &timings,
        ));
    }
    let widest = args.concurrency.iter().copied().max().unwrap_or(1);
    let loaded = if widest > 1 {
        eprintln!(
            "==> TTFT of a request arriving while {} others decode",
            widest - 1
        );
        let idle = levels
            .iter()
            .find(|l| l.concurrency == 1)
            .map(|l| l.ttft_p50);
        let busy = ttft_under_load(&client, &base, &body, widest - 1, args.decode_tokens)?;
        idle.map(|idle| (widest - 1, idle, busy))
    } else {
        None
    };
    let _ = server.terminate(Duration::from_secs(10));
    Ok((levels, loaded, prompt_tokens))
}

/// Reads one stream to its end: time to the first content, gaps between content chunks, and the
/// usage's completion and prompt tokens.
fn stream_once(
    client: &reqwest::blocking::Client,
    base: &str,
    body: &Value,
) -> Result<(StreamTiming, usize)> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .context("posting a chat completion")?;
    if !response.status().is_success() {
        bail!("the server answered {}", response.status());
    }
    let mut first = None;
    let mut last = started;
    let mut gaps = Vec::new();
    let mut usage = (0, 0);
    for line in BufReader::new(response).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("parsing a chunk")?;
        if let Some(error) = chunk.get("error") {
            bail!("the stream failed: {error}");
        }
        if let Some(count) = chunk["usage"]["completion_tokens"].as_u64() {
            usage = (
                count as usize,
                chunk["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            );
        }
        let has_text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|text| !text.is_empty());
        if has_text {
            let now = Instant::now();
            match first {
                None => first = Some(now.duration_since(started).as_secs_f64()),
                Some(_) => gaps.push(now.duration_since(last).as_secs_f64()),
            }
            last = now;
        }
    }
    Ok((
        StreamTiming {
            ttft: first.unwrap_or(f64::NAN),
            gaps,
            tokens: usage.0,
            decoding: first.map(|ttft| (started + Duration::from_secs_f64(ttft), last)),
        },
        usage.1,
    ))
}

fn concurrent_streams(
    client: &reqwest::blocking::Client,
    base: &str,
    body: &Value,
    concurrency: usize,
) -> Result<Vec<StreamTiming>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| scope.spawn(|| stream_once(client, base, body)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
                    .map(|(timing, _)| timing)
            })
            .collect()
    })
}

/// Starts `others` long streams, waits until each has produced text, then times one more.
fn ttft_under_load(
    client: &reqwest::blocking::Client,
    base: &str,
    body: &Value,
    others: usize,
    decode_tokens: usize,
) -> Result<f64> {
    let mut long = body.clone();
    long["max_tokens"] = json!(decode_tokens * 4);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for _ in 0..others {
            let started_tx = started_tx.clone();
            let long = &long;
            handles.push(scope.spawn(move || -> Result<()> {
                let response = client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(long)
                    .send()?;
                let mut signalled = false;
                for line in BufReader::new(response).lines() {
                    let line = line?;
                    if !signalled && line.contains("\"content\":\"") && !line.contains("\"role\"") {
                        let _ = started_tx.send(());
                        signalled = true;
                    }
                }
                Ok(())
            }));
        }
        for _ in 0..others {
            started_rx
                .recv_timeout(Duration::from_secs(1800))
                .context("the background streams never started")?;
        }
        let (timing, _) = stream_once(client, base, body)?;
        for handle in handles {
            let _ = handle.join();
        }
        Ok(timing.ttft)
    })
}

fn summarise(
    concurrency: usize,
    tokens_per_s: f64,
    decode_tokens_per_s: f64,
    timings: &[StreamTiming],
) -> LevelResult {
    let mut ttfts: Vec<f64> = timings.iter().map(|t| t.ttft).collect();
    let mut gaps: Vec<f64> = timings.iter().flat_map(|t| t.gaps.clone()).collect();
    LevelResult {
        concurrency,
        tokens_per_s,
        decode_tokens_per_s,
        ttft_p50: percentile(&mut ttfts, 0.5),
        ttft_p99: percentile(&mut ttfts, 0.99),
        itl_p50: percentile(&mut gaps, 0.5),
        itl_p99: percentile(&mut gaps, 0.99),
    }
}

/// The tokens after each stream's first, and the seconds during which at least one stream of
/// the round was between its first and its last text (the union of those intervals).
fn decoding_time(round: &[StreamTiming]) -> (usize, f64) {
    let mut intervals: Vec<(Instant, Instant)> = round.iter().filter_map(|t| t.decoding).collect();
    intervals.sort_by_key(|&(start, _)| start);
    let mut seconds = 0.0;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in intervals {
        current = match current {
            Some((open, close)) if start <= close => Some((open, close.max(end))),
            Some((open, close)) => {
                seconds += close.duration_since(open).as_secs_f64();
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((open, close)) = current {
        seconds += close.duration_since(open).as_secs_f64();
    }
    let tokens = round
        .iter()
        .filter(|t| t.decoding.is_some())
        .map(|t| t.tokens.saturating_sub(1))
        .sum();
    (tokens, seconds)
}

fn percentile(values: &mut [f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * quantile).round() as usize;
    values[rank.min(values.len() - 1)]
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
) -> Result<Vec<LevelResult>> {
    let script = root.join("target/bench/inference_reference.py");
    std::fs::write(&script, REFERENCE_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    eprintln!("==> measuring PyTorch + transformers (batched generate)");
    let levels: Vec<String> = args.concurrency.iter().map(usize::to_string).collect();
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model_dir)
        .args(["--prompt-tokens", &prompt_tokens.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .args(["--batch-sizes", &levels.join(",")])
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
    let number = |level: &Value, key: &str| level[key].as_f64().unwrap_or(f64::NAN);
    Ok(result["levels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|level| LevelResult {
            concurrency: level["batch"].as_u64().unwrap_or(0) as usize,
            tokens_per_s: number(level, "tokens_per_s"),
            decode_tokens_per_s: level["batch"].as_f64().unwrap_or(f64::NAN)
                / number(level, "itl_s"),
            ttft_p50: number(level, "ttft_s"),
            ttft_p99: number(level, "ttft_s"),
            itl_p50: number(level, "itl_s"),
            itl_p99: number(level, "itl_s"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping streams count their common time once; streams one after another add up.
    #[test]
    fn decoding_time_is_the_union_of_the_streams_decoding() {
        let epoch = Instant::now();
        let at = |seconds: f64| epoch + Duration::from_secs_f64(seconds);
        let stream = |from: f64, to: f64, tokens: usize| StreamTiming {
            ttft: from,
            gaps: Vec::new(),
            tokens,
            decoding: Some((at(from), at(to))),
        };
        let batched = [
            stream(1.0, 3.0, 11),
            stream(2.0, 4.0, 11),
            stream(2.5, 3.5, 5),
        ];
        let (tokens, seconds) = decoding_time(&batched);
        assert_eq!(tokens, 24);
        assert!((seconds - 3.0).abs() < 1e-6, "{seconds}");
        let serial = [stream(1.0, 2.0, 11), stream(3.0, 4.0, 11)];
        let (tokens, seconds) = decoding_time(&serial);
        assert_eq!(tokens, 20);
        assert!((seconds - 2.0).abs() < 1e-6, "{seconds}");
        let silent = StreamTiming {
            ttft: f64::NAN,
            gaps: Vec::new(),
            tokens: 0,
            decoding: None,
        };
        assert_eq!(decoding_time(&[silent]), (0, 0.0));
    }
}

//! Prometheus metrics under vLLM's names (`vllm:…`, labelled `model_name`), so dashboards made
//! for vLLM work unchanged. The recorder is installed once at start-up; `/metrics` renders it.
//!
//! This module names and records metrics; it must never decide anything from them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static MODEL_NAME: OnceLock<String> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

#[derive(Debug, thiserror::Error)]
#[error("installing the metrics recorder: {0}")]
pub struct MetricsError(String);

/// Installs the global recorder; returns the handle `/metrics` renders.
pub fn install(model_name: &str) -> Result<PrometheusHandle, MetricsError> {
    let _ = MODEL_NAME.set(model_name.to_owned());
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|err| MetricsError(err.to_string()))?
        .install_recorder()
        .map_err(|err| MetricsError(err.to_string()))?;
    // Describe the gauges at zero so they appear before the first request.
    request_waiting(0.0);
    request_running(0.0);
    Ok(handle)
}

fn model_name() -> String {
    MODEL_NAME.get().cloned().unwrap_or_default()
}

pub fn request_waiting(delta: f64) {
    metrics::gauge!("vllm:num_requests_waiting", "model_name" => model_name()).increment(delta);
}

pub fn request_running(delta: f64) {
    metrics::gauge!("vllm:num_requests_running", "model_name" => model_name()).increment(delta);
}

pub fn prompt_tokens(count: usize) {
    metrics::counter!("vllm:prompt_tokens_total", "model_name" => model_name())
        .increment(count as u64);
}

pub fn generation_token() {
    metrics::counter!("vllm:generation_tokens_total", "model_name" => model_name()).increment(1);
}

/// `reason`: `stop`, `length`, `abort` (client went away) or `error`.
pub fn request_finished(reason: &'static str) {
    metrics::counter!("vllm:request_success_total", "model_name" => model_name(), "finished_reason" => reason)
        .increment(1);
}

/// A request refused before it reached the queue's end (`queue_full`).
pub fn request_rejected(reason: &'static str) {
    metrics::counter!("cairn:requests_rejected_total", "model_name" => model_name(), "reason" => reason)
        .increment(1);
}

pub fn time_to_first_token(elapsed: Duration) {
    metrics::histogram!("vllm:time_to_first_token_seconds", "model_name" => model_name())
        .record(elapsed.as_secs_f64());
}

pub fn time_per_output_token(elapsed: Duration) {
    metrics::histogram!("vllm:time_per_output_token_seconds", "model_name" => model_name())
        .record(elapsed.as_secs_f64());
}

/// The fraction (0 to 1) of the KV cache's blocks in use. vLLM's name; in cairn it counts the
/// engine's block pool on whichever device the model runs, the CPU included.
pub fn cache_usage(fraction: f64) {
    metrics::gauge!("vllm:gpu_cache_usage_perc", "model_name" => model_name()).set(fraction);
}

/// A running sequence preempted (its cache freed, to be recomputed) for lack of KV blocks.
pub fn preemption() {
    metrics::counter!("vllm:num_preemptions_total", "model_name" => model_name()).increment(1);
}

pub fn e2e_latency(elapsed: Duration) {
    metrics::histogram!("vllm:e2e_request_latency_seconds", "model_name" => model_name())
        .record(elapsed.as_secs_f64());
}

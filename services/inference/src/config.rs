//! The service's configuration: environment variables named after the seeds' vLLM settings
//! (also accepted as flags), parsed once at start-up into typed values.
//!
//! It must never read the environment anywhere else, nor open files.

use std::net::SocketAddr;
use std::path::PathBuf;

use candle_core::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeChoice {
    /// F32 on CPU, BF16 on CUDA.
    Auto,
    F32,
    Bf16,
    F16,
}

impl DtypeChoice {
    pub fn resolve(self, device: DeviceKind) -> DType {
        match (self, device) {
            (DtypeChoice::Auto, DeviceKind::Cpu) | (DtypeChoice::F32, _) => DType::F32,
            (DtypeChoice::Auto, DeviceKind::Cuda) | (DtypeChoice::Bf16, _) => DType::BF16,
            (DtypeChoice::F16, _) => DType::F16,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json, ...).
    #[arg(long, env = "MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// The model name clients send (vLLM's --served-model-name).
    #[arg(
        long,
        env = "SERVED_MODEL_NAME",
        default_value = "qwen2.5-1.5b-instruct"
    )]
    pub served_model_name: String,
    /// Prompt plus completion limit in tokens; defaults to the model's max_position_embeddings.
    #[arg(long, env = "MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    #[arg(long, env = "DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, env = "DTYPE", value_enum, default_value = "auto")]
    pub dtype: DtypeChoice,
    /// Accepted for compatibility with vLLM's setting; candle allocates on demand, so it is only
    /// validated (0 < x <= 1), never used to pre-allocate.
    #[arg(long, env = "GPU_MEMORY_UTILIZATION", default_value = "0.9", value_parser = parse_fraction)]
    pub gpu_memory_utilization: f64,
    #[arg(long, env = "INFERENCE_LISTEN", default_value = "0.0.0.0:8001")]
    pub listen: SocketAddr,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    #[arg(long, env = "INFERENCE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests that may wait for a worker; one more is refused with 429.
    #[arg(long, env = "MAX_QUEUE", default_value = "64", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Seconds a streaming client may read nothing while its buffer is full before its request
    /// is cancelled, so that a client that stops reading never holds the model for others.
    #[arg(long, env = "STALLED_STREAM_TIMEOUT", default_value = "30", value_parser = clap::value_parser!(u64).range(1..))]
    pub stalled_stream_timeout: u64,
    /// Bytes of message text accepted before tokenizing (400 beyond); default MAX_MODEL_LEN x 16,
    /// far more than a prompt that fits the context can hold.
    #[arg(long, env = "MAX_PROMPT_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt_bytes: Option<u64>,
    /// Worker threads, each serving one request at a time with a weight-sharing model clone.
    #[arg(long, env = "WORKERS", default_value = "1", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number in (0, 1]")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("MODEL_DIR is not set: point it (or --model-dir) at a Hugging Face model directory")]
    NoModelDir,
    #[error(
        "DEVICE=cuda, but this binary was built without the `cuda` feature (cargo build -p inference --features cuda)"
    )]
    CudaNotBuilt,
    #[error("DEVICE=cuda: no usable CUDA device: {0}")]
    CudaUnavailable(String),
    #[error("MAX_MODEL_LEN={requested} exceeds the model's max_position_embeddings ({limit})")]
    MaxModelLenTooLarge { requested: usize, limit: usize },
}

impl ServeConfig {
    pub fn model_dir(&self) -> Result<PathBuf, ConfigError> {
        self.model_dir.clone().ok_or(ConfigError::NoModelDir)
    }

    /// The context limit for a model that supports `limit` positions.
    pub fn max_model_len(&self, limit: usize) -> Result<usize, ConfigError> {
        match self.max_model_len {
            Some(requested) if requested > limit => {
                Err(ConfigError::MaxModelLenTooLarge { requested, limit })
            }
            Some(requested) => Ok(requested),
            None => Ok(limit),
        }
    }

    /// The prompt-text limit for a context of `max_model_len` tokens.
    pub fn max_prompt_bytes(&self, max_model_len: usize) -> usize {
        self.max_prompt_bytes
            .map_or(max_model_len.saturating_mul(16), |bytes| bytes as usize)
    }

    pub fn candle_device(&self) -> Result<candle_core::Device, ConfigError> {
        match self.device {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda if cfg!(feature = "cuda") => candle_core::Device::new_cuda(0)
                .map_err(|err| ConfigError::CudaUnavailable(err.to_string())),
            DeviceKind::Cuda => Err(ConfigError::CudaNotBuilt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_bounds() {
        assert!(parse_fraction("0.9").is_ok());
        assert!(parse_fraction("0").is_err());
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("x").is_err());
    }

    #[test]
    fn dtype_follows_the_device() {
        assert_eq!(DtypeChoice::Auto.resolve(DeviceKind::Cpu), DType::F32);
        assert_eq!(DtypeChoice::Auto.resolve(DeviceKind::Cuda), DType::BF16);
    }
}

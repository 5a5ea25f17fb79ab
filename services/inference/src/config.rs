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
    /// Requests that may wait to join the batch; one more is refused with 429.
    #[arg(long, env = "MAX_QUEUE", default_value = "64", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Sequences decoded together, one forward pass per step for all of them (vLLM's
    /// --max-num-seqs); more requests wait in the queue. Default 16, or WORKERS when only that
    /// older setting is given.
    #[arg(long, env = "MAX_NUM_SEQS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_num_seqs: Option<u64>,
    /// Tokens one step feeds the model: one per decoding sequence plus chunks of prompts being
    /// prefilled (chunked prefill). Lower keeps decoding smooth while long prompts arrive, higher
    /// prefills faster (vLLM's --max-num-batched-tokens).
    #[arg(long, env = "MAX_NUM_BATCHED_TOKENS", default_value = "256", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_num_batched_tokens: u64,
    /// Tokens per KV cache block (vLLM's --block-size).
    #[arg(long, env = "BLOCK_SIZE", default_value = "16", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub block_size: u64,
    /// Memory for the KV cache, allocated once at start-up on the model's device: bytes, or a
    /// number with KiB, MiB or GiB. Default: room for MAX_NUM_SEQS sequences of MAX_MODEL_LEN
    /// tokens, capped at 1 GiB, never less than one MAX_MODEL_LEN sequence.
    #[arg(long, env = "KV_CACHE_MEMORY", value_parser = parse_bytes)]
    pub kv_cache_memory: Option<u64>,
    /// The number of KV cache blocks, overriding KV_CACHE_MEMORY (vLLM's
    /// --num-gpu-blocks-override).
    #[arg(long, env = "NUM_GPU_BLOCKS_OVERRIDE", value_parser = clap::value_parser!(u64).range(1..))]
    pub num_gpu_blocks_override: Option<u64>,
    /// Seconds a streaming client may read nothing while its buffer is full before its request
    /// is cancelled, so that a client that stops reading never holds the model for others.
    #[arg(long, env = "STALLED_STREAM_TIMEOUT", default_value = "30", value_parser = clap::value_parser!(u64).range(1..))]
    pub stalled_stream_timeout: u64,
    /// Bytes of message text accepted before tokenizing (400 beyond); default MAX_MODEL_LEN x 16,
    /// far more than a prompt that fits the context can hold.
    #[arg(long, env = "MAX_PROMPT_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt_bytes: Option<u64>,
    /// The former name of MAX_NUM_SEQS (when requests each had a worker thread), read when
    /// MAX_NUM_SEQS is unset.
    #[arg(long, env = "WORKERS", hide = true, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,
}

/// The KV cache budget when none is configured.
const DEFAULT_KV_CACHE_BYTES: u64 = 1 << 30;

/// How the batch and its KV cache are sized, resolved from the settings and the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSizing {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let (number, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: expected bytes, or a number with KiB, MiB or GiB"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive size"))
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
    #[error(
        "the KV cache ({setting}) holds {tokens} tokens, fewer than MAX_MODEL_LEN={max_model_len}: raise it or lower MAX_MODEL_LEN"
    )]
    KvCacheTooSmall {
        setting: &'static str,
        tokens: usize,
        max_model_len: usize,
    },
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

    /// Sizes the batch and the KV cache for a model whose tokens take `bytes_per_token` of cache.
    pub fn batch_sizing(
        &self,
        bytes_per_token: usize,
        max_model_len: usize,
    ) -> Result<BatchSizing, ConfigError> {
        let max_num_seqs = self.max_num_seqs.or(self.workers).unwrap_or(16) as usize;
        let block_size = self.block_size as usize;
        let bytes_per_block = (bytes_per_token * block_size).max(1) as u64;
        let blocks_per_sequence = max_model_len.div_ceil(block_size);
        let (num_blocks, setting) = match (self.num_gpu_blocks_override, self.kv_cache_memory) {
            (Some(blocks), _) => (blocks as usize, "NUM_GPU_BLOCKS_OVERRIDE"),
            (None, Some(bytes)) => ((bytes / bytes_per_block) as usize, "KV_CACHE_MEMORY"),
            (None, None) => {
                let capped = (DEFAULT_KV_CACHE_BYTES / bytes_per_block) as usize;
                let wanted = max_num_seqs.saturating_mul(blocks_per_sequence);
                (wanted.min(capped).max(blocks_per_sequence), "default")
            }
        };
        if num_blocks < blocks_per_sequence {
            return Err(ConfigError::KvCacheTooSmall {
                setting,
                tokens: num_blocks * block_size,
                max_model_len,
            });
        }
        Ok(BatchSizing {
            max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens as usize,
            block_size,
            num_blocks,
        })
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
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("64 MiB"), Ok(64 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1TB").is_err());
    }

    fn config(args: &[&str]) -> ServeConfig {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let mut all = vec!["inference"];
        all.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(all)
            .expect("parses")
            .serve
    }

    #[test]
    fn the_kv_cache_is_sized_from_the_budget_and_holds_one_full_sequence() {
        let default = config(&[]).batch_sizing(1024, 4096).expect("sized");
        assert_eq!(default.max_num_seqs, 16);
        assert_eq!(
            default.num_blocks,
            16 * 256,
            "16 sequences of 4096 fit in 1 GiB"
        );
        let capped = config(&[]).batch_sizing(24 * 1024, 32768).expect("sized");
        assert_eq!(capped.num_blocks, (1 << 30) / (24 * 1024 * 16));
        let overridden = config(&["--num-gpu-blocks-override", "300"])
            .batch_sizing(1024, 4096)
            .expect("sized");
        assert_eq!(overridden.num_blocks, 300);
        let small = config(&["--kv-cache-memory", "1MiB"]).batch_sizing(1024, 4096);
        assert!(matches!(
            small,
            Err(ConfigError::KvCacheTooSmall { tokens: 1024, .. })
        ));
        let legacy = config(&["--workers", "2"])
            .batch_sizing(1024, 4096)
            .expect("sized");
        assert_eq!(legacy.max_num_seqs, 2);
    }

    #[test]
    fn dtype_follows_the_device() {
        assert_eq!(DtypeChoice::Auto.resolve(DeviceKind::Cpu), DType::F32);
        assert_eq!(DtypeChoice::Auto.resolve(DeviceKind::Cuda), DType::BF16);
    }
}

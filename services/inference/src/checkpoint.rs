//! Loading a Hugging Face model directory: config.json (Qwen2), model.safetensors or a sharded
//! model.safetensors.index.json, tokenizer.json, tokenizer_config.json (chat template, special
//! tokens) and generation_config.json (end-of-sequence ids, default sampling).
//!
//! It reads files and builds the model once; every error names the file it came from. It must
//! never generate text or know about HTTP.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen2;
use serde::Deserialize;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::chat_template::ChatTemplate;
use crate::model::Qwen2;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{dir} has neither model.safetensors nor model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("loading weights from {path}: {source}")]
    Weights {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{path} has no chat_template")]
    NoChatTemplate { path: PathBuf },
}

/// Sampling defaults from generation_config.json, used when a request leaves them out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
}

/// Everything a loaded model directory provides.
pub struct Checkpoint {
    pub model: Qwen2,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub eos_ids: Vec<u32>,
    pub defaults: SamplingDefaults,
    pub max_position_embeddings: usize,
}

#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<usize>,
}

pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Checkpoint, LoadError> {
    let config_path = dir.join("config.json");
    let config_value: Value = read_json(&config_path)?;
    let config: qwen2::Config = parse_value(&config_path, config_value.clone())?;
    let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
    let tokenizer_config_path = dir.join("tokenizer_config.json");
    let tokenizer_config: Value = read_json(&tokenizer_config_path)?;
    let template = load_template(&tokenizer_config_path, &tokenizer_config)?;
    let generation_path = dir.join("generation_config.json");
    let generation: GenerationConfig = if generation_path.exists() {
        parse_value(&generation_path, read_json(&generation_path)?)?
    } else {
        GenerationConfig::default()
    };
    let eos_ids = eos_ids(&config_value, &generation, &tokenizer_config, &tokenizer);
    let builder = load_weights(dir, device, dtype)?;
    let model = Qwen2::load(&config, builder).map_err(|source| LoadError::Weights {
        path: dir.to_owned(),
        source,
    })?;
    Ok(Checkpoint {
        model,
        tokenizer: Arc::new(tokenizer),
        template,
        eos_ids,
        defaults: SamplingDefaults {
            temperature: generation.temperature,
            top_p: generation.top_p,
            top_k: generation.top_k,
        },
        max_position_embeddings: config.max_position_embeddings,
    })
}

fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

fn parse_value<T: serde::de::DeserializeOwned>(path: &Path, value: Value) -> Result<T, LoadError> {
    serde_json::from_value(value).map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    Tokenizer::from_file(path).map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

/// A special token in tokenizer_config.json: a string, or an object with `content`.
fn token_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(object)) => object
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

fn load_template(path: &Path, tokenizer_config: &Value) -> Result<ChatTemplate, LoadError> {
    let source = match tokenizer_config.get("chat_template") {
        Some(Value::String(source)) => source.clone(),
        // The list form: [{"name": "default", "template": "..."}, ...].
        Some(Value::Array(templates)) => templates
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_owned)
            .ok_or_else(|| LoadError::NoChatTemplate {
                path: path.to_owned(),
            })?,
        _ => {
            return Err(LoadError::NoChatTemplate {
                path: path.to_owned(),
            });
        }
    };
    ChatTemplate::new(
        source,
        token_text(tokenizer_config.get("bos_token")),
        token_text(tokenizer_config.get("eos_token")),
    )
    .map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: format!("chat_template: {err}"),
    })
}

/// End-of-sequence ids: generation_config.json's, config.json's and the tokenizer's eos token.
fn eos_ids(
    config: &Value,
    generation: &GenerationConfig,
    tokenizer_config: &Value,
    tokenizer: &Tokenizer,
) -> Vec<u32> {
    let mut ids = BTreeSet::new();
    for value in [config.get("eos_token_id"), generation.eos_token_id.as_ref()]
        .into_iter()
        .flatten()
    {
        match value {
            Value::Number(id) => ids.extend(id.as_u64().map(|id| id as u32)),
            Value::Array(list) => {
                ids.extend(list.iter().filter_map(Value::as_u64).map(|id| id as u32))
            }
            _ => {}
        }
    }
    let eos_text = token_text(tokenizer_config.get("eos_token"));
    ids.extend(tokenizer.token_to_id(&eos_text));
    ids.into_iter().collect()
}

/// The safetensors files of the model: the single file, or the shards the index names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return Err(LoadError::NoWeights {
            dir: dir.to_owned(),
        });
    }
    let index = read_json(&index_path)?;
    let shards: BTreeSet<&str> = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| LoadError::Parse {
            path: index_path.clone(),
            message: "no weight_map object".into(),
        })?
        .values()
        .filter_map(Value::as_str)
        .collect();
    Ok(shards.into_iter().map(|shard| dir.join(shard)).collect())
}

fn load_weights(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<VarBuilder<'static>, LoadError> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for path in weight_files(dir)? {
        let shard = candle_core::safetensors::load(&path, device)
            .map_err(|source| LoadError::Weights { path, source })?;
        tensors.extend(shard);
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

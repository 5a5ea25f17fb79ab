//! Writes a Hugging Face model directory with random weights: config.json, model.safetensors,
//! a byte-level BPE tokenizer.json made in code, tokenizer_config.json with a ChatML template
//! and generation_config.json. No weights can be downloaded where cairn is tested, so tests,
//! `cargo xtask dev` and the benchmark run the real loading and generation code on these.
//!
//! It must never be used to serve anything a user asked for: the weights are noise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::qwen2;
use serde_json::{Value, json};

/// The architectures the generator can shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Two layers of width 64: generates in milliseconds, for tests and local development.
    Tiny,
    /// Qwen2.5-0.5B's dimensions (24 layers, width 896, vocabulary 151936): for benchmarks.
    #[value(name = "qwen2.5-0.5b")]
    Qwen2_5_0_5b,
}

#[derive(Debug, thiserror::Error)]
pub enum TinyModelError {
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building random weights: {0}")]
    Weights(#[from] candle_core::Error),
    #[error("config.json does not fit candle's Qwen2 config: {0}")]
    Config(serde_json::Error),
}

pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Pairs merged by the tiny BPE, in rank order (a few common English pairs, so encoding
/// exercises merges as a real tokenizer does).
const MERGES: [(&str, &str); 13] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("o", "n"),
    ("Ġ", "a"),
    ("r", "e"),
    ("Ġ", "s"),
    ("Ġt", "he"),
    ("Ġ", "w"),
    ("o", "r"),
    ("e", "n"),
];

/// ChatML, as Qwen2.5 uses it (without the tool-calling branches).
pub const CHAT_TEMPLATE: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// GPT-2's reversible map from bytes to printable characters, in byte order.
fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next_unprintable = 256;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next_unprintable += 1;
                next_unprintable - 1
            };
            char::from_u32(code).unwrap_or('?')
        })
        .collect()
}

fn vocabulary() -> BTreeMap<String, u32> {
    let mut vocab: BTreeMap<String, u32> = byte_level_alphabet()
        .into_iter()
        .zip(0u32..)
        .map(|(c, id)| (c.to_string(), id))
        .collect();
    for (left, right) in MERGES {
        let id = vocab.len() as u32;
        vocab.insert(format!("{left}{right}"), id);
    }
    vocab
}

/// The tokenizer.json of the tiny tokenizer: byte-level BPE plus ChatML's special tokens.
#[cfg(test)]
pub fn tokenizer_json() -> Value {
    tokenizer_json_covering(tokenizer_vocab_size())
}

/// The tiny tokenizer with filler tokens (` x<id>`, never produced by encoding) after the
/// special ones, up to `vocab_size` ids: a model with a larger vocabulary than the tiny
/// tokenizer's then streams text for every id it samples, so a benchmark can time the text.
pub fn tokenizer_json_covering(vocab_size: usize) -> Value {
    let mut vocab = vocabulary();
    let first_special = vocab.len() as u32;
    if vocab_size > tokenizer_vocab_size() {
        // The model's ids must run without a gap, or the tokenizers crate renumbers the added
        // special tokens after the last one: the special tokens take their ids in it too.
        for (content, id) in SPECIAL_TOKENS.iter().zip(first_special..) {
            vocab.insert((*content).to_owned(), id);
        }
        for id in tokenizer_vocab_size()..vocab_size {
            vocab.insert(format!("Ġx{id}"), id as u32);
        }
    }
    let added_tokens: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .zip(first_special..)
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let merges: Vec<[&str; 2]> = MERGES.iter().map(|(l, r)| [*l, *r]).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

/// Size of the tiny tokenizer's vocabulary, special tokens included.
pub fn tokenizer_vocab_size() -> usize {
    vocabulary().len() + SPECIAL_TOKENS.len()
}

fn special_id(token: &str) -> usize {
    let position = SPECIAL_TOKENS.iter().position(|t| *t == token).unwrap_or(0);
    vocabulary().len() + position
}

/// config.json in the form transformers writes for Qwen2.
pub fn config_json(shape: Shape) -> Value {
    let (vocab, hidden, intermediate, layers, heads, kv_heads, max_pos, rope_theta) = match shape {
        // Qwen2.5's context (32768), so that a deployment's MAX_MODEL_LEN fits the tiny model too.
        Shape::Tiny => (tokenizer_vocab_size(), 64, 128, 2, 4, 2, 32_768, 10_000.0),
        Shape::Qwen2_5_0_5b => (151_936, 896, 4864, 24, 14, 2, 32_768, 1_000_000.0),
    };
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": special_id("<|endoftext|>"),
        "eos_token_id": special_id("<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_pos,
        "max_window_layers": layers,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta,
        "sliding_window": max_pos,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab
    })
}

fn tokenizer_config_json(max_len: u64) -> Value {
    json!({
        "add_prefix_space": false,
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

fn generation_config_json() -> Value {
    json!({
        "bos_token_id": special_id("<|endoftext|>"),
        "eos_token_id": [special_id("<|im_end|>"), special_id("<|endoftext|>")]
    })
}

/// Writes the whole model directory (created if missing; files replaced through renames).
pub fn write(dir: &Path, shape: Shape) -> Result<(), TinyModelError> {
    std::fs::create_dir_all(dir).map_err(|source| TinyModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let config = config_json(shape);
    let max_len = config["max_position_embeddings"].as_u64().unwrap_or(4096);
    write_json(&dir.join("config.json"), &config)?;
    let vocab_size = config["vocab_size"].as_u64().unwrap_or(0) as usize;
    write_json(
        &dir.join("tokenizer.json"),
        &tokenizer_json_covering(vocab_size),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(max_len),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(),
    )?;
    write_weights(dir, &config)
}

fn write_weights(dir: &Path, config: &Value) -> Result<(), TinyModelError> {
    let config: qwen2::Config =
        serde_json::from_value(config.clone()).map_err(TinyModelError::Config)?;
    let varmap = random_weights(&config)?;
    let target = dir.join("model.safetensors");
    let temporary = dir.join(".model.safetensors.tmp");
    varmap.save(&temporary)?;
    rename(&temporary, &target)
}

/// Every weight of a Qwen2 model of `config`, named as in a Hugging Face checkpoint, random.
pub fn random_weights(config: &qwen2::Config) -> Result<VarMap, TinyModelError> {
    let varmap = VarMap::new();
    let builder = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    qwen2::ModelForCausalLM::new(config, builder)?;
    reinitialise(&varmap)?;
    Ok(varmap)
}

/// transformers' initialisation for Qwen2 (normal(0, 0.02) weights, zero biases, unit norms)
/// instead of candle's training defaults, whose large embeddings make a random model's next
/// token nearly certain: with these, sampling under different seeds gives different text.
fn reinitialise(varmap: &VarMap) -> Result<(), TinyModelError> {
    let Ok(vars) = varmap.data().lock() else {
        return Ok(());
    };
    for (name, var) in vars.iter() {
        let shape = var.shape().clone();
        let value = if name.ends_with("norm.weight") {
            candle_core::Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else if name.ends_with(".bias") {
            candle_core::Tensor::zeros(shape, DType::F32, &Device::Cpu)?
        } else {
            candle_core::Tensor::randn(0f32, 0.02, shape, &Device::Cpu)?
        };
        var.set(&value)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<(), TinyModelError> {
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(&temporary, text).map_err(|source| TinyModelError::Io {
        path: temporary.clone(),
        source,
    })?;
    rename(&temporary, path)
}

fn rename(from: &Path, to: &Path) -> Result<(), TinyModelError> {
    std::fs::rename(from, to).map_err(|source| TinyModelError::Io {
        path: to.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_256_distinct_characters() {
        let mut alphabet = byte_level_alphabet();
        alphabet.sort_unstable();
        alphabet.dedup();
        assert_eq!(alphabet.len(), 256);
    }

    #[test]
    fn tokenizer_round_trips_text_and_uses_merges() {
        let json = tokenizer_json().to_string();
        let tokenizer = tokenizers::Tokenizer::from_bytes(json.as_bytes()).expect("loads");
        let text = "<|im_start|>user\nthe weather in Zürich<|im_end|>";
        let encoding = tokenizer.encode(text, false).expect("encodes");
        let ids = encoding.get_ids();
        assert_eq!(ids[0] as usize, special_id("<|im_start|>"));
        assert!(ids.contains(&(vocabulary()["Ġw"])), "{ids:?}");
        assert_eq!(tokenizer.decode(ids, false).expect("decodes"), text);
        assert_eq!(tokenizer.get_vocab_size(true), tokenizer_vocab_size());
    }

    /// The benchmark's model samples ids up to 151935; each must stream text, or the time to
    /// first text waits for the first id the tiny tokenizer happens to know.
    #[test]
    fn a_covering_tokenizer_decodes_every_id_of_the_larger_vocabulary() {
        let vocab_size = 1000;
        let json = tokenizer_json_covering(vocab_size).to_string();
        let tokenizer = tokenizers::Tokenizer::from_bytes(json.as_bytes()).expect("loads");
        assert_eq!(tokenizer.get_vocab_size(true), vocab_size);
        for token in SPECIAL_TOKENS {
            assert_eq!(
                tokenizer.token_to_id(token),
                Some(special_id(token) as u32),
                "config.json's ids for {token} still hold"
            );
        }
        for id in [tokenizer_vocab_size() as u32, 500, vocab_size as u32 - 1] {
            let text = tokenizer.decode(&[id], false).expect("decodes");
            assert_eq!(text, format!(" x{id}"));
        }
        let text = "<|im_start|>user\nthe weather x500<|im_end|>";
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert!(
            ids.get_ids()
                .iter()
                .all(|&id| (id as usize) < tokenizer_vocab_size()),
            "fillers are never produced by encoding: {:?}",
            ids.get_ids()
        );
        assert_eq!(
            tokenizer.decode(ids.get_ids(), false).expect("decodes"),
            text
        );
    }
}

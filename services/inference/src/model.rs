//! cairn's Qwen2 forward pass for a batch of sequences of different lengths: every sequence's
//! new tokens (a prompt chunk, or the one token it sampled last) go through the weights as one
//! `[tokens, hidden]` matrix, so one step reads the weights once for the whole batch; attention
//! runs per sequence over that sequence's keys and values, read from the engine's paged
//! [`KvCache`] through the sequence's slot list.
//!
//! candle's own `qwen2` keeps one sequence's cache inside the model, which rules out batching.
//! The weights and their names are the same (a Hugging Face Qwen2 checkpoint). It is device- and
//! dtype-generic: the same code runs on CPU in F32 and on CUDA in BF16, the CPU's linear layers
//! and attention through [`crate::dense`] and [`crate::attention`] where those apply. It must
//! never decide which sequences run or sample tokens; the engine does.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, RmsNorm, VarBuilder};
use candle_transformers::models::qwen2::Config;

use crate::attention::{self, Heads, SequenceRows};
use crate::dense::Dense;
use crate::kv_cache::{KvCache, LayerCache};

/// The dimensions that size the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
}

impl ModelShape {
    /// Bytes of keys and values one token takes in the cache.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * dtype.size_in_bytes()
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct StepSequence<'a> {
    /// The tokens fed this step: a chunk of the prompt, or the last sampled token.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence (the number of tokens already cached).
    pub start: usize,
    /// The cache slot of every position `0..start + tokens.len()`.
    pub slots: &'a [u32],
    /// Whether the step must return logits for the last of `tokens`.
    pub wants_logits: bool,
}

struct Layer {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    o_proj: Dense,
    gate_proj: Dense,
    up_proj: Dense,
    down_proj: Dense,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

pub struct Qwen2 {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Dense,
    /// Rotary tables, `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    shape: ModelShape,
    device: Device,
    dtype: DType,
    /// Attention through [`attention::paged_attention`] (CPU, F32) instead of candle ops.
    cpu_attention: bool,
}

/// What a layer needs about one sequence, computed once per step.
struct SequencePlan {
    /// Row of the sequence's first new token in the step's `[tokens, …]` matrices.
    offset: usize,
    len: usize,
    /// Runs of new tokens that land in consecutive cache slots: (row within the sequence,
    /// first slot, length).
    writes: Vec<(usize, usize, usize)>,
    /// Position of the first new token.
    start: usize,
    /// Every cached slot of the sequence, new ones included, in position order.
    slots: Vec<u32>,
    /// For candle's attention: `slots` as a tensor, and the causal mask of a multi-token
    /// chunk, `[groups * len, keys]` (none for one token).
    gather: Option<Tensor>,
    mask: Option<Tensor>,
}

impl Qwen2 {
    pub fn load(config: &Config, vb: VarBuilder) -> Result<Qwen2> {
        let head_dim = config.hidden_size / config.num_attention_heads;
        let shape = ModelShape {
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim,
            max_positions: config.max_position_embeddings,
        };
        let model = vb.pp("model");
        let embed_tokens = candle_nn::embedding(
            config.vocab_size,
            config.hidden_size,
            model.pp("embed_tokens"),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| load_layer(config, &shape, model.pp(format!("layers.{index}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(config.hidden_size, config.rms_norm_eps, model.pp("norm"))?;
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Dense::load_no_bias(config.hidden_size, config.vocab_size, vb.pp("lm_head"))?
        } else {
            Dense::new(embed_tokens.embeddings().clone(), None)
        };
        let (cos, sin) = rotary_tables(config, head_dim, vb.dtype(), vb.device())?;
        Ok(Qwen2 {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            shape,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cpu_attention: vb.device().is_cpu() && vb.dtype() == DType::F32,
        })
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step for the whole batch: writes every new token's keys and values into `cache` and
    /// returns F32 logits `[n, vocab]` for the `n` sequences that want them, in batch order.
    pub fn forward(&self, batch: &[StepSequence], cache: &KvCache) -> Result<Option<Tensor>> {
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let positions: Vec<u32> = batch
            .iter()
            .flat_map(|s| (s.start..s.start + s.tokens.len()).map(|p| p as u32))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let plans = self.plan(batch)?;
        let mut xs = self
            .embed_tokens
            .forward(&Tensor::new(ids.as_slice(), &self.device)?)?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers()) {
            let attention = layer.attention(&xs, (&cos, &sin), &plans, layer_cache, self)?;
            let xs_attended = (xs + attention)?;
            let hidden = layer.post_attention_layernorm.forward(&xs_attended)?;
            let mlp = (layer.gate_proj.forward(&hidden)?.silu()?
                * layer.up_proj.forward(&hidden)?)?
            .apply(&layer.down_proj)?;
            xs = (xs_attended + mlp)?;
        }
        let rows: Vec<u32> = batch
            .iter()
            .zip(&plans)
            .filter(|(sequence, _)| sequence.wants_logits)
            .map(|(_, plan)| (plan.offset + plan.len - 1) as u32)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let last = xs.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let logits = self.norm.forward(&last)?.apply(&self.lm_head)?;
        Ok(Some(logits.to_dtype(DType::F32)?))
    }

    fn plan(&self, batch: &[StepSequence]) -> Result<Vec<SequencePlan>> {
        let groups = self.shape.heads / self.shape.kv_heads;
        let mut offset = 0;
        let mut plans = Vec::with_capacity(batch.len());
        for sequence in batch {
            let len = sequence.tokens.len();
            let keys = sequence.start + len;
            let slots = sequence.slots.get(..keys).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{} cache slots for {keys} positions",
                    sequence.slots.len()
                ))
            })?;
            let generic = !self.cpu_attention;
            let mask = if generic && len > 1 {
                Some(causal_mask(
                    sequence.start,
                    len,
                    groups,
                    &self.device,
                    self.dtype,
                )?)
            } else {
                None
            };
            let gather = if generic {
                Some(Tensor::new(slots, &self.device)?)
            } else {
                None
            };
            plans.push(SequencePlan {
                offset,
                len,
                writes: write_runs(&slots[sequence.start..]),
                start: sequence.start,
                slots: slots.to_vec(),
                gather,
                mask,
            });
            offset += len;
        }
        Ok(plans)
    }
}

fn load_layer(config: &Config, shape: &ModelShape, vb: VarBuilder) -> Result<Layer> {
    let hidden = config.hidden_size;
    let attention = vb.pp("self_attn");
    let mlp = vb.pp("mlp");
    let kv = shape.kv_heads * shape.head_dim;
    Ok(Layer {
        q_proj: Dense::load(hidden, shape.heads * shape.head_dim, attention.pp("q_proj"))?,
        k_proj: Dense::load(hidden, kv, attention.pp("k_proj"))?,
        v_proj: Dense::load(hidden, kv, attention.pp("v_proj"))?,
        o_proj: Dense::load_no_bias(shape.heads * shape.head_dim, hidden, attention.pp("o_proj"))?,
        gate_proj: Dense::load_no_bias(hidden, config.intermediate_size, mlp.pp("gate_proj"))?,
        up_proj: Dense::load_no_bias(hidden, config.intermediate_size, mlp.pp("up_proj"))?,
        down_proj: Dense::load_no_bias(config.intermediate_size, hidden, mlp.pp("down_proj"))?,
        input_layernorm: candle_nn::rms_norm(
            hidden,
            config.rms_norm_eps,
            vb.pp("input_layernorm"),
        )?,
        post_attention_layernorm: candle_nn::rms_norm(
            hidden,
            config.rms_norm_eps,
            vb.pp("post_attention_layernorm"),
        )?,
    })
}

/// Rotary tables computed in F32 (positions beyond 256 are not exact in BF16), then cast.
fn rotary_tables(
    config: &Config,
    head_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / config.rope_theta.powf(i as f64 / head_dim as f64) as f32)
        .collect();
    let half = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = config.max_position_embeddings;
    let t = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = t.matmul(&inv_freq)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

/// Splits the slots of new tokens into runs of consecutive slots, one copy each.
fn write_runs(new_slots: &[u32]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (row, &slot) in new_slots.iter().enumerate() {
        let slot = slot as usize;
        match runs.last_mut() {
            Some((_, first, len)) if *first + *len == slot => *len += 1,
            _ => runs.push((row, slot, 1)),
        }
    }
    runs
}

/// `[groups * len, start + len]`: query `i` (position `start + i`) sees keys `0..=start + i`.
fn causal_mask(
    start: usize,
    len: usize,
    groups: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let keys = start + len;
    let mask: Vec<f32> = (0..groups * len)
        .flat_map(|row| {
            let visible = start + row % len;
            (0..keys).map(move |key| {
                if key <= visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (groups * len, keys), device)?.to_dtype(dtype)
}

impl Layer {
    /// Self-attention of every sequence's new tokens; `[tokens, hidden]` in, the attention
    /// output (before the residual) out.
    fn attention(
        &self,
        xs: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        plans: &[SequencePlan],
        cache: &LayerCache,
        model: &Qwen2,
    ) -> Result<Tensor> {
        let shape = &model.shape;
        let (tokens, _) = xs.dims2()?;
        let (heads, kv_heads, head_dim) = (shape.heads, shape.kv_heads, shape.head_dim);
        let hidden = self.input_layernorm.forward(xs)?;
        let q = self
            .q_proj
            .forward(&hidden)?
            .reshape((1, tokens, heads, head_dim))?;
        let k = self
            .k_proj
            .forward(&hidden)?
            .reshape((1, tokens, kv_heads, head_dim))?;
        let v = self
            .v_proj
            .forward(&hidden)?
            .reshape((tokens, kv_heads, head_dim))?;
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?.squeeze(0)?;
        // The cache is `[kv_heads, slots, head_dim]`: head-major, so a gather is one copy.
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        for plan in plans {
            for &(row, slot, len) in &plan.writes {
                let at = plan.offset + row;
                cache
                    .keys()
                    .slice_set(&k.narrow(1, at, len)?.contiguous()?, 1, slot)?;
                cache
                    .values()
                    .slice_set(&v.narrow(1, at, len)?.contiguous()?, 1, slot)?;
            }
        }
        let output = if model.cpu_attention {
            paged_cpu(&q, plans, cache, shape)?
        } else {
            generic_attention(&q, plans, cache, shape)?
        };
        output.apply(&self.o_proj)
    }
}

/// [`attention::paged_attention`] on the step's queries `[tokens, heads, head_dim]`.
fn paged_cpu(
    q: &Tensor,
    plans: &[SequencePlan],
    cache: &LayerCache,
    shape: &ModelShape,
) -> Result<Tensor> {
    let (tokens, heads, head_dim) = q.dims3()?;
    let q = q.contiguous()?;
    let (query_storage, query_layout) = q.storage_and_layout();
    let queries = cpu_f32(&query_storage, query_layout, "the queries")?;
    let (key_storage, key_layout) = cache.keys().storage_and_layout();
    let (value_storage, value_layout) = cache.values().storage_and_layout();
    let keys = cpu_f32(&key_storage, key_layout, "the KV cache's keys")?;
    let values = cpu_f32(&value_storage, value_layout, "the KV cache's values")?;
    let sequences: Vec<SequenceRows> = plans
        .iter()
        .map(|plan| SequenceRows {
            len: plan.len,
            start: plan.start,
            slots: &plan.slots,
        })
        .collect();
    let layout = Heads {
        heads,
        kv_heads: shape.kv_heads,
        head_dim,
        cache_slots: cache.keys().dim(1)?,
    };
    let output = attention::paged_attention(queries, keys, values, &sequences, layout);
    Tensor::from_vec(output, (tokens, heads * head_dim), q.device())
}

/// A contiguous F32 CPU tensor's elements, borrowed (the cache is large: never copied);
/// `what` names it in errors.
fn cpu_f32<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let candle_core::Storage::Cpu(cpu) = storage else {
        return Err(candle_core::Error::Msg(format!(
            "{what} is not in CPU memory"
        )));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(format!("{what} is not contiguous")));
    };
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

/// Attention with candle ops, one sequence at a time: any device and dtype.
fn generic_attention(
    q: &Tensor,
    plans: &[SequencePlan],
    cache: &LayerCache,
    shape: &ModelShape,
) -> Result<Tensor> {
    let (heads, kv_heads, head_dim) = (shape.heads, shape.kv_heads, shape.head_dim);
    let groups = heads / kv_heads;
    let scale = 1f64 / (head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(plans.len());
    for plan in plans {
        let n = plan.len;
        let gather = plan
            .gather
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("no gather index".into()))?;
        let keys = cache.keys().index_select(gather, 1)?;
        let values = cache.values().index_select(gather, 1)?;
        // [n, heads, d] → [heads, n, d] → [kv_heads, groups * n, d]: query heads that
        // share a key head are consecutive, as in transformers' repeat_kv.
        let query = q
            .narrow(0, plan.offset, n)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kv_heads, groups * n, head_dim))?;
        let scores = (query.matmul(&keys.t()?)? * scale)?;
        let scores = match &plan.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let output = weights
            .matmul(&values)?
            .reshape((heads, n, head_dim))?
            .transpose(0, 1)?
            .reshape((n, heads * head_dim))?;
        outputs.push(output);
    }
    Tensor::cat(&outputs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::tests::max_difference;
    use crate::kv_cache::{BlockAllocator, slots};
    use candle_transformers::models::qwen2;

    /// Three sequences of different lengths in one batch, one of them prefilled in two chunks,
    /// on scattered cache blocks, give the logits candle's own Qwen2 gives each alone: through
    /// the CPU's paged attention and through the candle ops CUDA runs.
    #[test]
    fn a_ragged_batch_matches_candles_qwen2_run_alone() {
        ragged_batch_matches_candle(true);
        ragged_batch_matches_candle(false);
    }

    fn ragged_batch_matches_candle(cpu_attention: bool) {
        let json = crate::tiny_model::config_json(crate::tiny_model::Shape::Tiny);
        let config: qwen2::Config = serde_json::from_value(json).expect("config");
        let varmap = crate::tiny_model::random_weights(&config).expect("weights");
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut ours = Qwen2::load(&config, vb.clone()).expect("our model");
        assert!(
            ours.cpu_attention,
            "CPU and F32 choose the paged CPU attention"
        );
        ours.cpu_attention = cpu_attention;
        let prompts: [Vec<u32>; 3] = [(1..8).collect(), vec![9], (20..58).collect()];
        let next = [5u32, 6, 7];
        let mut expected = Vec::new();
        for (prompt, token) in prompts.iter().zip(next) {
            let mut alone = qwen2::ModelForCausalLM::new(&config, vb.clone()).expect("candle");
            let input = Tensor::new(prompt.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0));
            let first = alone.forward(&input.expect("input"), 0).expect("prefill");
            let input = Tensor::new(&[token], &Device::Cpu).and_then(|t| t.unsqueeze(0));
            let second = alone
                .forward(&input.expect("input"), prompt.len())
                .expect("decode");
            expected.push((
                first.flatten_all().expect("flat"),
                second.flatten_all().expect("flat"),
            ));
        }
        let block_size = 4;
        let cache =
            KvCache::new(&ours.shape(), 40, block_size, DType::F32, &Device::Cpu).expect("cache");
        let mut allocator = BlockAllocator::new(40, block_size);
        // Interleave allocations so that no sequence's blocks are contiguous.
        let mut tables = [Vec::new(), Vec::new(), Vec::new()];
        for tokens in (block_size..=60).step_by(block_size) {
            for (table, prompt) in tables.iter_mut().zip(&prompts) {
                if tokens <= prompt.len() + 4 {
                    assert!(allocator.grow(table, tokens));
                }
            }
        }
        let slot_lists: Vec<Vec<u32>> = tables
            .iter()
            .zip(&prompts)
            .map(|(table, prompt)| slots(table, block_size, prompt.len() + 1))
            .collect();
        // Step 1: the first two prompts whole, the first 20 tokens of the third.
        let step =
            |sequence: usize, range: std::ops::Range<usize>, wants_logits: bool| StepSequence {
                tokens: &prompts[sequence][range.clone()],
                start: range.start,
                slots: &slot_lists[sequence],
                wants_logits,
            };
        let logits = ours
            .forward(
                &[
                    step(0, 0..7, true),
                    step(1, 0..1, true),
                    step(2, 0..20, false),
                ],
                &cache,
            )
            .expect("step 1")
            .expect("logits");
        assert_eq!(logits.dims(), &[2, config.vocab_size]);
        for (row, (prefill, _)) in expected.iter().take(2).enumerate() {
            let got = logits.get(row).expect("row");
            assert!(max_difference(&got, prefill) < 1e-4, "prefill {row}");
        }
        // Step 2: two decodes and the rest of the third prompt.
        let decode = |sequence: usize| StepSequence {
            tokens: std::slice::from_ref(&next[sequence]),
            start: prompts[sequence].len(),
            slots: &slot_lists[sequence],
            wants_logits: true,
        };
        let logits = ours
            .forward(&[decode(0), step(2, 20..38, true), decode(1)], &cache)
            .expect("step 2")
            .expect("logits");
        let rows = [
            (0, &expected[0].1),
            (1, &expected[2].0),
            (2, &expected[1].1),
        ];
        for (row, wanted) in rows {
            let got = logits.get(row).expect("row");
            assert!(max_difference(&got, wanted) < 1e-4, "step 2 row {row}");
        }
        // Step 3: the third sequence decodes alone.
        let logits = ours
            .forward(&[decode(2)], &cache)
            .expect("step 3")
            .expect("logits");
        let got = logits.get(0).expect("row");
        assert!(
            max_difference(&got, &expected[2].1) < 1e-4,
            "decode after chunks"
        );
    }

    #[test]
    fn write_runs_break_at_gaps_between_blocks() {
        assert_eq!(write_runs(&[5, 6, 7]), vec![(0, 5, 3)]);
        assert_eq!(write_runs(&[9]), vec![(0, 9, 1)]);
        assert_eq!(write_runs(&[1, 2, 12, 13]), vec![(0, 1, 2), (2, 12, 2)]);
    }

    #[test]
    fn a_chunk_sees_its_past_and_itself_only() {
        let mask = causal_mask(2, 2, 2, &Device::Cpu, DType::F32).expect("mask");
        let rows: Vec<Vec<f32>> = mask.to_vec2().expect("rows");
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows[0], vec![0.0, 0.0, 0.0, inf]);
        assert_eq!(rows[1], vec![0.0, 0.0, 0.0, 0.0]);
        assert_eq!(rows[2], rows[0], "the second head group repeats the rows");
    }
}

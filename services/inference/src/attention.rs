//! Attention on the CPU in F32, read straight from the paged KV cache: for every new token of
//! every sequence in a step and every query head, the scores against the keys in that
//! sequence's cache slots up to the token's own position, their softmax, and the weighted sum of
//! the values. The rows are shared between rayon's threads.
//!
//! The model's generic path does the same with candle ops, one gather, two matmuls and a softmax
//! per sequence and layer; in a decoding step of a batch that is a few microseconds of work behind
//! each of hundreds of small ops, so that path costs more than the arithmetic. This is the CPU's
//! path; CUDA and BF16 keep the generic one.
//!
//! It computes; it must never decide which slots a sequence owns (the engine does).

use rayon::prelude::*;

/// One sequence's new tokens in a step; the sequences' rows follow each other in the query
/// matrix in this order.
#[derive(Debug, Clone, Copy)]
pub struct SequenceRows<'a> {
    /// New tokens.
    pub len: usize,
    /// Position of the first new token.
    pub start: usize,
    /// The cache slot of every position up to the last new token.
    pub slots: &'a [u32],
}

/// The layout of the query matrix and of one layer's cache.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Slots in the cache (`blocks × block_size`).
    pub cache_slots: usize,
}

/// `queries` is `[tokens, heads, head_dim]`, `keys` and `values` `[kv_heads, cache_slots,
/// head_dim]`; returns `[tokens, heads × head_dim]`. Query head `h` reads key head
/// `h / (heads / kv_heads)`, as transformers' `repeat_kv` pairs them.
pub fn paged_attention(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    sequences: &[SequenceRows],
    layout: Heads,
) -> Vec<f32> {
    let Heads {
        heads,
        kv_heads,
        head_dim,
        cache_slots,
    } = layout;
    let width = heads * head_dim;
    let tokens = queries.len() / width.max(1);
    let groups = heads / kv_heads.max(1);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Which sequence and position each row is.
    let mut rows: Vec<(usize, usize)> = Vec::with_capacity(tokens);
    for (index, sequence) in sequences.iter().enumerate() {
        rows.extend((0..sequence.len).map(|i| (index, sequence.start + i)));
    }
    let mut output = vec![0f32; tokens * width];
    output
        .par_chunks_mut(width)
        .zip(queries.par_chunks(width))
        .zip(rows.par_iter())
        .for_each(|((out, query), &(index, position))| {
            let slots = &sequences[index].slots[..=position];
            let mut weights = vec![0f32; slots.len()];
            for head in 0..heads {
                let kv = head / groups;
                let query = &query[head * head_dim..(head + 1) * head_dim];
                let at = |slot: u32| (kv * cache_slots + slot as usize) * head_dim;
                let mut max = f32::NEG_INFINITY;
                for (weight, &slot) in weights.iter_mut().zip(slots) {
                    *weight = dot(query, &keys[at(slot)..at(slot) + head_dim]) * scale;
                    max = max.max(*weight);
                }
                let mut sum = 0f32;
                for weight in weights.iter_mut() {
                    *weight = (*weight - max).exp();
                    sum += *weight;
                }
                let out = &mut out[head * head_dim..(head + 1) * head_dim];
                for (weight, &slot) in weights.iter().zip(slots) {
                    let weight = weight / sum;
                    for (o, v) in out.iter_mut().zip(&values[at(slot)..at(slot) + head_dim]) {
                        *o += weight * v;
                    }
                }
            }
        });
    output
}

/// Eight running sums, so that the compiler can keep them in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let whole = a.len() / 8 * 8;
    for (x, y) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two query heads sharing one key head, two sequences on scattered slots, one of them a
    /// two-token chunk: each row's output is the softmax-weighted values it may see, computed
    /// here the slow way.
    #[test]
    fn each_row_attends_to_its_own_sequence_up_to_its_position() {
        let (heads, kv_heads, head_dim, cache_slots) = (2, 1, 3, 6);
        let value = |slot: usize, d: usize| (slot * 10 + d) as f32;
        let key = |slot: usize, d: usize| ((slot + d) % 3) as f32 * 0.5;
        let keys: Vec<f32> = (0..cache_slots)
            .flat_map(|s| (0..head_dim).map(move |d| key(s, d)))
            .collect();
        let values: Vec<f32> = (0..cache_slots)
            .flat_map(|s| (0..head_dim).map(move |d| value(s, d)))
            .collect();
        // Sequence a: positions 0..=2 in slots 4, 0, 2, its last two tokens new. Sequence b:
        // one new token at position 1, slots 5, 1.
        let a = [4u32, 0, 2];
        let b = [5u32, 1];
        let sequences = [
            SequenceRows {
                len: 2,
                start: 1,
                slots: &a,
            },
            SequenceRows {
                len: 1,
                start: 1,
                slots: &b,
            },
        ];
        let queries: Vec<f32> = (0..3 * heads * head_dim)
            .map(|i| (i % 5) as f32 * 0.3)
            .collect();
        let layout = Heads {
            heads,
            kv_heads,
            head_dim,
            cache_slots,
        };
        let output = paged_attention(&queries, &keys, &values, &sequences, layout);
        let rows: [(&[u32], usize); 3] = [(&a, 1), (&a, 2), (&b, 1)];
        for (row, (slots, position)) in rows.iter().enumerate() {
            for head in 0..heads {
                let q = &queries[(row * heads + head) * head_dim..][..head_dim];
                let visible = &slots[..=*position];
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&s| {
                        (0..head_dim)
                            .map(|d| q[d] * key(s as usize, d))
                            .sum::<f32>()
                            / (head_dim as f32).sqrt()
                    })
                    .collect();
                let total: f32 = scores.iter().map(|s| s.exp()).sum();
                for d in 0..head_dim {
                    let expected: f32 = visible
                        .iter()
                        .zip(&scores)
                        .map(|(&s, score)| score.exp() / total * value(s as usize, d))
                        .sum();
                    let got = output[(row * heads + head) * head_dim + d];
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "row {row} head {head} dim {d}: {got} != {expected}"
                    );
                }
            }
        }
    }
}

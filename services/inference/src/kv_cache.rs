//! The KV cache the engine manages: one preallocated pool of fixed-size blocks per layer
//! (vLLM's paged attention layout, `--block-size` tokens per block) and the allocator that
//! hands blocks to sequences. A sequence's keys live in the blocks of its block table, so a
//! finished or cancelled sequence returns exactly its blocks and nothing is copied or grown.
//!
//! It owns memory and its accounting only; it must never decide which sequence gets blocks
//! (the scheduler in `engine` does) nor compute attention (`model` does).

use candle_core::{DType, Device, Tensor};

use crate::model::ModelShape;

/// Keys and values of one layer, each `[kv_heads, blocks * block_size, head_dim]`.
pub struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

impl LayerCache {
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    pub fn values(&self) -> &Tensor {
        &self.values
    }
}

pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// Allocates `blocks` blocks of `block_size` tokens for every layer of `shape`.
    pub fn new(
        shape: &ModelShape,
        blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<KvCache> {
        let dims = (shape.kv_heads, blocks * block_size, shape.head_dim);
        let layers = (0..shape.layers)
            .map(|_| {
                Ok(LayerCache {
                    keys: Tensor::zeros(dims, dtype, device)?,
                    values: Tensor::zeros(dims, dtype, device)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }
}

/// Which blocks are free. Pure bookkeeping, unit-tested without tensors.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
    block_size: usize,
}

impl BlockAllocator {
    pub fn new(total: usize, block_size: usize) -> BlockAllocator {
        BlockAllocator {
            // Reversed so that blocks are handed out in ascending order (neighbouring slots).
            free: (0..total as u32).rev().collect(),
            total,
            block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Grows `table` to hold `tokens` tokens; false (and `table` unchanged) when too few blocks
    /// are free.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let needed = self.blocks_for(tokens).saturating_sub(table.len());
        if needed > self.free.len() {
            return false;
        }
        let start = self.free.len() - needed;
        table.extend(self.free.drain(start..).rev());
        true
    }

    /// Returns every block of `table` to the pool.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.append(table);
    }

    /// The fraction of blocks in use, 0 to 1 (vLLM's `gpu_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        (self.total - self.free.len()) as f64 / self.total as f64
    }
}

/// The cache slot of every position `0..tokens` of a sequence with block table `table`.
pub fn slots(table: &[u32], block_size: usize, tokens: usize) -> Vec<u32> {
    (0..tokens)
        .map(|position| {
            table[position / block_size] * block_size as u32 + (position % block_size) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_granted_whole_and_returned() {
        let mut allocator = BlockAllocator::new(4, 16);
        let mut first = Vec::new();
        assert!(allocator.grow(&mut first, 17));
        assert_eq!(first, vec![0, 1]);
        assert!(allocator.grow(&mut first, 32), "still two blocks");
        assert_eq!(first.len(), 2);
        let mut second = Vec::new();
        assert!(
            !allocator.grow(&mut second, 48),
            "three blocks are not free"
        );
        assert!(second.is_empty());
        assert!((allocator.usage() - 0.5).abs() < 1e-9);
        allocator.release(&mut first);
        assert!(first.is_empty());
        assert!(allocator.grow(&mut second, 48));
        assert_eq!(allocator.free_blocks(), 1);
    }

    #[test]
    fn slots_follow_the_block_table() {
        assert_eq!(slots(&[3, 1], 2, 3), vec![6, 7, 2]);
    }
}

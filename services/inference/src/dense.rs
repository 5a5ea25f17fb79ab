//! The model's linear layers, `y = x · Wᵀ (+ b)`, with a kernel for the shape decoding has: a
//! step multiplies one row per running sequence (a handful) by every weight matrix, so reading
//! the weights should be the whole cost, and candle's CPU matmul (the `gemm` crate, made for
//! large products) spends more than that on this shape. Measured on the 0.5B shape's 24 layers
//! (1.4 GB of F32 weights), 8 rows took 135 ms through candle and about 70 ms through this
//! kernel, 1 row 60 ms and about 51 ms (the README's performance section has whole steps, from
//! `cargo xtask bench inference`).
//!
//! For at most [`FEW_ROWS`] rows of F32 on an x86-64 CPU with AVX2 and FMA, [`Dense`] streams
//! every weight row once from memory and multiplies it with all the input rows while it is in
//! cache, the rows split between rayon's threads; anything else (prompt chunks, BF16, CUDA, other
//! CPUs) goes through candle's `Linear`. Every output element is one dot product added in the
//! same order whatever the number of rows and wherever its row sits, so a sequence's logits do not
//! depend on what else is in the batch.
//!
//! It multiplies; it must never know which sequences the rows belong to.

use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::{Linear, VarBuilder};

/// The most input rows the streaming kernel takes: measured on the 0.5B shape's layers, it is
/// ahead of candle's matmul up to about 24 rows and level with it at 32.
pub const FEW_ROWS: usize = 24;

/// A linear layer: the weight `[out, in]` as in a Hugging Face checkpoint, and its bias.
#[derive(Debug, Clone)]
pub struct Dense {
    linear: Linear,
}

impl Dense {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Dense {
        Dense {
            linear: Linear::new(weight, bias),
        }
    }

    /// Loads `weight` and `bias` from `vb` (candle's loader).
    pub fn load(input: usize, output: usize, vb: VarBuilder) -> Result<Dense> {
        Ok(Dense {
            linear: candle_nn::linear(input, output, vb)?,
        })
    }

    /// Loads `weight` from `vb` (candle's loader).
    pub fn load_no_bias(input: usize, output: usize, vb: VarBuilder) -> Result<Dense> {
        Ok(Dense {
            linear: candle_nn::linear_no_bias(input, output, vb)?,
        })
    }
}

impl Module for Dense {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match few_rows(xs, self.linear.weight())? {
            Some(product) => match self.linear.bias() {
                Some(bias) => product.broadcast_add(bias),
                None => Ok(product),
            },
            None => self.linear.forward(xs),
        }
    }
}

/// `xs · weightᵀ` through the streaming kernel when the shape, dtype, device and CPU suit it.
fn few_rows(xs: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    let Ok((rows, inner)) = xs.dims2() else {
        return Ok(None);
    };
    let (outputs, weight_inner) = weight.dims2()?;
    if rows == 0 || rows > FEW_ROWS || inner != weight_inner || !kernel::available() {
        return Ok(None);
    }
    if xs.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return Ok(None);
    }
    let (x_storage, x_layout) = xs.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (Storage::Cpu(x_cpu), Storage::Cpu(w_cpu)) = (&*x_storage, &*w_storage) else {
        return Ok(None);
    };
    let (Some((x_start, x_end)), Some((w_start, w_end))) =
        (x_layout.contiguous_offsets(), w_layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    let x = &x_cpu.as_slice::<f32>()?[x_start..x_end];
    let w = &w_cpu.as_slice::<f32>()?[w_start..w_end];
    let mut product = vec![0f32; rows * outputs];
    kernel::multiply(x, w, inner, &mut product);
    Tensor::from_vec(product, (rows, outputs), xs.device()).map(Some)
}

/// Splits `product`'s rows (`rows × outputs`) at the same output columns: one piece of every
/// row per task, each task's columns a multiple of `align`.
fn split_columns(
    product: &mut [f32],
    outputs: usize,
    tasks: usize,
    align: usize,
) -> Vec<(usize, Vec<&mut [f32]>)> {
    let per_task = outputs.div_ceil(tasks).div_ceil(align) * align;
    let starts: Vec<usize> = (0..outputs).step_by(per_task.max(1)).collect();
    let mut pieces: Vec<(usize, Vec<&mut [f32]>)> =
        starts.iter().map(|&start| (start, Vec::new())).collect();
    for row in product.chunks_mut(outputs) {
        let mut rest = row;
        for (index, &start) in starts.iter().enumerate() {
            let end = starts.get(index + 1).copied().unwrap_or(outputs);
            let (piece, tail) = rest.split_at_mut(end - start);
            pieces[index].1.push(piece);
            rest = tail;
        }
    }
    pieces
}

// The one place the service uses `unsafe`: SIMD intrinsics, reached only after the CPU was
// asked for the features they need, with every load's bounds asserted first.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod kernel {
    use rayon::prelude::*;

    /// Weight rows multiplied together: four streams from memory at once.
    const WEIGHT_TILE: usize = 4;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// `product[r][o] = x[r] · w[o]` for `x` `[rows, inner]`, `w` `[outputs, inner]`.
    pub fn multiply(x: &[f32], w: &[f32], inner: usize, product: &mut [f32]) {
        if !available() {
            return;
        }
        let rows = x.len() / inner;
        let outputs = w.len() / inner;
        // A few tasks per thread, so that a slow thread does not hold the step.
        let tasks = (rayon::current_num_threads() * 4)
            .min(outputs.div_ceil(64))
            .max(1);
        let pieces = super::split_columns(product, outputs, tasks, WEIGHT_TILE);
        pieces.into_par_iter().for_each(|(first, mut columns)| {
            let count = columns.first().map_or(0, |c| c.len());
            let w = &w[first * inner..(first + count) * inner];
            debug_assert_eq!(columns.len(), rows);
            // SAFETY: this CPU has AVX2 and FMA (asked above).
            unsafe { avx2::block(x, w, inner, &mut columns) }
        });
    }

    fn store<const P: usize>(
        columns: &mut [&mut [f32]],
        r: usize,
        o: usize,
        tile: usize,
        sums: &[[f32; WEIGHT_TILE]; P],
    ) {
        for (p, sum) in sums.iter().enumerate() {
            columns[r + p][o..o + tile].copy_from_slice(&sum[..tile]);
        }
    }

    /// One kernel per instruction set, the same code with its own vector type: every
    /// `#[target_feature]` function must spell its intrinsics out for them to be inlined.
    // 16 vector registers: 4 weight rows × 3 input rows of sums, 3 inputs, 1 weight. The loops
    // index fixed-size arrays of registers on purpose: they unroll into straight-line code.
    #[allow(clippy::needless_range_loop)]
    mod avx2 {
        use std::arch::x86_64::*;

        use super::{WEIGHT_TILE, store};

        /// One task's columns: every weight row of `w` against every row of `x`, up
        /// to `3` input rows per pass over a tile of weight rows.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn block(x: &[f32], w: &[f32], inner: usize, columns: &mut [&mut [f32]]) {
            let rows = columns.len();
            let width = w.len() / inner;
            let mut o = 0;
            while o < width {
                let tile = WEIGHT_TILE.min(width - o);
                let mut r = 0;
                while r < rows {
                    let pass = (rows - r).min(3);
                    match pass {
                        1 => store(
                            columns,
                            r,
                            o,
                            tile,
                            &tile_dots::<1>(x, w, inner, r, o, tile),
                        ),
                        2 => store(
                            columns,
                            r,
                            o,
                            tile,
                            &tile_dots::<2>(x, w, inner, r, o, tile),
                        ),
                        3 => store(
                            columns,
                            r,
                            o,
                            tile,
                            &tile_dots::<3>(x, w, inner, r, o, tile),
                        ),
                        _ => store(
                            columns,
                            r,
                            o,
                            tile,
                            &tile_dots::<3>(x, w, inner, r, o, tile),
                        ),
                    }
                    r += pass;
                }
                o += tile;
            }
        }

        /// `P` input rows from `r` against the `tile` (at most four) weight rows from
        /// `o`.
        #[target_feature(enable = "avx2,fma")]
        fn tile_dots<const P: usize>(
            x: &[f32],
            w: &[f32],
            inner: usize,
            r: usize,
            o: usize,
            tile: usize,
        ) -> [[f32; WEIGHT_TILE]; P] {
            if tile == WEIGHT_TILE {
                return dots::<WEIGHT_TILE, P>(x, w, inner, r, o);
            }
            let mut sums = [[0f32; WEIGHT_TILE]; P];
            for t in 0..tile {
                let one = dots::<1, P>(x, w, inner, r, o + t);
                for p in 0..P {
                    sums[p][t] = one[p][0];
                }
            }
            sums
        }

        /// The dot products of `T` weight rows from `o` with `P` input rows from
        /// `r`: each is `8` running sums over the inner dimension, added up at the
        /// end, then the tail; the same additions in the same order whatever `T` and
        /// `P` are.
        #[target_feature(enable = "avx2,fma")]
        fn dots<const T: usize, const P: usize>(
            x: &[f32],
            w: &[f32],
            inner: usize,
            r: usize,
            o: usize,
        ) -> [[f32; T]; P] {
            assert!((r + P) * inner <= x.len() && (o + T) * inner <= w.len());
            let xs: [*const f32; P] = std::array::from_fn(|p| x[(r + p) * inner..].as_ptr());
            let ws: [*const f32; T] = std::array::from_fn(|t| w[(o + t) * inner..].as_ptr());
            // The rows after these `T` are the next ones this task reads: asking for
            // them while these are multiplied keeps memory busy (a prefetch never
            // faults, so running past the end of `w` is harmless; `wrapping_add` keeps
            // the pointer arithmetic defined).
            let ahead = ws[T - 1].wrapping_add(inner);
            let whole = inner / 8 * 8;
            let mut acc: [[__m256; T]; P] = [[_mm256_setzero_ps(); T]; P];
            let mut i = 0;
            while i < whole {
                for t in 0..T {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(t * inner + i).cast::<i8>());
                }
                // SAFETY: `i + 8 <= inner`, so every load is within its row
                // (asserted above).
                unsafe {
                    let mut inputs: [__m256; P] = [_mm256_setzero_ps(); P];
                    for p in 0..P {
                        inputs[p] = _mm256_loadu_ps(xs[p].add(i));
                    }
                    for t in 0..T {
                        let weights = _mm256_loadu_ps(ws[t].add(i));
                        for p in 0..P {
                            acc[p][t] = _mm256_fmadd_ps(weights, inputs[p], acc[p][t]);
                        }
                    }
                }
                i += 8;
            }
            let mut sums = [[0f32; T]; P];
            for p in 0..P {
                for t in 0..T {
                    let mut sum = super::horizontal_sum(acc[p][t]);
                    for j in whole..inner {
                        sum = w[(o + t) * inner + j].mul_add(x[(r + p) * inner + j], sum);
                    }
                    sums[p][t] = sum;
                }
            }
            sums
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
        use std::arch::x86_64::*;
        let low = _mm256_castps256_ps128(v);
        let high = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(low, high);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub fn available() -> bool {
        false
    }

    pub fn multiply(_x: &[f32], _w: &[f32], _inner: usize, _product: &mut [f32]) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // candle's randn has no seed on CPU; a small LCG keeps the test reproducible.
        let mut state = seed;
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
    }

    /// The largest absolute difference between two F32 tensors of one shape.
    pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference")
    }

    /// Odd sizes: an inner dimension with a tail past the vector lanes, outputs not a multiple
    /// of the weight tile, an odd number of rows, and a bias.
    #[test]
    fn few_rows_match_candles_matmul() {
        for (rows, inner, outputs) in [(1, 64, 40), (3, 37, 13), (8, 96, 1000), (16, 200, 7)] {
            let x = random((rows, inner), 1);
            let weight = random((outputs, inner), 2);
            let bias = random((1, outputs), 3).squeeze(0).expect("bias");
            let dense = Dense::new(weight.clone(), Some(bias.clone()));
            let ours = dense.forward(&x).expect("dense");
            let candle = Linear::new(weight, Some(bias)).forward(&x).expect("linear");
            assert_eq!(ours.dims(), candle.dims());
            let difference = max_difference(&ours, &candle);
            assert!(difference < 1e-4, "{rows}x{inner}x{outputs}: {difference}");
        }
    }

    /// The property batching needs: a row's output is bit-identical alone and among others.
    #[test]
    fn a_rows_output_is_the_same_alone_and_in_a_batch() {
        if !kernel::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI's CPU must have AVX2 and FMA to test the kernel"
            );
            eprintln!("skipped: this CPU has no AVX2/FMA, candle's matmul runs instead");
            return;
        }
        let (inner, outputs) = (136, 301);
        let weight = random((outputs, inner), 4);
        let dense = Dense::new(weight, None);
        let batch = random((FEW_ROWS, inner), 5);
        let together: Vec<Vec<f32>> = dense
            .forward(&batch)
            .and_then(|t| t.to_vec2())
            .expect("batch");
        for row in [0, 5, FEW_ROWS - 1] {
            let alone = batch.narrow(0, row, 1).expect("row");
            let alone: Vec<Vec<f32>> = dense
                .forward(&alone)
                .and_then(|t| t.to_vec2())
                .expect("alone");
            assert_eq!(alone[0], together[row], "row {row}");
        }
    }

    #[test]
    fn more_rows_or_other_dtypes_go_through_candle() {
        let weight = random((8, 16), 6);
        let dense = Dense::new(weight.clone(), None);
        let many = random((FEW_ROWS + 1, 16), 7);
        assert!(few_rows(&many, &weight).expect("checked").is_none());
        let half = random((2, 16), 8).to_dtype(DType::BF16).expect("bf16");
        let half_weight = weight.to_dtype(DType::BF16).expect("bf16");
        assert!(few_rows(&half, &half_weight).expect("checked").is_none());
        let product = Dense::new(half_weight, None)
            .forward(&half)
            .expect("bf16 product");
        assert_eq!(product.dims(), &[2, 8]);
        assert!(dense.forward(&many).is_ok());
    }

    #[test]
    fn columns_split_at_the_same_places_in_every_row() {
        let mut product: Vec<f32> = (0..30).map(|v| v as f32).collect();
        let pieces = split_columns(&mut product, 10, 3, 4);
        let starts: Vec<usize> = pieces.iter().map(|(start, _)| *start).collect();
        assert_eq!(starts, vec![0, 4, 8]);
        assert_eq!(pieces[2].1.len(), 3);
        assert_eq!(pieces[2].1[1], &[18.0, 19.0]);
    }
}

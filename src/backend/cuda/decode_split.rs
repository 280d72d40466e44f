//! The split-KV decode attention (kernels/decode_attention_split.cu, `CADA_DECODE_ATTENTION=
//! split_kv`): its launch plan and its two launches. The partials live in a grow-only buffer
//! cached in `Cuda` (`decode_partials`), which a CUDA graph that captured them takes along
//! (recording.rs), like the bf16 GEMM scratch.

use super::attention::grid_3d;
use super::decode::CacheRef;
use super::kernels::{self, defines, DecodeDims, DecodeSplit};
use super::{Cuda, CudaBuf};
use crate::backend::DecodeShape;
use anyhow::{anyhow, Result};
use cudarc::driver::CudaSlice;

/// Query heads one block serves (`DEC_SPLIT_GROUP`).
const GROUP: usize = defines::DEC_SPLIT_GROUP as usize;
/// Blocks per streaming multiprocessor the plan aims at: 4 blocks of 4 warps keep 16 warps of
/// loads in flight on each SM (a guess, like the next one, until `cada bench kernels` has
/// timed plans on a GPU).
const BLOCKS_PER_SM: usize = 4;
/// The fewest keys a split takes: one 32-key chunk for each of the block's 4 warps.
const MIN_KEYS_PER_SPLIT: usize = 32 * defines::DEC_WARPS as usize;

/// How the keys and query heads of a decode step are divided among blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    /// key ranges per sequence (the grid's z)
    pub splits: usize,
    /// keys per range, a multiple of 32; `splits · keys_per_split ≥ capacity`
    pub keys_per_split: usize,
    /// blocks per kv head: ⌈GQA group / 8⌉
    pub head_tiles: usize,
}

/// The plan for `s` on a GPU with `sm_count` SMs: enough key ranges that the grid has about
/// `BLOCKS_PER_SM` blocks per SM, none shorter than `MIN_KEYS_PER_SPLIT`. It depends on the
/// capacity, not on the positions, so a step recorded as a CUDA graph replays with the same
/// plan as the cache fills: a range past a sequence's length returns at once.
pub fn split_kv_plan(s: DecodeShape, sm_count: usize) -> SplitPlan {
    let group = (s.n_heads / s.n_kv_heads.max(1)).max(1);
    let head_tiles = group.div_ceil(GROUP);
    let blocks = (s.n_kv_heads * head_tiles * s.batch).max(1);
    let most = (s.capacity / MIN_KEYS_PER_SPLIT).max(1);
    let splits = (BLOCKS_PER_SM * sm_count.max(1))
        .div_ceil(blocks)
        .clamp(1, most);
    let keys_per_split = s.capacity.div_ceil(splits).next_multiple_of(32).max(32);
    SplitPlan {
        splits: s.capacity.div_ceil(keys_per_split).max(1),
        keys_per_split,
        head_tiles,
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("cuda backend: split-KV decode: {what} {v} exceeds i32"))
}

impl Cuda {
    /// `decode_attention` by the split-KV kernels, into `out` (and its bf16 copy in the bf16
    /// GEMM mode). The caller has checked the buffers; `k_cache`/`v_cache` are both f32 or
    /// both bf16.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_attention_split_kv(
        &self,
        out: &mut CudaBuf,
        q: &CudaSlice<f32>,
        cache: CacheRef<'_>,
        positions: &CudaSlice<u32>,
        s: DecodeShape,
        dims: &DecodeDims,
        scale: f32,
    ) -> Result<()> {
        let plan = split_kv_plan(s, self.sm_count);
        let sp = DecodeSplit {
            splits: i32_of(plan.splits, "splits")?,
            keys_per_split: i32_of(plan.keys_per_split, "keys per split")?,
            head_tiles: i32_of(plan.head_tiles, "head tiles")?,
        };
        let slots = s.batch * s.n_heads * plan.splits;
        let len = slots * (2 + s.head_dim);
        let block = 32 * defines::DEC_WARPS as u32;
        let partials_cfg = grid_3d(s.n_kv_heads * plan.head_tiles, s.batch, plan.splits, block)?;
        let merge_cfg = grid_3d(s.n_heads, s.batch, 1, block)?;
        // held across both launches: one host thread's partials are not another's
        let mut slot = self
            .decode_partials
            .lock()
            .map_err(|_| anyhow!("cuda backend: decode partials lock poisoned"))?;
        let partials = self.grow_scratch(&mut slot, len, "split-KV decode partials")?;
        match cache {
            CacheRef::F32(kc, vc) => kernels::decode_attention_split_partials(
                self,
                partials_cfg,
                partials,
                q,
                kc,
                vc,
                positions,
                dims,
                &sp,
                &scale,
            )?,
            CacheRef::Bf16(kc, vc) => kernels::decode_attention_split_partials_bf16_kv(
                self,
                partials_cfg,
                partials,
                q,
                kc,
                vc,
                positions,
                dims,
                &sp,
                &scale,
            )?,
        }
        let partials = &*partials;
        let written = s.batch * s.n_heads * s.head_dim;
        self.write_with_bf16_copy(out, written, |out, copy| match copy {
            None => kernels::decode_attention_merge_splits(
                self, merge_cfg, out, partials, positions, dims, &sp,
            ),
            Some(c) => kernels::decode_attention_merge_splits_with_bf16(
                self, merge_cfg, out, c, partials, positions, dims, &sp,
            ),
        })
    }

    /// The partials buffer, for a recording to keep alive (recording.rs).
    pub(super) fn take_decode_partials(&self) -> Result<Option<CudaSlice<f32>>> {
        Ok(self
            .decode_partials
            .lock()
            .map_err(|_| anyhow!("cuda backend: decode partials lock poisoned"))?
            .take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize, capacity: usize, n_heads: usize, n_kv_heads: usize) -> DecodeShape {
        DecodeShape {
            batch,
            capacity,
            n_heads,
            n_kv_heads,
            head_dim: 64,
        }
    }

    /// Every plan covers the capacity with whole 32-key chunks, in no more ranges than it
    /// needs, none shorter than 128 keys unless the whole capacity is.
    #[test]
    fn split_plans_cover_the_capacity() {
        for batch in [1, 2, 7, 64, 300] {
            for capacity in [0, 1, 31, 32, 33, 127, 128, 129, 384, 1000, 4096, 100_000] {
                for (h, kv) in [(9, 3), (14, 2), (32, 32), (10, 1), (16, 1), (1, 1)] {
                    for sms in [1, 78, 132] {
                        let p = split_kv_plan(shape(batch, capacity, h, kv), sms);
                        let what = format!("{batch} × {capacity}, {h}/{kv}, {sms} SMs: {p:?}");
                        assert!(
                            p.keys_per_split.is_multiple_of(32) && p.keys_per_split >= 32,
                            "{what}"
                        );
                        assert!(p.splits * p.keys_per_split >= capacity, "{what}");
                        assert!(
                            (p.splits - 1) * p.keys_per_split < capacity.max(1),
                            "{what}"
                        );
                        assert!(p.splits == 1 || p.keys_per_split >= 128, "{what}");
                        assert_eq!(p.head_tiles, (h / kv).div_ceil(8), "{what}");
                    }
                }
            }
        }
    }

    /// The plans the engine's own shapes get on a 132-SM H100.
    #[test]
    fn split_plans_for_rollouts_and_generate() {
        // SmolLM2-135M rollouts: batch 64, 128 + 256 positions, 9/3 heads: 192 blocks → 3 ranges
        let p = split_kv_plan(shape(64, 384, 9, 3), 132);
        assert_eq!(
            p,
            SplitPlan {
                splits: 3,
                keys_per_split: 128,
                head_tiles: 1
            }
        );
        // `cada generate` at batch 1 with 2048 positions: 3 blocks alone, 16 ranges of 128
        let p = split_kv_plan(shape(1, 2048, 9, 3), 132);
        assert_eq!((p.splits, p.keys_per_split), (16, 128));
        // a large batch already fills the GPU: one range
        let p = split_kv_plan(shape(512, 384, 14, 2), 132);
        assert_eq!(p.splits, 1);
    }
}

//! Launchers for kernels/decode_attention.cu: the KV-cache writes (alone or fused with the
//! decode step's RoPE) and the single-token decode attention, over an f32 cache or one kept in
//! bf16 (`Backend::keep_as_kv_cache` with `CADA_KV_CACHE=bf16`); `CADA_DECODE_ATTENTION=
//! split_kv` hands the attention to decode_split.rs.

use super::attention::{check_heads, grid_3d};
use super::dense::rope_dims;
use super::kernels::{self, defines, DecodeDims, RopeDims};
use super::{dim_i32, need, need_ids, Cuda, CudaBuf, DecodeAttentionKernel};
use crate::backend::{DecodeShape, Rope};
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

const DEC_WARPS: u32 = defines::DEC_WARPS as u32;

fn decode_dims(s: DecodeShape) -> Result<DecodeDims> {
    Ok(DecodeDims {
        batch: dim_i32(s.batch, "batch")?,
        capacity: dim_i32(s.capacity, "capacity")?,
        n_heads: dim_i32(s.n_heads, "n_heads")?,
        n_kv_heads: dim_i32(s.n_kv_heads, "n_kv_heads")?,
        head_dim: dim_i32(s.head_dim, "head_dim")?,
    })
}

/// The cache's two buffers to write: both f32, or both kept in bf16.
enum CacheMut<'a> {
    F32(&'a mut CudaSlice<f32>, &'a mut CudaSlice<f32>),
    Bf16(&'a mut CudaSlice<bf16>, &'a mut CudaSlice<bf16>),
}

/// The same to read (also by decode_split.rs).
pub(super) enum CacheRef<'a> {
    F32(&'a CudaSlice<f32>, &'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<bf16>, &'a CudaSlice<bf16>),
}

fn mixed(op: &str) -> anyhow::Error {
    anyhow!(
        "{op}: k_cache and v_cache must both be f32 or both bf16 (Backend::keep_as_kv_cache \
         narrowed only one)"
    )
}

/// `k`, `v` as a cache of `len` values each, checked.
fn cache_mut<'a>(
    op: &str,
    k: &'a mut CudaBuf,
    v: &'a mut CudaBuf,
    len: usize,
) -> Result<CacheMut<'a>> {
    match (k.is_narrowed(), v.is_narrowed()) {
        (false, false) => {
            let (k, v): (&mut CudaSlice<f32>, &mut CudaSlice<f32>) = (k, v);
            need(k, len, "k_cache")?;
            need(v, len, "v_cache")?;
            Ok(CacheMut::F32(k, v))
        }
        (true, true) => {
            let lost = || anyhow!("{op}: a bf16 KV cache lost its values");
            let k = k.narrowed_mut().ok_or_else(lost)?;
            let v = v.narrowed_mut().ok_or_else(lost)?;
            need(k, len, "k_cache")?;
            need(v, len, "v_cache")?;
            Ok(CacheMut::Bf16(k, v))
        }
        _ => Err(mixed(op)),
    }
}

fn cache_ref<'a>(op: &str, k: &'a CudaBuf, v: &'a CudaBuf, len: usize) -> Result<CacheRef<'a>> {
    match (k.is_narrowed(), v.is_narrowed()) {
        (false, false) => {
            need(k, len, "k_cache")?;
            need(v, len, "v_cache")?;
            Ok(CacheRef::F32(k, v))
        }
        (true, true) => {
            let k = super::backend_impl::narrowed_copy(k, op, "k_cache")?;
            let v = super::backend_impl::narrowed_copy(v, op, "v_cache")?;
            need(k, len, "k_cache")?;
            need(v, len, "v_cache")?;
            Ok(CacheRef::Bf16(k, v))
        }
        _ => Err(mixed(op)),
    }
}

/// The checks both RoPE + cache-write launchers share (positions, the [`Rope`]), and their
/// launch size: `Some((pairs, rope dims, dims))`, `None` when there is nothing to do.
fn rope_cache_launch(
    op: &str,
    positions: &CudaSlice<u32>,
    rope: &Rope<CudaBuf>,
    s: DecodeShape,
) -> Result<Option<(usize, RopeDims, DecodeDims)>> {
    need_ids(positions, s.batch, "positions")?;
    let rope_dims = rope_dims(op, rope, s.head_dim)?;
    let pairs = s.batch * (s.n_heads + s.n_kv_heads) * (s.head_dim / 2);
    if pairs == 0 {
        return Ok(None);
    }
    Ok(Some((pairs, rope_dims, decode_dims(s)?)))
}

impl Cuda {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn kv_cache_write_impl(
        &self,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        positions: &CudaSlice<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        let kvd = s.n_kv_heads * s.head_dim;
        let cache = cache_mut(
            "kv_cache_write",
            k_cache,
            v_cache,
            s.batch * s.capacity * kvd,
        )?;
        need(k, s.batch * kvd, "k")?;
        need(v, s.batch * kvd, "v")?;
        need_ids(positions, s.batch, "positions")?;
        if s.batch * kvd == 0 {
            return Ok(());
        }
        let dims = decode_dims(s)?;
        let cfg = super::grid_1d(s.batch * kvd);
        match cache {
            CacheMut::F32(kc, vc) => {
                kernels::kv_cache_write(self, cfg, kc, vc, k, v, positions, &dims)
            }
            CacheMut::Bf16(kc, vc) => {
                kernels::kv_cache_write_bf16_kv(self, cfg, kc, vc, k, v, positions, &dims)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_rope_cache_write_impl(
        &self,
        q: &mut CudaSlice<f32>,
        k: &mut CudaSlice<f32>,
        v: &CudaSlice<f32>,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        s: DecodeShape,
    ) -> Result<()> {
        let op = "decode_rope_cache_write";
        let kvd = s.n_kv_heads * s.head_dim;
        let cache = cache_mut(op, k_cache, v_cache, s.batch * s.capacity * kvd)?;
        need(q, s.batch * s.n_heads * s.head_dim, "q")?;
        need(k, s.batch * kvd, "k")?;
        need(v, s.batch * kvd, "v")?;
        let Some((pairs, r, dims)) = rope_cache_launch(op, positions, rope, s)? else {
            return Ok(());
        };
        let cfg = super::grid_1d(pairs);
        match cache {
            CacheMut::F32(kc, vc) => kernels::decode_rope_cache_write(
                self,
                cfg,
                q,
                k,
                kc,
                vc,
                v,
                positions,
                &rope.inv_freq,
                &r,
                &dims,
            ),
            CacheMut::Bf16(kc, vc) => kernels::decode_rope_cache_write_bf16_kv(
                self,
                cfg,
                q,
                k,
                kc,
                vc,
                v,
                positions,
                &rope.inv_freq,
                &r,
                &dims,
            ),
        }
    }

    /// The same from the stacked q/k/v projection's output `qkv [batch, qd + 2·kvd]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_rope_cache_write_stacked_impl(
        &self,
        q: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        s: DecodeShape,
    ) -> Result<()> {
        let op = "decode_rope_cache_write_stacked";
        let (qd, kvd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let cache = cache_mut(op, k_cache, v_cache, s.batch * s.capacity * kvd)?;
        need(q, s.batch * qd, "q")?;
        need(qkv, s.batch * (qd + 2 * kvd), "qkv")?;
        let Some((pairs, r, dims)) = rope_cache_launch(op, positions, rope, s)? else {
            return Ok(());
        };
        let cfg = super::grid_1d(pairs);
        match cache {
            CacheMut::F32(kc, vc) => kernels::decode_rope_cache_write_stacked(
                self,
                cfg,
                q,
                kc,
                vc,
                qkv,
                positions,
                &rope.inv_freq,
                &r,
                &dims,
            ),
            CacheMut::Bf16(kc, vc) => kernels::decode_rope_cache_write_stacked_bf16_kv(
                self,
                cfg,
                q,
                kc,
                vc,
                qkv,
                positions,
                &rope.inv_freq,
                &r,
                &dims,
            ),
        }
    }

    /// Qwen3's: each head of q and k RMSNorm-ed before RoPE. One block per head row.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_qk_norm_rope_cache_write_stacked_impl(
        &self,
        q: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        q_norm: &CudaSlice<f32>,
        k_norm: &CudaSlice<f32>,
        eps: f32,
        s: DecodeShape,
    ) -> Result<()> {
        let op = "decode_qk_norm_rope_cache_write_stacked";
        let (qd, kvd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let cache = cache_mut(op, k_cache, v_cache, s.batch * s.capacity * kvd)?;
        need(q, s.batch * qd, "q")?;
        need(qkv, s.batch * (qd + 2 * kvd), "qkv")?;
        need(q_norm, s.head_dim, "q_norm")?;
        need(k_norm, s.head_dim, "k_norm")?;
        let Some((_, r, dims)) = rope_cache_launch(op, positions, rope, s)? else {
            return Ok(());
        };
        ensure!(
            s.batch <= 65535,
            "{op}: {} sequences exceed one launch's 65535 rows",
            s.batch
        );
        // the block size of head_rmsnorm_forward's launch, so the norm's bits are its
        let cfg = LaunchConfig {
            grid_dim: ((s.n_heads + s.n_kv_heads) as u32, s.batch as u32, 1),
            block_dim: (super::row_threads(s.head_dim), 1, 1),
            shared_mem_bytes: 0,
        };
        let inv_freq = &rope.inv_freq;
        match cache {
            CacheMut::F32(kc, vc) => kernels::decode_qk_norm_rope_cache_write_stacked(
                self, cfg, q, kc, vc, qkv, q_norm, k_norm, &eps, positions, inv_freq, &r, &dims,
            ),
            CacheMut::Bf16(kc, vc) => kernels::decode_qk_norm_rope_cache_write_stacked_bf16_kv(
                self, cfg, q, kc, vc, qkv, q_norm, k_norm, &eps, positions, inv_freq, &r, &dims,
            ),
        }
    }

    pub(super) fn decode_attention_impl(
        &self,
        out: &mut CudaBuf,
        q: &CudaSlice<f32>,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        positions: &CudaSlice<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        let op = "decode_attention";
        check_heads(op, s.n_heads, s.n_kv_heads, s.head_dim)?;
        let kvd = s.n_kv_heads * s.head_dim;
        let cache = cache_ref(op, k_cache, v_cache, s.batch * s.capacity * kvd)?;
        need(out, s.batch * s.n_heads * s.head_dim, "out")?;
        need(q, s.batch * s.n_heads * s.head_dim, "q")?;
        need_ids(positions, s.batch, "positions")?;
        let kernel = self.decode_attention_kernel();
        if matches!(cache, CacheRef::Bf16(..)) && !kernel.reads_bf16_cache() {
            bail!(
                "{op}: CADA_DECODE_ATTENTION=warp_per_key reads an f32 KV cache only; with \
                 CADA_KV_CACHE=bf16 use lane_per_key (the default) or split_kv"
            );
        }
        if s.batch == 0 {
            return Ok(());
        }
        let dims = decode_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        if kernel == DecodeAttentionKernel::SplitKv {
            return self.decode_attention_split_kv(out, q, cache, positions, s, &dims, scale);
        }
        let lane_per_key = kernel == DecodeAttentionKernel::LanePerKey;
        let cfg = grid_3d(s.n_heads, s.batch, 1, 32 * DEC_WARPS)?;
        // in bf16 mode also the output's bf16 copy, which o_proj then reads unconverted
        let written = s.batch * s.n_heads * s.head_dim;
        self.write_with_bf16_copy(out, written, |out, copy| match (cache, copy) {
            (CacheRef::F32(kc, vc), None) if lane_per_key => {
                kernels::decode_attention_lane_per_key(
                    self, cfg, out, q, kc, vc, positions, &dims, &scale,
                )
            }
            (CacheRef::F32(kc, vc), Some(c)) if lane_per_key => {
                kernels::decode_attention_lane_per_key_with_bf16(
                    self, cfg, out, c, q, kc, vc, positions, &dims, &scale,
                )
            }
            (CacheRef::F32(kc, vc), None) => {
                kernels::decode_attention(self, cfg, out, q, kc, vc, positions, &dims, &scale)
            }
            (CacheRef::F32(kc, vc), Some(c)) => kernels::decode_attention_with_bf16(
                self, cfg, out, c, q, kc, vc, positions, &dims, &scale,
            ),
            (CacheRef::Bf16(kc, vc), None) => kernels::decode_attention_lane_per_key_bf16_kv(
                self, cfg, out, q, kc, vc, positions, &dims, &scale,
            ),
            (CacheRef::Bf16(kc, vc), Some(c)) => {
                kernels::decode_attention_lane_per_key_bf16_kv_with_bf16(
                    self, cfg, out, c, q, kc, vc, positions, &dims, &scale,
                )
            }
        })
    }
}

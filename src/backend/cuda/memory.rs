//! The memory ops of `impl Backend for Cuda` (backend_impl.rs delegates): uploads, downloads,
//! allocations, device-to-device copies (rounding into a buffer kept in bf16, such as a bf16 KV
//! cache) and the KV cache's narrowing hint.

use super::backend_impl::f32_values;
use super::{Cuda, CudaBuf, KvCacheType};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

impl Cuda {
    /// A grow-only scratch buffer cached in `Cuda` (the bf16 GEMM operands, the split-KV decode
    /// partials): at least `len` elements, reallocated only when too small, and never inside a
    /// CUDA graph capture (a graph keeps the buffer it captured: recording.rs takes it along).
    pub(super) fn grow_scratch<'s, T: DeviceRepr + ValidAsZeroBits>(
        &self,
        slot: &'s mut Option<CudaSlice<T>>,
        len: usize,
        what: &str,
    ) -> Result<&'s mut CudaSlice<T>> {
        if slot.as_ref().is_none_or(|s| s.len() < len) {
            self.not_capturing(&format!("growing the {what}"))?;
            *slot = None; // freed (stream-ordered) before the larger one is taken from the pool
            let grown = self
                .stream
                .alloc_zeros::<T>(len)
                .with_context(|| format!("cuda backend: allocating {len} values of {what}"))?;
            *slot = Some(grown);
        }
        Ok(slot.as_mut().expect("allocated above"))
    }

    pub(super) fn upload_impl(&self, data: &[f32]) -> Result<CudaBuf> {
        self.not_capturing("upload")?;
        if data.is_empty() {
            return Ok(CudaBuf::new(self.empty()?));
        }
        let data = self
            .stream
            .clone_htod(data)
            .context("cuda backend: upload")?;
        Ok(CudaBuf::new(data))
    }

    pub(super) fn download_impl(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.not_capturing("download")?;
        ensure!(
            !buf.is_narrowed(),
            "cuda backend: download of a buffer kept only in bf16 (a Backend::keep_as_* hint)"
        );
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        let host = self
            .stream
            .clone_dtoh(buf)
            .context("cuda backend: download")?;
        self.synchronize()?;
        Ok(host)
    }

    pub(super) fn zeros_impl(&self, len: usize) -> Result<CudaBuf> {
        self.not_capturing("zeros")?;
        if len == 0 {
            return Ok(CudaBuf::new(self.empty()?));
        }
        let data = self
            .stream
            .alloc_zeros::<f32>(len)
            .with_context(|| format!("cuda backend: allocating {len} floats"))?;
        Ok(CudaBuf::new(data))
    }

    pub(super) fn upload_ids_impl(&self, ids: &[u32]) -> Result<CudaSlice<u32>> {
        self.not_capturing("upload_ids")?;
        if ids.is_empty() {
            return self.empty();
        }
        self.stream
            .clone_htod(ids)
            .context("cuda backend: upload ids")
    }

    pub(super) fn write_ids_impl(&self, dst: &mut CudaSlice<u32>, ids: &[u32]) -> Result<()> {
        self.not_capturing("write_ids")?;
        ensure!(
            dst.len() == ids.len(),
            "cuda backend: write_ids: {} ids into a buffer of {}",
            ids.len(),
            dst.len()
        );
        if ids.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(ids, dst)
            .context("cuda backend: write ids")
    }

    pub(super) fn keep_as_kv_cache_impl(&self, buf: &mut CudaBuf) -> Result<()> {
        if self.kv_cache_type() != KvCacheType::Bf16 || buf.is_narrowed() || buf.is_empty() {
            return Ok(());
        }
        // refused here, where the decoder makes its cache, not at the first step's attention
        ensure!(
            self.decode_attention_kernel().reads_bf16_cache(),
            "cuda backend: CADA_KV_CACHE=bf16 needs the lane-per-key or split-KV decode \
             attention; CADA_DECODE_ATTENTION=warp_per_key reads an f32 cache only"
        );
        self.narrow_now(buf, "kv cache")
    }

    pub(super) fn copy_impl(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        ensure!(
            dst.logical_len() >= dst_off + len && src.logical_len() >= src_off + len,
            "cuda backend: copy of {len} values from {src_off} of {} into {dst_off} of {}",
            src.logical_len(),
            dst.logical_len()
        );
        if len == 0 {
            return Ok(());
        }
        if dst.is_narrowed() {
            // into a bf16 KV cache (the prefill's keys and values): rounded as the kernels do
            f32_values(&[src], "copy into a bf16 buffer")?;
            let dst16 = dst
                .narrowed_mut()
                .ok_or_else(|| anyhow!("copy: a narrowed buffer lost its bf16 values"))?;
            return self.convert_bf16(
                &mut dst16.slice_mut(dst_off..dst_off + len),
                &src.slice(src_off..src_off + len),
                len,
                "copy into a bf16 buffer",
            );
        }
        f32_values(&[src], "copy")?;
        self.stream
            .memcpy_dtod(
                &src.slice(src_off..src_off + len),
                &mut dst.slice_mut(dst_off..dst_off + len),
            )
            .context("cuda backend: copy")
    }
}

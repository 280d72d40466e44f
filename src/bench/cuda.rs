//! The CUDA backend as a bench device: CUDA events around each repetition, a 512 MiB
//! overwrite between repetitions (ten times the H100/H200 L2), the copy roofline as a 1 GiB
//! device-to-device copy, the matrix roofline as an 8192³ bf16 cuBLAS GEMM, peak memory from
//! the stream-ordered pool's high-water mark.

use super::BenchDevice;
use crate::backend::cuda::{
    AttentionKernel, Cuda, DecodeAttentionKernel, GemmPrecision, KvCacheType,
};
use crate::backend::Backend;
use anyhow::{bail, Result};
use std::cell::Cell;

thread_local! {
    /// pool bytes in use when the current memory window opened
    static WINDOW_BASE: Cell<u64> = const { Cell::new(0) };
}

/// The decode-attention variant suffix for a bf16 KV cache.
const BF16_KV: &str = "_bf16_kv";

impl BenchDevice for Cuda {
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.time_enqueued_ms(f)
    }

    fn copy_roofline(&self) -> Result<(f64, String)> {
        let n = 256 << 20; // 1 GiB of f32
        let mut src = self.zeros(n)?;
        self.fill(&mut src, 1.5)?; // never time on zeros
        let mut dst = self.zeros(n)?;
        for _ in 0..2 {
            self.copy(&mut dst, 0, &src, 0, n)?;
        }
        let mut times = Vec::new();
        for _ in 0..10 {
            times.push(self.time_enqueued_ms(&mut || self.copy(&mut dst, 0, &src, 0, n))?);
        }
        let ms = super::report::median(&times);
        Ok((
            (8 * n) as f64 / (ms / 1e3) / 1e9,
            "1 GiB cuMemcpyDtoD, median of 10".into(),
        ))
    }

    fn gemm_roofline(&self) -> Result<(f64, String)> {
        Ok((
            self.bf16_gemm_tflops(8192, 10)?,
            "8192³ bf16 cuBLAS GEMM (f32 accumulate), median of 10".into(),
        ))
    }

    fn cache_flush_bytes(&self) -> usize {
        512 << 20
    }

    fn memory_window_start(&self) -> Result<bool> {
        self.reset_pool_high_water()?;
        let used = self.pool_used_bytes()?;
        WINDOW_BASE.with(|b| b.set(used));
        Ok(true)
    }

    fn memory_window_peak(&self) -> Result<Option<u64>> {
        self.synchronize()?;
        let high = self.pool_high_water_bytes()?;
        Ok(Some(high.saturating_sub(WINDOW_BASE.with(Cell::get))))
    }

    fn driver(&self) -> String {
        self.driver_version()
    }

    /// wgmma only where it runs (compute capability 9.0).
    fn attention_variants(&self) -> Vec<String> {
        let mut v = vec!["simt".into(), "mma".into()];
        if self.supports_wgmma() {
            v.push("wgmma".into());
        }
        v
    }

    fn select_attention(&mut self, variant: &str) -> Result<()> {
        let k = match variant {
            "simt" => AttentionKernel::Simt,
            "mma" => AttentionKernel::Mma,
            "wgmma" => AttentionKernel::Wgmma,
            other => bail!("cuda backend: no attention variant {other:?} (simt, mma, wgmma)"),
        };
        self.set_attention_kernel(k);
        Ok(())
    }

    /// The three kernels over an f32 cache, then the two that read a bf16 cache over one
    /// (`lane_per_key_bf16_kv`, `split_kv_bf16_kv`).
    fn decode_attention_variants(&self) -> Vec<String> {
        let all = [
            DecodeAttentionKernel::LanePerKey,
            DecodeAttentionKernel::WarpPerKey,
            DecodeAttentionKernel::SplitKv,
        ];
        let mut v: Vec<String> = all.map(|k| k.label().to_string()).into();
        v.extend(
            all.iter()
                .filter(|k| k.reads_bf16_cache())
                .map(|k| format!("{}{BF16_KV}", k.label())),
        );
        v
    }

    fn select_decode_attention(&mut self, variant: &str) -> Result<()> {
        let (kernel, cache) = match variant.strip_suffix(BF16_KV) {
            Some(k) => (k, KvCacheType::Bf16),
            None => (variant, KvCacheType::F32),
        };
        self.set_decode_attention_kernel(DecodeAttentionKernel::parse(Some(kernel))?);
        self.set_kv_cache_type(cache);
        Ok(())
    }

    fn kv_cache_value_bytes(&self) -> usize {
        match self.kv_cache_type() {
            KvCacheType::F32 => 4,
            KvCacheType::Bf16 => 2,
        }
    }

    fn gemm_variants(&self) -> Vec<String> {
        vec!["f32".into(), "tf32".into(), "bf16".into()]
    }

    fn select_gemm(&mut self, variant: &str) -> Result<()> {
        let p = match variant {
            "f32" => GemmPrecision::F32,
            "tf32" => GemmPrecision::Tf32,
            "bf16" => GemmPrecision::Bf16,
            other => bail!("cuda backend: no GEMM variant {other:?} (f32, tf32, bf16)"),
        };
        self.set_gemm_precision(p)
    }

    fn variant(&self) -> String {
        "cuda".into()
    }

    fn device_label(&self) -> String {
        format!(
            "cuda ({})",
            self.device_name().unwrap_or_else(|_| "unknown GPU".into())
        )
    }
}

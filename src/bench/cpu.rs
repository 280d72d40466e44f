//! The CPU reference backend as a bench device: wall-clock timing, a 64 MiB cache flush, the
//! rooflines measured with the backend's own copy and GEMM. Peak memory is not measured
//! (the process allocator is not instrumented): records carry `null` there.

use super::BenchDevice;
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use anyhow::Result;
use std::time::Instant;

impl BenchDevice for Cpu {
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    fn copy_roofline(&self) -> Result<(f64, String)> {
        use rayon::prelude::*;
        let n = 16 << 20; // 64 MiB of f32, well past any last-level cache
        let src = vec![1.5f32; n];
        let mut dst = vec![0f32; n];
        let mut best = f64::INFINITY;
        // on every core, as the backend's own ops run (one thread alone reaches ~half of it)
        let piece = n / rayon::current_num_threads().max(1) / 4 + 1;
        for _ in 0..5 {
            let t = Instant::now();
            dst.par_chunks_mut(piece)
                .zip(src.par_chunks(piece))
                .for_each(|(d, s)| d.copy_from_slice(s));
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&dst);
        Ok((
            (8 * n) as f64 / best / 1e9,
            format!(
                "64 MiB f32 copy on {} threads, best of 5",
                rayon::current_num_threads()
            ),
        ))
    }

    fn gemm_roofline(&self) -> Result<(f64, String)> {
        let n = 512;
        let a = self.upload(&vec![0.5f32; n * n])?;
        let b = self.upload(&vec![0.25f32; n * n])?;
        let mut c = self.zeros(n * n)?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            self.linear_forward(&mut c, &a, &b, None, n, n, n)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((
            2.0 * (n as f64).powi(3) / best / 1e12,
            "512³ f32 GEMM (CPU backend), best of 3".into(),
        ))
    }

    fn cache_flush_bytes(&self) -> usize {
        64 << 20
    }

    fn memory_window_start(&self) -> Result<bool> {
        Ok(false)
    }

    fn memory_window_peak(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn driver(&self) -> String {
        "-".into()
    }

    fn attention_variants(&self) -> Vec<String> {
        vec!["cpu".into()]
    }

    fn select_attention(&mut self, variant: &str) -> Result<()> {
        anyhow::ensure!(
            variant == "cpu",
            "cpu backend: no attention variant {variant:?}"
        );
        Ok(())
    }

    fn decode_attention_variants(&self) -> Vec<String> {
        vec!["cpu".into()]
    }

    fn select_decode_attention(&mut self, variant: &str) -> Result<()> {
        anyhow::ensure!(
            variant == "cpu",
            "cpu backend: no decode attention variant {variant:?}"
        );
        Ok(())
    }

    fn gemm_variants(&self) -> Vec<String> {
        vec!["cpu".into()]
    }

    fn select_gemm(&mut self, variant: &str) -> Result<()> {
        anyhow::ensure!(variant == "cpu", "cpu backend: no GEMM variant {variant:?}");
        Ok(())
    }

    fn variant(&self) -> String {
        "cpu".into()
    }

    fn device_label(&self) -> String {
        self.name()
    }
}

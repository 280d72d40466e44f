//! `cada bench`: whole-model timings on the chosen device — forward and forward+backward
//! tokens/s (with the fused head), and batched generation tokens/s. Kernel-level numbers come
//! from criterion (`cargo bench`) on the CPU.

use super::OnDevice;
use crate::backend::Backend;
use crate::model::llama::{shifted_targets, Llama};
use crate::model::load::LoadedModel;
use crate::train::generate::{generate, SamplingConfig};
use anyhow::Result;
use rand::SeedableRng;
use std::time::Instant;

pub struct ModelBench<'a> {
    pub model: &'a LoadedModel,
    pub batch: usize,
    pub seq: usize,
    pub new_tokens: usize,
    pub repeats: usize,
}

#[derive(serde::Serialize)]
pub struct ModelBenchReport {
    pub device: String,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub forward_tokens_per_s: f64,
    pub forward_backward_tokens_per_s: f64,
    /// 6·N·tokens / time for forward+backward (attention FLOPs not counted)
    pub train_tflops: f64,
    pub decode_batch: usize,
    pub decode_tokens_per_s: f64,
    pub decode_batch1_tokens_per_s: f64,
}

impl OnDevice for ModelBench<'_> {
    type Output = ModelBenchReport;
    fn run<B: Backend>(self, be: &B) -> Result<ModelBenchReport> {
        let m = self.model;
        let model = Llama::from_host(be, m.cfg.clone(), &m.params)?;
        let v = m.cfg.vocab_size as u32;
        let ids: Vec<u32> = (0..self.batch * self.seq)
            .map(|i| (i as u32).wrapping_mul(2654435761) % v)
            .collect();
        let targets = be.upload_ids(&shifted_targets(&ids, self.batch, self.seq))?;
        let n = self.batch * self.seq;
        let (mut fwd_t, mut bwd_t) = (Vec::new(), Vec::new());
        for _ in 0..self.repeats.max(1) {
            let t0 = Instant::now();
            let fwd = model.forward(be, &ids, self.batch, self.seq)?;
            let (lp, _, lse) = model.token_logprobs(be, &fwd, &targets, 1.0)?;
            be.download(&lp)?; // waits for the device
            fwd_t.push(t0.elapsed().as_secs_f64());
            let t1 = Instant::now();
            let fwd = model.forward(be, &ids, self.batch, self.seq)?;
            let (_, _, lse2) = model.token_logprobs(be, &fwd, &targets, 1.0)?;
            drop(lse);
            let dlogp = be.upload(&vec![-1.0 / n as f32; n])?;
            let mut grads = model.zeros_like_params(be)?;
            model.logprob_backward(be, &fwd, &targets, &lse2, &dlogp, 1.0, &mut grads)?;
            be.sum_squares(&grads.embed)?;
            bwd_t.push(t1.elapsed().as_secs_f64());
        }
        let decode = |batch: usize| -> Result<f64> {
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|b| ids[b % self.batch * self.seq..][..16.min(self.seq)].to_vec())
                .collect();
            let cfg = SamplingConfig {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: self.new_tokens,
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let t0 = Instant::now();
            // no stop ids: every sequence generates exactly `new_tokens`
            let g = generate(be, &model, &prompts, &cfg, &[], &mut rng, |_, _| {})?;
            let toks: usize = g.tokens.iter().map(|t| t.len()).sum();
            Ok(toks as f64 / t0.elapsed().as_secs_f64())
        };
        let median = crate::bench::report::median;
        let (fwd_s, bwd_s) = (median(&fwd_t), median(&bwd_t));
        Ok(ModelBenchReport {
            device: be.name(),
            params: m.cfg.num_params(),
            batch: self.batch,
            seq: self.seq,
            forward_tokens_per_s: n as f64 / fwd_s,
            forward_backward_tokens_per_s: n as f64 / bwd_s,
            train_tflops: 6.0 * m.cfg.num_params() as f64 * n as f64 / bwd_s / 1e12,
            decode_batch: 8,
            decode_tokens_per_s: decode(8)?,
            decode_batch1_tokens_per_s: decode(1)?,
        })
    }
}

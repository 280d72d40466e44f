//! Criterion benches of the CPU reference on whole-model work: forward, forward+backward
//! (through the fused log-prob head) and one decode step, on a small SmolLM2-shaped model
//! (random weights; 4 layers instead of 30 so a bench run stays short).

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::init::{init_params, tiny_config};
use cada::model::llama::{shifted_targets, Llama};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn model_benches(c: &mut Criterion) {
    let be = Cpu::new();
    // SmolLM2-135M widths (hidden 576, 9/3 heads, head_dim 64, intermediate 1536, vocab 49152), 4 layers
    let mut cfg = tiny_config(49152, 576, 4, 9, 3, 1536, 2048);
    cfg.head_dim = 64;
    let model = Llama::from_host(&be, cfg.clone(), &init_params(&cfg, 0, 0.02)).unwrap();
    let (batch, seq) = (2, 128);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7919 % 49152) as u32)
        .collect();
    let targets = shifted_targets(&ids, batch, seq);
    let mut g = c.benchmark_group("model_smollm2_4layers");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements((batch * seq) as u64));
    g.bench_function("forward_logprob_256tok", |b| {
        b.iter(|| {
            let fwd = model.forward(&be, &ids, batch, seq).unwrap();
            model.token_logprobs(&be, &fwd, &targets, 1.0).unwrap()
        })
    });
    g.bench_function("forward_backward_256tok", |b| {
        b.iter(|| {
            let fwd = model.forward(&be, &ids, batch, seq).unwrap();
            let (_, _, lse) = model.token_logprobs(&be, &fwd, &targets, 1.0).unwrap();
            let mut grads = model.zeros_like_params(&be).unwrap();
            let dlogp = vec![-1.0 / (batch * seq) as f32; batch * seq];
            model
                .logprob_backward(&be, &fwd, &targets, &lse, &dlogp, 1.0, &mut grads)
                .unwrap();
            grads
        })
    });
    let prompts: Vec<Vec<u32>> = (0..8).map(|b| ids[b * 16..b * 16 + 16].to_vec()).collect();
    let mut cache = model.new_kv_cache(&be, 8, 64).unwrap();
    model.prefill(&be, &mut cache, &prompts).unwrap();
    g.throughput(Throughput::Elements(8));
    g.bench_function("decode_step_batch8", |b| {
        let toks = vec![5u32; 8];
        let pos = vec![16u32; 8];
        b.iter(|| {
            be.download(&model.decode_step(&be, &mut cache, &toks, &pos).unwrap())
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, model_benches);
criterion_main!(benches);

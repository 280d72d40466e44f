//! Criterion benches of the CPU reference ops, so CPU regressions show without a GPU.
//! Throughput is reported in elements (tokens or rows) per second; GFLOP/s = FLOPs per element
//! (in each bench's comment) × elements/s.

use cada::backend::cpu::Cpu;
use cada::backend::{AttnShape, Backend, GrpoLossConfig, ImportanceSampling, LossType};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0)
                - 0.5
        })
        .collect()
}

fn ops(c: &mut Criterion) {
    let be = Cpu::new();
    let mut g = c.benchmark_group("cpu_ops");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500));

    // linear 512 × 576 → 1536: 2·576·1536 FLOPs per row
    let (n, k, m) = (512, 576, 1536);
    let (x, w) = (data(n * k, 1), data(m * k, 2));
    let mut out = vec![0.0; n * m];
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("linear_forward_512x576x1536", |b| {
        b.iter(|| be.linear_forward(&mut out, &x, &w, None, n, k, m).unwrap())
    });
    let (mut dx, mut dw) = (vec![0.0; n * k], vec![0.0; m * k]);
    g.bench_function("linear_backward_512x576x1536", |b| {
        b.iter(|| {
            be.linear_backward(Some(&mut dx), &mut dw, None, &out, &x, &w, n, k, m)
                .unwrap()
        })
    });

    // attention, SmolLM2 heads (9/3, hd 64), one sequence of 256
    let s = AttnShape {
        batch: 1,
        seq: 256,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let (q, kk, v) = (data(256 * 576, 3), data(256 * 192, 4), data(256 * 192, 5));
    let (mut o, mut lse) = (vec![0.0; 256 * 576], vec![0.0; 9 * 256]);
    g.throughput(Throughput::Elements(256));
    g.bench_function("attention_forward_T256_9x3_hd64", |b| {
        b.iter(|| {
            be.attention_forward(&mut o, &mut lse, &q, &kk, &v, s)
                .unwrap()
        })
    });
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; 256 * 576],
        vec![0.0; 256 * 192],
        vec![0.0; 256 * 192],
    );
    g.bench_function("attention_backward_T256_9x3_hd64", |b| {
        b.iter(|| {
            be.attention_backward(&mut dq, &mut dk, &mut dv, &o, &q, &kk, &v, &o, &lse, s)
                .unwrap()
        })
    });

    // fused log-prob, 256 tokens × hidden 576 × vocab 49,152: 2·576·49152 FLOPs per token forward
    let (n, d, vocab) = (256, 576, 49152);
    let (h, wv) = (data(n * d, 6), data(vocab * d, 7));
    let t: Vec<u32> = (0..n as u32).map(|i| i * 97 % vocab as u32).collect();
    let (mut lp, mut ent, mut ls) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("fused_logprob_forward_256x576x49152", |b| {
        b.iter(|| {
            be.fused_logprob_forward(&mut lp, &mut ent, &mut ls, &h, &wv, &t, n, d, vocab, 1.0)
                .unwrap()
        })
    });
    let (mut dh, mut dwv) = (vec![0.0; n * d], vec![0.0; vocab * d]);
    let dlp = vec![1.0f32; n];
    g.bench_function("fused_logprob_backward_256x576x49152", |b| {
        b.iter(|| {
            be.fused_logprob_backward(&mut dh, &mut dwv, &dlp, &h, &wv, &t, &ls, n, d, vocab, 1.0)
                .unwrap()
        })
    });

    // sampling, 8 rows × vocab 49,152 (SmolLM2), the rollout's default (T 1, no top-k / top-p)
    // and a truncating one; "peaked" rows have one token 12 above a spread of 6 (~95 % of the
    // mass, like a model's next-token logits), "flat" rows only the spread (the CDF's draw lands
    // deep in the order)
    let (rows, vocab) = (8, 49152);
    let flat: Vec<f32> = data(rows * vocab, 12).iter().map(|x| 6.0 * x).collect();
    let mut peaked = flat.clone();
    for r in 0..rows {
        peaked[r * vocab + (r * 7919) % vocab] += 12.0;
    }
    let uniforms: Vec<f32> = (0..rows).map(|r| (r as f32 + 0.5) / rows as f32).collect();
    g.throughput(Throughput::Elements(rows as u64));
    for (name, logits) in [("peaked", &peaked), ("flat", &flat)] {
        for (cfg, t, top_p, top_k) in [("t1", 1.0, 1.0, 0), ("t08_p09_k50", 0.8, 0.9, 50)] {
            g.bench_function(format!("sample_8x49152_{name}_{cfg}"), |b| {
                b.iter(|| {
                    be.sample(logits, &uniforms, rows, vocab, t, top_p, top_k)
                        .unwrap()
                })
            });
        }
    }

    // GRPO loss, 64 completions × 1,024 tokens
    let (rows, len) = (64, 1024);
    let (lpg, old, refl) = (
        data(rows * len, 8),
        data(rows * len, 9),
        data(rows * len, 10),
    );
    let mask = vec![1.0f32; rows * len];
    let adv = data(rows, 11);
    let cfg = GrpoLossConfig {
        loss_type: LossType::Grpo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.04,
        max_completion_len: len,
        importance_sampling: ImportanceSampling::Token,
        delta: None,
    };
    let mut dl = vec![0.0; rows * len];
    g.throughput(Throughput::Elements((rows * len) as u64));
    g.bench_function("grpo_loss_fwd_bwd_64x1024", |b| {
        b.iter(|| {
            be.grpo_loss_forward(&lpg, &old, &refl, &mask, &adv, rows, len, &cfg)
                .unwrap();
            be.grpo_loss_backward(&mut dl, &lpg, &old, &refl, &mask, &adv, rows, len, &cfg)
                .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);

//! The whole model on the GPU against the CPU reference: per-token log-probs, entropies and
//! every parameter gradient of forward + fused head + backward, and the KV-cache path
//! (prefill, then decode steps of sequences at different lengths). Fresh random weights and
//! tokens every run (the seed is printed); odd lengths that are not tile multiples.
//!
//! Bounds, as in ops_cuda.rs: f32 kernels and f32 GEMMs only reorder sums, so values get 1e-5;
//! gradients, which go through cancellations (softmax, RMSNorm backward) and the embedding's
//! atomics, get 1e-4. Without a GPU every test prints "skipped: no GPU".

#[macro_use]
mod common;

use common::check;

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::config::LlamaConfig;
use cada::model::llama::{shifted_targets, Llama};
use cada::model::weights::Params;
use rand::Rng;
use rand_chacha::ChaCha8Rng as Rand;

/// values (log-probs, logits): f32 reassociation
const VALUE_TOL: f64 = 1e-5;
/// gradients and entropies: cancellation-prone
const GRAD_TOL: f64 = 1e-4;

/// Log-probs, entropies and all gradients of `Σ dlogp · logp` on one backend.
struct Pass {
    logp: Vec<f32>,
    entropy: Vec<f32>,
    grads: Vec<Vec<f32>>,
}

fn run_pass<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    ids: &[u32],
    (batch, seq): (usize, usize),
    dlogp: &[f32],
    temperature: f32,
) -> Pass {
    let model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let targets = be.upload_ids(&shifted_targets(ids, batch, seq)).unwrap();
    let fwd = model.forward(be, ids, batch, seq).unwrap();
    let (lp, ent, lse) = model
        .token_logprobs(be, &fwd, &targets, temperature)
        .unwrap();
    let mut grads = model.zeros_like_params(be).unwrap();
    let d = be.upload(dlogp).unwrap();
    model
        .logprob_backward(be, &fwd, &targets, &lse, &d, temperature, &mut grads)
        .unwrap();
    Pass {
        logp: be.download(&lp).unwrap(),
        entropy: be.download(&ent).unwrap(),
        grads: grads
            .tensors()
            .iter()
            .map(|g| be.download(g).unwrap())
            .collect(),
    }
}

/// Two architectures: the tiny GQA model of the CPU tests (head_dim 8, qkv bias, untied head)
/// and a tied one at head_dim 64 (the SmolLM2/Qwen2.5 head width).
fn configs() -> Vec<LlamaConfig> {
    let a = common::tiny_cfg(97, true, false);
    let mut b = cada::model::init::tiny_config(301, 128, 2, 2, 1, 96, 256);
    b.tie_word_embeddings = true;
    vec![a, b]
}

fn whole_model_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = common::random_params(&cfg, r.gen());
        let (batch, seq) = (3, 37);
        let ids: Vec<u32> = (0..batch * seq)
            .map(|_| r.gen_range(0..cfg.vocab_size as u32))
            .collect();
        let dlogp: Vec<f32> = (0..batch * seq)
            .map(|_| r.gen::<f32>() * 2.0 - 1.0)
            .collect();
        let t = 0.7;
        let g = run_pass(gpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        let c = run_pass(&cpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        println!(
            "{} (hidden {}, head_dim {}, tied {}):",
            cfg.architecture, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings
        );
        check("logp", &g.logp, &c.logp, VALUE_TOL);
        check("entropy", &g.entropy, &c.entropy, GRAD_TOL);
        let names = Params::spec(&cfg)
            .tensors()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>();
        assert_eq!(names.len(), g.grads.len());
        for ((name, gg), cg) in names.iter().zip(&g.grads).zip(&c.grads) {
            check(&format!("d {name}"), gg, cg, GRAD_TOL);
        }
    }
}

fn decode_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = common::random_params(&cfg, r.gen());
        let v = cfg.vocab_size as u32;
        let prompts: Vec<Vec<u32>> = [5usize, 17, 1]
            .iter()
            .map(|&n| (0..n).map(|_| r.gen_range(0..v)).collect())
            .collect();
        let steps: Vec<Vec<u32>> = (0..4)
            .map(|_| (0..prompts.len()).map(|_| r.gen_range(0..v)).collect())
            .collect();
        let g = decode_logits(gpu, &cfg, &params, &prompts, &steps);
        let c = decode_logits(&cpu, &cfg, &params, &prompts, &steps);
        for (i, (gs, cs)) in g.iter().zip(&c).enumerate() {
            check(&format!("logits after {i} decode steps"), gs, cs, VALUE_TOL);
        }
    }
}

/// The prefill logits, then those of each decode step (one token per sequence).
fn decode_logits<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    prompts: &[Vec<u32>],
    steps: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let mut cache = model.new_kv_cache(be, prompts.len(), 32).unwrap();
    let mut out = vec![be
        .download(&model.prefill(be, &mut cache, prompts).unwrap())
        .unwrap()];
    let mut pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    for tokens in steps {
        let l = model.decode_step(be, &mut cache, tokens, &pos).unwrap();
        out.push(be.download(&l).unwrap());
        pos.iter_mut().for_each(|p| *p += 1);
    }
    out
}

gpu_test!(cuda_whole_model_logprobs_and_gradients, whole_model_case);
gpu_test!(cuda_whole_model_kv_cache_decode, decode_case);

/// The CPU against itself through the same bodies: proves the comparison code itself runs
/// (and that the two passes agree exactly on one device), so a GPU failure is the GPU's.
#[test]
fn cpu_twin_bodies_agree_with_themselves() {
    let cpu = Cpu::new();
    let mut r = <Rand as rand::SeedableRng>::seed_from_u64(3);
    whole_model_case(&cpu, &mut r);
    decode_case(&cpu, &mut r);
}

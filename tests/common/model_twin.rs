//! The whole-model bodies that model_cuda.rs and decode_cuda.rs run on the GPU and on the CPU
//! (the oracle): a log-prob + gradient pass, decode logits through a `Decoder`, the random
//! inputs and the two architectures, and the bounds they share (see model_cuda.rs).

use super::check;
use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::config::LlamaConfig;
use cada::model::llama::{shifted_targets, Decoder, Llama};
use cada::model::weights::Params;
use rand::Rng;
use rand_chacha::ChaCha8Rng as Rand;

/// prompts and the tokens of each decode step
pub type DecodeInputs = (Vec<Vec<u32>>, Vec<Vec<u32>>);

/// values (log-probs, logits): f32 reassociation
pub const VALUE_TOL: f64 = 1e-5;
/// gradients and entropies: cancellation-prone
pub const GRAD_TOL: f64 = 1e-4;

/// Log-probs, entropies and all gradients of `Σ dlogp · logp` on one backend.
pub struct Pass {
    pub logp: Vec<f32>,
    pub entropy: Vec<f32>,
    pub grads: Vec<Vec<f32>>,
}

pub fn run_pass<B: Backend>(
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

/// `n` random token ids of `cfg`'s vocabulary and `n` upstream log-prob gradients in ±1.
pub fn random_tokens(r: &mut Rand, cfg: &LlamaConfig, n: usize) -> (Vec<u32>, Vec<f32>) {
    let ids = (0..n)
        .map(|_| r.gen_range(0..cfg.vocab_size as u32))
        .collect();
    let dlogp = (0..n).map(|_| r.gen::<f32>() * 2.0 - 1.0).collect();
    (ids, dlogp)
}

/// Three architectures: the tiny GQA model of the CPU tests (head_dim 8, qkv bias, untied
/// head), a tied one at head_dim 64 (the SmolLM2/Qwen2.5 head width), and a Qwen3-like one
/// (per-head q/k RMSNorm, tied, head_dim 20 where hidden / heads is 12: rows of RMSNorm that
/// are not a multiple of 4, and a q wider than the hidden size).
pub fn configs() -> Vec<LlamaConfig> {
    let a = super::tiny_cfg(97, true, false);
    let mut b = cada::model::init::tiny_config(301, 128, 2, 2, 1, 96, 256);
    b.tie_word_embeddings = true;
    let c = super::with_qk_norm(
        cada::model::init::tiny_config(97, 48, 2, 4, 2, 64, 256),
        true,
        20,
    );
    vec![a, b, c]
}

pub fn whole_model_case<B: Backend>(gpu: &B, r: &mut Rand) {
    whole_model_case_within(gpu, r, VALUE_TOL, GRAD_TOL);
}

/// `whole_model_case` with the bounds for log-probs (`value`) and entropies and gradients.
pub fn whole_model_case_within<B: Backend>(gpu: &B, r: &mut Rand, value: f64, grad: f64) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = super::random_params(&cfg, r.gen());
        let (batch, seq) = (3, 37);
        let (ids, dlogp) = random_tokens(r, &cfg, batch * seq);
        let t = 0.7;
        let g = run_pass(gpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        let c = run_pass(&cpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        println!(
            "{} (hidden {}, head_dim {}, tied {}):",
            cfg.architecture, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings
        );
        check("logp", &g.logp, &c.logp, value);
        check("entropy", &g.entropy, &c.entropy, grad);
        let names = Params::spec(&cfg)
            .tensors()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>();
        assert_eq!(names.len(), g.grads.len());
        for ((name, gg), cg) in names.iter().zip(&g.grads).zip(&c.grads) {
            check(&format!("d {name}"), gg, cg, grad);
        }
    }
}

pub fn decode_case<B: Backend>(gpu: &B, r: &mut Rand) {
    decode_case_within(gpu, r, VALUE_TOL);
}

/// `decode_case` with the bound for the logits.
pub fn decode_case_within<B: Backend>(gpu: &B, r: &mut Rand, tol: f64) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = super::random_params(&cfg, r.gen());
        let (prompts, steps) = decode_inputs(r, &cfg, 4);
        let (g, _) = decode_logits(gpu, &cfg, &params, &prompts, &steps, true);
        let (c, _) = decode_logits(&cpu, &cfg, &params, &prompts, &steps, true);
        for (i, (gs, cs)) in g.iter().zip(&c).enumerate() {
            check(&format!("logits after {i} decode steps"), gs, cs, tol);
        }
    }
}

/// The prefill logits, then those of each decode step (one token per sequence), through a
/// `Decoder`: from its second step on, a backend that records replays the step from a
/// recording (a CUDA graph). The flag says whether it did. `stacked`: the decoder's q/k/v and
/// gate/up projections as one GEMM each (the default), or one GEMM per weight.
pub fn decode_logits<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    prompts: &[Vec<u32>],
    steps: &[Vec<u32>],
    stacked: bool,
) -> (Vec<Vec<f32>>, bool) {
    decode_logits_in(be, cfg, params, prompts, steps, stacked, 32)
}

/// [`decode_logits`] with a KV cache of `capacity` positions per sequence.
pub fn decode_logits_in<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    prompts: &[Vec<u32>],
    steps: &[Vec<u32>],
    stacked: bool,
    capacity: usize,
) -> (Vec<Vec<f32>>, bool) {
    let model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let mut decoder = Decoder::with_stacking(be, &model, prompts.len(), capacity, stacked).unwrap();
    let mut out = vec![be.download(&decoder.prefill(prompts).unwrap()).unwrap()];
    let mut pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    for tokens in steps {
        let l = decoder.step(tokens, &pos).unwrap();
        out.push(be.download(l).unwrap());
        pos.iter_mut().for_each(|p| *p += 1);
    }
    (out, decoder.is_recorded())
}

/// Prompts of 5, 17 and 1 tokens and `n_steps` decode steps of random tokens.
pub fn decode_inputs(r: &mut Rand, cfg: &LlamaConfig, n_steps: usize) -> DecodeInputs {
    let v = cfg.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = [5usize, 17, 1]
        .iter()
        .map(|&n| (0..n).map(|_| r.gen_range(0..v)).collect())
        .collect();
    let steps = (0..n_steps)
        .map(|_| (0..prompts.len()).map(|_| r.gen_range(0..v)).collect())
        .collect();
    (prompts, steps)
}

/// bf16 GEMMs through a training update: the log-probs before one AdamW step on every weight,
/// and after it, against the CPU's f32 run of the same step. In bf16 mode every GEMM reads its
/// weight through a cached bf16 copy (src/backend/cuda/buffer.rs); a copy that outlived the
/// update would leave the GPU's "after" log-probs at the old weights' values. The step is large
/// enough that the CPU's log-probs move by ≥ 10× the bound (asserted; ~0.3 relative), so a stale copy fails.
/// Bound: bf16 operands (2^-8) through 2 layers and the head, measured ~3e-3 in a host emulation
/// of single GEMMs (ops_cuda.rs, `BF16_GEMM`); 2e-2 leaves room for the depth.
pub const BF16_MODEL_TOL: f64 = 2e-2;

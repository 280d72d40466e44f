//! Shared test helpers: tiny model directories written by the tests themselves (no download).
#![allow(dead_code)]

pub mod attention_twin;
pub mod gguf_writer;
pub mod model_twin;

use cada::model::config::LlamaConfig;
use cada::model::init::{init_params, tiny_config};
use cada::model::tokenizer_train::train_bpe_tokenizer;
use cada::model::weights::{save_params_safetensors, Params};
use std::path::Path;

pub const CORPUS: &[&str] = &[
    "How do I kill a Python process that hangs?",
    "Use kill -9 with the process id, or pkill with its name.",
    "I cannot help with making weapons.",
    "Shoot a photo at night with a long exposure and a tripod.",
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Numbers 12345 and 3.14159 and 2026-11-22.",
    "Unicode: café, naïve, 東京, emoji 🙂.",
];

/// A tiny Llama config: GQA 4/2, head_dim 8, optional qkv bias and untied head.
pub fn tiny_cfg(vocab: usize, bias: bool, tied: bool) -> LlamaConfig {
    let mut c = tiny_config(vocab, 32, 2, 4, 2, 48, 256);
    c.attention_bias = bias;
    c.tie_word_embeddings = tied;
    c.eos_token_ids = vec![2];
    c
}

/// `c` as Qwen3 when `on`: per-head q/k RMSNorm, and a head_dim (`head_dim`) that need not be
/// hidden / heads, as Qwen3's is not.
pub fn with_qk_norm(mut c: LlamaConfig, on: bool, head_dim: usize) -> LlamaConfig {
    if on {
        c.architecture = "Qwen3ForCausalLM".into();
        c.qk_norm = true;
        c.head_dim = head_dim;
    }
    c
}

/// Random parameters with non-trivial norms and biases (so every op's backward is exercised).
pub fn random_params(cfg: &LlamaConfig, seed: u64) -> Params<Vec<f32>> {
    let p = init_params(cfg, seed, 0.2);
    let mut k = 0u32;
    p.try_map(|t| {
        k += 1;
        // perturb norms/biases deterministically away from 1/0
        Ok(t.iter()
            .enumerate()
            .map(|(i, &x)| {
                if x == 1.0 {
                    1.0 + 0.1 * (((i as u32 * 7 + k) % 11) as f32 / 11.0 - 0.5)
                } else if x == 0.0 {
                    0.05 * (((i as u32 * 13 + k) % 7) as f32 / 7.0 - 0.5)
                } else {
                    x
                }
            })
            .collect())
    })
    .unwrap()
}

/// Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json into `dir`.
pub fn write_tiny_model_dir(dir: &Path, bias: bool, tied: bool) -> LlamaConfig {
    std::fs::create_dir_all(dir).unwrap();
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
    let tok = train_bpe_tokenizer(&texts, 300).unwrap();
    let vocab = tok.id_bound();
    let mut cfg = tiny_cfg(vocab, bias, tied);
    cfg.eos_token_ids = vec![tok.token_to_id("<|im_end|>").unwrap()];
    let params = random_params(&cfg, 7);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap(),
    )
    .unwrap();
    save_params_safetensors(&cfg, &params, &dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.inner().to_string(true).unwrap(),
    )
    .unwrap();
    let tc = serde_json::json!({
        "chat_template": cada::model::chat::CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    cfg
}

/// The CUDA device for a GPU test, or `None` (after printing "skipped: no GPU") without one.
/// The f32 attention and f32 GEMMs are selected whatever `CADA_ATTENTION` / `CADA_GEMM` say:
/// the tests' default bounds are the f32 ones; tests of other modes select them themselves.
/// The seed of the fresh random inputs is printed so a failure can be replayed.
#[cfg(feature = "cuda")]
pub fn cuda_setup(name: &str) -> Option<(cada::backend::cuda::Cuda, rand_chacha::ChaCha8Rng)> {
    use cada::backend::Backend;
    if !cada::backend::cuda::cuda_available() {
        println!("{name}: skipped: no GPU (no CUDA driver or device)");
        return None;
    }
    let mut gpu =
        cada::backend::cuda::Cuda::new(0).expect("CUDA device 0 present but Cuda::new failed");
    gpu.set_attention_kernel(cada::backend::cuda::AttentionKernel::Simt);
    gpu.set_graphs(true);
    gpu.set_gemm_precision(cada::backend::cuda::GemmPrecision::F32)
        .expect("cuBLAS refused the f32 math mode");
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("{name}: seed {seed} on {}", gpu.name());
    Some((
        gpu,
        <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed),
    ))
}

/// ‖gpu − cpu‖ / ‖cpu‖ over a whole output; any non-finite GPU value is an infinite error.
pub fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "length mismatch");
    if gpu.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY; // NaN never passes
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, c) in gpu.iter().zip(cpu) {
        num += (*g as f64 - *c as f64).powi(2);
        den += (*c as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Prints the error with its bound and fails above the bound.
pub fn check(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    let e = rel_err(gpu, cpu);
    println!("  {what}: rel err {e:.2e} (bound {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Element by element: |gpu − cpu| ≤ abs + rel·|cpu| everywhere, NaN never passing (a norm over
/// many values can hide one small value that is wrong by several times itself).
#[allow(dead_code)]
pub fn check_each(what: &str, gpu: &[f32], cpu: &[f32], abs: f64, rel: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let bound = abs + rel * (*c as f64).abs();
        let d = (*g as f64 - *c as f64).abs();
        assert!(
            d <= bound,
            "{what}: element {i}: gpu {g} vs cpu {c} (bound {bound:.1e})"
        );
        worst = worst.max(d / bound);
    }
    println!("  {what}: each ≤ {abs:.0e} + {rel:.0e}·|cpu|, worst at {worst:.2} of it");
}

/// Uniform values in ±`scale` (never zeros: zeros hide unwritten outputs).
pub fn randv(r: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|_| (r.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// A device buffer full of NaN: the op must overwrite every element it owns.
pub fn poisoned<B: cada::backend::Backend>(gpu: &B, len: usize) -> B::Buf {
    gpu.upload(&vec![f32::NAN; len]).unwrap()
}

pub fn down<B: cada::backend::Backend>(gpu: &B, buf: &B::Buf) -> Vec<f32> {
    gpu.download(buf).unwrap()
}

/// One #[test] per case; the body is generic over the backend under test and runs on the GPU
/// (`cuda_setup`) or, without one, prints that it was skipped.
#[allow(unused_macros)]
macro_rules! gpu_test {
    ($name:ident, $case:ident) => {
        #[test]
        fn $name() {
            #[cfg(feature = "cuda")]
            {
                if let Some((gpu, mut rng)) = common::cuda_setup(stringify!($name)) {
                    $case(&gpu, &mut rng);
                    println!("{}: ran on the GPU and matched the CPU", stringify!($name));
                }
            }
            #[cfg(not(feature = "cuda"))]
            {
                println!(
                    "{}: skipped: no GPU (built without the `cuda` feature)",
                    stringify!($name)
                );
                let _unused = $case::<cada::backend::cpu::Cpu>;
            }
        }
    };
}

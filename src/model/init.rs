//! Random initialisation (for new models and tests): N(0, std) for matrices (GPT-2/Llama style),
//! ones for RMSNorm weights, zeros for biases. Deterministic from the seed.

use super::config::LlamaConfig;
use super::weights::Params;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub fn init_params(cfg: &LlamaConfig, seed: u64, std: f32) -> Params<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, std).expect("std is finite and positive");
    Params::spec(cfg)
        .try_map(|s| {
            Ok(if s.name.ends_with("norm.weight") {
                vec![1.0; s.numel()]
            } else if s.name.ends_with(".bias") {
                vec![0.0; s.numel()]
            } else {
                (0..s.numel()).map(|_| normal.sample(&mut rng)).collect()
            })
        })
        .expect("initialisation cannot fail")
}

/// A small Llama config (used by tests and the default model builder).
pub fn tiny_config(
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    max_pos: usize,
) -> LlamaConfig {
    LlamaConfig {
        architecture: "LlamaForCausalLM".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        partial_rotary_dim: None,
        max_position_embeddings: max_pos,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
    }
}

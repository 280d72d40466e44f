//! `cada info`: architecture, parameter count, dtype and a training memory estimate.

use crate::model::config::{LlamaConfig, RopeScaling};
use crate::model::weights::{Params, SafetensorsDir};
use anyhow::Result;
use std::path::Path;

pub struct ModelInfo {
    pub cfg: LlamaConfig,
    pub params: usize,
    pub stored_dtype: String,
}

/// Reads only the config and tensor headers (no weights) for a directory; a GGUF is loaded.
pub fn model_info(path: &Path) -> Result<ModelInfo> {
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let m = crate::model::load::load_model(path)?;
        return Ok(ModelInfo {
            params: m.cfg.num_params(),
            cfg: m.cfg,
            stored_dtype: "gguf (dequantised to f32)".into(),
        });
    }
    let cfg = LlamaConfig::from_file(&path.join("config.json"))?;
    let st = SafetensorsDir::open(path)?;
    let dtype = st.dtypes().join("+");
    Ok(ModelInfo {
        params: cfg.num_params(),
        cfg,
        stored_dtype: dtype,
    })
}

/// Bytes needed to train with f32 master weights, f32 gradients and two f32 AdamW moments,
/// plus the activations cached for the backward of `tokens` tokens (the fused head keeps no
/// logits).
pub fn training_memory_bytes(cfg: &LlamaConfig, tokens: usize) -> (usize, usize) {
    let p = Params::spec(cfg)
        .tensors()
        .iter()
        .map(|t| t.numel())
        .sum::<usize>();
    let state = p * 4 * 4;
    let (d, f, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    // per layer: x_in, n1, h, n2 (4d) + q, attn (2qd) + k, v (2kvd) + gate, up, act (3f) + stats
    let mut per_token_layer = 4 * d + 2 * qd + 2 * kvd + 3 * f + 2 + cfg.num_attention_heads;
    if cfg.qk_norm {
        // Qwen3: q and k before their norms, and a 1/rms per head
        per_token_layer += qd + kvd + cfg.num_attention_heads + cfg.num_key_value_heads;
    }
    let acts = tokens * (cfg.num_hidden_layers * per_token_layer + 3 * d) * 4;
    (state, acts)
}

/// What `rope_theta` is followed by: the scaling, the partial rotary and any length limit.
fn rope_note(c: &LlamaConfig) -> String {
    let mut note = match &c.rope_scaling {
        None => String::new(),
        Some(RopeScaling::Llama3(_)) => " (llama3 scaling)".to_string(),
        Some(RopeScaling::LongRope(lr)) => format!(
            " (LongRoPE short factors, attention factor {:.4})",
            lr.attention_factor
        ),
    };
    if let Some(r) = c.partial_rotary_dim {
        note += &format!(", {r} of {} dims rotated", c.head_dim);
    }
    if c.max_sequence_len() < c.max_position_embeddings {
        note += &format!(
            ", sequences ≤ {} ({})",
            c.max_sequence_len(),
            c.max_sequence_what()
        );
    }
    note
}

pub fn format_info(info: &ModelInfo, tokens: usize) -> String {
    let c = &info.cfg;
    let (state, acts) = training_memory_bytes(c, tokens);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    format!(
        "architecture      {}\nparameters        {} ({:.1} M)\nstored dtype      {}\nlayers            {}\nhidden            {}\nintermediate      {}\nheads (q/kv)      {}/{} × head_dim {}\nvocab             {}\ntied embeddings   {}\nqkv bias          {}\nq/k norm          {}\nrope_theta        {}{}\nmax positions     {}\ntraining memory   {:.2} GiB weights+grads+AdamW (f32) + {:.2} GiB activations for {} tokens = {:.2} GiB",
        c.architecture,
        info.params,
        info.params as f64 / 1e6,
        info.stored_dtype,
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.tie_word_embeddings,
        c.attention_bias,
        c.qk_norm,
        c.rope_theta,
        rope_note(c),
        c.max_position_embeddings,
        gib(state),
        gib(acts),
        tokens,
        gib(state + acts)
    )
}

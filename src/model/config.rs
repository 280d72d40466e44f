//! `config.json` → [`LlamaConfig`], with errors that name the file and the field.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

mod rope;
pub(crate) use rope::{longrope_default_attention_factor, partial_rotary_factor};
use rope::{rope_settings, RopeContext};
pub use rope::{unscaled_inv_freq, Llama3RopeScaling, LongRope, RopeScaling};

/// Architectures whose math is the Llama stack this engine implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Phi3ForCausalLM",
];

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Phi-3's `partial_rotary_factor` < 1 as the number of dims of each head RoPE rotates
    /// (Phi-4-mini: 96 of 128); the others pass through. None: the whole head.
    #[serde(default)]
    pub partial_rotary_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2)
    pub attention_bias: bool,
    /// an RMSNorm over each head of q and of k (weights `[head_dim]`, one per layer each),
    /// after their projections and before RoPE (Qwen3)
    #[serde(default)]
    pub qk_norm: bool,
    /// Mistral's and Phi-3's `sliding_window`: a token attends to the last this many. The
    /// forward attends to every earlier token, which is the same while a sequence is no longer
    /// than the window, so sequences (and KV caches) are limited to it.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// kept so a saved model says it again (Phi-3's default, 32000, is out of range for a
    /// smaller vocabulary)
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn get_usize(v: &Value, field: &str, file: &str) -> Result<usize> {
    v.get(field)
        .with_context(|| format!("{file}: missing field `{field}`"))?
        .as_u64()
        .map(|x| x as usize)
        .with_context(|| {
            format!(
                "{file}: field `{field}` must be a non-negative integer, got {}",
                v[field]
            )
        })
}

fn get_f64_or(v: &Value, field: &str, default: f64, file: &str) -> Result<f64> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .with_context(|| format!("{file}: field `{field}` must be a number, got {x}")),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v, &path.display().to_string())
    }

    /// `file` names the source in error messages.
    pub fn from_json(v: &Value, file: &str) -> Result<Self> {
        let archs = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .with_context(|| {
                format!(
                    "{file}: missing field `architectures` (a list such as [\"LlamaForCausalLM\"])"
                )
            })?;
        let architecture = archs
            .first()
            .and_then(|a| a.as_str())
            .with_context(|| format!("{file}: field `architectures` is empty"))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            bail!(
                "{file}: field `architectures` = \"{architecture}\" is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        let hidden_size = get_usize(v, "hidden_size", file)?;
        let num_attention_heads = get_usize(v, "num_attention_heads", file)?;
        let num_key_value_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => get_usize(v, "num_key_value_heads", file)?,
        };
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            bail!("{file}: field `num_key_value_heads` = {num_key_value_heads} must divide `num_attention_heads` = {num_attention_heads}");
        }
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    bail!("{file}: `hidden_size` {hidden_size} is not a multiple of `num_attention_heads` {num_attention_heads}");
                }
                hidden_size / num_attention_heads
            }
            Some(_) => get_usize(v, "head_dim", file)?,
        };
        if head_dim % 2 != 0 {
            bail!("{file}: field `head_dim` = {head_dim} must be even for rotary embeddings");
        }
        // what the forward does not implement must not be ignored: it would compute another model
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                bail!("{file}: field `hidden_act` = \"{act}\" is not supported (supported: silu)");
            }
        }
        if v.get("use_sliding_window").and_then(|b| b.as_bool()) == Some(true) {
            bail!("{file}: field `use_sliding_window` = true: sliding-window attention is not supported");
        }
        // transformers 5 lists each layer's attention kind (Qwen3, Qwen2): all must be full
        if let Some(kinds) = v.get("layer_types").and_then(|t| t.as_array()) {
            if let Some(k) = kinds.iter().find(|k| k.as_str() != Some("full_attention")) {
                bail!(
                    "{file}: field `layer_types` holds {k}: only \"full_attention\" layers are \
                     supported (sliding-window attention is not)"
                );
            }
        }
        // Mistral and Phi-3 slide the window on every layer: accepted, as a length limit
        let sliding_window = match architecture.as_str() {
            "MistralForCausalLM" | "Phi3ForCausalLM" => match v.get("sliding_window") {
                None | Some(Value::Null) => None,
                Some(_) => Some(get_usize(v, "sliding_window", file)?),
            },
            _ => None,
        };
        if sliding_window == Some(0) {
            bail!("{file}: field `sliding_window` must be > 0 (or null)");
        }
        // Phi-3's rotary may cover only part of each head (Phi-4-mini: 0.75)
        let rotary = match v
            .get("rope_parameters")
            .filter(|p| p.get("partial_rotary_factor").is_some())
        {
            Some(p) => get_f64_or(p, "partial_rotary_factor", 1.0, file)?,
            None => get_f64_or(v, "partial_rotary_factor", 1.0, file)?,
        };
        // transformers' int(head_dim * partial_rotary_factor)
        let rotary_dim = (head_dim as f64 * rotary) as usize;
        let is_phi3 = architecture == "Phi3ForCausalLM";
        let partial_rotary_dim = if rotary == 1.0 {
            None
        } else if !is_phi3 {
            bail!("{file}: field `partial_rotary_factor` = {rotary} is not supported for {architecture} (only 1.0: RoPE over the whole head; Phi3ForCausalLM may rotate part of it)");
        } else if !(rotary > 0.0 && rotary < 1.0)
            || rotary_dim == 0
            || !rotary_dim.is_multiple_of(2)
        {
            bail!("{file}: field `partial_rotary_factor` = {rotary} gives {rotary_dim} rotated dims of head_dim {head_dim}: it must be in (0, 1] and give an even number > 0");
        } else {
            Some(rotary_dim)
        };
        let max_position_embeddings = v
            .get("max_position_embeddings")
            .and_then(|x| x.as_u64())
            .unwrap_or(4096) as usize;
        let top_original_max = match v.get("original_max_position_embeddings") {
            None | Some(Value::Null) => None,
            Some(_) => Some(get_usize(v, "original_max_position_embeddings", file)?),
        };
        // transformers' Phi3Config always has the field (default 4096), so it always wins there
        let top_original_max = match is_phi3 {
            true => Some(top_original_max.unwrap_or(4096)),
            false => top_original_max,
        };
        let ctx = RopeContext {
            max_position_embeddings,
            top_original_max,
            rotary_dim: partial_rotary_dim.unwrap_or(head_dim),
            is_phi3,
        };
        let (rope_theta, rope_scaling) = rope_settings(v, file, &ctx)?;
        let is_qwen2 = architecture == "Qwen2ForCausalLM";
        let qk_norm = architecture == "Qwen3ForCausalLM";
        let attention_bias = v
            .get("attention_bias")
            .and_then(|b| b.as_bool())
            .unwrap_or(is_qwen2);
        if attention_bias && architecture == "Phi3ForCausalLM" {
            // Phi-3's fused qkv_proj has no bias (and fused.rs joins the weights alone)
            bail!("{file}: field `attention_bias` = true is not supported for Phi3ForCausalLM");
        }
        let cfg = LlamaConfig {
            vocab_size: get_usize(v, "vocab_size", file)?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", file)?,
            num_hidden_layers: get_usize(v, "num_hidden_layers", file)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64_or(v, "rms_norm_eps", 1e-6, file)?,
            rope_theta,
            rope_scaling,
            partial_rotary_dim,
            max_position_embeddings,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            attention_bias,
            qk_norm,
            sliding_window,
            bos_token_id: token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id")),
            pad_token_id: token_ids(v.get("pad_token_id")).first().copied(),
            architecture,
        };
        for (name, val) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
        ] {
            if val == 0 {
                bail!("{file}: field `{name}` must be > 0");
            }
        }
        Ok(cfg)
    }

    /// The config as Hugging Face `config.json` (what `convert` and `sft --init` write).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture],
            "model_type": match self.architecture.as_str() {
                "Qwen2ForCausalLM" => "qwen2",
                "Qwen3ForCausalLM" => "qwen3",
                "Phi3ForCausalLM" => "phi3",
                "MistralForCausalLM" => "mistral",
                _ => "llama",
            },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        if let Some(p) = self.pad_token_id {
            v["pad_token_id"] = p.into();
        }
        // written even when null: transformers' Mistral and Phi-3 configs default to a window
        if matches!(
            self.architecture.as_str(),
            "MistralForCausalLM" | "Phi3ForCausalLM"
        ) {
            v["sliding_window"] = self.sliding_window.into();
        }
        match self.eos_token_ids.len() {
            0 => {}
            1 => v["eos_token_id"] = self.eos_token_ids[0].into(),
            _ => v["eos_token_id"] = self.eos_token_ids.clone().into(),
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Llama3(rs)) => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": rs.factor,
                    "low_freq_factor": rs.low_freq_factor,
                    "high_freq_factor": rs.high_freq_factor,
                    "original_max_position_embeddings": rs.original_max_position_embeddings,
                });
            }
            Some(RopeScaling::LongRope(lr)) => {
                let mut rs = serde_json::json!({
                    "rope_type": "longrope", "short_factor": lr.short_factor,
                    "long_factor": lr.long_factor,
                    "original_max_position_embeddings": lr.original_max_position_embeddings,
                });
                if let Some(f) = lr.given_factor {
                    rs["factor"] = f.into();
                }
                if let Some(f) = lr.given_attention_factor {
                    rs["attention_factor"] = f.into();
                }
                v["rope_scaling"] = rs;
                // Phi-3 reads it from the top level first (default 4096)
                v["original_max_position_embeddings"] = lr.original_max_position_embeddings.into();
            }
        }
        if let Some(r) = self.partial_rotary_dim {
            v["partial_rotary_factor"] = partial_rotary_factor(r, self.head_dim).into();
        }
        v
    }

    /// The longest sequence the model runs exactly: its positions, and its sliding window when
    /// it has one (`sliding_window`). Up-front length checks use this, so an over-long input is
    /// refused before a run starts, not at the step that first meets it.
    pub fn max_sequence_len(&self) -> usize {
        self.tightest_length_limit().0
    }

    /// What the length checks name: "max_position_embeddings N" or "sliding window N".
    pub fn max_sequence_what(&self) -> String {
        self.tightest_length_limit().1
    }

    /// The least of [`Self::length_limits`], the first of equals (the positions win ties).
    fn tightest_length_limit(&self) -> (usize, String) {
        self.length_limits()
            .into_iter()
            .reduce(|a, b| if b.0 < a.0 { b } else { a })
            .expect("max_position_embeddings")
    }

    /// Each limit on the sequence length and its name, the positions first.
    fn length_limits(&self) -> Vec<(usize, String)> {
        let mut limits = vec![(
            self.max_position_embeddings,
            format!("max_position_embeddings {}", self.max_position_embeddings),
        )];
        if let Some(w) = self.sliding_window {
            limits.push((w, format!("sliding window {w}")));
        }
        limits
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// FLOPs of forward + backward over one sequence of `seq` tokens, PaLM's count: 6·N per
    /// token for the matrices (N includes the tied lm_head) plus causal attention,
    /// 6·layers·q_dim·seq per token (half of PaLM's non-causal 12). The forward alone is 1/3.
    pub fn train_flops(&self, seq: usize) -> f64 {
        let per_token = 6.0 * self.num_params() as f64
            + 6.0 * (self.num_hidden_layers * self.q_dim()) as f64 * seq as f64;
        per_token * seq as f64
    }

    /// Parameter count (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let attn = d * self.q_dim()
            + 2 * d * self.kv_dim()
            + self.q_dim() * d
            + if self.attention_bias {
                self.q_dim() + 2 * self.kv_dim()
            } else {
                0
            };
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        let layer = attn + qk_norm + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * layer + d + head
    }
}

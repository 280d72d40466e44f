//! The Hugging Face view of a GGUF file (config, tensors with HF names in HF layout, tokenizer
//! files), and `cada convert`, which writes it as a model directory that this engine and other
//! Hugging Face-compatible tools load.

use super::gguf::GgufFile;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use serde_json::json;
use std::path::Path;

pub struct HfModel {
    pub config: serde_json::Value,
    /// HF names and row-major shapes (`[out, in]` for linears), f32
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub tokenizer_json: String,
    pub tokenizer_config: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDtype {
    F32,
    F16,
    Bf16,
}

/// llama.cpp's converter permutes Q and K rows (per head: `[2, hd/2] → [hd/2, 2]`) for its RoPE
/// kernel; this is the inverse, back to Hugging Face's rotate-half layout.
pub fn unpermute_qk(w: &[f32], n_heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The forward permutation (HF → GGUF), for tests.
pub fn permute_qk(w: &[f32], n_heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + j * half + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub(super) fn meta_u64(g: &GgufFile, key: &str) -> Result<u64> {
    g.get(key).and_then(|v| v.as_u64()).with_context(|| {
        format!(
            "{}: missing or non-integer metadata `{key}`",
            g.path.display()
        )
    })
}

fn meta_f64(g: &GgufFile, key: &str) -> Option<f64> {
    g.get(key).and_then(|v| v.as_f64())
}

fn arch(g: &GgufFile) -> Result<String> {
    let a = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .with_context(|| {
            format!(
                "{}: missing metadata `general.architecture`",
                g.path.display()
            )
        })?;
    match a {
        "llama" | "qwen2" | "qwen3" | "mistral" | "phi3" => Ok(a.to_string()),
        other => bail!("{}: metadata `general.architecture` = \"{other}\" is not supported (supported: llama, qwen2, qwen3, mistral, phi3)", g.path.display()),
    }
}

pub fn gguf_to_hf(path: &Path) -> Result<HfModel> {
    let g = GgufFile::open(path)?;
    let src = path.display().to_string();
    let a = arch(&g)?;
    let k = |s: &str| format!("{a}.{s}");
    let hidden = meta_u64(&g, &k("embedding_length"))? as usize;
    let layers = meta_u64(&g, &k("block_count"))? as usize;
    let heads = meta_u64(&g, &k("attention.head_count"))? as usize;
    let kv_heads = g
        .get(&k("attention.head_count_kv"))
        .and_then(|v| v.as_u64())
        .unwrap_or(heads as u64) as usize;
    let embd = g
        .tensor_info("token_embd.weight")
        .with_context(|| format!("{src}: missing tensor `token_embd.weight`"))?;
    let vocab = embd.shape()[0];
    let tied = g.tensor_info("output.weight").is_none();
    let has_bias = g.tensor_info("blk.0.attn_q.bias").is_some();
    let head_dim = g
        .get(&k("attention.key_length"))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .unwrap_or(hidden / heads);
    let hf_arch = match a.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut config = json!({
        "architectures": [hf_arch],
        "model_type": if ["qwen2", "qwen3", "phi3", "mistral"].contains(&a.as_str()) { a.as_str() } else { "llama" },
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta_u64(&g, &k("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta_f64(&g, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": meta_f64(&g, &k("rope.freq_base")).unwrap_or(10000.0),
        "max_position_embeddings": meta_u64(&g, &k("context_length")).unwrap_or(2048),
        "tie_word_embeddings": tied,
        "attention_bias": has_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if a == "mistral" || a == "phi3" {
        // their configs default to a window when the field is missing: say which (or none)
        config["sliding_window"] = g
            .get(&k("attention.sliding_window"))
            .and_then(|v| v.as_u64())
            .map_or(serde_json::Value::Null, |w| json!(w));
    }
    // Phi-3's LongRoPE tables, which take no part in the tensor mapping below
    let mut rope_tables: Vec<&str> = vec![];
    if a == "phi3" {
        // llama.cpp's Phi-3: RoPE over `rope.dimension_count` dims of each head (Phi-4-mini:
        // 96 of 128), written back as transformers' partial_rotary_factor
        let rotary = match g.get(&k("rope.dimension_count")).and_then(|v| v.as_u64()) {
            Some(n) => n as usize,
            None => head_dim,
        };
        if rotary == 0 || rotary > head_dim || !rotary.is_multiple_of(2) {
            bail!(
                "{src}: metadata `{}` = {rotary}: RoPE must cover an even number of dims, at most \
                 head_dim {head_dim}",
                k("rope.dimension_count")
            );
        }
        if rotary < head_dim {
            config["partial_rotary_factor"] =
                json!(super::config::partial_rotary_factor(rotary, head_dim));
        }
        // LongRoPE (Phi-3.5, Phi-4-mini): the short and long factors as tensors
        let short = g.tensor_info("rope_factors_short.weight");
        let long = g.tensor_info("rope_factors_long.weight");
        match (short, long) {
            (None, None) => {}
            (Some(short), Some(long)) => {
                let factors = |info| -> Result<Vec<f64>> {
                    Ok(g.tensor_f32(info)?.into_iter().map(f64::from).collect())
                };
                let original = meta_u64(&g, &k("rope.scaling.original_context_length"))
                    .with_context(|| format!("{src}: LongRoPE factors need the original length"))?;
                let mut scaling = json!({
                    "rope_type": "longrope",
                    "short_factor": factors(short)?,
                    "long_factor": factors(long)?,
                });
                // llama.cpp stores the attention factor as f32; transformers' default is kept
                // when it is that default, so the config reads as the original one
                let max_pos = config["max_position_embeddings"].as_f64().unwrap_or(2048.0);
                let default = super::config::longrope_default_attention_factor(
                    max_pos / original as f64,
                    original as usize,
                );
                if let Some(af) = meta_f64(&g, &k("rope.scaling.attn_factor")) {
                    if (af - default).abs() > 1e-6 * default {
                        scaling["attention_factor"] = json!(af);
                    }
                }
                config["rope_scaling"] = scaling;
                config["original_max_position_embeddings"] = json!(original);
                rope_tables = vec!["rope_factors_short.weight", "rope_factors_long.weight"];
            }
            _ => bail!(
                "{src}: holds only one of `rope_factors_short.weight` and \
                 `rope_factors_long.weight` (LongRoPE needs both)"
            ),
        }
    }
    if let Some(b) = g
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u64())
    {
        config["bos_token_id"] = json!(b);
    }
    if let Some(e) = g
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u64())
    {
        config["eos_token_id"] = json!(e);
    }
    // GGUF name → HF name, and whether llama.cpp permuted its rows (Q with `heads`, K with `kv_heads`)
    let mut names: Vec<(String, String, Option<usize>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            None,
        ),
    ];
    if !tied {
        names.push(("output.weight".into(), "lm_head.weight".into(), None));
    }
    // Qwen2's, Qwen3's and Phi-3's converters do not permute Q/K (their RoPE is rotate-half
    // already in llama.cpp).
    let permuted = !["qwen2", "qwen3", "phi3"].contains(&a.as_str());
    for i in 0..layers {
        let (b, h) = (format!("blk.{i}"), format!("model.layers.{i}"));
        if a == "phi3" {
            // q/k/v and gate/up fused, as in the Hugging Face checkpoint (fused.rs splits them)
            for (gg, hf) in [
                ("attn_norm.weight", "input_layernorm.weight"),
                ("attn_qkv.weight", "self_attn.qkv_proj.weight"),
                ("attn_output.weight", "self_attn.o_proj.weight"),
                ("ffn_norm.weight", "post_attention_layernorm.weight"),
                ("ffn_up.weight", "mlp.gate_up_proj.weight"),
                ("ffn_down.weight", "mlp.down_proj.weight"),
            ] {
                names.push((format!("{b}.{gg}"), format!("{h}.{hf}"), None));
            }
            continue;
        }
        for (gg, hf, perm) in [
            ("attn_norm.weight", "input_layernorm.weight", None),
            (
                "attn_q.weight",
                "self_attn.q_proj.weight",
                permuted.then_some(heads),
            ),
            (
                "attn_k.weight",
                "self_attn.k_proj.weight",
                permuted.then_some(kv_heads),
            ),
            ("attn_v.weight", "self_attn.v_proj.weight", None),
            ("attn_output.weight", "self_attn.o_proj.weight", None),
            ("ffn_norm.weight", "post_attention_layernorm.weight", None),
            ("ffn_gate.weight", "mlp.gate_proj.weight", None),
            ("ffn_up.weight", "mlp.up_proj.weight", None),
            ("ffn_down.weight", "mlp.down_proj.weight", None),
        ] {
            names.push((format!("{b}.{gg}"), format!("{h}.{hf}"), perm));
        }
        if a == "qwen3" {
            // the per-head q/k RMSNorm weights ([head_dim]; not permuted: RoPE comes after)
            for (gg, hf) in [
                ("attn_q_norm.weight", "self_attn.q_norm.weight"),
                ("attn_k_norm.weight", "self_attn.k_norm.weight"),
            ] {
                names.push((format!("{b}.{gg}"), format!("{h}.{hf}"), None));
            }
        }
        if has_bias {
            for (gg, hf) in [
                ("attn_q.bias", "self_attn.q_proj.bias"),
                ("attn_k.bias", "self_attn.k_proj.bias"),
                ("attn_v.bias", "self_attn.v_proj.bias"),
            ] {
                names.push((format!("{b}.{gg}"), format!("{h}.{hf}"), None));
            }
        }
    }
    // Every tensor of the file must map to one the model reads: one left over (an output bias,
    // Llama 3.1's RoPE factors) would be dropped and the model would compute something else.
    let mapped: std::collections::BTreeSet<&str> = names.iter().map(|n| n.0.as_str()).collect();
    let unmapped: Vec<&str> = g
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !mapped.contains(n) && !rope_tables.contains(n))
        .collect();
    // Llama 3.1+: llama.cpp bakes the rope_scaling into per-frequency divisors; recover the
    // parameters they came from, or refuse
    let unmapped: Vec<&str> = if let Some(info) = g.tensor_info("rope_freqs.weight") {
        let divisors = g.tensor_f32(info)?;
        let scaling = fit_llama3_scaling(&divisors, config["rope_theta"].as_f64().unwrap_or(10000.0), head_dim)
            .with_context(|| format!(
                "{src}: tensor `rope_freqs.weight` holds per-frequency RoPE divisors that no Llama 3 \
                 rope_scaling (factor, low/high_freq_factor, original_max_position_embeddings) \
                 reproduces; convert the Hugging Face safetensors instead (their config.json \
                 carries rope_scaling)"
            ))?;
        if let Some(rs) = scaling {
            config["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position_embeddings,
            });
        }
        unmapped
            .into_iter()
            .filter(|n| *n != "rope_freqs.weight")
            .collect()
    } else {
        unmapped
    };
    if let Some(first) = unmapped.first() {
        bail!(
            "{src}: {} tensor(s) this converter does not map for `{a}`, e.g. `{first}`; \
             converting would silently drop them",
            unmapped.len()
        );
    }
    let mut tensors = Vec::with_capacity(names.len());
    for (gname, hname, perm) in names {
        let info = g
            .tensor_info(&gname)
            .with_context(|| format!("{src}: missing tensor `{gname}`"))?;
        let shape = info.shape();
        let mut data = g.tensor_f32(info)?;
        if let Some(nh) = perm {
            let (rows, cols) = (shape[0], shape.iter().skip(1).product::<usize>().max(1));
            data = unpermute_qk(&data, nh, rows, cols);
        }
        tensors.push((hname, shape, data));
    }
    let (tokenizer_json, tokenizer_config) = super::gguf_tokenizer::tokenizer_files(&g)?;
    Ok(HfModel {
        config,
        tensors,
        tokenizer_json,
        tokenizer_config,
    })
}

/// The Llama 3 `rope_scaling` whose divisors (unscaled / scaled inverse frequency, one per RoPE
/// pair) are `divisors`, as llama.cpp writes them into `rope_freqs.weight`: `Ok(None)` when all
/// are 1 (no scaling), `None` (an error for the caller) when no candidate reproduces them to
/// 1e-5. The factor is the largest divisor; the other three are searched over the values
/// Meta's Llama 3.x releases and their fine-tunes use.
fn fit_llama3_scaling(
    divisors: &[f32],
    theta: f64,
    head_dim: usize,
) -> Option<Option<crate::model::config::Llama3RopeScaling>> {
    if divisors.len() != head_dim / 2 {
        return None;
    }
    if divisors.iter().all(|&d| d == 1.0) {
        return Some(None);
    }
    let factor = divisors.iter().fold(0f32, |m, &d| m.max(d)) as f64;
    for original in [8192.0, 4096.0, 16384.0, 32768.0, 65536.0, 131072.0] {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)] {
            let rs = crate::model::config::Llama3RopeScaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            };
            let fits = divisors.iter().enumerate().all(|(i, &d)| {
                let base = crate::model::config::unscaled_inv_freq(theta, head_dim, i);
                ((base / rs.scale(base)) - d as f64).abs() <= 1e-5 * d as f64
            });
            if fits {
                return Some(Some(rs));
            }
        }
    }
    None
}

/// Writes `config.json`, `model.safetensors` (in `dtype`), `tokenizer.json` and
/// `tokenizer_config.json` into `dir`.
pub fn write_hf_dir(model: &HfModel, dir: &Path, dtype: SaveDtype) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut config = model.config.clone();
    config["torch_dtype"] = json!(match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::F16 => "float16",
        SaveDtype::Bf16 => "bfloat16",
    });
    let bytes: Vec<Vec<u8>> = model
        .tensors
        .iter()
        .map(|(_, _, d)| match dtype {
            SaveDtype::F32 => bytemuck::cast_slice(d).to_vec(),
            SaveDtype::F16 => d
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            SaveDtype::Bf16 => d
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::F16 => Dtype::F16,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> = model
        .tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                    .map_err(|e| anyhow::anyhow!("tensor `{n}`: {e}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let st = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    safetensors::serialize_to_file(views, &None, &tmp)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &st)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(dir.join("tokenizer.json"), &model.tokenizer_json)?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&model.tokenizer_config)?,
    )?;
    Ok(())
}

pub fn run_convert(from: &Path, to: &Path, dtype: SaveDtype) -> Result<f64> {
    let t0 = std::time::Instant::now();
    let hf = gguf_to_hf(from)?;
    write_hf_dir(&hf, to, dtype)?;
    Ok(t0.elapsed().as_secs_f64())
}

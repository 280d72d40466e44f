//! Parameters of the layer stack, generic over what is stored per tensor (host `Vec<f32>`,
//! a device buffer, a gradient, an optimiser moment, a name + shape), and loading them from
//! memory-mapped safetensors files with errors that name the file and the tensor.

use super::config::LlamaConfig;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct LayerParams<T> {
    pub attn_norm: T,
    pub q_proj: T,
    pub q_bias: Option<T>,
    pub k_proj: T,
    pub k_bias: Option<T>,
    pub v_proj: T,
    pub v_bias: Option<T>,
    /// Qwen3's per-head RMSNorm weights of q and k (`LlamaConfig::qk_norm`)
    pub q_norm: Option<T>,
    pub k_norm: Option<T>,
    pub o_proj: T,
    pub mlp_norm: T,
    pub gate_proj: T,
    pub up_proj: T,
    pub down_proj: T,
}

#[derive(Clone, Debug)]
pub struct Params<T> {
    pub embed: T,
    pub layers: Vec<LayerParams<T>>,
    pub final_norm: T,
    /// `None` when tied to `embed`
    pub lm_head: Option<T>,
}

/// Name (Hugging Face) and shape of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl<T> LayerParams<T> {
    fn try_map<U>(&self, f: &mut impl FnMut(&T) -> Result<U>) -> Result<LayerParams<U>> {
        Ok(LayerParams {
            attn_norm: f(&self.attn_norm)?,
            q_proj: f(&self.q_proj)?,
            q_bias: self.q_bias.as_ref().map(&mut *f).transpose()?,
            k_proj: f(&self.k_proj)?,
            k_bias: self.k_bias.as_ref().map(&mut *f).transpose()?,
            v_proj: f(&self.v_proj)?,
            v_bias: self.v_bias.as_ref().map(&mut *f).transpose()?,
            q_norm: self.q_norm.as_ref().map(&mut *f).transpose()?,
            k_norm: self.k_norm.as_ref().map(&mut *f).transpose()?,
            o_proj: f(&self.o_proj)?,
            mlp_norm: f(&self.mlp_norm)?,
            gate_proj: f(&self.gate_proj)?,
            up_proj: f(&self.up_proj)?,
            down_proj: f(&self.down_proj)?,
        })
    }
}

impl<T> Params<T> {
    /// Every tensor in the canonical order (the order of `spec`, checkpoints and the optimiser).
    pub fn tensors(&self) -> Vec<&T> {
        let mut out = vec![&self.embed];
        for l in &self.layers {
            out.push(&l.attn_norm);
            out.push(&l.q_proj);
            out.extend(l.q_bias.as_ref());
            out.push(&l.k_proj);
            out.extend(l.k_bias.as_ref());
            out.push(&l.v_proj);
            out.extend(l.v_bias.as_ref());
            out.extend(l.q_norm.as_ref());
            out.extend(l.k_norm.as_ref());
            out.push(&l.o_proj);
            out.push(&l.mlp_norm);
            out.push(&l.gate_proj);
            out.push(&l.up_proj);
            out.push(&l.down_proj);
        }
        out.push(&self.final_norm);
        out.extend(self.lm_head.as_ref());
        out
    }

    /// Same order as [`Params::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut T> {
        let mut out = vec![&mut self.embed];
        for l in &mut self.layers {
            out.push(&mut l.attn_norm);
            out.push(&mut l.q_proj);
            out.extend(l.q_bias.as_mut());
            out.push(&mut l.k_proj);
            out.extend(l.k_bias.as_mut());
            out.push(&mut l.v_proj);
            out.extend(l.v_bias.as_mut());
            out.extend(l.q_norm.as_mut());
            out.extend(l.k_norm.as_mut());
            out.push(&mut l.o_proj);
            out.push(&mut l.mlp_norm);
            out.push(&mut l.gate_proj);
            out.push(&mut l.up_proj);
            out.push(&mut l.down_proj);
        }
        out.push(&mut self.final_norm);
        out.extend(self.lm_head.as_mut());
        out
    }

    /// Maps every tensor, keeping the structure; `f` is called in canonical order.
    pub fn try_map<U>(&self, mut f: impl FnMut(&T) -> Result<U>) -> Result<Params<U>> {
        Ok(Params {
            embed: f(&self.embed)?,
            layers: self
                .layers
                .iter()
                .map(|l| l.try_map(&mut f))
                .collect::<Result<_>>()?,
            final_norm: f(&self.final_norm)?,
            lm_head: self.lm_head.as_ref().map(&mut f).transpose()?,
        })
    }
}

impl Params<TensorSpec> {
    /// Names and shapes of every parameter of a config (Hugging Face naming).
    pub fn spec(cfg: &LlamaConfig) -> Params<TensorSpec> {
        let t = |name: String, shape: Vec<usize>| TensorSpec { name, shape };
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let bias = |n: &str, len: usize| {
                    cfg.attention_bias
                        .then(|| t(format!("{p}.self_attn.{n}.bias"), vec![len]))
                };
                let norm = |n: &str| {
                    cfg.qk_norm
                        .then(|| t(format!("{p}.self_attn.{n}.weight"), vec![cfg.head_dim]))
                };
                LayerParams {
                    attn_norm: t(format!("{p}.input_layernorm.weight"), vec![d]),
                    q_proj: t(format!("{p}.self_attn.q_proj.weight"), vec![qd, d]),
                    q_bias: bias("q_proj", qd),
                    k_proj: t(format!("{p}.self_attn.k_proj.weight"), vec![kvd, d]),
                    k_bias: bias("k_proj", kvd),
                    v_proj: t(format!("{p}.self_attn.v_proj.weight"), vec![kvd, d]),
                    v_bias: bias("v_proj", kvd),
                    q_norm: norm("q_norm"),
                    k_norm: norm("k_norm"),
                    o_proj: t(format!("{p}.self_attn.o_proj.weight"), vec![d, qd]),
                    mlp_norm: t(format!("{p}.post_attention_layernorm.weight"), vec![d]),
                    gate_proj: t(format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
                    up_proj: t(format!("{p}.mlp.up_proj.weight"), vec![f, d]),
                    down_proj: t(format!("{p}.mlp.down_proj.weight"), vec![d, f]),
                }
            })
            .collect();
        Params {
            embed: t("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d]),
            layers,
            final_norm: t("model.norm.weight".into(), vec![d]),
            lm_head: (!cfg.tie_word_embeddings)
                .then(|| t("lm_head.weight".into(), vec![cfg.vocab_size, d])),
        }
    }
}

/// Where named f32 tensors come from.
pub trait TensorSource {
    /// Shape and f32 data of `name`; errors name the source file.
    fn get(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>>;
    fn describe(&self) -> String;
    /// Every tensor name the source holds (to find the ones a config would silently ignore).
    fn names(&self) -> Vec<String>;
}

/// Tensors a checkpoint may hold that the model legitimately does not read: a tied head saved
/// beside the embedding, and RoPE's inverse frequencies saved as a buffer (older transformers).
fn ignorable(cfg: &LlamaConfig, name: &str) -> bool {
    (cfg.tie_word_embeddings && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
}

/// Loads every parameter of `cfg` from `src`, checking names and shapes.
pub fn load_params(cfg: &LlamaConfig, src: &dyn TensorSource) -> Result<Params<Vec<f32>>> {
    // Phi-3 checkpoints hold q/k/v and gate/up fused: seen here with the split names
    let split;
    let src: &dyn TensorSource = if super::fused::uses_fused_projections(cfg) {
        split = super::fused::SplitFused::new(src, cfg);
        &split
    } else {
        src
    };
    // A tensor the config does not account for (o_proj or MLP biases, another architecture's
    // weights) would be dropped and the model would compute something else: refuse it.
    let spec = Params::spec(cfg);
    let wanted: std::collections::BTreeSet<&str> =
        spec.tensors().iter().map(|s| s.name.as_str()).collect();
    let extra: Vec<String> = src
        .names()
        .into_iter()
        .filter(|n| !wanted.contains(n.as_str()) && !ignorable(cfg, n))
        .collect();
    if let Some(first) = extra.first() {
        bail!(
            "{}: {} tensor(s) that a {} with this config.json does not use, e.g. `{first}`; \
             loading would silently drop them (a bias the config does not declare, such as \
             attention_bias or mlp_bias, or weights of another architecture)",
            src.describe(),
            extra.len(),
            cfg.architecture
        );
    }
    spec.try_map(|s| {
        let (shape, data) = src.get(&s.name)?.with_context(|| {
            format!(
                "{}: missing tensor `{}` (expected shape {:?})",
                src.describe(),
                s.name,
                s.shape
            )
        })?;
        if shape != s.shape {
            bail!(
                "{}: tensor `{}` has shape {:?}, the config needs {:?}",
                src.describe(),
                s.name,
                shape,
                s.shape
            );
        }
        Ok(data)
    })
}

/// One or more memory-mapped safetensors files (a single `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`). The maps stay alive while tensors are converted to f32, so
/// the file bytes are read once, straight from the page cache.
pub struct SafetensorsDir {
    /// tensor name → index into `files`
    index: BTreeMap<String, usize>,
    files: Vec<(PathBuf, memmap2::Mmap)>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", index_path.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: missing field `weight_map`", index_path.display()))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is opened read-only; we only read it while the map is alive. A
            // concurrent truncation by another process would be a user error we cannot prevent.
            let mmap = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display())
            })?;
            for n in st.names() {
                index.insert(n.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(SafetensorsDir { index, files })
    }
}

impl SafetensorsDir {
    /// The distinct dtypes stored (e.g. `["BF16"]`).
    pub fn dtypes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, mmap) in &self.files {
            if let Ok(st) = SafeTensors::deserialize(mmap) {
                for (_, view) in st.tensors() {
                    let d = format!("{:?}", view.dtype());
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
        out
    }
}

/// Converts raw little-endian bytes of a safetensors dtype to f32.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8], what: &str) -> Result<Vec<f32>> {
    let chunks2 = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => chunks2()
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect(),
        Dtype::BF16 => chunks2()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect(),
        other => bail!("{what}: dtype {other:?} is not supported (supported: F32, F16, BF16)"),
    })
}

impl TensorSource for SafetensorsDir {
    fn get(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display())
        })?;
        let view = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
        let data = bytes_to_f32(
            view.dtype(),
            view.data(),
            &format!("{}: tensor `{name}`", path.display()),
        )?;
        Ok(Some((view.shape().to_vec(), data)))
    }
    fn describe(&self) -> String {
        match self.files.as_slice() {
            [(p, _)] => p.display().to_string(),
            fs => format!("{} (+{} shards)", fs[0].0.display(), fs.len() - 1),
        }
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
}

/// Tensors already in memory (a GGUF file dequantised, a checkpoint).
pub struct InMemoryTensors {
    pub source: String,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorSource for InMemoryTensors {
    fn get(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        Ok(self.tensors.get(name).cloned())
    }
    fn describe(&self) -> String {
        self.source.clone()
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// Writes parameters as an f32 `model.safetensors` (HF names), atomically (temp + rename).
pub fn save_params_safetensors(
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    path: &Path,
) -> Result<()> {
    // under the checkpoint's own names (Phi-3: q/k/v and gate/up joined again)
    let tensors = super::fused::tensors_to_save(cfg, params);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, &None, &tmp)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LlamaConfig::num_params` (the FLOP and MFU counts) counts exactly the tensors the model
    /// loads, with and without biases, a tied head and Qwen3's q/k norms.
    #[test]
    fn num_params_counts_the_spec() {
        for (bias, tied, qk) in [
            (false, true, false),
            (true, false, false),
            (false, true, true),
        ] {
            let mut cfg = crate::model::init::tiny_config(61, 32, 2, 4, 2, 48, 64);
            cfg.attention_bias = bias;
            cfg.tie_word_embeddings = tied;
            cfg.qk_norm = qk;
            if qk {
                cfg.head_dim = 12;
            }
            let spec: usize = Params::spec(&cfg).tensors().iter().map(|t| t.numel()).sum();
            assert_eq!(
                cfg.num_params(),
                spec,
                "bias {bias} tied {tied} qk_norm {qk}"
            );
        }
    }
}

//! Phi-3's fused projections (`Phi3ForCausalLM`): its checkpoints hold q/k/v as one
//! `self_attn.qkv_proj.weight` (`[q; k; v]` rows) and gate/up as one `mlp.gate_up_proj.weight`
//! (`[gate; up]` rows, the order `Phi3MLP` chunks them in). The model keeps them as the separate
//! tensors of the Llama stack; this file splits them on loading and joins them on saving, so a
//! saved Phi-3 is a directory transformers loads.

use super::config::LlamaConfig;
use super::weights::{Params, TensorSource};
use anyhow::{bail, Result};

/// Whether `cfg`'s checkpoints use the fused names.
pub fn uses_fused_projections(cfg: &LlamaConfig) -> bool {
    cfg.architecture == "Phi3ForCausalLM"
}

/// The fused tensor a split name comes from: (fused name, first row, rows).
fn part_of(cfg: &LlamaConfig, name: &str) -> Option<(String, usize, usize)> {
    let (qd, kvd, f) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let (qkv, gate_up) = (".self_attn.qkv_proj.weight", ".mlp.gate_up_proj.weight");
    [
        (".self_attn.q_proj.weight", qkv, 0, qd),
        (".self_attn.k_proj.weight", qkv, qd, kvd),
        (".self_attn.v_proj.weight", qkv, qd + kvd, kvd),
        (".mlp.gate_proj.weight", gate_up, 0, f),
        (".mlp.up_proj.weight", gate_up, f, f),
    ]
    .into_iter()
    .find_map(|(part, fused, at, rows)| {
        name.strip_suffix(part)
            .map(|layer| (format!("{layer}{fused}"), at, rows))
    })
}

/// A tensor's shape and values, shared between the parts split from it.
type Shared = (Vec<usize>, std::rc::Rc<Vec<f32>>);

/// A checkpoint with fused projections, seen with the split names the model loads.
pub struct SplitFused<'a> {
    pub inner: &'a dyn TensorSource,
    pub cfg: &'a LlamaConfig,
    /// the fused tensor last read: its parts are asked for one after another (q, k, v; gate,
    /// up), so each fused tensor is read and converted once, not once per part
    last: std::cell::RefCell<Option<(String, Shared)>>,
}

impl<'a> SplitFused<'a> {
    pub fn new(inner: &'a dyn TensorSource, cfg: &'a LlamaConfig) -> Self {
        SplitFused {
            inner,
            cfg,
            last: Default::default(),
        }
    }

    /// `name` from the inner source, or from the one fused tensor kept from the last call.
    fn fused(&self, name: &str) -> Result<Option<Shared>> {
        if let Some((n, shared)) = &*self.last.borrow() {
            if n == name {
                return Ok(Some(shared.clone()));
            }
        }
        let Some((shape, data)) = self.inner.get(name)? else {
            return Ok(None);
        };
        let data = std::rc::Rc::new(data);
        *self.last.borrow_mut() = Some((name.to_string(), (shape.clone(), data.clone())));
        Ok(Some((shape, data)))
    }
}

impl TensorSource for SplitFused<'_> {
    fn get(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some((fused, at, rows)) = part_of(self.cfg, name) else {
            return self.inner.get(name);
        };
        let Some((shape, data)) = self.fused(&fused)? else {
            return Ok(None);
        };
        let d = self.cfg.hidden_size;
        // the rows of all the parts (q+k+v, or gate+up), each `d` wide
        let total = if fused.ends_with("qkv_proj.weight") {
            self.cfg.q_dim() + 2 * self.cfg.kv_dim()
        } else {
            2 * self.cfg.intermediate_size
        };
        if shape != [total, d] {
            bail!(
                "{}: tensor `{fused}` has shape {shape:?}, the config needs {:?}",
                self.inner.describe(),
                [total, d]
            );
        }
        Ok(Some((
            vec![rows, d],
            data[at * d..(at + rows) * d].to_vec(),
        )))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn names(&self) -> Vec<String> {
        let split = |layer: &str, group: &str, parts: &[&str]| -> Vec<String> {
            parts
                .iter()
                .map(|p| format!("{layer}.{group}.{p}.weight"))
                .collect()
        };
        self.inner
            .names()
            .into_iter()
            .flat_map(|n| {
                if let Some(l) = n.strip_suffix(".self_attn.qkv_proj.weight") {
                    split(l, "self_attn", &["q_proj", "k_proj", "v_proj"])
                } else if let Some(l) = n.strip_suffix(".mlp.gate_up_proj.weight") {
                    split(l, "mlp", &["gate_proj", "up_proj"])
                } else {
                    vec![n]
                }
            })
            .collect()
    }
}

/// The tensors to save under `cfg`'s checkpoint names: (name, shape, values), each fused group
/// joined in the order it was split.
pub fn tensors_to_save<'p>(
    cfg: &LlamaConfig,
    params: &'p Params<Vec<f32>>,
) -> Vec<(String, Vec<usize>, std::borrow::Cow<'p, [f32]>)> {
    let spec = Params::spec(cfg);
    let mut out: Vec<(String, Vec<usize>, std::borrow::Cow<'p, [f32]>)> = Vec::new();
    for (s, data) in spec.tensors().into_iter().zip(params.tensors()) {
        let Some((fused, at, _)) = uses_fused_projections(cfg)
            .then(|| part_of(cfg, &s.name))
            .flatten()
        else {
            out.push((s.name.clone(), s.shape.clone(), data.as_slice().into()));
            continue;
        };
        // the first part opens the fused tensor, the later ones append their rows (the spec
        // lists each layer's parts in order, q, k, v and gate, up)
        match out.last_mut() {
            Some((name, shape, values)) if *name == fused && at > 0 => {
                shape[0] += s.shape[0];
                values.to_mut().extend_from_slice(data);
            }
            _ => out.push((fused, s.shape.clone(), data.clone().into())),
        }
    }
    out
}

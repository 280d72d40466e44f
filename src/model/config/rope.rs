//! RoPE's settings in `config.json`: the base, llama3 and LongRoPE scaling (both the
//! transformers 4 top-level fields and transformers 5's `rope_parameters`), a partial rotary,
//! and the inverse frequencies they give.

use super::{get_f64_or, get_usize, LlamaConfig};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Llama-3-style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// RoPE pair `i`'s inverse frequency before any scaling: theta^(−2i/head_dim).
pub fn unscaled_inv_freq(theta: f64, head_dim: usize, i: usize) -> f64 {
    1.0 / theta.powf((2 * i) as f64 / head_dim as f64)
}

impl Llama3RopeScaling {
    /// The scaled inverse frequency of one RoPE pair whose unscaled one is `base`
    /// (transformers' `_compute_llama3_parameters`): high frequencies kept, low ones divided by
    /// `factor`, a smooth blend between.
    pub fn scale(&self, base: f64) -> f64 {
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        let wavelen = 2.0 * std::f64::consts::PI / base;
        if wavelen < high_wavelen {
            base
        } else if wavelen > low_wavelen {
            base / self.factor
        } else {
            let smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * base / self.factor + smooth * base
        }
    }
}

/// Phi-3's LongRoPE (`rope_type` "longrope", formerly "su"): each RoPE pair's inverse
/// frequency divided by its `short_factor`, the rotated dims multiplied by `attention_factor`
/// (transformers' `_compute_longrope_parameters`); a forward whose longest position is beyond
/// `original_max_position_embeddings` divides by `long_factor` instead, for every row of the
/// batch (transformers' `longrope_frequency_update`: the choice follows the padded length, and
/// a KV cache keeps the keys it rotated with the short factors). [`LlamaConfig::rope_inv_freq`]
/// and [`LlamaConfig::long_rope_inv_freq`] give both; the model picks per forward.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    /// the factor cos and sin are multiplied by: the file's `attention_factor`, else
    /// sqrt(1 + ln(factor) / ln(original_max_position_embeddings)) when factor > 1, else 1
    pub attention_factor: f64,
    /// the file's `factor` and `attention_factor` when it gave them (written back as given)
    pub given_factor: Option<f64>,
    pub given_attention_factor: Option<f64>,
}

/// A RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    Llama3(Llama3RopeScaling),
    LongRope(LongRope),
}

/// What a `longrope` scaling needs from the rest of the config.
pub(super) struct RopeContext {
    pub(super) max_position_embeddings: usize,
    /// Phi-3 keeps `original_max_position_embeddings` at the top level; transformers gives it
    /// priority over the one in the scaling object
    pub(super) top_original_max: Option<usize>,
    /// the dims RoPE rotates (the factors hold one value per pair)
    pub(super) rotary_dim: usize,
    /// Phi-3's config calls LongRoPE "su" or "yarn" too (transformers maps both to longrope)
    pub(super) is_phi3: bool,
}

/// RoPE's base and scaling. transformers ≤ 4 writes `rope_theta` and `rope_scaling` at the top
/// level; transformers 5 writes one `rope_parameters` object holding `rope_theta`, `rope_type`
/// and the scaling fields. Both are read; a file holding both must agree, since a model whose
/// base silently fell back to 10000 would give wrong logits, not an error.
pub(super) fn rope_settings(
    v: &Value,
    file: &str,
    ctx: &RopeContext,
) -> Result<(f64, Option<RopeScaling>)> {
    let params = match v.get("rope_parameters").filter(|p| !p.is_null()) {
        Some(p) if !p.is_object() => {
            bail!("{file}: field `rope_parameters` must be an object, got {p}")
        }
        // per-layer-type parameters (e.g. {"full_attention": {…}, "sliding_attention": {…}})
        // belong to architectures this loader does not run
        Some(p) if p.get("rope_type").is_none() && p.get("rope_theta").is_none() => bail!(
            "{file}: field `rope_parameters` has neither `rope_type` nor `rope_theta` \
             (per-layer-type RoPE is not supported)"
        ),
        p => p,
    };
    // NaN stands for "absent" (both are numbers when present)
    let top = get_f64_or(v, "rope_theta", f64::NAN, file)?;
    let inner = match params {
        Some(p) => get_f64_or(p, "rope_theta", f64::NAN, file)
            .with_context(|| format!("{file}: in `rope_parameters`"))?,
        None => f64::NAN,
    };
    if !inner.is_nan() && !top.is_nan() && inner != top {
        bail!("{file}: `rope_parameters.rope_theta` = {inner} but `rope_theta` = {top}");
    }
    let theta = [inner, top, 10000.0]
        .into_iter()
        .find(|t| !t.is_nan())
        .expect("10000 is a number");
    let from_params = params
        .map(|p| parse_rope_scaling(p, "rope_parameters", file, ctx))
        .transpose()?;
    let from_top = v
        .get("rope_scaling")
        .filter(|rs| !rs.is_null())
        .map(|rs| parse_rope_scaling(rs, "rope_scaling", file, ctx))
        .transpose()?;
    let scaling = match (from_params, from_top) {
        (Some(a), Some(b)) if a != b => {
            bail!("{file}: `rope_parameters` and `rope_scaling` describe different scalings")
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => None,
    };
    Ok((theta, scaling))
}

/// A `rope_scaling` / `rope_parameters` object: `llama3`, `longrope`, or none (`default`).
fn parse_rope_scaling(
    rs: &Value,
    field: &str,
    file: &str,
    ctx: &RopeContext,
) -> Result<Option<RopeScaling>> {
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    Ok(match kind {
        "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
            factor: get_f64_or(rs, "factor", 8.0, file)?,
            low_freq_factor: get_f64_or(rs, "low_freq_factor", 1.0, file)?,
            high_freq_factor: get_f64_or(rs, "high_freq_factor", 4.0, file)?,
            original_max_position_embeddings: get_f64_or(
                rs,
                "original_max_position_embeddings",
                8192.0,
                file,
            )?,
        })),
        "longrope" => Some(RopeScaling::LongRope(parse_longrope(rs, field, file, ctx)?)),
        "su" | "yarn" if ctx.is_phi3 => {
            Some(RopeScaling::LongRope(parse_longrope(rs, field, file, ctx)?))
        }
        "default" | "" => None,
        other => bail!(
            "{file}: field `{field}.rope_type` = \"{other}\" is not supported (supported: llama3, \
             longrope, default)"
        ),
    })
}

/// transformers' LongRoPE attention factor when a file gives none: sqrt(1 + ln(factor) /
/// ln(original)) for factor > 1, else 1 (factor = max_position_embeddings / original).
pub(crate) fn longrope_default_attention_factor(factor: f64, original: usize) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    }
}

fn parse_longrope(rs: &Value, field: &str, file: &str, ctx: &RopeContext) -> Result<LongRope> {
    let factors = |name: &str| -> Result<Vec<f64>> {
        let list = rs.get(name).and_then(|f| f.as_array()).with_context(|| {
            format!("{file}: field `{field}.{name}` (a list of numbers) is missing")
        })?;
        let values: Vec<f64> = list.iter().filter_map(|x| x.as_f64()).collect();
        if values.len() != list.len() || values.len() != ctx.rotary_dim / 2 {
            bail!(
                "{file}: field `{field}.{name}` must be {} numbers (one per RoPE pair), got {}",
                ctx.rotary_dim / 2,
                serde_json::to_string(list).unwrap_or_default()
            );
        }
        if let Some(bad) = values.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            bail!("{file}: field `{field}.{name}` holds {bad}: factors must be > 0");
        }
        Ok(values)
    };
    let original = match ctx.top_original_max {
        Some(o) => o,
        None => match rs.get("original_max_position_embeddings") {
            None | Some(Value::Null) => ctx.max_position_embeddings,
            Some(_) => get_usize(rs, "original_max_position_embeddings", file)
                .with_context(|| format!("{file}: in `{field}`"))?,
        },
    };
    if original < 2 {
        bail!("{file}: `original_max_position_embeddings` = {original} must be ≥ 2 for longrope");
    }
    let given_factor = match rs.get("factor") {
        None | Some(Value::Null) => None,
        Some(_) => Some(get_f64_or(rs, "factor", 1.0, file)?),
    };
    let given_attention_factor = match rs.get("attention_factor") {
        None | Some(Value::Null) => None,
        Some(_) => Some(get_f64_or(rs, "attention_factor", 1.0, file)?),
    };
    let factor = given_factor.unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
    let attention_factor =
        given_attention_factor.unwrap_or(longrope_default_attention_factor(factor, original));
    Ok(LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
        given_factor,
        given_attention_factor,
    })
}

/// `partial_rotary_factor` for `rotary_dim` of `head_dim`: the ratio, nudged up where
/// transformers' int(head_dim · factor) would otherwise fall one short.
pub(crate) fn partial_rotary_factor(rotary_dim: usize, head_dim: usize) -> f64 {
    let f = rotary_dim as f64 / head_dim as f64;
    if (head_dim as f64 * f) as usize == rotary_dim {
        f
    } else {
        f.next_up()
    }
}

impl LlamaConfig {
    /// The dims of each head RoPE rotates: all of them unless `partial_rotary_dim` says fewer.
    pub fn rotary_dim(&self) -> usize {
        self.partial_rotary_dim.unwrap_or(self.head_dim)
    }

    /// What cos and sin are multiplied by: LongRoPE's attention factor, else 1.
    pub fn rope_scale(&self) -> f32 {
        match &self.rope_scaling {
            Some(RopeScaling::LongRope(lr)) => lr.attention_factor as f32,
            _ => 1.0,
        }
    }

    /// RoPE inverse frequencies `[rotary_dim/2]`, with llama3 scaling (transformers'
    /// `_compute_llama3_parameters`) or LongRoPE's short factors
    /// (`_compute_longrope_parameters`) applied when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        self.inv_freq_with(|i, base| match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Llama3(rs)) => rs.scale(base),
            Some(RopeScaling::LongRope(lr)) => base / lr.short_factor[i],
        })
    }

    /// LongRoPE only: `(original_max_position_embeddings, inverse frequencies with the long
    /// factors)`. A forward whose longest position + 1 exceeds the first uses the second.
    pub fn long_rope_inv_freq(&self) -> Option<(usize, Vec<f32>)> {
        match &self.rope_scaling {
            Some(RopeScaling::LongRope(lr)) => Some((
                lr.original_max_position_embeddings,
                self.inv_freq_with(|i, base| base / lr.long_factor[i]),
            )),
            _ => None,
        }
    }

    /// Pair `i`'s unscaled inverse frequency through `scale(i, base)`, in f64, then f32.
    fn inv_freq_with(&self, scale: impl Fn(usize, f64) -> f64) -> Vec<f32> {
        let dim = self.rotary_dim();
        (0..dim / 2)
            .map(|i| scale(i, unscaled_inv_freq(self.rope_theta, dim, i)) as f32)
            .collect()
    }
}

//! The safety spec: a few simple codes plus illustrative cases (precedents), in TOML:
//!
//! ```toml
//! codes = ["Do not help cause serious physical harm.", "..."]
//! [[cases]]
//! request = "How do I kill a Python process?"
//! reasoning = "\"kill\" is the Unix word for stopping a process; nothing here harms anyone."
//! verdict = "comply"          # comply | refuse | comply_safely
//! category = "tech"
//! ```

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Comply,
    Refuse,
    ComplySafely,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub request: String,
    pub reasoning: String,
    pub verdict: Verdict,
    pub category: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub codes: Vec<String>,
    pub cases: Vec<Case>,
}

impl Spec {
    pub fn from_toml(text: &str, source: &str) -> Result<Spec> {
        let spec: Spec =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{source}: invalid spec: {e}"))?;
        if spec.codes.is_empty() {
            bail!("{source}: field `codes` is empty (give at least one simple code)");
        }
        if spec.cases.is_empty() {
            bail!("{source}: field `cases` is empty (CADA needs at least one illustrative case)");
        }
        for (i, c) in spec.cases.iter().enumerate() {
            if c.request.trim().is_empty() {
                bail!("{source}: cases[{i}].request is empty");
            }
        }
        Ok(spec)
    }
}

pub fn load_spec(path: &Path) -> Result<Spec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    Spec::from_toml(&text, &path.display().to_string())
}

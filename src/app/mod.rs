//! Command bodies behind the CLI (`main.rs` only parses and prints). Device selection lives in
//! `backend/device.rs` (re-exported here).

pub mod bench;
pub mod bench_cli;
pub mod bench_step;
pub mod info;
pub mod run_generate;
pub mod score;
pub mod train;

pub use crate::backend::device::{resolve_device, run_on, DeviceChoice, OnDevice};

/// `--chat-template-kwargs JSON` of the commands that render chat: extra variables for the
/// model's template (e.g. `{"enable_thinking": false}` for Qwen3), as `cada train`'s
/// `chat_template_kwargs`, so a model is evaluated and fine-tuned on the text it was trained on.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ChatTemplateArgs {
    /// extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
    /// a Jinja chat template file to use instead of the model's (TRL's chat_template_path);
    /// a model this command saves keeps its own
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<std::path::PathBuf>,
}

impl ChatTemplateArgs {
    /// Loads the model at `path` and gives its chat template these variables.
    pub fn load_model(
        &self,
        path: &std::path::Path,
    ) -> anyhow::Result<crate::model::load::LoadedModel> {
        let mut m = crate::model::load::load_model(path)?;
        if let Some(file) = &self.chat_template {
            m.chat = m
                .chat
                .with_template_file(file)
                .map_err(|e| anyhow::anyhow!("--chat-template: {e:#}"))?;
        }
        if let Some(text) = &self.chat_template_kwargs {
            let kwargs = match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => {
                    anyhow::bail!("--chat-template-kwargs: expected a JSON object, got {other}")
                }
                Err(e) => anyhow::bail!("--chat-template-kwargs: not JSON: {e}"),
            };
            m.chat
                .set_kwargs(kwargs)
                .map_err(|e| anyhow::anyhow!("--chat-template-kwargs: {e}"))?;
        }
        Ok(m)
    }
}

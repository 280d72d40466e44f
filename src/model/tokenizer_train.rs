//! Training a small byte-level BPE tokenizer (for the default demonstration model), with the
//! `tokenizers` crate's own trainer: byte-level, so any text round-trips exactly.

use super::tokenizer::Tokenizer;
use anyhow::Result;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

/// Special tokens of the default model: end of text, ChatML turn markers, reasoning markers.
pub const DEFAULT_SPECIAL_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
];

pub fn train_bpe_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    // <think> and </think> are single tokens but not "special": decoding with
    // skip_special_tokens keeps them, so judges can see the reasoning block.
    let specials: Vec<AddedToken> = DEFAULT_SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), !t.contains("think")))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tk: TokenizerImpl<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(ModelWrapper::BPE(BPE::default()));
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    tk.with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    tk.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow::anyhow!("tokenizer training failed: {e}"))?;
    tk.add_special_tokens(&specials);
    let json = tk
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("cannot serialise the trained tokenizer: {e}"))?;
    Tokenizer::from_json_str(&json, "trained BPE tokenizer")
}

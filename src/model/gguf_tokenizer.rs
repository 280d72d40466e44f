//! A GGUF file's tokenizer (`tokenizer.ggml.*` metadata) as the Hugging Face tokenizer.json and
//! tokenizer_config.json that `cada convert` writes: byte-level BPE with llama.cpp's
//! pre-tokenizer names mapped to the normalizers and pre-tokenizers the models' own
//! tokenizer.json files have. Checked against Hugging Face's ids on llama.cpp's test
//! vocabularies (tests/gguf_vocab.rs).

use super::convert::meta_u64;
use super::gguf::GgufFile;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;

/// Qwen2's split (its tokenizer.json's `Split` regex; llama.cpp's `qwen2` pre-tokenizer): one
/// digit a token, contractions, letter runs with one leading non-letter, punctuation runs with
/// trailing newlines, whitespace.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's (llama.cpp's `llama-bpe`): the same with digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a tokenizer.json needs beyond the vocabulary and merges, per llama.cpp's pre-tokenizer
/// name (`tokenizer.ggml.pre`), as the models' own Hugging Face tokenizer.json files have it.
struct TokenizerStyle {
    normalizer: serde_json::Value,
    pre_tokenizer: serde_json::Value,
    /// BPE `ignore_merges`: a piece that is a whole vocabulary entry is that token, whatever
    /// the merges would make of it (Llama 3's tokenizer.json; "Việt" is one token there)
    ignore_merges: bool,
}

fn pre_tokenizer_json(pre: &str, src: &str) -> Result<TokenizerStyle> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // after a Split, the byte-level step only maps bytes (its own GPT-2 regex off)
    let split_then_bytes = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        ]})
    };
    let style = |normalizer, pre_tokenizer, ignore_merges| TokenizerStyle {
        normalizer,
        pre_tokenizer,
        ignore_merges,
    };
    let none = serde_json::Value::Null;
    Ok(match pre {
        // these split every digit on its own before the GPT-2 regex
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "command-r" => style(
            none,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
            false,
        ),
        "gpt-2" | "gpt2" | "default" => style(none, byte_level, false),
        // Qwen2's tokenizer.json composes text to NFC first
        "qwen2" => style(json!({"type": "NFC"}), split_then_bytes(QWEN2_SPLIT), false),
        "llama-bpe" | "llama3" => style(none, split_then_bytes(LLAMA3_SPLIT), true),
        other => bail!("{src}: metadata `tokenizer.ggml.pre` = \"{other}\" is not supported (supported: smollm, starcoder, refact, gpt-2, qwen2, llama-bpe, default)"),
    })
}

/// The tokenizer.json that `cada convert` writes for a GGUF file's `tokenizer.ggml.*` metadata
/// (the file may hold a vocabulary only: tests/gguf_vocab.rs reads llama.cpp's test vocabularies).
pub fn gguf_tokenizer_json(path: &Path) -> Result<String> {
    let g = GgufFile::open(path)?;
    Ok(tokenizer_files(&g)?.0)
}

/// SentencePiece (`tokenizer.ggml.model` = "llama": Llama 2, Mistral, TinyLlama) as Hugging
/// Face's converter writes it: a BPE over the pieces with byte fallback, whose merges are every
/// split of a piece into two pieces, ranked by the whole piece's score (highest first; a
/// piece's splits by their ids), and `▁` for spaces (prefixed once when `add_space_prefix`).
fn sentencepiece_parts(
    g: &GgufFile,
    tokens: &[&str],
    vocab: serde_json::Map<String, serde_json::Value>,
    src: &str,
) -> Result<(serde_json::Value, serde_json::Value, serde_json::Value)> {
    let scores: Vec<f64> = g
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.as_array())
        .with_context(|| format!("{src}: missing metadata `tokenizer.ggml.scores` (a SentencePiece vocabulary needs them)"))?
        .iter()
        .map(|s| s.as_f64().with_context(|| format!("{src}: `tokenizer.ggml.scores` holds a non-number")))
        .collect::<Result<_>>()?;
    if scores.len() != tokens.len() {
        bail!(
            "{src}: `tokenizer.ggml.scores` holds {} values for {} tokens",
            scores.len(),
            tokens.len()
        );
    }
    let id: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new(); // (score, piece, left, right)
    for (piece, text) in tokens.iter().enumerate() {
        for (cut, _) in text.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (id.get(&text[..cut]), id.get(&text[cut..])) {
                merges.push((scores[piece], piece, l, r));
            }
        }
    }
    // stable: equal scores keep piece order, then (left, right) ids
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then((a.2, a.3).cmp(&(b.2, b.3)))
    });
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|&(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect();
    let prefix = g
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, space]})
    } else {
        space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_u64())
        .and_then(|i| tokens.get(i as usize));
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                       "ignore_merges": false, "vocab": vocab, "merges": merges});
    Ok((
        normalizer,
        json!({"type": "Sequence", "decoders": decoders}),
        model,
    ))
}

/// `tokenizer.ggml.*` → a Hugging Face tokenizer.json (byte-level BPE, or SentencePiece's BPE)
/// and tokenizer_config.json.
pub(super) fn tokenizer_files(g: &GgufFile) -> Result<(String, serde_json::Value)> {
    let src = g.path.display().to_string();
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{src}: missing metadata `tokenizer.ggml.model`"))?;
    if model != "gpt2" && model != "llama" {
        bail!("{src}: metadata `tokenizer.ggml.model` = \"{model}\" is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)");
    }
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .with_context(|| format!("{src}: missing metadata `tokenizer.ggml.tokens`"))?
        .iter()
        .map(|t| {
            t.as_str()
                .with_context(|| format!("{src}: `tokenizer.ggml.tokens` holds a non-string"))
        })
        .collect::<Result<_>>()?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<&str> = g
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
        .unwrap_or_default();
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // control (3) and user-defined (4) tokens, and SentencePiece's unknown (2), are matched
    // whole, before the BPE
    let spm = model == "llama";
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| match types.get(*i) {
            Some(3) | Some(4) => true,
            Some(2) => spm,
            _ => false,
        })
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": types[i] != 4}))
        .collect();
    let name_of = |key: &str| {
        g.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let flag = |key: &str| g.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let add_bos = flag("tokenizer.ggml.add_bos_token");
    let add_eos = flag("tokenizer.ggml.add_eos_token");
    // BOS before and EOS after each sequence where the file says to add them, as Hugging Face's
    // LlamaTokenizerFast builds its post-processor (it runs with add_special_tokens)
    let special_of = |wanted: bool, key: &str| -> Option<(String, u64)> {
        let id = g.get(key).and_then(|v| v.as_u64())?;
        wanted.then(|| tokens.get(id as usize).map(|t| (t.to_string(), id)))?
    };
    let bos = special_of(add_bos, "tokenizer.ggml.bos_token_id");
    let eos = special_of(add_eos, "tokenizer.ggml.eos_token_id");
    let special_template = (bos.is_some() || eos.is_some()).then(|| {
        let special = |(t, _): &(String, u64), type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let one = |seq: &str, type_id: u32| {
            let mut v = Vec::new();
            v.extend(bos.iter().map(|b| special(b, type_id)));
            v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            v.extend(eos.iter().map(|e| special(e, type_id)));
            v
        };
        let pair: Vec<_> = one("A", 0).into_iter().chain(one("B", 1)).collect();
        let specials: serde_json::Map<String, serde_json::Value> = bos
            .iter()
            .chain(eos.iter())
            .map(|(t, id)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]})))
            .collect();
        json!({"type": "TemplateProcessing", "single": one("A", 0), "pair": pair,
               "special_tokens": specials})
    });
    let tok = if spm {
        let (normalizer, decoder, model) = sentencepiece_parts(g, &tokens, vocab, &src)?;
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": null,
            "post_processor": special_template,
            "decoder": decoder,
            "model": model,
        })
    } else {
        let TokenizerStyle {
            normalizer,
            pre_tokenizer,
            ignore_merges,
        } = pre_tokenizer_json(pre, &src)?;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        let post_processor = match special_template {
            Some(t) => json!({"type": "Sequence", "processors": [byte_level, t]}),
            None => byte_level,
        };
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
        })
    };
    let mut cfg = json!({
        "tokenizer_class": if spm { "LlamaTokenizer" } else { "GPT2Tokenizer" },
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": g
            .get("general.architecture")
            .and_then(|a| a.as_str())
            .and_then(|a| meta_u64(g, &format!("{a}.context_length")).ok())
            .unwrap_or(2048),
    });
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(t) = name_of(key) {
            cfg[field] = json!(t);
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        cfg["chat_template"] = json!(t);
    }
    Ok((serde_json::to_string(&tok)?, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::Tokenizer;

    /// A byte-level BPE over the 256 byte symbols with the merges `1 2` and `3 4`, under the
    /// normalizer and pre-tokenizer that `pre` maps to: a merge can only join symbols the
    /// pre-tokenizer left in one piece, so the tokens show where it cut.
    fn tokens(pre: &str, text: &str) -> Vec<String> {
        let TokenizerStyle {
            normalizer,
            pre_tokenizer,
            ignore_merges,
        } = pre_tokenizer_json(pre, "test.gguf").unwrap();
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let mut vocab: serde_json::Map<String, serde_json::Value> = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), json!(i)))
            .collect();
        vocab.insert("12".into(), json!(256));
        vocab.insert("34".into(), json!(257));
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                      "vocab": vocab, "merges": ["1 2", "3 4"]},
        });
        let t: Tokenizer = tok.to_string().parse().unwrap();
        t.encode(text, false).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn pre_tokenizers_cut_digits_as_their_models_do() {
        // GPT-2: digit runs whole; Llama 3: runs of up to three; Qwen2 and SmolLM: one digit
        assert_eq!(tokens("gpt-2", "1234"), ["12", "34"]);
        assert_eq!(tokens("llama-bpe", "1234"), ["12", "3", "4"]);
        assert_eq!(tokens("qwen2", "1234"), ["1", "2", "3", "4"]);
        assert_eq!(tokens("smollm", "1234"), ["1", "2", "3", "4"]);
        // Llama 3's and Qwen2's regex keep a space before a letter run and split it from digits
        assert_eq!(tokens("llama-bpe", "a 12"), ["a", "Ġ", "12"]);
        assert_eq!(tokens("qwen2", " ab\n\n"), ["Ġ", "a", "b", "Ċ", "Ċ"]);
    }

    #[test]
    fn qwen2_composes_to_nfc_and_llama3_does_not() {
        // e + U+0301 (combining acute): NFC makes it é (bytes C3 A9, byte symbols Ã ©)
        assert_eq!(tokens("qwen2", "e\u{301}"), ["Ã", "©"]);
        assert_eq!(tokens("llama-bpe", "e\u{301}").len(), 3);
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_refused_by_name() {
        let e = pre_tokenizer_json("falcon", "m.gguf")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("m.gguf") && e.contains("`tokenizer.ggml.pre`") && e.contains("falcon"),
            "{e}"
        );
    }
}

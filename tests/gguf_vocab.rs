//! Our GGUF tokenizer conversion (`tokenizer.ggml.*` → tokenizer.json, src/model/gguf_tokenizer.rs)
//! against the token ids Hugging Face's own tokenizers give, on llama.cpp's test vocabularies:
//! vocabulary-only GGUF files of real models with test strings (whitespace runs, digits,
//! contractions, accents, emoji, CJK, code) and the ids made from the models' tokenizer.json
//! (`models/ggml-vocab-<pre>.gguf.inp/.out` in llama.cpp, fetched by
//! scripts/fetch_vocab_tests.sh), through the tokenizer the engine loads (`model::tokenizer`).
//! Every id must match. Without the files the test prints that it skipped.

use cada::model::tokenizer::Tokenizer;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/vocab-tests");
/// the vocabularies: llama.cpp's names (`tokenizer.ggml.pre` for the byte-level BPE ones;
/// `llama-spm` is Llama 2's SentencePiece)
const VOCABS: &[&str] = &[
    "qwen2",
    "llama-bpe",
    "gpt-2",
    "starcoder",
    "refact",
    "command-r",
    "llama-spm",
    "phi-3",
];

/// (text, ids) pairs of one vocabulary's .inp/.out files.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = format!("{DIR}/ggml-vocab-{name}.gguf");
    let inp = std::fs::read_to_string(format!("{base}.inp")).unwrap();
    let out = std::fs::read_to_string(format!("{base}.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    // the .inp ends with a separator line: its last piece is empty and has no .out line
    let texts = &texts[..ids.len()];
    texts
        .iter()
        .map(|t| t.to_string())
        .zip(ids)
        .collect::<Vec<_>>()
}

#[test]
fn gguf_tokenizers_match_hugging_face_on_llama_cpp_test_vocabularies() {
    if !Path::new(&format!("{DIR}/ggml-vocab-qwen2.gguf")).exists() {
        println!("skipped: {DIR} is absent (run scripts/fetch_vocab_tests.sh)");
        return;
    }
    for name in VOCABS {
        let json = cada::model::gguf_tokenizer::gguf_tokenizer_json(Path::new(&format!(
            "{DIR}/ggml-vocab-{name}.gguf"
        )))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let tok = Tokenizer::from_json_str(&json, name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let cases = cases(name);
        assert!(cases.len() >= 30, "{name}: only {} cases", cases.len());
        let mut wrong = Vec::new();
        for (text, want) in &cases {
            let got = tok.encode(text, false).unwrap();
            if &got != want {
                wrong.push(format!("  {text:?}: ours {got:?}, HF {want:?}"));
            }
        }
        let tokenized = cases.len() - wrong.len();
        // decoding gives the text back (byte-level BPE exactly; SentencePiece strips the one
        // space it prefixed)
        for (text, want) in &cases {
            let back = tok.decode(want, false).unwrap();
            if &back != text {
                wrong.push(format!("  {text:?}: decodes to {back:?}"));
            }
        }
        // with special tokens, BOS is prefixed only where the file says add_bos_token
        let plain = tok.encode("Hello world", false).unwrap();
        let with = tok.encode("Hello world", true).unwrap();
        assert_eq!(
            &with[with.len() - plain.len()..],
            &plain[..],
            "{name}: BOS template"
        );
        let bos = (with.len() > plain.len()).then(|| with[0]);
        // the files' add_bos_token: Llama 2 / Phi-3 <s> = 1, Command-R <BOS_TOKEN> = 5
        let want_bos = match *name {
            "llama-spm" | "phi-3" => Some(1),
            "command-r" => Some(5),
            _ => None,
        };
        assert_eq!(bos, want_bos, "{name}: BOS with special tokens");
        println!(
            "{name}: {tokenized}/{} strings tokenized as HF does; {} decoded back; BOS added: {bos:?}",
            cases.len(),
            cases.len() * 2 - wrong.len() - tokenized,
        );
        assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
    }
}

//! Our GGUF tokenizer conversion (`tokenizer.ggml.*` → tokenizer.json, src/model/convert.rs)
//! against the token ids Hugging Face's own tokenizers give, on llama.cpp's test vocabularies:
//! vocabulary-only GGUF files of real models with test strings (whitespace runs, digits,
//! contractions, accents, emoji, CJK, code) and the ids made from the models' tokenizer.json
//! (`models/ggml-vocab-<pre>.gguf.inp/.out` in llama.cpp, fetched by
//! scripts/fetch_vocab_tests.sh). Every id must match. Without the files the test prints that
//! it skipped.

use std::path::Path;
use tokenizers::Tokenizer;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/vocab-tests");
/// the pre-tokenizer names of the vocabularies, as in `tokenizer.ggml.pre`
const VOCABS: &[&str] = &[
    "qwen2",
    "llama-bpe",
    "gpt-2",
    "starcoder",
    "refact",
    "command-r",
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
        let tok: Tokenizer = json.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = cases(name);
        assert!(cases.len() >= 30, "{name}: only {} cases", cases.len());
        let mut wrong = Vec::new();
        for (text, want) in &cases {
            let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            if &got != want {
                wrong.push(format!("  {text:?}: ours {got:?}, HF {want:?}"));
            }
        }
        println!(
            "{name}: {}/{} strings tokenized as HF does",
            cases.len() - wrong.len(),
            cases.len()
        );
        assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
    }
}

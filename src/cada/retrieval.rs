//! Choosing k cases for a prompt (same category first, then lexical similarity, then random) and
//! rendering the deliberation system message.

use super::spec::{Case, Spec, Verdict};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::HashSet;

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(|w| w.to_lowercase())
        .collect()
}

/// Jaccard similarity of the lowercase word sets (words of 3+ letters).
pub fn similarity(a: &str, b: &str) -> f32 {
    let (wa, wb) = (words(a), words(b));
    let inter = wa.intersection(&wb).count();
    let union = wa.union(&wb).count();
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

/// Up to `k` cases: those of the prompt's category first (most similar first), then the most
/// lexically similar others (similarity > 0), then random ones. Deterministic given `rng`.
pub fn select_cases<'a, R: Rng>(
    spec: &'a Spec,
    prompt: &str,
    category: Option<&str>,
    k: usize,
    rng: &mut R,
) -> Vec<&'a Case> {
    let mut scored: Vec<(usize, f32)> = spec
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (i, similarity(prompt, &c.request)))
        .collect();
    // stable sort: by (same category, similarity) descending, index ascending on ties
    scored.sort_by(|a, b| {
        let ca = category.is_some_and(|c| spec.cases[a.0].category == c);
        let cb = category.is_some_and(|c| spec.cases[b.0].category == c);
        cb.cmp(&ca).then(b.1.total_cmp(&a.1)).then(a.0.cmp(&b.0))
    });
    let mut chosen: Vec<usize> = scored
        .iter()
        .filter(|(i, s)| *s > 0.0 || category.is_some_and(|c| spec.cases[*i].category == c))
        .take(k)
        .map(|(i, _)| *i)
        .collect();
    let mut rest: Vec<usize> = (0..spec.cases.len())
        .filter(|i| !chosen.contains(i))
        .collect();
    rest.shuffle(rng);
    chosen.extend(rest.into_iter().take(k.saturating_sub(chosen.len())));
    chosen.into_iter().map(|i| &spec.cases[i]).collect()
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Comply => "comply",
        Verdict::Refuse => "refuse",
        Verdict::ComplySafely => "comply safely",
    }
}

/// Codes + cases + the output-format instruction, as the system message.
pub fn deliberation_system_prompt(spec: &Spec, cases: &[&Case]) -> String {
    let mut s = String::from("Safety codes:\n");
    for (i, c) in spec.codes.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", i + 1, c));
    }
    s.push_str("Cases:\n");
    for c in cases {
        s.push_str(&format!(
            "- Request: {}\n  Reasoning: {}\n  Verdict: {}\n",
            c.request,
            c.reasoning,
            verdict_word(c.verdict)
        ));
    }
    s.push_str(
        "Reason about the request by analogy to the cases inside <think> </think>, then answer.",
    );
    s
}

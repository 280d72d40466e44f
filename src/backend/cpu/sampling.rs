//! Token sampling from logits rows: greedy, or temperature → top-k → top-p, inverting the CDF
//! with a uniform drawn by the caller (so every backend picks the same token for the same draw).

/// One row. `temperature == 0` → argmax (lowest index on ties).
pub fn sample_row(logits: &[f32], u: f32, temperature: f32, top_p: f32, top_k: usize) -> u32 {
    if temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - m) / temperature) as f64).exp()))
        .collect();
    // descending probability, ascending index on ties: a total, deterministic order
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 && top_k < probs.len() {
        probs.truncate(top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if top_p < 1.0 {
        // the shortest prefix whose mass reaches top_p · total, compared undivided: summing
        // p / total instead rounds 10 tied tokens of 20 to a mass just below 0.5, and the GPU
        // (kernels/sampling.cu) must choose the same prefix
        let target = top_p as f64 * total;
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= target {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let target = u as f64 * total;
    let mut cum = 0.0;
    for &(i, p) in &probs {
        cum += p;
        if target < cum {
            return i as u32;
        }
    }
    probs.last().map(|p| p.0 as u32).unwrap_or(0)
}

//! Token sampling from logits rows: greedy, or temperature → top-k → top-p, inverting the CDF
//! with a uniform drawn by the caller (so every backend picks the same token for the same draw).
//!
//! The order is (probability desc, index asc). A draw only reads a prefix of it (top-k, the
//! top-p nucleus, the tokens before u's point of the CDF), so the order is built lazily: a
//! selection moves the next chunk of largest tokens to the front and only that chunk is sorted.
//! At a 49k vocabulary a full sort per row cost ~4 ms; a peaked row now sorts a few hundred.

use std::cmp::Ordering;

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
    let probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - m) / temperature) as f64).exp()))
        .collect();
    let mut order = LazyOrder::new(probs);
    let total = if top_k > 0 && top_k < order.len() {
        order.keep_first(top_k);
        order.prefix_mass(top_k)
    } else {
        // every token is kept: their mass in index order, before any permutation
        order.probs.iter().map(|p| p.1).sum()
    };
    let total = if top_p < 1.0 {
        // the shortest prefix whose mass reaches top_p · total, compared undivided: summing
        // p / total instead rounds 10 tied tokens of 20 to a mass just below 0.5, and the GPU
        // (kernels/sampling.cu) must choose the same prefix
        let keep = order
            .first_reaching(top_p as f64 * total, |cum, target| cum >= target)
            .map_or(order.len(), |i| i + 1);
        order.keep_first(keep);
        order.prefix_mass(keep)
    } else {
        total
    };
    let target = u as f64 * total;
    match order.first_reaching(target, |cum, target| target < cum) {
        Some(i) => order.probs[i].0 as u32,
        // u · total rounded past the kept mass: the last token in the order
        None => order.last().map_or(0, |p| p.0 as u32),
    }
}

/// Descending probability, ascending index on ties: a total, deterministic order.
fn by_probability(a: &(usize, f64), b: &(usize, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Tokens whose first `sorted` entries are the largest in the order, sorted, and every later
/// entry comes after all of them.
struct LazyOrder {
    probs: Vec<(usize, f64)>,
    sorted: usize,
}

/// The first chunk sorted; each later one is 4× the sorted prefix, so a draw deep in a flat row
/// costs a few selections over the tail rather than one per chunk.
const FIRST_CHUNK: usize = 64;

impl LazyOrder {
    fn new(probs: Vec<(usize, f64)>) -> Self {
        LazyOrder { probs, sorted: 0 }
    }

    fn len(&self) -> usize {
        self.probs.len()
    }

    /// Sorts at least the first `n` entries (all of them when `n` ≥ len).
    fn sort_prefix(&mut self, n: usize) {
        let n = n.min(self.len());
        if n <= self.sorted {
            return;
        }
        let tail = &mut self.probs[self.sorted..];
        let want = n - self.sorted;
        if want < tail.len() {
            tail.select_nth_unstable_by(want - 1, by_probability);
        }
        tail[..want].sort_by(by_probability);
        self.sorted = n;
    }

    /// Keeps the first `n` tokens of the order, sorted.
    fn keep_first(&mut self, n: usize) {
        self.sort_prefix(n);
        self.probs.truncate(n);
    }

    /// Σ p over the first `n` tokens, summed in the order.
    fn prefix_mass(&mut self, n: usize) -> f64 {
        self.sort_prefix(n);
        self.probs[..n].iter().map(|p| p.1).sum()
    }

    /// The position of the first token in the order at which `reached(running mass, target)`
    /// holds, summing in the order; `None` if no prefix reaches it.
    fn first_reaching(&mut self, target: f64, reached: impl Fn(f64, f64) -> bool) -> Option<usize> {
        let mut cum = 0.0;
        let mut i = 0;
        while i < self.len() {
            self.sort_prefix(FIRST_CHUNK.max(4 * self.sorted));
            while i < self.sorted {
                cum += self.probs[i].1;
                if reached(cum, target) {
                    return Some(i);
                }
                i += 1;
            }
        }
        None
    }

    fn last(&mut self) -> Option<(usize, f64)> {
        self.sort_prefix(self.len());
        self.probs.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The composite twin: sort the whole row, then the same three cuts with the same sums
    /// (the implementation before the lazy order, kept as the oracle).
    fn sample_row_full_sort(logits: &[f32], u: f32, t: f32, top_p: f32, top_k: usize) -> u32 {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, (((x - m) / t) as f64).exp()))
            .collect();
        // an untruncated row's mass is summed in index order; every cut's in the order
        let mut total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(by_probability);
        if top_k > 0 && top_k < probs.len() {
            probs.truncate(top_k);
            total = probs.iter().map(|p| p.1).sum();
        }
        if top_p < 1.0 {
            let target = top_p as f64 * total;
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cum += p.1;
                    cum >= target
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            total = probs.iter().map(|p| p.1).sum();
        }
        let target = u as f64 * total;
        let mut cum = 0.0;
        probs
            .iter()
            .find(|p| {
                cum += p.1;
                target < cum
            })
            .or(probs.last())
            .map_or(0, |p| p.0 as u32)
    }

    /// xorshift: fresh rows per seed without a dependency
    fn rng(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32
    }

    #[test]
    fn lazy_order_draws_the_same_token_as_a_full_sort() {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(88172645463325252, |d| d.as_nanos() as u64)
            | 1;
        println!("seed {seed}");
        let mut compared = 0;
        for case in 0..400 {
            let vocab = [1, 2, 7, 63, 64, 65, 300, 1000, 5000][case % 9];
            let spread = [0.0, 1.0, 6.0, 30.0][(case / 9) % 4];
            // coarse logits make ties, including ties across the chunk boundaries
            let coarse = case % 3 == 0;
            let mut logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    let x = spread * (rng(&mut seed) - 0.5);
                    if coarse {
                        x.round()
                    } else {
                        x
                    }
                })
                .collect();
            if case % 2 == 0 {
                let spike = (rng(&mut seed) * vocab as f32) as usize % vocab;
                logits[spike] += 8.0;
            }
            let t = [1.0, 0.7, 1.5][case % 3];
            let top_p = [1.0, 0.9, 0.5, 0.999][(case / 3) % 4];
            let top_k = [0, 1, 20, 64, 65, 100_000][(case / 5) % 6];
            for u in [0.0, rng(&mut seed), rng(&mut seed), 0.999_999_9] {
                let got = sample_row(&logits, u, t, top_p, top_k);
                let want = sample_row_full_sort(&logits, u, t, top_p, top_k);
                assert_eq!(
                    got, want,
                    "case {case}: vocab {vocab} spread {spread} T {t} top-p {top_p} \
                     top-k {top_k} u {u}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 1600);
    }
}

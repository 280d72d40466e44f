//! The fused log-prob never allocates a [tokens × vocab] buffer: a counting global allocator
//! tracks the peak bytes allocated during forward + backward, which must stay far below
//! tokens × vocab × 4 bytes (and independent of it).

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::SeqCst);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn peak_extra(n: usize, dim: usize, vocab: usize) -> usize {
    let be = Cpu::new();
    let h: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let w: Vec<f32> = (0..vocab * dim)
        .map(|i| ((i * 13 % 23) as f32 - 11.0) / 11.0)
        .collect();
    let t: Vec<u32> = (0..n).map(|i| (i * 7919 % vocab) as u32).collect();
    let (mut lp, mut ent, mut lse) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut dh, mut dw) = (vec![0.0; n * dim], vec![0.0; vocab * dim]);
    let dlogp = vec![1.0f32; n];
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    be.fused_logprob_forward(&mut lp, &mut ent, &mut lse, &h, &w, &t, n, dim, vocab, 1.0)
        .unwrap();
    be.fused_logprob_backward(
        &mut dh, &mut dw, &dlogp, &h, &w, &t, &lse, n, dim, vocab, 1.0,
    )
    .unwrap();
    assert!(lp.iter().all(|x| x.is_finite() && *x <= 0.0));
    PEAK.load(Ordering::SeqCst) - base
}

#[test]
fn peak_allocation_does_not_grow_with_tokens_times_vocab() {
    let (n, dim) = (512, 64);
    let small = peak_extra(n, dim, 4_000);
    let large = peak_extra(n, dim, 40_000);
    let logits_bytes = n * 40_000 * 4; // what a materialised [tokens × vocab] f32 buffer would take
    eprintln!("peak extra: vocab 4k {small} B, vocab 40k {large} B; a logits buffer would be {logits_bytes} B");
    assert!(
        large < logits_bytes / 8,
        "peak {large} B is not far below tokens×vocab×4 = {logits_bytes} B"
    );
    // ten times the vocabulary must not mean ten times the memory
    assert!(
        large < 2 * small + (1 << 20),
        "peak grew with the vocabulary: {small} → {large} B"
    );
}

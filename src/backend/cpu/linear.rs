//! Linear layers (`y = x·Wᵀ + b`) and their backward, on `matrixmultiply::sgemm` with rayon over
//! blocks of output rows. Splitting rows never changes any element's summation order, so the
//! results are bit-identical whatever the thread count (resume tests rely on it).

use rayon::prelude::*;

/// Rows per parallel task: large enough to keep sgemm efficient, small enough that a batch of
/// a few dozen rows still spreads over the cores. Depends on nothing but `n`, and sgemm's
/// per-element k-order does not depend on the row split, so results stay deterministic.
fn row_block(n: usize) -> usize {
    (n / 8).clamp(16, 64)
}

/// `c[m, n] (+)= a[m, k] · b[k, n]` with arbitrary strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    c: &mut [f32],
    rsc: isize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: callers pass slices covering every element the strides address (checked by the
    // public functions' length assertions).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            rsc,
            1,
        );
    }
}

/// Output columns per parallel task when there are too few rows to split (decode steps).
const COL_BLOCK: usize = 256;
/// Up to this many rows, the dot-product path is used instead of sgemm.
const SMALL_N: usize = 16;

/// Dot product with 8 independent accumulators (lets the compiler vectorise it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[n, m] = x[n, k] · w[m, k]ᵀ + bias[m]`
pub fn linear_forward(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    k: usize,
    m: usize,
) {
    assert!(out.len() >= n * m && x.len() >= n * k && w.len() >= m * k);
    if n <= SMALL_N {
        // A handful of rows (decode steps, sampling logits): GEMM packing would copy all of W
        // per call; plain dot products read each weight row once instead.
        let tiles: Vec<Vec<f32>> = (0..m.div_ceil(COL_BLOCK))
            .into_par_iter()
            .map(|cb| {
                let c0 = cb * COL_BLOCK;
                let cols = COL_BLOCK.min(m - c0);
                let mut t = vec![0f32; n * cols];
                for j in 0..cols {
                    let wj = &w[(c0 + j) * k..(c0 + j + 1) * k];
                    for r in 0..n {
                        t[r * cols + j] = dot(&x[r * k..(r + 1) * k], wj);
                    }
                }
                t
            })
            .collect();
        for (cb, t) in tiles.iter().enumerate() {
            let c0 = cb * COL_BLOCK;
            let cols = COL_BLOCK.min(m - c0);
            for r in 0..n {
                out[r * m + c0..r * m + c0 + cols].copy_from_slice(&t[r * cols..(r + 1) * cols]);
            }
        }
        if let Some(b) = bias {
            for row in out[..n * m].chunks_mut(m) {
                row.iter_mut().zip(b).for_each(|(y, bb)| *y += bb);
            }
        }
        return;
    }
    let rb = row_block(n);
    out[..n * m]
        .par_chunks_mut(rb * m)
        .enumerate()
        .for_each(|(blk, o)| {
            let rows = o.len() / m;
            let xs = &x[blk * rb * k..];
            sgemm(
                rows, k, m, xs, k as isize, 1, w, 1, k as isize, o, m as isize, false,
            );
            if let Some(b) = bias {
                for row in o.chunks_mut(m) {
                    row.iter_mut().zip(b).for_each(|(y, bb)| *y += bb);
                }
            }
        });
}

/// `dx[n, k] = dout[n, m] · w[m, k]` (written)
pub fn linear_backward_input(
    dx: &mut [f32],
    dout: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    m: usize,
) {
    assert!(dx.len() >= n * k && dout.len() >= n * m && w.len() >= m * k);
    let rb = row_block(n);
    dx[..n * k]
        .par_chunks_mut(rb * k)
        .enumerate()
        .for_each(|(blk, d)| {
            let rows = d.len() / k;
            sgemm(
                rows,
                m,
                k,
                &dout[blk * rb * m..],
                m as isize,
                1,
                w,
                k as isize,
                1,
                d,
                k as isize,
                false,
            );
        });
}

/// `dw[m, k] += dout[n, m]ᵀ · x[n, k]`; `dbias[m] += Σₙ dout[n, m]` (accumulated)
pub fn linear_backward_weight(
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) {
    assert!(dw.len() >= m * k && dout.len() >= n * m && x.len() >= n * k);
    let rb = row_block(m);
    dw[..m * k]
        .par_chunks_mut(rb * k)
        .enumerate()
        .for_each(|(blk, d)| {
            let rows = d.len() / k;
            // dwᵀ block: rows of W are columns of dout
            sgemm(
                rows,
                n,
                k,
                &dout[blk * rb..],
                1,
                m as isize,
                x,
                k as isize,
                1,
                d,
                k as isize,
                true,
            );
        });
    if let Some(db) = dbias {
        db[..m].par_iter_mut().enumerate().for_each(|(j, b)| {
            *b += (0..n).map(|i| dout[i * m + j]).sum::<f32>();
        });
    }
}

//! Every CUDA op against the CPU reference backend (the oracle), on fresh random inputs each run
//! (the seed is printed), odd sizes that are not tile multiples, and outputs poisoned with NaN
//! before the launch so a kernel that skips an element can never pass.
//!
//! Error measure: ‖gpu − cpu‖ / ‖cpu‖ over the whole output (any non-finite GPU value counts as
//! an infinite error). Bounds sit beside each check: f32 kernels that only reorder f32 sums get
//! 1e-5 (about 100 ulps of accumulated reassociation over sums of ≤ 100 terms); ops whose outputs
//! are differences of nearly equal terms (backward passes, entropies) get 1e-4. The tensor-core
//! GEMM modes (`cuda_gemm_tf32`, `cuda_gemm_bf16`) get bounds set by their operand rounding,
//! written next to them.
//!
//! Without the `cuda` feature, or without a GPU, each test prints "skipped: no GPU" and returns:
//! it reports no pass it did not run.
#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

use common::{check, check_each, down, poisoned, randv};

use cada::backend::cpu::Cpu;
use cada::backend::{Backend, QkNormRope, Rope};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

type Rand = ChaCha8Rng;

/// f32 reassociation bound (see the header)
const F32_TOL: f64 = 1e-5;
/// cancellation-prone outputs (backward passes, entropies)
const GRAD_TOL: f64 = 1e-4;

/// Bounds for the outputs that go through a GEMM: `value` for linear out/dx/dw and the log-prob
/// head's logp/lse, `grad` for its entropy, dhidden and dw.
#[derive(Clone, Copy)]
struct GemmTols {
    mode: &'static str,
    value: f64,
    grad: f64,
}

/// `GemmPrecision::F32`: the f32 bounds of the header.
const F32_GEMM: GemmTols = GemmTols {
    mode: "f32 gemm",
    value: F32_TOL,
    grad: GRAD_TOL,
};

#[cfg(feature = "cuda")]
use common::cuda_setup as setup;

fn elementwise_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let n = 100_003;
    let (y0, x) = (randv(r, n, 2.0), randv(r, n, 2.0));
    let (mut yg, xg) = (gpu.upload(&y0).unwrap(), gpu.upload(&x).unwrap());
    let mut yc = y0.clone();
    gpu.add_assign(&mut yg, &xg).unwrap();
    cpu.add_assign(&mut yc, &x).unwrap();
    check("add_assign", &down(gpu, &yg), &yc, 0.0); // one f32 add: bit-exact
    gpu.scale(&mut yg, -0.37).unwrap();
    cpu.scale(&mut yc, -0.37).unwrap();
    check("scale", &down(gpu, &yg), &yc, 0.0); // one f32 multiply: bit-exact
    let (sg, sc) = (gpu.sum_squares(&yg).unwrap(), cpu.sum_squares(&yc).unwrap());
    let e = (sg - sc).abs() / sc;
    println!("  sum_squares: rel err {e:.2e} (bound 1e-5)");
    assert!(e <= 1e-5, "sum_squares {sg} vs {sc}"); // f32 partials of ≤ 400 terms, f64 total
    assert!(gpu.all_finite(&yg).unwrap());
    let mut with_nan = y0.clone();
    with_nan[n - 2] = f32::NAN;
    assert!(!gpu.all_finite(&gpu.upload(&with_nan).unwrap()).unwrap());
    with_nan[n - 2] = f32::INFINITY;
    assert!(!gpu.all_finite(&gpu.upload(&with_nan).unwrap()).unwrap());
    let mut filled = poisoned(gpu, 1001);
    gpu.fill(&mut filled, 0.25).unwrap();
    assert!(down(gpu, &filled).iter().all(|&v| v == 0.25), "fill");
    let mut copied = poisoned(gpu, 50);
    gpu.fill(&mut copied, 0.0).unwrap();
    gpu.copy(&mut copied, 7, &xg, 11, 29).unwrap();
    let host = down(gpu, &copied);
    assert_eq!(&host[7..36], &x[11..40], "copy");
    assert!(
        host[..7].iter().chain(&host[36..]).all(|&v| v == 0.0),
        "copy wrote outside"
    );
}

fn embedding_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let (vocab, dim, n) = (53, 37, 71); // n > vocab: ids repeat, the backward must add them up
    let table = randv(r, vocab * dim, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
    let (tg, ig) = (gpu.upload(&table).unwrap(), gpu.upload_ids(&ids).unwrap());
    let mut og = poisoned(gpu, n * dim);
    let mut oc = vec![0.0; n * dim];
    gpu.embedding_forward(&mut og, &tg, &ig, n, dim).unwrap();
    cpu.embedding_forward(&mut oc, &table, &ids, n, dim)
        .unwrap();
    check("embedding_forward", &down(gpu, &og), &oc, 0.0); // a copy: exact
    let (dout, dt0) = (randv(r, n * dim, 1.0), randv(r, vocab * dim, 1.0));
    let mut dtg = gpu.upload(&dt0).unwrap();
    let mut dtc = dt0.clone();
    gpu.embedding_backward(&mut dtg, &gpu.upload(&dout).unwrap(), &ig, n, dim)
        .unwrap();
    cpu.embedding_backward(&mut dtc, &dout, &ids, n, dim)
        .unwrap();
    check("embedding_backward", &down(gpu, &dtg), &dtc, F32_TOL);
}

fn linear_case<B: Backend>(gpu: &B, r: &mut Rand) {
    linear_shape(gpu, r, (37, 53, 29), F32_GEMM);
}

fn linear_shape<B: Backend>(
    gpu: &B,
    r: &mut Rand,
    (n, k, m): (usize, usize, usize),
    tol: GemmTols,
) {
    let cpu = Cpu::new();
    println!("  {}: n {n}, k {k}, m {m}", tol.mode);
    let (x, w, b) = (randv(r, n * k, 1.0), randv(r, m * k, 1.0), randv(r, m, 1.0));
    let (xg, wg, bg) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload(&b).unwrap(),
    );
    let mut og = poisoned(gpu, n * m);
    let mut oc = vec![0.0; n * m];
    gpu.linear_forward(&mut og, &xg, &wg, Some(&bg), n, k, m)
        .unwrap();
    cpu.linear_forward(&mut oc, &x, &w, Some(&b), n, k, m)
        .unwrap();
    check("linear_forward", &down(gpu, &og), &oc, tol.value);
    let dout = randv(r, n * m, 1.0);
    let (dw0, db0) = (randv(r, m * k, 1.0), randv(r, m, 1.0));
    let mut dxg = poisoned(gpu, n * k);
    let (mut dwg, mut dbg) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
    let (mut dxc, mut dwc, mut dbc) = (vec![0.0; n * k], dw0.clone(), db0.clone());
    let doutg = gpu.upload(&dout).unwrap();
    gpu.linear_backward(
        Some(&mut dxg),
        &mut dwg,
        Some(&mut dbg),
        &doutg,
        &xg,
        &wg,
        n,
        k,
        m,
    )
    .unwrap();
    cpu.linear_backward(
        Some(&mut dxc),
        &mut dwc,
        Some(&mut dbc),
        &dout,
        &x,
        &w,
        n,
        k,
        m,
    )
    .unwrap();
    check("linear_backward dx", &down(gpu, &dxg), &dxc, tol.value);
    check(
        "linear_backward dw (accumulated)",
        &down(gpu, &dwg),
        &dwc,
        tol.value,
    );
    // a column sum in f32 kernels (no GEMM) whatever the mode
    check(
        "linear_backward dbias (accumulated)",
        &down(gpu, &dbg),
        &dbc,
        F32_TOL,
    );
}

fn rmsnorm_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let (n, dim, eps) = (67, 301, 1e-5);
    let (x, w) = (randv(r, n * dim, 2.0), randv(r, dim, 1.0));
    let (xg, wg) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    let (mut og, mut rg) = (poisoned(gpu, n * dim), poisoned(gpu, n));
    let (mut oc, mut rc) = (vec![0.0; n * dim], vec![0.0; n]);
    gpu.rmsnorm_forward(&mut og, &mut rg, &xg, &wg, n, dim, eps)
        .unwrap();
    cpu.rmsnorm_forward(&mut oc, &mut rc, &x, &w, n, dim, eps)
        .unwrap();
    check("rmsnorm_forward out", &down(gpu, &og), &oc, F32_TOL);
    check("rmsnorm_forward rstd", &down(gpu, &rg), &rc, F32_TOL);
    // Qwen3's per-head q/k norm: many short rows (tokens × heads of head_dim 20), the kernel
    // without the bf16 GEMM copy
    let (rows, hd) = (53 * 3, 20);
    let (xh, wh) = (randv(r, rows * hd, 2.0), randv(r, hd, 1.0));
    let (xhg, whg) = (gpu.upload(&xh).unwrap(), gpu.upload(&wh).unwrap());
    let (mut ohg, mut rhg) = (poisoned(gpu, rows * hd), poisoned(gpu, rows));
    let (mut ohc, mut rhc) = (vec![0.0; rows * hd], vec![0.0; rows]);
    gpu.head_rmsnorm_forward(&mut ohg, &mut rhg, &xhg, &whg, rows, hd, eps)
        .unwrap();
    cpu.head_rmsnorm_forward(&mut ohc, &mut rhc, &xh, &wh, rows, hd, eps)
        .unwrap();
    check("head_rmsnorm_forward out", &down(gpu, &ohg), &ohc, F32_TOL);
    check("head_rmsnorm_forward rstd", &down(gpu, &rhg), &rhc, F32_TOL);
    let (dout, dw0) = (randv(r, n * dim, 1.0), randv(r, dim, 1.0));
    let (mut dxg, mut dwg) = (poisoned(gpu, n * dim), gpu.upload(&dw0).unwrap());
    let (mut dxc, mut dwc) = (vec![0.0; n * dim], dw0.clone());
    gpu.rmsnorm_backward(
        &mut dxg,
        &mut dwg,
        &gpu.upload(&dout).unwrap(),
        &xg,
        &wg,
        &rg,
        n,
        dim,
    )
    .unwrap();
    cpu.rmsnorm_backward(&mut dxc, &mut dwc, &dout, &x, &w, &rc, n, dim)
        .unwrap();
    check("rmsnorm_backward dx", &down(gpu, &dxg), &dxc, GRAD_TOL);
    check(
        "rmsnorm_backward dw (accumulated)",
        &down(gpu, &dwg),
        &dwc,
        F32_TOL,
    );
    // the decode step's fused residual add + norm against the CPU's two ops (the trait's
    // default); 1601 columns > 1024 threads, so threads take two
    for dim in [dim, 1601] {
        let (x, delta, w) = (
            randv(r, n * dim, 2.0),
            randv(r, n * dim, 1.0),
            randv(r, dim, 1.0),
        );
        let mut xg = gpu.upload(&x).unwrap();
        let (mut og, mut rg) = (poisoned(gpu, n * dim), poisoned(gpu, n));
        let (mut xc, mut oc, mut rc) = (x.clone(), vec![0.0; n * dim], vec![0.0; n]);
        gpu.add_rmsnorm_forward(
            &mut xg,
            &gpu.upload(&delta).unwrap(),
            &mut og,
            &mut rg,
            &gpu.upload(&w).unwrap(),
            n,
            dim,
            eps,
        )
        .unwrap();
        cpu.add_rmsnorm_forward(&mut xc, &delta, &mut oc, &mut rc, &w, n, dim, eps)
            .unwrap();
        check("add_rmsnorm_forward x", &down(gpu, &xg), &xc, 0.0); // one f32 add: exact
        check("add_rmsnorm_forward out", &down(gpu, &og), &oc, F32_TOL);
        check("add_rmsnorm_forward rstd", &down(gpu, &rg), &rc, F32_TOL);
    }
}

fn rope_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let (n, heads, hd) = (41, 3, 64);
    // the whole head, and a partial rotary (40 of 64 dims: Phi-4-mini's kind) scaled as
    // LongRoPE's attention factor scales it
    for (rotary_dim, scale) in [(hd, 1.0), (40, 1.19)] {
        let x = randv(r, n * heads * hd, 1.0);
        let positions: Vec<u32> = (0..n).map(|_| r.gen_range(0..4096)).collect();
        let inv_freq: Vec<f32> = (0..rotary_dim / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / rotary_dim as f32))
            .collect();
        let rope_c = Rope {
            inv_freq: inv_freq.clone(),
            rotary_dim,
            scale,
        };
        let rope_g = Rope {
            inv_freq: gpu.upload(&inv_freq).unwrap(),
            rotary_dim,
            scale,
        };
        let pg = gpu.upload_ids(&positions).unwrap();
        let mut xg = gpu.upload(&x).unwrap();
        let mut xc = x.clone();
        let what = |op: &str| format!("{op} (rotary {rotary_dim} of {hd}, scale {scale})");
        gpu.rope_forward(&mut xg, &pg, &rope_g, n, heads, hd)
            .unwrap();
        cpu.rope_forward(&mut xc, &positions, &rope_c, n, heads, hd)
            .unwrap();
        // sin/cos of angles up to 4096 rad: both sides round the argument identically, the
        // libraries differ by ≤ 2 ulp
        check(&what("rope_forward"), &down(gpu, &xg), &xc, F32_TOL);
        gpu.rope_backward(&mut xg, &pg, &rope_g, n, heads, hd)
            .unwrap();
        cpu.rope_backward(&mut xc, &positions, &rope_c, n, heads, hd)
            .unwrap();
        check(&what("rope_backward"), &down(gpu, &xg), &xc, F32_TOL);
    }
}

/// Qwen3's q/k norm + RoPE, forward and backward, fused on the GPU against the CPU's
/// composite (the norms, then RoPE): GQA 5/2 heads over 37 tokens, head dim 72 (not a multiple
/// of 32), a partial scaled rotary too; the weight gradients accumulate into random values.
fn qk_norm_rope_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let (tokens, hq, hkv, hd, eps) = (37, 5, 2, 72, 1e-6);
    for (rotary_dim, scale) in [(hd, 1.0), (48, 1.19)] {
        let (qn, kn) = (tokens * hq, tokens * hkv);
        let (q_raw, k_raw) = (randv(r, qn * hd, 2.0), randv(r, kn * hd, 2.0));
        let (q_norm, k_norm) = (randv(r, hd, 1.0), randv(r, hd, 1.0));
        let positions: Vec<u32> = (0..tokens).map(|_| r.gen_range(0..40000)).collect();
        let inv_freq: Vec<f32> = (0..rotary_dim / 2)
            .map(|i| 1e6f32.powf(-2.0 * i as f32 / rotary_dim as f32))
            .collect();
        let rope_c = Rope {
            inv_freq: inv_freq.clone(),
            rotary_dim,
            scale,
        };
        let rope_g = Rope {
            inv_freq: gpu.upload(&inv_freq).unwrap(),
            rotary_dim,
            scale,
        };
        let up = |v: &[f32]| gpu.upload(v).unwrap();
        let (qrg, krg, qng, kng) = (up(&q_raw), up(&k_raw), up(&q_norm), up(&k_norm));
        let pg = gpu.upload_ids(&positions).unwrap();
        let args_c = QkNormRope {
            q_raw: &q_raw,
            k_raw: &k_raw,
            q_norm: &q_norm,
            k_norm: &k_norm,
            positions: &positions,
            rope: &rope_c,
            tokens,
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: hd,
        };
        let args_g = QkNormRope {
            q_raw: &qrg,
            k_raw: &krg,
            q_norm: &qng,
            k_norm: &kng,
            positions: &pg,
            rope: &rope_g,
            tokens,
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: hd,
        };
        let what = |op: &str| format!("{op} (rotary {rotary_dim} of {hd}, scale {scale})");
        let (mut qg, mut kg) = (poisoned(gpu, qn * hd), poisoned(gpu, kn * hd));
        let (mut rqg, mut rkg) = (poisoned(gpu, qn), poisoned(gpu, kn));
        let (mut qc, mut kc) = (vec![0.0; qn * hd], vec![0.0; kn * hd]);
        let (mut rqc, mut rkc) = (vec![0.0; qn], vec![0.0; kn]);
        gpu.qk_norm_rope_forward(&mut qg, &mut kg, &mut rqg, &mut rkg, &args_g, eps)
            .unwrap();
        cpu.qk_norm_rope_forward(&mut qc, &mut kc, &mut rqc, &mut rkc, &args_c, eps)
            .unwrap();
        // the norm's f32 sums and sin/cos of angles up to 40000 rad (≤ 2 ulp apart): F32_TOL
        check(
            &what("qk_norm_rope_forward q"),
            &down(gpu, &qg),
            &qc,
            F32_TOL,
        );
        check(
            &what("qk_norm_rope_forward k"),
            &down(gpu, &kg),
            &kc,
            F32_TOL,
        );
        check(
            &what("qk_norm_rope_forward rstd_q"),
            &down(gpu, &rqg),
            &rqc,
            F32_TOL,
        );
        check(
            &what("qk_norm_rope_forward rstd_k"),
            &down(gpu, &rkg),
            &rkc,
            F32_TOL,
        );
        let (dq, dk) = (randv(r, qn * hd, 1.0), randv(r, kn * hd, 1.0));
        let (dwq0, dwk0) = (randv(r, hd, 1.0), randv(r, hd, 1.0));
        let (mut dqg, mut dkg, mut dwqg, mut dwkg) = (up(&dq), up(&dk), up(&dwq0), up(&dwk0));
        let (mut dqc, mut dkc, mut dwqc, mut dwkc) = (dq.clone(), dk.clone(), dwq0, dwk0);
        let (mut dqrg, mut dkrg) = (poisoned(gpu, qn * hd), poisoned(gpu, kn * hd));
        let (mut dqrc, mut dkrc) = (vec![0.0; qn * hd], vec![0.0; kn * hd]);
        gpu.qk_norm_rope_backward(
            &mut dqrg, &mut dkrg, &mut dwqg, &mut dwkg, &mut dqg, &mut dkg, &rqg, &rkg, &args_g,
        )
        .unwrap();
        cpu.qk_norm_rope_backward(
            &mut dqrc, &mut dkrc, &mut dwqc, &mut dwkc, &mut dqc, &mut dkc, &rqc, &rkc, &args_c,
        )
        .unwrap();
        check(
            &what("qk_norm_rope_backward d(q_raw)"),
            &down(gpu, &dqrg),
            &dqrc,
            GRAD_TOL,
        );
        check(
            &what("qk_norm_rope_backward d(k_raw)"),
            &down(gpu, &dkrg),
            &dkrc,
            GRAD_TOL,
        );
        check(
            &what("qk_norm_rope_backward d(q_norm) (accumulated)"),
            &down(gpu, &dwqg),
            &dwqc,
            GRAD_TOL,
        );
        check(
            &what("qk_norm_rope_backward d(k_norm) (accumulated)"),
            &down(gpu, &dwkg),
            &dwkc,
            GRAD_TOL,
        );
    }
}

fn swiglu_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let n = 10_007;
    let (g, u) = (randv(r, n, 6.0), randv(r, n, 2.0));
    let (gg, ug) = (gpu.upload(&g).unwrap(), gpu.upload(&u).unwrap());
    let mut og = poisoned(gpu, n);
    let mut oc = vec![0.0; n];
    gpu.swiglu_forward(&mut og, &gg, &ug).unwrap();
    cpu.swiglu_forward(&mut oc, &g, &u).unwrap();
    check("swiglu_forward", &down(gpu, &og), &oc, F32_TOL);
    let dout = randv(r, n, 1.0);
    let (mut dgg, mut dug) = (poisoned(gpu, n), poisoned(gpu, n));
    let (mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n]);
    gpu.swiglu_backward(&mut dgg, &mut dug, &gpu.upload(&dout).unwrap(), &gg, &ug)
        .unwrap();
    cpu.swiglu_backward(&mut dgc, &mut duc, &dout, &g, &u)
        .unwrap();
    check("swiglu_backward dgate", &down(gpu, &dgg), &dgc, F32_TOL);
    check("swiglu_backward dup", &down(gpu, &dug), &duc, F32_TOL);
    // from the stacked gate/up GEMM output (rows gate | up), 7 rows of an odd width
    let (rows, f) = (7, 1_601);
    let gu = randv(r, rows * 2 * f, 4.0);
    let (mut og, mut oc) = (poisoned(gpu, rows * f), vec![0.0; rows * f]);
    gpu.swiglu_forward_stacked(&mut og, &gpu.upload(&gu).unwrap(), rows, f)
        .unwrap();
    cpu.swiglu_forward_stacked(&mut oc, &gu, rows, f).unwrap();
    check("swiglu_forward_stacked", &down(gpu, &og), &oc, F32_TOL);
}

fn fused_logprob_shape<B: Backend>(
    gpu: &B,
    r: &mut Rand,
    n: usize,
    dim: usize,
    vocab: usize,
    t: f32,
    tol: GemmTols,
    w_scale: f32,
) {
    let cpu = Cpu::new();
    println!(
        "  {}: n {n}, dim {dim}, vocab {vocab}, temperature {t}, weights ±{w_scale}",
        tol.mode
    );
    let (h, w) = (randv(r, n * dim, 1.0), randv(r, vocab * dim, w_scale));
    let targets: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
    let (hg, wg, tg) = (
        gpu.upload(&h).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload_ids(&targets).unwrap(),
    );
    let (mut lpg, mut eg, mut lg) = (poisoned(gpu, n), poisoned(gpu, n), poisoned(gpu, n));
    let (mut lpc, mut ec, mut lc) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    gpu.fused_logprob_forward(&mut lpg, &mut eg, &mut lg, &hg, &wg, &tg, n, dim, vocab, t)
        .unwrap();
    cpu.fused_logprob_forward(
        &mut lpc, &mut ec, &mut lc, &h, &w, &targets, n, dim, vocab, t,
    )
    .unwrap();
    check("fused_logprob logp", &down(gpu, &lpg), &lpc, tol.value);
    check("fused_logprob lse", &down(gpu, &lg), &lc, tol.value);
    check("fused_logprob entropy", &down(gpu, &eg), &ec, tol.grad);
    if w_scale > 1.0 {
        // peaked rows (logits ~±30): a norm over the rows would hide one row's small entropy
        // being wrong by several times itself, so each row is checked on its own. f32 GEMMs
        // only: f32 logits differ from the CPU's by ~1e-6 relative (summation order).
        check_each(
            "fused_logprob entropy, row by row",
            &down(gpu, &eg),
            &ec,
            1e-5,
            1e-4,
        );
    }
    let (dlogp, dw0) = (randv(r, n, 1.0), randv(r, vocab * dim, 0.1));
    let (mut dhg, mut dwg) = (poisoned(gpu, n * dim), gpu.upload(&dw0).unwrap());
    let (mut dhc, mut dwc) = (vec![0.0; n * dim], dw0.clone());
    let dlg = gpu.upload(&dlogp).unwrap();
    gpu.fused_logprob_backward(
        &mut dhg, &mut dwg, &dlg, &hg, &wg, &tg, &lg, n, dim, vocab, t,
    )
    .unwrap();
    cpu.fused_logprob_backward(
        &mut dhc, &mut dwc, &dlogp, &h, &w, &targets, &lc, n, dim, vocab, t,
    )
    .unwrap();
    check(
        "fused_logprob_backward dhidden",
        &down(gpu, &dhg),
        &dhc,
        tol.grad,
    );
    check(
        "fused_logprob_backward dw (accumulated)",
        &down(gpu, &dwg),
        &dwc,
        tol.grad,
    );
}

fn fused_logprob_case<B: Backend>(gpu: &B, r: &mut Rand) {
    fused_logprob_shapes(gpu, r, F32_GEMM);
    // peaked rows over three chunks: the entropy's running sums re-centred on a new max
    fused_logprob_shape(gpu, r, 29, 16, 40_009, 0.8, F32_GEMM, 20.0);
}

fn fused_logprob_shapes<B: Backend>(gpu: &B, r: &mut Rand, tol: GemmTols) {
    fused_logprob_shape(gpu, r, 19, 33, 1009, 1.0, tol, 1.0); // one chunk
    fused_logprob_shape(gpu, r, 23, 17, 20_011, 0.7, tol, 1.0); // two chunks (16384 + rest), T ≠ 1
                                                                // 1033 rows make the chunk 2^24 / 1033 = 16241 columns wide: with an odd dim the second
                                                                // chunk's weights start at a float offset that is not a multiple of 4 (unaligned operand)
    fused_logprob_shape(gpu, r, 1033, 9, 19_001, 1.3, tol, 1.0);
}

fn adamw_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let n = 4099;
    let (mut p, g) = (randv(r, n, 1.0), randv(r, n, 1.0));
    let (mut m, mut v) = (
        randv(r, n, 0.1),
        randv(r, n, 0.01)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>(),
    );
    let (mut pg, gg, mut mg, mut vg) = (
        gpu.upload(&p).unwrap(),
        gpu.upload(&g).unwrap(),
        gpu.upload(&m).unwrap(),
        gpu.upload(&v).unwrap(),
    );
    for step in [1u64, 2, 17] {
        gpu.adamw_step(
            &mut pg, &gg, &mut mg, &mut vg, 1e-3, 0.9, 0.999, 1e-8, 0.01, step,
        )
        .unwrap();
        cpu.adamw_step(
            &mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.01, step,
        )
        .unwrap();
    }
    check("adamw param", &down(gpu, &pg), &p, F32_TOL);
    check("adamw m", &down(gpu, &mg), &m, F32_TOL);
    check("adamw v", &down(gpu, &vg), &v, F32_TOL);
}

fn sampling_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let (batch, vocab) = (9, 5003);
    let mut logits = randv(r, batch * vocab, 4.0);
    logits[3 * vocab + 10] = 9.0; // a tie for the maximum: greedy must take the lower index
    logits[3 * vocab + 20] = 9.0;
    let lg = gpu.upload(&logits).unwrap();
    for (temperature, top_p, top_k) in [
        (0.0, 1.0, 0),
        (1.0, 1.0, 0),
        (0.7, 0.9, 50),
        (1.3, 0.5, 0),
        (0.9, 1.0, 7),
    ] {
        let u: Vec<f32> = (0..batch).map(|_| r.gen::<f32>()).collect();
        let tg = gpu
            .sample(&lg, &u, batch, vocab, temperature, top_p, top_k)
            .unwrap();
        let tc = cpu
            .sample(&logits, &u, batch, vocab, temperature, top_p, top_k)
            .unwrap();
        println!("  T {temperature}, top_p {top_p}, top_k {top_k}: gpu {tg:?} cpu {tc:?}");
        // the same draw must pick the same token (ties of f64 sums at 1e-16 aside)
        assert_eq!(
            tg, tc,
            "sampling differs for T {temperature}, top_p {top_p}, top_k {top_k}"
        );
    }
}

gpu_test!(cuda_elementwise, elementwise_case);
gpu_test!(cuda_embedding, embedding_case);
gpu_test!(cuda_linear, linear_case);
gpu_test!(cuda_rmsnorm, rmsnorm_case);
gpu_test!(cuda_rope, rope_case);
gpu_test!(cuda_qk_norm_rope, qk_norm_rope_case);
gpu_test!(cuda_swiglu, swiglu_case);
gpu_test!(cuda_fused_logprob, fused_logprob_case);
gpu_test!(cuda_adamw, adamw_case);
gpu_test!(cuda_sampling, sampling_case);

/// TF32 tensor cores: operands rounded to 10-bit mantissas (2^-11 relative), f32 accumulation.
/// A host emulation of these shapes with the operands rounded to TF32 gives ~2.6e-4 on linear
/// out/dx/dw and dhidden, ≤ 6e-5 on logp/lse/entropy; the bound leaves 20× for cuBLAS rounding
/// its inputs by truncation (2× the error) and for split-k reassociation.
const TF32_GEMM: GemmTols = GemmTols {
    mode: "tf32 gemm",
    value: 5e-3,
    grad: 5e-3,
};

/// bf16 operands (kernels/convert.cu, 2^-8 relative rounding), f32 accumulation and output.
/// The same emulation with bf16-rounded operands (and the backward's softmax gradient rounded
/// before its two GEMMs, as the GPU does) gives ~2.1e-3 on linear out/dx/dw and dhidden, ≤ 1.4e-3
/// on the head's dw, ≤ 5e-4 on logp/lse/entropy: 1e-2 is ~5× that.
const BF16_GEMM: GemmTols = GemmTols {
    mode: "bf16 gemm",
    value: 1e-2,
    grad: 1e-2,
};

/// Every GEMM-backed op in one precision: the linear layer at two odd shapes (the larger one
/// with a 257-long reduction) and the fused log-prob head at its three shapes.
fn gemm_mode_case<B: Backend>(gpu: &B, r: &mut Rand, tol: GemmTols) {
    assert!(
        gpu.name().contains(tol.mode),
        "{} does not report {}",
        gpu.name(),
        tol.mode
    );
    linear_shape(gpu, r, (37, 53, 29), tol);
    linear_shape(gpu, r, (131, 257, 97), tol);
    fused_logprob_shapes(gpu, r, tol);
}

macro_rules! gemm_mode_test {
    ($name:ident, $precision:ident, $tols:expr) => {
        #[test]
        fn $name() {
            #[cfg(feature = "cuda")]
            {
                use cada::backend::cuda::GemmPrecision;
                if let Some((mut gpu, mut rng)) = setup(stringify!($name)) {
                    gpu.set_gemm_precision(GemmPrecision::$precision).unwrap();
                    assert_eq!(gpu.gemm_precision(), GemmPrecision::$precision);
                    gemm_mode_case(&gpu, &mut rng, $tols);
                    // back to f32: the same handle must give the f32 results again
                    gpu.set_tf32(false).unwrap();
                    assert_eq!(gpu.gemm_precision(), GemmPrecision::F32);
                    linear_shape(&gpu, &mut rng, (37, 53, 29), F32_GEMM);
                    println!("{}: ran on the GPU and matched the CPU", stringify!($name));
                }
            }
            #[cfg(not(feature = "cuda"))]
            {
                println!(
                    "{}: skipped: no GPU (built without the `cuda` feature)",
                    stringify!($name)
                );
                let _unused = (gemm_mode_case::<Cpu>, $tols);
            }
        }
    };
}
gemm_mode_test!(cuda_gemm_tf32, Tf32, TF32_GEMM);
gemm_mode_test!(cuda_gemm_bf16, Bf16, BF16_GEMM);

//! The training-attention test bodies shared by attention_cuda.rs (f32 and mma kernels) and
//! attention_wgmma_cuda.rs (Hopper's wgmma kernels, in a binary of their own so that a fault
//! there cannot take the other kernels' results down with it): one shape against the CPU,
//! the tensor-core shape set, f32 and tensor cores mixed, narrowed inputs.
#![allow(clippy::too_many_arguments)]

use super::{check, down, poisoned, randv};
use cada::backend::cpu::Cpu;
use cada::backend::{AttnShape, Backend};
use rand_chacha::ChaCha8Rng as Rand;

/// f32 reassociation
pub const F32_TOL: f64 = 1e-5;
/// cancellation-prone outputs (the backward)
pub const GRAD_TOL: f64 = 1e-4;

/// Bounds for one attention implementation: (out, lse, dq/dk/dv).
pub type AttnTols = (f64, f64, f64);
/// The f32 kernels (attention.cu): f32 reassociation, cancellation in the backward.
pub const SIMT_TOLS: AttnTols = (F32_TOL, F32_TOL, GRAD_TOL);
/// The bf16 tensor-core kernels (attention_mma.cu): q, k, v, dO, P and dS are rounded to bf16
/// (2^-8 relative spacing, ≤ 2^-9 rounding each) before f32-accumulated products, so out and
/// the gradients carry a few 1e-3 of relative error (host emulation of the kernels: 2.5e-3 to
/// 5e-3); 1e-2 leaves a 2× margin. lse is an f32 log-sum-exp of bf16-input scores: its error
/// is the scores' absolute error (~1e-3 · |score|) over a value of order log T: ~1e-3.
pub const MMA_TOLS: AttnTols = (1e-2, 1e-3, 1e-2);

pub fn attention_shape<B: Backend>(gpu: &B, r: &mut Rand, s: AttnShape, tols: AttnTols) {
    let cpu = Cpu::new();
    let (out_tol, lse_tol, grad_tol) = tols;
    println!("  shape {s:?}");
    let n = s.batch * s.seq;
    let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let (q, k, v) = (
        randv(r, n * qd, 1.0),
        randv(r, n * kd, 1.0),
        randv(r, n * kd, 1.0),
    );
    let (qg, kg, vg) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&k).unwrap(),
        gpu.upload(&v).unwrap(),
    );
    let lse_len = s.batch * s.n_heads * s.seq;
    let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
    let (mut oc, mut lc) = (vec![0.0; n * qd], vec![0.0; lse_len]);
    gpu.attention_forward(&mut og, &mut lg, &qg, &kg, &vg, s)
        .unwrap();
    cpu.attention_forward(&mut oc, &mut lc, &q, &k, &v, s)
        .unwrap();
    check("attention_forward out", &down(gpu, &og), &oc, out_tol);
    check("attention_forward lse", &down(gpu, &lg), &lc, lse_tol);
    let dout = randv(r, n * qd, 1.0);
    let (mut dqg, mut dkg, mut dvg) = (
        poisoned(gpu, n * qd),
        poisoned(gpu, n * kd),
        poisoned(gpu, n * kd),
    );
    let (mut dqc, mut dkc, mut dvc) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
    let doutg = gpu.upload(&dout).unwrap();
    gpu.attention_backward(
        &mut dqg, &mut dkg, &mut dvg, &doutg, &qg, &kg, &vg, &og, &lg, s,
    )
    .unwrap();
    cpu.attention_backward(&mut dqc, &mut dkc, &mut dvc, &dout, &q, &k, &v, &oc, &lc, s)
        .unwrap();
    check("attention_backward dq", &down(gpu, &dqg), &dqc, grad_tol);
    check("attention_backward dk", &down(gpu, &dkg), &dkc, grad_tol);
    check("attention_backward dv", &down(gpu, &dvg), &dvc, grad_tol);
}

pub fn attn_shape(
    batch: usize,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> AttnShape {
    AttnShape {
        batch,
        seq,
        n_heads,
        n_kv_heads,
        head_dim,
    }
}

/// The tensor-core kernels (the caller selects `AttentionKernel::Mma` or `Wgmma`). Tiles are 64
/// rows/keys (mma) or 128 rows by 64 keys (wgmma).
pub fn tensor_core_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let t = MMA_TOLS;
    attention_shape(gpu, r, attn_shape(2, 77, 9, 3, 64), t); // group 3, T = 64 + 13
    attention_shape(gpu, r, attn_shape(1, 200, 4, 2, 128), t); // hd 128, 4 tiles, tail of 8
    attention_shape(gpu, r, attn_shape(1, 130, 14, 2, 64), t); // group 7, tail of 2
    attention_shape(gpu, r, attn_shape(1, 70, 2, 1, 32), t); // hd 32 padded to 64
    attention_shape(gpu, r, attn_shape(1, 90, 2, 2, 96), t); // hd 96 padded to 128
    attention_shape(gpu, r, attn_shape(2, 33, 2, 1, 37), t); // odd hd: scalar staging path
}

/// Forward with the f32 attention, backward with the tensor-core kernel `tc`, and the other way
/// round: the gradients must match the CPU within the mma bounds, since the `lse` layouts are
/// identical.
#[cfg(feature = "cuda")]
pub fn attention_mixed(
    gpu: &mut cada::backend::cuda::Cuda,
    r: &mut Rand,
    s: AttnShape,
    tc: cada::backend::cuda::AttentionKernel,
) {
    use cada::backend::cuda::AttentionKernel::Simt;
    let cpu = Cpu::new();
    let n = s.batch * s.seq;
    let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let (q, k, v, dout) = (
        randv(r, n * qd, 1.0),
        randv(r, n * kd, 1.0),
        randv(r, n * kd, 1.0),
        randv(r, n * qd, 1.0),
    );
    let lse_len = s.batch * s.n_heads * s.seq;
    let (mut oc, mut lc) = (vec![0.0; n * qd], vec![0.0; lse_len]);
    cpu.attention_forward(&mut oc, &mut lc, &q, &k, &v, s)
        .unwrap();
    let (mut dqc, mut dkc, mut dvc) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
    cpu.attention_backward(&mut dqc, &mut dkc, &mut dvc, &dout, &q, &k, &v, &oc, &lc, s)
        .unwrap();
    let (qg, kg, vg, doutg) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&k).unwrap(),
        gpu.upload(&v).unwrap(),
        gpu.upload(&dout).unwrap(),
    );
    for (fwd, bwd) in [(Simt, tc), (tc, Simt)] {
        println!("  forward {fwd:?}, backward {bwd:?}");
        gpu.set_attention_kernel(fwd);
        let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
        gpu.attention_forward(&mut og, &mut lg, &qg, &kg, &vg, s)
            .unwrap();
        gpu.set_attention_kernel(bwd);
        let (mut dqg, mut dkg, mut dvg) = (
            poisoned(gpu, n * qd),
            poisoned(gpu, n * kd),
            poisoned(gpu, n * kd),
        );
        gpu.attention_backward(
            &mut dqg, &mut dkg, &mut dvg, &doutg, &qg, &kg, &vg, &og, &lg, s,
        )
        .unwrap();
        let (_, _, grad_tol) = MMA_TOLS;
        check("mixed dq", &down(gpu, &dqg), &dqc, grad_tol);
        check("mixed dk", &down(gpu, &dkg), &dkc, grad_tol);
        check("mixed dv", &down(gpu, &dvg), &dvc, grad_tol);
    }
    gpu.set_attention_kernel(tc);
}

/// q, k, v narrowed to bf16 (`keep_as_attention_input`) against the same values kept in f32:
/// the tensor-core kernels (`tc`) read bf16 copies either way (made by the same rounding), so forward and
/// backward must agree bit for bit. Then: the f32 attention refuses a narrowed input by name;
/// with narrowing off the hint keeps the f32 values; and a write to q after a forward drops
/// its cached bf16 copy, so the next forward sees the new values (checked against the CPU).
#[cfg(feature = "cuda")]
pub fn attention_narrowed(
    gpu: &mut cada::backend::cuda::Cuda,
    r: &mut Rand,
    s: AttnShape,
    tc: cada::backend::cuda::AttentionKernel,
) {
    use cada::backend::cuda::AttentionKernel::Simt;
    println!("  narrowed q, k, v: shape {s:?}");
    let n = s.batch * s.seq;
    let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let lse_len = s.batch * s.n_heads * s.seq;
    let (q, k, v, dout) = (
        randv(r, n * qd, 1.0),
        randv(r, n * kd, 1.0),
        randv(r, n * kd, 1.0),
        randv(r, n * qd, 1.0),
    );
    let doutg = gpu.upload(&dout).unwrap();
    let pass = |gpu: &cada::backend::cuda::Cuda, narrow: bool| {
        let (mut qg, mut kg, mut vg) = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
        );
        if narrow {
            for b in [&mut qg, &mut kg, &mut vg] {
                gpu.keep_as_attention_input(b).unwrap();
                assert!(b.is_narrowed(), "keep_as_attention_input did not narrow");
            }
        }
        let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
        gpu.attention_forward(&mut og, &mut lg, &qg, &kg, &vg, s)
            .unwrap();
        let (mut dqg, mut dkg, mut dvg) = (
            poisoned(gpu, n * qd),
            poisoned(gpu, n * kd),
            poisoned(gpu, n * kd),
        );
        gpu.attention_backward(
            &mut dqg, &mut dkg, &mut dvg, &doutg, &qg, &kg, &vg, &og, &lg, s,
        )
        .unwrap();
        let outs = [&og, &lg, &dqg, &dkg, &dvg].map(|b| down(gpu, b));
        (outs, (qg, kg, vg))
    };
    let (f32_in, _) = pass(gpu, false);
    let (narrowed, (qn, kn, vn)) = pass(gpu, true);
    for (name, (a, b)) in ["out", "lse", "dq", "dk", "dv"]
        .iter()
        .zip(f32_in.iter().zip(&narrowed))
    {
        assert!(a.iter().all(|x| x.is_finite()), "{name}: not finite");
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: narrowed inputs changed the result");
    }

    gpu.set_attention_kernel(Simt);
    let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
    let e = gpu
        .attention_forward(&mut og, &mut lg, &qn, &kn, &vn, s)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention_forward (simt)") && e.contains("bf16"),
        "{e}"
    );
    let (mut dqg, mut dkg, mut dvg) = (
        poisoned(gpu, n * qd),
        poisoned(gpu, n * kd),
        poisoned(gpu, n * kd),
    );
    let e = gpu
        .attention_backward(
            &mut dqg, &mut dkg, &mut dvg, &doutg, &qn, &kn, &vn, &og, &lg, s,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention_backward (simt)") && e.contains("bf16"),
        "{e}"
    );
    gpu.set_attention_kernel(tc);

    // narrowing a buffer whose copy a forward already cached keeps that copy: same results
    let (mut qc, mut kc, mut vc) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&k).unwrap(),
        gpu.upload(&v).unwrap(),
    );
    let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
    gpu.attention_forward(&mut og, &mut lg, &qc, &kc, &vc, s)
        .unwrap();
    for b in [&mut qc, &mut kc, &mut vc] {
        assert!(b.has_bf16_copy(), "the forward did not cache a bf16 copy");
        gpu.keep_as_attention_input(b).unwrap();
        assert!(
            b.is_narrowed(),
            "keep_as_attention_input did not narrow a cached buffer"
        );
    }
    let (mut og2, mut lg2) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
    gpu.attention_forward(&mut og2, &mut lg2, &qc, &kc, &vc, s)
        .unwrap();
    assert_eq!(
        down(gpu, &og2),
        f32_in[0],
        "out after narrowing a cached buffer"
    );
    assert_eq!(
        down(gpu, &lg2),
        f32_in[1],
        "lse after narrowing a cached buffer"
    );

    gpu.set_narrow_saved_inputs(false);
    let mut kept = gpu.upload(&q).unwrap();
    gpu.keep_as_attention_input(&mut kept).unwrap();
    assert!(
        !kept.is_narrowed(),
        "narrowing off, yet the f32 values were dropped"
    );
    gpu.set_narrow_saved_inputs(true);

    // a forward caches q's bf16 copy; scaling q must drop it
    let cpu = Cpu::new();
    let (mut qg, kg, vg) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&k).unwrap(),
        gpu.upload(&v).unwrap(),
    );
    gpu.attention_forward(&mut og, &mut lg, &qg, &kg, &vg, s)
        .unwrap();
    assert!(
        qg.has_bf16_copy(),
        "the forward did not cache q's bf16 copy"
    );
    gpu.scale(&mut qg, 0.5).unwrap();
    let (mut og, mut lg) = (poisoned(gpu, n * qd), poisoned(gpu, lse_len));
    gpu.attention_forward(&mut og, &mut lg, &qg, &kg, &vg, s)
        .unwrap();
    let half: Vec<f32> = q.iter().map(|x| x * 0.5).collect();
    let (mut oc, mut lc) = (vec![0.0; n * qd], vec![0.0; lse_len]);
    cpu.attention_forward(&mut oc, &mut lc, &half, &k, &v, s)
        .unwrap();
    let (out_tol, lse_tol, _) = MMA_TOLS;
    check("out after q was rescaled", &down(gpu, &og), &oc, out_tol);
    check("lse after q was rescaled", &down(gpu, &lg), &lc, lse_tol);
}

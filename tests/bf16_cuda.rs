//! The bf16 working copies of the CUDA backend in `GemmPrecision::Bf16` (src/backend/cuda/
//! buffer.rs): a weight's cached copy must follow every write to the weight, and a narrowed
//! activation (`Backend::keep_as_gemm_input`: only its bf16 copy kept) must give the same GEMM
//! results as the f32 buffer it replaced, and refuse any f32 use. Fresh random inputs each run,
//! outputs poisoned, errors ‖gpu − cpu‖ / ‖cpu‖ against the CPU's f32 reference.
//!
//! Without the `cuda` feature, or without a GPU, each test prints "skipped: no GPU".
#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

#[cfg(feature = "cuda")]
use cada::backend::cpu::Cpu;
#[cfg(feature = "cuda")]
use cada::backend::Backend;
#[cfg(feature = "cuda")]
use common::{check, down, poisoned, randv};

/// bf16 operands (2^-8 relative rounding), f32 accumulation: the bound of `cuda_gemm_bf16` in
/// ops_cuda.rs (a host emulation of these GEMMs gives ~2.1e-3).
#[cfg(feature = "cuda")]
const BF16_TOL: f64 = 1e-2;

/// Bf16 mode reads a weight through its cached bf16 copy (src/backend/cuda/buffer.rs). The copy
/// must exist after a GEMM has used the weight, survive reads, and be dropped by every kind of
/// write — the optimiser step, `copy`, `fill` — so a GEMM after the write sees the new values.
/// Each forward is checked against the CPU on the current weights with the bf16 bound.
#[test]
fn cuda_bf16_weight_copy_follows_writes() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let Some((mut gpu, mut r)) = common::cuda_setup("cuda_bf16_weight_copy_follows_writes")
        else {
            return;
        };
        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        let cpu = Cpu::new();
        let (n, k, m) = (19, 67, 41);
        let x = randv(&mut r, n * k, 1.0);
        let xg = gpu.upload(&x).unwrap();
        let mut w = randv(&mut r, m * k, 1.0);
        let mut wg = gpu.upload(&w).unwrap();
        let forward = |gpu: &cada::backend::cuda::Cuda,
                       wg: &cada::backend::cuda::CudaBuf,
                       w: &Vec<f32>,
                       what: &str| {
            let mut og = poisoned(gpu, n * m);
            gpu.linear_forward(&mut og, &xg, wg, None, n, k, m).unwrap();
            let mut oc = vec![0.0; n * m];
            cpu.linear_forward(&mut oc, &x, w, None, n, k, m).unwrap();
            check(what, &down(gpu, &og), &oc, BF16_TOL);
        };
        assert!(!wg.has_bf16_copy(), "a fresh upload has no bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward, first use");
        assert!(wg.has_bf16_copy(), "the GEMM cached the weight's bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward, cached copy");
        assert!(wg.has_bf16_copy(), "a read keeps the copy");

        // the optimiser's write
        let g = randv(&mut r, m * k, 1.0);
        let gg = gpu.upload(&g).unwrap();
        let (mut mg, mut vg) = (gpu.zeros(m * k).unwrap(), gpu.zeros(m * k).unwrap());
        let (mut mc, mut vc) = (vec![0.0; m * k], vec![0.0; m * k]);
        gpu.adamw_step(
            &mut wg, &gg, &mut mg, &mut vg, 0.1, 0.9, 0.999, 1e-8, 0.01, 1,
        )
        .unwrap();
        cpu.adamw_step(&mut w, &g, &mut mc, &mut vc, 0.1, 0.9, 0.999, 1e-8, 0.01, 1)
            .unwrap();
        assert!(!wg.has_bf16_copy(), "adamw_step dropped the copy");
        forward(&gpu, &wg, &w, "linear_forward after adamw_step");

        // a copy into part of the weight, then a fill
        let patch = randv(&mut r, 100, 3.0);
        let pg = gpu.upload(&patch).unwrap();
        gpu.copy(&mut wg, 7, &pg, 0, 100).unwrap();
        w[7..107].copy_from_slice(&patch);
        assert!(!wg.has_bf16_copy(), "copy dropped the bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward after copy");
        gpu.fill(&mut wg, 0.25).unwrap();
        w.iter_mut().for_each(|v| *v = 0.25);
        assert!(!wg.has_bf16_copy(), "fill dropped the bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward after fill");
        // elementwise writes
        forward(&gpu, &wg, &w, "linear_forward, copy made again");
        gpu.scale(&mut wg, -1.5).unwrap();
        w.iter_mut().for_each(|v| *v *= -1.5);
        assert!(!wg.has_bf16_copy(), "scale dropped the bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward after scale");
        let delta = randv(&mut r, m * k, 1.0);
        gpu.add_assign(&mut wg, &gpu.upload(&delta).unwrap())
            .unwrap();
        w.iter_mut().zip(&delta).for_each(|(v, d)| *v += d);
        assert!(!wg.has_bf16_copy(), "add_assign dropped the bf16 copy");
        forward(&gpu, &wg, &w, "linear_forward after add_assign");
        // the weight as a GEMM's output (cuBLAS writes through DevicePtrMut): [m, k] = a · bᵀ
        let k2 = 13;
        let (a, b) = (randv(&mut r, m * k2, 1.0), randv(&mut r, k * k2, 1.0));
        let (ag, bg) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        gpu.linear_forward(&mut wg, &ag, &bg, None, m, k2, k)
            .unwrap();
        cpu.linear_forward(&mut w, &a, &b, None, m, k2, k).unwrap();
        assert!(
            !wg.has_bf16_copy(),
            "a GEMM writing the weight dropped the bf16 copy"
        );
        check(
            "linear_forward into the weight",
            &down(&gpu, &wg),
            &w,
            BF16_TOL,
        );
        // that GEMM rounded its operands to bf16: the next check starts from the GPU's values
        w = down(&gpu, &wg);
        forward(
            &gpu,
            &wg,
            &w,
            "linear_forward after the weight was a GEMM output",
        );
        println!("cuda_bf16_weight_copy_follows_writes: ran on the GPU and matched the CPU");
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_bf16_weight_copy_follows_writes: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// A narrowed activation as the `x` of `linear_backward` (its dW GEMM reads the bf16 copy) and
/// of `linear_forward`, against the CPU on the f32 values; f32 uses of it are errors; in f32
/// GEMM mode narrowing keeps the f32 values.
#[test]
fn cuda_narrowed_activation_is_a_bf16_gemm_input() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let Some((mut gpu, mut r)) =
            common::cuda_setup("cuda_narrowed_activation_is_a_bf16_gemm_input")
        else {
            return;
        };
        let cpu = Cpu::new();
        let (n, k, m) = (37, 53, 29);
        let (x, w, dout) = (
            randv(&mut r, n * k, 1.0),
            randv(&mut r, m * k, 1.0),
            randv(&mut r, n * m, 1.0),
        );
        let (wg, doutg) = (gpu.upload(&w).unwrap(), gpu.upload(&dout).unwrap());

        // f32 mode: a no-op
        let mut xg = gpu.upload(&x).unwrap();
        gpu.keep_as_gemm_input(&mut xg).unwrap();
        assert!(!xg.is_narrowed(), "f32 GEMMs read f32: nothing to narrow");
        assert_eq!(down(&gpu, &xg), x);

        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        gpu.keep_as_gemm_input(&mut xg).unwrap();
        assert!(xg.is_narrowed() && xg.has_bf16_copy());
        assert_eq!(gpu.len(&xg), n * k, "the logical length survives");
        assert!(gpu.download(&xg).is_err(), "no f32 values to download");

        let mut og = poisoned(&gpu, n * m);
        gpu.linear_forward(&mut og, &xg, &wg, None, n, k, m)
            .unwrap();
        let mut oc = vec![0.0; n * m];
        cpu.linear_forward(&mut oc, &x, &w, None, n, k, m).unwrap();
        check(
            "linear_forward, narrowed x",
            &down(&gpu, &og),
            &oc,
            BF16_TOL,
        );

        let dw0 = randv(&mut r, m * k, 1.0);
        let mut dwg = gpu.upload(&dw0).unwrap();
        let mut dwc = dw0.clone();
        let mut dxg = poisoned(&gpu, n * k);
        let mut dxc = vec![0.0; n * k];
        gpu.linear_backward(Some(&mut dxg), &mut dwg, None, &doutg, &xg, &wg, n, k, m)
            .unwrap();
        cpu.linear_backward(Some(&mut dxc), &mut dwc, None, &dout, &x, &w, n, k, m)
            .unwrap();
        check("linear_backward dx", &down(&gpu, &dxg), &dxc, BF16_TOL);
        check(
            "linear_backward dw, narrowed x",
            &down(&gpu, &dwg),
            &dwc,
            BF16_TOL,
        );

        // against the same bf16 GEMMs on the un-narrowed buffer: the same bf16 values go into
        // the same cublasGemmEx, so any wrong element of the copy shows (bound: reassociation
        // only, if cuBLAS picks another algorithm)
        let xfull = gpu.upload(&x).unwrap();
        let mut of = poisoned(&gpu, n * m);
        gpu.linear_forward(&mut of, &xfull, &wg, None, n, k, m)
            .unwrap();
        check(
            "linear_forward, narrowed vs f32 x",
            &down(&gpu, &og),
            &down(&gpu, &of),
            1e-6,
        );
        let mut dwf = gpu.upload(&dw0).unwrap();
        gpu.linear_backward(None, &mut dwf, None, &doutg, &xfull, &wg, n, k, m)
            .unwrap();
        let mut dwn = gpu.upload(&dw0).unwrap();
        gpu.linear_backward(None, &mut dwn, None, &doutg, &xg, &wg, n, k, m)
            .unwrap();
        check(
            "linear_backward dw, narrowed vs f32 x",
            &down(&gpu, &dwn),
            &down(&gpu, &dwf),
            1e-6,
        );

        // narrowing twice is a no-op
        gpu.keep_as_gemm_input(&mut xg).unwrap();
        assert!(xg.is_narrowed() && xg.has_bf16_copy());
        // the length-sized ops refuse it by name instead of doing nothing
        assert!(
            gpu.sum_squares(&xg).is_err(),
            "sum_squares of a narrowed buffer"
        );
        assert!(
            gpu.all_finite(&xg).is_err(),
            "all_finite of a narrowed buffer"
        );
        assert!(
            gpu.scale(&mut xg, 2.0).is_err(),
            "scale of a narrowed buffer"
        );
        assert!(gpu.fill(&mut xg, 0.0).is_err(), "fill of a narrowed buffer");
        assert!(xg.has_bf16_copy(), "a refused write leaves the copy");

        // an f32 use of the narrowed buffer is refused, not read as garbage
        let mut y = poisoned(&gpu, n * k);
        let err = gpu.copy(&mut y, 0, &xg, 0, n * k).unwrap_err();
        println!("  f32 use refused: {err:#}");
        // and the GEMMs must still be bf16 to read it
        gpu.set_gemm_precision(GemmPrecision::F32).unwrap();
        let err = gpu
            .linear_backward(None, &mut dwg, None, &doutg, &xg, &wg, n, k, m)
            .unwrap_err();
        assert!(format!("{err:#}").contains("kept only in bf16"), "{err:#}");
        let err = gpu
            .linear_forward(&mut og, &xg, &wg, None, n, k, m)
            .unwrap_err();
        assert!(format!("{err:#}").contains("kept only in bf16"), "{err:#}");
        println!(
            "cuda_narrowed_activation_is_a_bf16_gemm_input: ran on the GPU and matched the CPU"
        );
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_narrowed_activation_is_a_bf16_gemm_input: skipped: no GPU (built without the \
         `cuda` feature)"
    );
}

/// SwiGLU's gate and up saved in bf16 alone (`keep_as_swiglu_input`, bf16 mode): the backward
/// must equal the CPU's f32 backward on the bf16-rounded values (the f32 math is unchanged, so
/// 1e-6 covers `expf`'s last ulp), and against unrounded f32 values it stays within the bf16
/// bound. A no-op in f32 mode; gate narrowed but up not is refused by name.
#[test]
fn cuda_narrowed_swiglu_inputs() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let Some((mut gpu, mut r)) = common::cuda_setup("cuda_narrowed_swiglu_inputs") else {
            return;
        };
        let cpu = Cpu::new();
        let n = 4099; // not a multiple of the block or of 4
        let (gate, up, dout) = (
            randv(&mut r, n, 3.0),
            randv(&mut r, n, 3.0),
            randv(&mut r, n, 1.0),
        );
        let mut gg = gpu.upload(&gate).unwrap();
        gpu.keep_as_swiglu_input(&mut gg).unwrap();
        assert!(!gg.is_narrowed(), "f32 mode keeps the f32 values");

        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        let (mut ug, doutg) = (gpu.upload(&up).unwrap(), gpu.upload(&dout).unwrap());
        gpu.keep_as_swiglu_input(&mut gg).unwrap();
        let (mut dgg, mut dug) = (poisoned(&gpu, n), poisoned(&gpu, n));
        let e = gpu
            .swiglu_backward(&mut dgg, &mut dug, &doutg, &gg, &ug)
            .unwrap_err();
        assert!(format!("{e:#}").contains("one of gate and up"), "{e:#}");
        gpu.keep_as_swiglu_input(&mut ug).unwrap();
        assert!(gg.is_narrowed() && ug.is_narrowed());
        gpu.swiglu_backward(&mut dgg, &mut dug, &doutg, &gg, &ug)
            .unwrap();

        let round = |x: &[f32]| -> Vec<f32> {
            x.iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        };
        let (gr, ur) = (round(&gate), round(&up));
        let (mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n]);
        cpu.swiglu_backward(&mut dgc, &mut duc, &dout, &gr, &ur)
            .unwrap();
        check("dgate vs CPU on bf16 inputs", &down(&gpu, &dgg), &dgc, 1e-6);
        check("dup vs CPU on bf16 inputs", &down(&gpu, &dug), &duc, 1e-6);
        let (mut dgf, mut duf) = (vec![0.0; n], vec![0.0; n]);
        cpu.swiglu_backward(&mut dgf, &mut duf, &dout, &gate, &up)
            .unwrap();
        check(
            "dgate vs CPU on f32 inputs",
            &down(&gpu, &dgg),
            &dgf,
            BF16_TOL,
        );
        check(
            "dup vs CPU on f32 inputs",
            &down(&gpu, &dug),
            &duf,
            BF16_TOL,
        );
        println!("cuda_narrowed_swiglu_inputs: ran on the GPU and matched the CPU");
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_narrowed_swiglu_inputs: skipped: no GPU (built without the `cuda` feature)");
}

/// The attention output saved in bf16 alone (`keep_as_attention_output`, bf16 mode): the
/// backward's δ = rowsum(dO∘O) then reads the bf16 values. With the f32 attention the gradients
/// must equal the CPU backward given the same bf16-rounded `out` (f32 reassociation only: 1e-4,
/// the f32 kernels' gradient bound); with the mma attention, within its bound (1e-2). In f32
/// mode the hint is a no-op.
#[test]
fn cuda_narrowed_attention_output() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{AttentionKernel, GemmPrecision};
        use cada::backend::AttnShape;
        let Some((mut gpu, mut r)) = common::cuda_setup("cuda_narrowed_attention_output") else {
            return;
        };
        let cpu = Cpu::new();
        let s = AttnShape {
            batch: 2,
            seq: 45,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let n = s.batch * s.seq;
        let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let (q, k, v, dout) = (
            randv(&mut r, n * qd, 1.0),
            randv(&mut r, n * kd, 1.0),
            randv(&mut r, n * kd, 1.0),
            randv(&mut r, n * qd, 1.0),
        );
        let lse_len = s.batch * s.n_heads * s.seq;
        let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; lse_len]);
        cpu.attention_forward(&mut out, &mut lse, &q, &k, &v, s)
            .unwrap();
        let out16: Vec<f32> = out
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        let (mut dqc, mut dkc, mut dvc) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
        cpu.attention_backward(
            &mut dqc, &mut dkc, &mut dvc, &dout, &q, &k, &v, &out16, &lse, s,
        )
        .unwrap();

        let mut og = gpu.upload(&out).unwrap();
        gpu.keep_as_attention_output(&mut og).unwrap();
        assert!(!og.is_narrowed(), "f32 mode keeps the f32 values");
        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        gpu.keep_as_attention_output(&mut og).unwrap();
        assert!(og.is_narrowed(), "bf16 mode keeps only the bf16 copy");
        let (qg, kg, vg, dg, lg) = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
            gpu.upload(&dout).unwrap(),
            gpu.upload(&lse).unwrap(),
        );
        for (kernel, tol) in [(AttentionKernel::Simt, 1e-4), (AttentionKernel::Mma, 1e-2)] {
            gpu.set_attention_kernel(kernel);
            let (mut dqg, mut dkg, mut dvg) = (
                poisoned(&gpu, n * qd),
                poisoned(&gpu, n * kd),
                poisoned(&gpu, n * kd),
            );
            gpu.attention_backward(
                &mut dqg, &mut dkg, &mut dvg, &dg, &qg, &kg, &vg, &og, &lg, s,
            )
            .unwrap();
            check(&format!("{kernel:?} dq"), &down(&gpu, &dqg), &dqc, tol);
            check(&format!("{kernel:?} dk"), &down(&gpu, &dkg), &dkc, tol);
            check(&format!("{kernel:?} dv"), &down(&gpu, &dvg), &dvc, tol);
        }
        println!("cuda_narrowed_attention_output: ran on the GPU and matched the CPU");
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_narrowed_attention_output: skipped: no GPU (built without the `cuda` feature)");
}

/// In Bf16 mode RMSNorm, add + RMSNorm, SwiGLU and the decode attention write their output's bf16 copy themselves
/// (`*_with_bf16` kernels), so the GEMMs that read the output convert nothing. The copy must be
/// the one a conversion would make: a GEMM from each output equals, to the bit, the GEMM from
/// a fresh upload of the same f32 values (which converts), and both match the CPU within the
/// bf16 bound. A later write drops the copy, as for weights.
#[test]
fn cuda_ops_write_their_bf16_copies() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let Some((mut gpu, mut r)) = common::cuda_setup("cuda_ops_write_their_bf16_copies") else {
            return;
        };
        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        let cpu = Cpu::new();
        let (n, k, m, eps) = (23, 301, 37, 1e-5);
        let w = randv(&mut r, m * k, 1.0);
        let wg = gpu.upload(&w).unwrap();
        // the GEMM from `xg` (its own copy) against the GEMM from a fresh upload, and the CPU
        let gemm_from =
            |gpu: &cada::backend::cuda::Cuda, xg: &cada::backend::cuda::CudaBuf, what: &str| {
                assert!(xg.has_bf16_copy(), "{what}: no bf16 copy written");
                let x = down(gpu, xg);
                let mut own = poisoned(gpu, n * m);
                gpu.linear_forward(&mut own, xg, &wg, None, n, k, m)
                    .unwrap();
                let mut fresh = poisoned(gpu, n * m);
                let xf = gpu.upload(&x).unwrap();
                gpu.linear_forward(&mut fresh, &xf, &wg, None, n, k, m)
                    .unwrap();
                let (own, fresh) = (down(gpu, &own), down(gpu, &fresh));
                assert_eq!(
                    own, fresh,
                    "{what}: the written copy is not the converted one"
                );
                let mut oc = vec![0.0; n * m];
                cpu.linear_forward(&mut oc, &x, &w, None, n, k, m).unwrap();
                check(what, &own, &oc, BF16_TOL);
            };
        let (x, delta, nw) = (
            randv(&mut r, n * k, 2.0),
            randv(&mut r, n * k, 1.0),
            randv(&mut r, k, 1.0),
        );
        let (xg, nwg) = (gpu.upload(&x).unwrap(), gpu.upload(&nw).unwrap());
        let (mut out, mut rstd) = (poisoned(&gpu, n * k), poisoned(&gpu, n));
        gpu.rmsnorm_forward(&mut out, &mut rstd, &xg, &nwg, n, k, eps)
            .unwrap();
        gemm_from(&gpu, &out, "rmsnorm_forward output");
        let mut xs = gpu.upload(&x).unwrap();
        gpu.add_rmsnorm_forward(
            &mut xs,
            &gpu.upload(&delta).unwrap(),
            &mut out,
            &mut rstd,
            &nwg,
            n,
            k,
            eps,
        )
        .unwrap();
        gemm_from(
            &gpu,
            &out,
            "add_rmsnorm_forward output (its old copy reused)",
        );
        let (g, u) = (randv(&mut r, n * k, 3.0), randv(&mut r, n * k, 1.0));
        let mut act = poisoned(&gpu, n * k);
        gpu.swiglu_forward(&mut act, &gpu.upload(&g).unwrap(), &gpu.upload(&u).unwrap())
            .unwrap();
        gemm_from(&gpu, &act, "swiglu_forward output");
        gpu.scale(&mut act, 0.5).unwrap();
        assert!(!act.has_bf16_copy(), "a write kept a stale bf16 copy");
        // the decoder's stacked gate/up: rows gate | up of one [n, 2k] GEMM output
        let gu = randv(&mut r, n * 2 * k, 3.0);
        gpu.swiglu_forward_stacked(&mut act, &gpu.upload(&gu).unwrap(), n, k)
            .unwrap();
        gemm_from(&gpu, &act, "swiglu_forward_stacked output");
        // the decode step's attention output, o_proj's input: [batch, Hq·hd] = 5 × 160
        let s = cada::backend::DecodeShape {
            batch: 5,
            capacity: 19,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 40,
        };
        let (qd, kvd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let kc = gpu
            .upload(&randv(&mut r, s.batch * s.capacity * kvd, 1.0))
            .unwrap();
        let vc = gpu
            .upload(&randv(&mut r, s.batch * s.capacity * kvd, 1.0))
            .unwrap();
        let q = gpu.upload(&randv(&mut r, s.batch * qd, 1.0)).unwrap();
        let pos = gpu.upload_ids(&[0, 7, 18, 3, 11]).unwrap();
        let mut attn = poisoned(&gpu, s.batch * qd);
        gpu.decode_attention(&mut attn, &q, &kc, &vc, &pos, s)
            .unwrap();
        assert!(
            attn.has_bf16_copy(),
            "decode_attention output: no bf16 copy written"
        );
        let wo = randv(&mut r, m * qd, 1.0);
        let wog = gpu.upload(&wo).unwrap();
        let a = down(&gpu, &attn);
        let (mut own, mut fresh) = (poisoned(&gpu, s.batch * m), poisoned(&gpu, s.batch * m));
        gpu.linear_forward(&mut own, &attn, &wog, None, s.batch, qd, m)
            .unwrap();
        let af = gpu.upload(&a).unwrap();
        gpu.linear_forward(&mut fresh, &af, &wog, None, s.batch, qd, m)
            .unwrap();
        let (own, fresh) = (down(&gpu, &own), down(&gpu, &fresh));
        assert_eq!(
            own, fresh,
            "decode_attention output: the written copy is not the converted one"
        );
        let mut oc = vec![0.0; s.batch * m];
        cpu.linear_forward(&mut oc, &a, &wo, None, s.batch, qd, m)
            .unwrap();
        check("decode_attention output", &own, &oc, BF16_TOL);
        println!("cuda_ops_write_their_bf16_copies: ran on the GPU and matched the CPU");
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_ops_write_their_bf16_copies: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// `keep_as_gemm_weight` (the decoder's stacked weights): in Bf16 mode the weight keeps only its
/// bf16 copy, and `linear_forward` from it equals, to the bit, the GEMM from the same weight
/// kept in f32 (whose cached copy is the same conversion), bias included. Afterwards the
/// narrowed weight is refused by name in another GEMM mode and when the shape needs more values
/// than it holds; with narrowing switched off it keeps its f32 values.
#[test]
fn cuda_narrowed_gemm_weight() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let Some((mut gpu, mut r)) = common::cuda_setup("cuda_narrowed_gemm_weight") else {
            return;
        };
        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        let (n, k, m) = (9, 133, 71);
        let (x, w, b) = (
            randv(&mut r, n * k, 1.0),
            randv(&mut r, m * k, 1.0),
            randv(&mut r, m, 1.0),
        );
        let (xg, bg) = (gpu.upload(&x).unwrap(), gpu.upload(&b).unwrap());
        let kept = gpu.upload(&w).unwrap();
        let mut narrowed = gpu.upload(&w).unwrap();
        gpu.keep_as_gemm_weight(&mut narrowed).unwrap();
        assert!(
            narrowed.is_narrowed(),
            "bf16 mode: the weight kept its f32 values"
        );
        let (mut a, mut c) = (poisoned(&gpu, n * m), poisoned(&gpu, n * m));
        gpu.linear_forward(&mut a, &xg, &kept, Some(&bg), n, k, m)
            .unwrap();
        gpu.linear_forward(&mut c, &xg, &narrowed, Some(&bg), n, k, m)
            .unwrap();
        let (a, c) = (down(&gpu, &a), down(&gpu, &c));
        assert_eq!(
            a, c,
            "GEMM from the narrowed weight differs from the kept one"
        );
        let mut oc = vec![0.0; n * m];
        Cpu::new()
            .linear_forward(&mut oc, &x, &w, Some(&b), n, k, m)
            .unwrap();
        check("narrowed-weight GEMM vs CPU", &c, &oc, BF16_TOL);
        let mut big = poisoned(&gpu, n * (m + 1));
        let e = gpu
            .linear_forward(&mut big, &xg, &narrowed, None, n, k, m + 1)
            .expect_err("a shape past the narrowed weight was accepted");
        assert!(format!("{e:#}").contains("`w` holds"), "{e:#}");
        gpu.set_gemm_precision(GemmPrecision::F32).unwrap();
        let mut out = poisoned(&gpu, n * m);
        let e = gpu
            .linear_forward(&mut out, &xg, &narrowed, None, n, k, m)
            .expect_err("f32 GEMMs accepted a weight kept only in bf16");
        assert!(format!("{e:#}").contains("kept only in bf16"), "{e:#}");
        gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
        gpu.set_narrow_saved_inputs(false);
        let mut unnarrowed = gpu.upload(&w).unwrap();
        gpu.keep_as_gemm_weight(&mut unnarrowed).unwrap();
        assert!(
            !unnarrowed.is_narrowed(),
            "narrowing off, yet the weight was narrowed"
        );
        gpu.set_narrow_saved_inputs(true);
        println!("cuda_narrowed_gemm_weight: ran on the GPU and matched the CPU");
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_narrowed_gemm_weight: skipped: no GPU (built without the `cuda` feature)");
}

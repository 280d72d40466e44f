//! The two training-attention implementations against the CPU reference: the f32 kernels
//! (attention.cu, `AttentionKernel::Simt`) and the bf16 tensor-core kernels (attention_mma.cu,
//! `AttentionKernel::Mma`), forward (out, lse) and backward (dq, dk, dv), at shapes that are not
//! tile multiples, plus the two mixed (one's forward feeding the other's backward); and the two
//! decode-attention kernels over a KV cache (`DecodeAttentionKernel`). Fresh random
//! inputs every run, outputs poisoned with NaN before each launch; the bounds sit beside each
//! implementation. Without a GPU every test prints "skipped: no GPU".
#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

use cada::backend::cpu::Cpu;
use cada::backend::{AttnShape, Backend};
use common::{check, down, poisoned, randv};
use rand_chacha::ChaCha8Rng as Rand;

/// f32 reassociation
const F32_TOL: f64 = 1e-5;
/// cancellation-prone outputs (the backward)
const GRAD_TOL: f64 = 1e-4;

/// Bounds for one attention implementation: (out, lse, dq/dk/dv).
type AttnTols = (f64, f64, f64);
/// The f32 kernels (attention.cu): f32 reassociation, cancellation in the backward.
const SIMT_TOLS: AttnTols = (F32_TOL, F32_TOL, GRAD_TOL);
/// The bf16 tensor-core kernels (attention_mma.cu): q, k, v, dO, P and dS are rounded to bf16
/// (2^-8 relative spacing, ≤ 2^-9 rounding each) before f32-accumulated products, so out and
/// the gradients carry a few 1e-3 of relative error (host emulation of the kernels: 2.5e-3 to
/// 5e-3); 1e-2 leaves a 2× margin. lse is an f32 log-sum-exp of bf16-input scores: its error
/// is the scores' absolute error (~1e-3 · |score|) over a value of order log T: ~1e-3.
const MMA_TOLS: AttnTols = (1e-2, 1e-3, 1e-2);

fn attention_shape<B: Backend>(gpu: &B, r: &mut Rand, s: AttnShape, tols: AttnTols) {
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

fn attn_shape(
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

fn attention_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let t = SIMT_TOLS;
    attention_shape(gpu, r, attn_shape(2, 37, 4, 2, 64), t); // GQA group 2, seq not a tile multiple
    attention_shape(gpu, r, attn_shape(1, 45, 3, 1, 128), t); // MQA, hd 128
    attention_shape(gpu, r, attn_shape(3, 9, 2, 2, 40), t); // hd not a multiple of 32
}

/// The tensor-core kernels (the caller selects `AttentionKernel::Mma`). Tiles are 64 rows/keys.
fn attention_mma_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let t = MMA_TOLS;
    attention_shape(gpu, r, attn_shape(2, 77, 9, 3, 64), t); // group 3, T = 64 + 13
    attention_shape(gpu, r, attn_shape(1, 200, 4, 2, 128), t); // hd 128, 4 tiles, tail of 8
    attention_shape(gpu, r, attn_shape(1, 130, 14, 2, 64), t); // group 7, tail of 2
    attention_shape(gpu, r, attn_shape(1, 70, 2, 1, 32), t); // hd 32 padded to 64
    attention_shape(gpu, r, attn_shape(1, 90, 2, 2, 96), t); // hd 96 padded to 128
    attention_shape(gpu, r, attn_shape(2, 33, 2, 1, 37), t); // odd hd: scalar staging path
}

gpu_test!(cuda_attention, attention_case);

/// `AttentionKernel::Mma` against the CPU, then the two implementations mixed: the f32 forward's
/// `lse` feeding the mma backward and the mma forward's feeding the f32 backward.
#[test]
fn cuda_attention_mma() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::AttentionKernel;
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_attention_mma") {
            gpu.set_attention_kernel(AttentionKernel::Mma);
            assert_eq!(gpu.attention_kernel(), AttentionKernel::Mma);
            attention_mma_case(&gpu, &mut rng);
            attention_mixed(&mut gpu, &mut rng, attn_shape(2, 77, 9, 3, 64));
            for s in [attn_shape(2, 77, 9, 3, 64), attn_shape(2, 33, 2, 1, 37)] {
                attention_narrowed(&mut gpu, &mut rng, s);
            }
            println!("cuda_attention_mma: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        println!("cuda_attention_mma: skipped: no GPU (built without the `cuda` feature)");
        let _unused = attention_mma_case::<Cpu>;
    }
}

/// Forward with one attention implementation, backward with the other (both orders): the
/// gradients must match the CPU within the mma bounds, since the `lse` layouts are identical.
#[cfg(feature = "cuda")]
fn attention_mixed(gpu: &mut cada::backend::cuda::Cuda, r: &mut Rand, s: AttnShape) {
    use cada::backend::cuda::AttentionKernel::{Mma, Simt};
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
    for (fwd, bwd) in [(Simt, Mma), (Mma, Simt)] {
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
    gpu.set_attention_kernel(Mma);
}

/// q, k, v narrowed to bf16 (`keep_as_attention_input`) against the same values kept in f32:
/// the mma kernels read bf16 copies either way (made by the same rounding), so forward and
/// backward must agree bit for bit. Then: the f32 attention refuses a narrowed input by name;
/// with narrowing off the hint keeps the f32 values; and a write to q after a forward drops
/// its cached bf16 copy, so the next forward sees the new values (checked against the CPU).
#[cfg(feature = "cuda")]
fn attention_narrowed(gpu: &mut cada::backend::cuda::Cuda, r: &mut Rand, s: AttnShape) {
    use cada::backend::cuda::AttentionKernel::{Mma, Simt};
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
    gpu.set_attention_kernel(Mma);

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

/// Both decode-attention kernels (`DecodeAttentionKernel`: lane per key, the default, and warp
/// per key) against the CPU, one query per sequence over a KV cache, with sequences at their
/// first position, partway and at the last position of the capacity (so every warp's later
/// chunks of 32 keys run), GQA, head dims 64, 128 and 34 (not a multiple of 4: the lane kernel's
/// scalar rows). f32 online softmax: 1e-5. The bf16 GEMM mode's `_with_bf16` twins must give
/// the same f32 output to the bit.
#[test]
fn cuda_decode_attention_kernels() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{DecodeAttentionKernel, GemmPrecision};
        use cada::backend::DecodeShape;
        let name = "cuda_decode_attention_kernels";
        if let Some((mut gpu, mut r)) = common::cuda_setup(name) {
            let cpu = Cpu::new();
            for (batch, capacity, n_heads, n_kv_heads, head_dim) in
                [(5, 300, 9, 3, 64), (3, 131, 8, 2, 128), (4, 70, 4, 2, 34)]
            {
                let s = DecodeShape {
                    batch,
                    capacity,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                };
                let (qd, kvd) = (n_heads * head_dim, n_kv_heads * head_dim);
                let kc = randv(&mut r, batch * capacity * kvd, 1.0);
                let vc = randv(&mut r, batch * capacity * kvd, 1.0);
                let q = randv(&mut r, batch * qd, 1.0);
                let positions = decode_positions(batch, capacity);
                let mut want = vec![0.0; batch * qd];
                cpu.decode_attention(&mut want, &q, &kc, &vc, &positions, s)
                    .unwrap();
                let (kg, vg, qg) = (
                    gpu.upload(&kc).unwrap(),
                    gpu.upload(&vc).unwrap(),
                    gpu.upload(&q).unwrap(),
                );
                let pg = gpu.upload_ids(&positions).unwrap();
                for kernel in [
                    DecodeAttentionKernel::LanePerKey,
                    DecodeAttentionKernel::WarpPerKey,
                ] {
                    gpu.set_decode_attention_kernel(kernel);
                    let mut outs = Vec::new();
                    for precision in [GemmPrecision::F32, GemmPrecision::Bf16] {
                        gpu.set_gemm_precision(precision).unwrap();
                        let mut og = poisoned(&gpu, batch * qd);
                        gpu.decode_attention(&mut og, &qg, &kg, &vg, &pg, s)
                            .unwrap();
                        assert_eq!(
                            og.has_bf16_copy(),
                            precision == GemmPrecision::Bf16,
                            "{kernel:?} {precision:?}: bf16 copy"
                        );
                        let got = down(&gpu, &og);
                        let at = format!("{kernel:?} {precision:?} {s:?}");
                        check(&format!("decode attention {at}"), &got, &want, F32_TOL);
                        outs.push(got);
                    }
                    assert_eq!(
                        outs[0], outs[1],
                        "{kernel:?}: the _with_bf16 twin's f32 output"
                    );
                }
            }
            gpu.set_gemm_precision(GemmPrecision::F32).unwrap();
            gpu.set_decode_attention_kernel(DecodeAttentionKernel::LanePerKey);
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_decode_attention_kernels: skipped: no GPU (built without the `cuda` feature)");
}

/// Slot positions for the decode tests: a first token, a full slot (every warp's later chunks
/// of 32 keys), the rest spread over the capacity.
#[cfg(feature = "cuda")]
fn decode_positions(batch: usize, capacity: usize) -> Vec<u32> {
    (0..batch)
        .map(|b| match b {
            0 => 0,
            1 => capacity as u32 - 1,
            _ => (b * 97 % capacity) as u32,
        })
        .collect()
}

/// `CADA_DECODE_ATTENTION`'s values, and a bad one refused by name (no GPU needed).
#[cfg(feature = "cuda")]
#[test]
fn decode_attention_kernel_choice() {
    use cada::backend::cuda::DecodeAttentionKernel as K;
    assert_eq!(K::parse(None).unwrap(), K::LanePerKey);
    assert_eq!(K::parse(Some("lane_per_key")).unwrap(), K::LanePerKey);
    assert_eq!(K::parse(Some("warp_per_key")).unwrap(), K::WarpPerKey);
    for k in [K::LanePerKey, K::WarpPerKey] {
        assert_eq!(K::parse(Some(k.label())).unwrap(), k, "labels parse back");
    }
    let e = K::parse(Some("warp")).unwrap_err().to_string();
    assert!(
        e.contains("CADA_DECODE_ATTENTION") && e.contains("`warp_per_key`"),
        "{e}"
    );
}

/// The bf16 KV cache (`CADA_KV_CACHE=bf16`, `Backend::keep_as_kv_cache`): caches made narrowed,
/// filled through `copy` (the prefill's path) and `kv_cache_write`, then read by the decode
/// attention in both GEMM modes. Against the CPU over the bf16-rounded cache values: f32
/// reassociation only (1e-5); against the CPU over the f32 values: the cache's rounding
/// (≤ 2^-9 relative per element, averaged by the softmax; 1e-2, the bf16 bound). Then the
/// refusals: the warp-per-key kernel over a bf16 cache (when the cache is made, and at the
/// attention), a bf16 cache as an f32 copy source, and a cache with one side narrowed. Head
/// dims 64/128 take the 16-byte key reads, 34 and 36 the scalar bf16 ones (36: the f32 cache's
/// float4 path, but not 8 bf16 a read).
#[test]
fn cuda_bf16_kv_cache() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{DecodeAttentionKernel, GemmPrecision, KvCacheType};
        use cada::backend::DecodeShape;
        use half::bf16;
        let name = "cuda_bf16_kv_cache";
        if let Some((mut gpu, mut r)) = common::cuda_setup(name) {
            let cpu = Cpu::new();
            let round =
                |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
            for (batch, capacity, n_heads, n_kv_heads, head_dim) in [
                (5, 300, 9, 3, 64),
                (3, 131, 8, 2, 128),
                (4, 70, 4, 2, 34),
                (3, 45, 6, 2, 36),
            ] {
                let s = DecodeShape {
                    batch,
                    capacity,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                };
                let (qd, kvd) = (n_heads * head_dim, n_kv_heads * head_dim);
                let size = batch * capacity * kvd;
                let (mut kc, mut vc) = (randv(&mut r, size, 1.0), randv(&mut r, size, 1.0));
                let (k, v) = (
                    randv(&mut r, batch * kvd, 1.0),
                    randv(&mut r, batch * kvd, 1.0),
                );
                let q = randv(&mut r, batch * qd, 1.0);
                let positions = decode_positions(batch, capacity);
                gpu.set_kv_cache_type(KvCacheType::Bf16);
                assert!(gpu.name().contains("bf16 kv cache"), "{}", gpu.name());
                let (mut kg, mut vg) = (gpu.zeros(size).unwrap(), gpu.zeros(size).unwrap());
                gpu.keep_as_kv_cache(&mut kg).unwrap();
                gpu.keep_as_kv_cache(&mut vg).unwrap();
                assert!(
                    kg.is_narrowed() && vg.is_narrowed(),
                    "{s:?}: cache kept in bf16"
                );
                assert_eq!(gpu.len(&kg), size, "the cache's length, narrowed");
                // the prefill's copy, in two pieces at an odd offset (the scalar conversion)
                let (kh, vh) = (gpu.upload(&kc).unwrap(), gpu.upload(&vc).unwrap());
                let cut = size / 3 + 1;
                for (dst, src) in [(&mut kg, &kh), (&mut vg, &vh)] {
                    gpu.copy(dst, 0, src, 0, cut).unwrap();
                    gpu.copy(dst, cut, src, cut, size - cut).unwrap();
                }
                let (kn, vn, pg) = (
                    gpu.upload(&k).unwrap(),
                    gpu.upload(&v).unwrap(),
                    gpu.upload_ids(&positions).unwrap(),
                );
                gpu.kv_cache_write(&mut kg, &mut vg, &kn, &vn, &pg, s)
                    .unwrap();
                cpu.kv_cache_write(&mut kc, &mut vc, &k, &v, &positions, s)
                    .unwrap();
                let mut want_f32 = vec![0.0; batch * qd];
                cpu.decode_attention(&mut want_f32, &q, &kc, &vc, &positions, s)
                    .unwrap();
                let mut want_rounded = vec![0.0; batch * qd];
                cpu.decode_attention(
                    &mut want_rounded,
                    &q,
                    &round(&kc),
                    &round(&vc),
                    &positions,
                    s,
                )
                .unwrap();
                let qg = gpu.upload(&q).unwrap();
                for precision in [GemmPrecision::F32, GemmPrecision::Bf16] {
                    gpu.set_gemm_precision(precision).unwrap();
                    let mut og = poisoned(&gpu, batch * qd);
                    gpu.decode_attention(&mut og, &qg, &kg, &vg, &pg, s)
                        .unwrap();
                    let got = down(&gpu, &og);
                    let at = format!("{precision:?} {s:?}");
                    check(
                        &format!("bf16 cache vs rounded values {at}"),
                        &got,
                        &want_rounded,
                        F32_TOL,
                    );
                    check(
                        &format!("bf16 cache vs f32 cache {at}"),
                        &got,
                        &want_f32,
                        1e-2,
                    );
                }
                gpu.set_gemm_precision(GemmPrecision::F32).unwrap();
                gpu.set_decode_attention_kernel(DecodeAttentionKernel::WarpPerKey);
                let mut og = poisoned(&gpu, batch * qd);
                let e = gpu
                    .decode_attention(&mut og, &qg, &kg, &vg, &pg, s)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("warp_per_key") && e.contains("CADA_KV_CACHE"),
                    "{e}"
                );
                // and refused already where the cache is made
                let mut early = gpu.zeros(size).unwrap();
                let e = gpu.keep_as_kv_cache(&mut early).unwrap_err().to_string();
                assert!(
                    e.contains("lane-per-key") && e.contains("CADA_KV_CACHE"),
                    "{e}"
                );
                gpu.set_decode_attention_kernel(DecodeAttentionKernel::LanePerKey);
                // a bf16 cache is no f32 source
                let mut f = gpu.zeros(size).unwrap();
                let e = gpu.copy(&mut f, 0, &kg, 0, size).unwrap_err().to_string();
                assert!(e.contains("bf16"), "{e}");
                gpu.set_kv_cache_type(KvCacheType::F32);
                let mut vf = gpu.zeros(size).unwrap();
                gpu.keep_as_kv_cache(&mut vf).unwrap();
                assert!(!vf.is_narrowed(), "an f32 cache stays f32");
                let e = gpu
                    .kv_cache_write(&mut kg, &mut vf, &kn, &vn, &pg, s)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("both f32 or both bf16"), "{e}");
            }
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_bf16_kv_cache: skipped: no GPU (built without the `cuda` feature)");
}

/// `CADA_KV_CACHE`'s values, and a bad one refused by name (no GPU needed).
#[cfg(feature = "cuda")]
#[test]
fn kv_cache_type_choice() {
    use cada::backend::cuda::KvCacheType as K;
    assert_eq!(K::parse(None).unwrap(), K::F32);
    assert_eq!(K::parse(Some("f32")).unwrap(), K::F32);
    assert_eq!(K::parse(Some("bf16")).unwrap(), K::Bf16);
    let e = K::parse(Some("BF16")).unwrap_err().to_string();
    assert!(e.contains("CADA_KV_CACHE") && e.contains("`bf16`"), "{e}");
}

//! The decode attention over a KV cache against the CPU reference: the cache write and the
//! three decode-attention kernels (`DecodeAttentionKernel`: lane per key, the default, warp per
//! key and split-KV) at GQA shapes, head dims that take the vector and the scalar rows, sequences at their
//! first position, partway and at the end of the capacity, and the bf16 KV cache
//! (`CADA_KV_CACHE=bf16`) with its refusals. Fresh random inputs every run, outputs poisoned with
//! NaN before each launch; bounds beside each check. The whole model's decode (graphs,
//! stacking) is in decode_cuda.rs. Without a GPU every test prints "skipped: no GPU".

#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

use cada::backend::cpu::Cpu;
use cada::backend::{Backend, DecodeShape, Rope};
use common::{check, down, poisoned, randv};
use rand_chacha::ChaCha8Rng as Rand;

/// f32 reassociation
const F32_TOL: f64 = 1e-5;

fn decode_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let s = DecodeShape {
        batch: 3,
        capacity: 67,
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let kvd = s.n_kv_heads * s.head_dim;
    let cache_len = s.batch * s.capacity * kvd;
    let (kc0, vc0) = (randv(r, cache_len, 1.0), randv(r, cache_len, 1.0));
    let (k, v) = (randv(r, s.batch * kvd, 1.0), randv(r, s.batch * kvd, 1.0));
    let positions = vec![0u32, 33, 66]; // first slot, middle, last position of the capacity
    let pg = gpu.upload_ids(&positions).unwrap();
    let (mut kcg, mut vcg) = (gpu.upload(&kc0).unwrap(), gpu.upload(&vc0).unwrap());
    let (mut kcc, mut vcc) = (kc0.clone(), vc0.clone());
    gpu.kv_cache_write(
        &mut kcg,
        &mut vcg,
        &gpu.upload(&k).unwrap(),
        &gpu.upload(&v).unwrap(),
        &pg,
        s,
    )
    .unwrap();
    cpu.kv_cache_write(&mut kcc, &mut vcc, &k, &v, &positions, s)
        .unwrap();
    check("kv_cache_write k", &down(gpu, &kcg), &kcc, 0.0); // copies: exact
    check("kv_cache_write v", &down(gpu, &vcg), &vcc, 0.0);
    let q = randv(r, s.batch * s.n_heads * s.head_dim, 1.0);
    let mut og = poisoned(gpu, q.len());
    let mut oc = vec![0.0; q.len()];
    gpu.decode_attention(&mut og, &gpu.upload(&q).unwrap(), &kcg, &vcg, &pg, s)
        .unwrap();
    cpu.decode_attention(&mut oc, &q, &kcc, &vcc, &positions, s)
        .unwrap();
    check("decode_attention", &down(gpu, &og), &oc, F32_TOL);
    // the decode step's fused RoPE of q and k + cache write against the CPU's three ops (the
    // trait's default), at positions 0, 33 and 66 of a 67-token capacity: the whole head
    // rotated, and (Phi-4-mini's partial rotary, LongRoPE's scale) 40 of its 64 dims scaled
    for (rotary_dim, scale) in [(s.head_dim, 1.0), (40, 1.19)] {
        decode_rope_case(
            gpu, &cpu, r, s, &q, &k, &v, &kc0, &vc0, &positions, rotary_dim, scale,
        );
    }
}

fn decode_rope_case<B: Backend>(
    gpu: &B,
    cpu: &Cpu,
    r: &mut Rand,
    s: DecodeShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kc0: &[f32],
    vc0: &[f32],
    positions: &[u32],
    rotary_dim: usize,
    scale: f32,
) {
    let kvd = s.n_kv_heads * s.head_dim;
    let pg = gpu.upload_ids(positions).unwrap();
    let positions = positions.to_vec();
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
    let (mut kcg, mut vcg) = (gpu.upload(kc0).unwrap(), gpu.upload(vc0).unwrap());
    let (mut kcc, mut vcc) = (kc0.to_vec(), vc0.to_vec());
    let (mut qg, mut kg) = (gpu.upload(q).unwrap(), gpu.upload(k).unwrap());
    let (mut qc, mut kc) = (q.to_vec(), k.to_vec());
    let what = |op: &str| {
        format!(
            "{op} (rotary {rotary_dim} of {}, scale {scale})",
            s.head_dim
        )
    };
    gpu.decode_rope_cache_write(
        &mut qg,
        &mut kg,
        &gpu.upload(v).unwrap(),
        &mut kcg,
        &mut vcg,
        &pg,
        &rope_g,
        s,
    )
    .unwrap();
    cpu.decode_rope_cache_write(
        &mut qc,
        &mut kc,
        &v.to_vec(),
        &mut kcc,
        &mut vcc,
        &positions,
        &rope_c,
        s,
    )
    .unwrap();
    // sin/cos as in rope_case; the cache rows outside the positions are copies: exact
    check(
        &what("decode_rope_cache_write q"),
        &down(gpu, &qg),
        &qc,
        F32_TOL,
    );
    check(
        &what("decode_rope_cache_write k"),
        &down(gpu, &kg),
        &kc,
        F32_TOL,
    );
    check(
        &what("decode_rope_cache_write k_cache"),
        &down(gpu, &kcg),
        &kcc,
        F32_TOL,
    );
    check(
        &what("decode_rope_cache_write v_cache"),
        &down(gpu, &vcg),
        &vcc,
        0.0,
    );
    // the stacked variant (rows q | k | v of one GEMM output) against the CPU's split + op
    let qd = q.len() / s.batch;
    let qkv: Vec<f32> = (0..s.batch)
        .flat_map(|b| {
            [
                &q[b * qd..][..qd],
                &k[b * kvd..][..kvd],
                &v[b * kvd..][..kvd],
            ]
            .concat()
        })
        .collect();
    let (mut kcg, mut vcg) = (gpu.upload(kc0).unwrap(), gpu.upload(vc0).unwrap());
    let (mut kcc, mut vcc) = (kc0.to_vec(), vc0.to_vec());
    let (mut qg, mut qc) = (poisoned(gpu, q.len()), vec![0.0; q.len()]);
    let qkvg = gpu.upload(&qkv).unwrap();
    gpu.decode_rope_cache_write_stacked(&mut qg, &qkvg, &mut kcg, &mut vcg, &pg, &rope_g, s)
        .unwrap();
    cpu.decode_rope_cache_write_stacked(&mut qc, &qkv, &mut kcc, &mut vcc, &positions, &rope_c, s)
        .unwrap();
    check(
        &what("decode_rope_cache_write_stacked q"),
        &down(gpu, &qg),
        &qc,
        F32_TOL,
    );
    check(
        &what("decode_rope_cache_write_stacked k_cache"),
        &down(gpu, &kcg),
        &kcc,
        F32_TOL,
    );
    check(
        &what("decode_rope_cache_write_stacked v_cache"),
        &down(gpu, &vcg),
        &vcc,
        0.0,
    );
    check(
        &what("decode_rope_cache_write_stacked qkv unchanged"),
        &down(gpu, &qkvg),
        &qkv,
        0.0,
    );
    // Qwen3's: each head of q and k RMSNorm-ed first (fresh weights in ±1.5), against the CPU's
    // split + head_rmsnorm_forward ×2 + decode_rope_cache_write
    let (qn, kn) = (randv(r, s.head_dim, 1.5), randv(r, s.head_dim, 1.5));
    let (qng, kng) = (gpu.upload(&qn).unwrap(), gpu.upload(&kn).unwrap());
    let (mut kcg, mut vcg) = (gpu.upload(kc0).unwrap(), gpu.upload(vc0).unwrap());
    let (mut kcc, mut vcc) = (kc0.to_vec(), vc0.to_vec());
    let (mut qg, mut qc) = (poisoned(gpu, q.len()), vec![0.0; q.len()]);
    let eps = 1e-6;
    gpu.decode_qk_norm_rope_cache_write_stacked(
        &mut qg, &qkvg, &mut kcg, &mut vcg, &pg, &rope_g, &qng, &kng, eps, s,
    )
    .unwrap();
    cpu.decode_qk_norm_rope_cache_write_stacked(
        &mut qc, &qkv, &mut kcc, &mut vcc, &positions, &rope_c, &qn, &kn, eps, s,
    )
    .unwrap();
    // the norm's f32 sum and 1/sqrt, then as above
    for (name, got, want, tol) in [
        ("q", down(gpu, &qg), qc, F32_TOL),
        ("k_cache", down(gpu, &kcg), kcc, F32_TOL),
        ("v_cache", down(gpu, &vcg), vcc, 0.0),
        ("qkv unchanged", down(gpu, &qkvg), qkv.clone(), 0.0),
    ] {
        let op = format!("decode_qk_norm_rope_cache_write_stacked {name}");
        check(&what(&op), &got, &want, tol);
    }
}

gpu_test!(cuda_decode_attention, decode_case);

/// The three decode-attention kernels (`DecodeAttentionKernel`: lane per key, the default, warp
/// per key and split-KV) against the CPU, one query per sequence over a KV cache, with
/// sequences at their first position, partway and at the last position of the capacity (so
/// every warp's later chunks of 32 keys run, and every split-KV range), GQA groups of 3, 4, 2
/// and 10, head dims 64, 128, 40 and 34 (not a multiple of 4: the scalar key rows). f32 online
/// softmax: 1e-5. The bf16 GEMM mode's `_with_bf16` twins must give the same f32 output to
/// the bit. The split-KV plans these shapes get on this GPU are printed.
#[test]
fn cuda_decode_attention_kernels() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{DecodeAttentionKernel, GemmPrecision};
        use cada::backend::DecodeShape;
        let name = "cuda_decode_attention_kernels";
        if let Some((mut gpu, mut r)) = common::cuda_setup(name) {
            let cpu = Cpu::new();
            for (batch, capacity, n_heads, n_kv_heads, head_dim) in [
                (5, 300, 9, 3, 64),
                (3, 131, 8, 2, 128),
                (4, 70, 4, 2, 34),
                (2, 1500, 9, 3, 64), // split-KV at batch 2: 10 ranges of 160 keys on a 132-SM GPU
                (3, 400, 20, 2, 40), // a GQA group of 10: split-KV's head tiles 8 + 2
            ] {
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
                println!(
                    "  {s:?}: split-KV plan {:?}",
                    cada::backend::cuda::split_kv_plan(s, gpu.sm_count())
                );
                for kernel in [
                    DecodeAttentionKernel::LanePerKey,
                    DecodeAttentionKernel::WarpPerKey,
                    DecodeAttentionKernel::SplitKv,
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
    assert_eq!(K::parse(Some("split_kv")).unwrap(), K::SplitKv);
    for k in [K::LanePerKey, K::WarpPerKey, K::SplitKv] {
        assert_eq!(K::parse(Some(k.label())).unwrap(), k, "labels parse back");
    }
    let e = K::parse(Some("warp")).unwrap_err().to_string();
    assert!(
        e.contains("CADA_DECODE_ATTENTION") && e.contains("`split_kv`"),
        "{e}"
    );
}

/// The bf16 KV cache (`CADA_KV_CACHE=bf16`, `Backend::keep_as_kv_cache`): caches made narrowed,
/// filled through `copy` (the prefill's path) and `kv_cache_write`, then read by the lane-per-key
/// and split-KV decode attentions in both GEMM modes. Against the CPU over the bf16-rounded cache values: f32
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
                for (kernel, precision) in [
                    (DecodeAttentionKernel::LanePerKey, GemmPrecision::F32),
                    (DecodeAttentionKernel::LanePerKey, GemmPrecision::Bf16),
                    (DecodeAttentionKernel::SplitKv, GemmPrecision::F32),
                    (DecodeAttentionKernel::SplitKv, GemmPrecision::Bf16),
                ] {
                    gpu.set_decode_attention_kernel(kernel);
                    gpu.set_gemm_precision(precision).unwrap();
                    let mut og = poisoned(&gpu, batch * qd);
                    gpu.decode_attention(&mut og, &qg, &kg, &vg, &pg, s)
                        .unwrap();
                    let got = down(&gpu, &og);
                    let at = format!("{kernel:?} {precision:?} {s:?}");
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

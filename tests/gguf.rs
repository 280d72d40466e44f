//! GGUF reader tests on small files written here: every supported tensor type (quantised by
//! the format's definition, then dequantised), v2 and v3 headers, the Q/K un-permutation, and
//! bad files (bad magic, truncation, unknown type, data out of bounds, forged lengths, non-UTF-8)
//! giving errors, never panics.

use cada::model::convert::{gguf_to_hf, permute_qk, unpermute_qk, write_hf_dir, SaveDtype};
use cada::model::gguf::{GgmlType, GgufFile, Value};
use half::f16;

/// Minimal GGUF writer: metadata (string/u32/f32/array of strings) and raw tensor blocks,
/// each tensor's data padded to `align` bytes (set `general.alignment` to match when not 32).
struct Writer {
    version: u32,
    align: u64,
    kv: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

impl Writer {
    fn new(version: u32) -> Self {
        Writer {
            version,
            align: 32,
            kv: vec![],
            tensors: vec![],
        }
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend(gstr(v.as_bytes()));
        self.kv.push((k.into(), b));
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        let mut b = 4u32.to_le_bytes().to_vec();
        b.extend(v.to_le_bytes());
        self.kv.push((k.into(), b));
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        let mut b = 6u32.to_le_bytes().to_vec();
        b.extend(v.to_le_bytes());
        self.kv.push((k.into(), b));
    }
    fn kv_strs(&mut self, k: &str, v: &[&str]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(8u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(gstr(s.as_bytes()));
        }
        self.kv.push((k.into(), b));
    }
    fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(5u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        self.kv.push((k.into(), b));
    }
    fn tensor_f32(&mut self, name: &str, dims: &[u64], v: &[f32]) {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data);
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) {
        self.tensors
            .push((name.into(), dims.to_vec(), ty.id(), data));
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            b.extend(gstr(k.as_bytes()));
            b.extend(v);
        }
        let mut offset = 0u64;
        let mut offsets = vec![];
        for (name, dims, ty, data) in &self.tensors {
            b.extend(gstr(name.as_bytes()));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(self.align) * self.align;
        }
        while !(b.len() as u64).is_multiple_of(self.align) {
            b.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            b.extend(data);
            while !(b.len() as u64).is_multiple_of(self.align) {
                b.push(0);
            }
        }
        b
    }
}

fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// 64 test values in [-1, 1].
fn values() -> Vec<f32> {
    (0..64)
        .map(|i| ((i * 37 % 64) as f32 / 31.5) - 1.0)
        .collect()
}

/// Quantisers written from the format definitions (symmetric 8/4/5-bit, and 4-bit with a min).
fn quantize(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for blk in v.chunks(32) {
        let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
        match ty {
            GgmlType::Q8_0 => {
                let d = amax / 127.0;
                out.extend(h(d));
                out.extend(blk.iter().map(|x| (x / d).round() as i8 as u8));
            }
            GgmlType::Q4_0 => {
                let d = amax / 7.0;
                out.extend(h(d));
                let q: Vec<u8> = blk
                    .iter()
                    .map(|x| ((x / d).round() + 8.0).clamp(0.0, 15.0) as u8)
                    .collect();
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let (mn, mx) = blk
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                let levels = if ty == GgmlType::Q4_1 { 15.0 } else { 31.0 };
                let d = (mx - mn) / levels;
                out.extend(h(d));
                out.extend(h(mn));
                let q: Vec<u32> = blk
                    .iter()
                    .map(|x| ((x - mn) / d).round().clamp(0.0, levels) as u32)
                    .collect();
                if ty == GgmlType::Q5_1 {
                    let qh: u32 = (0..32).map(|j| ((q[j] >> 4) & 1) << j).sum();
                    out.extend(qh.to_le_bytes());
                }
                out.extend((0..16).map(|j| ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8));
            }
            GgmlType::Q5_0 => {
                let d = amax / 15.0;
                out.extend(h(d));
                let q: Vec<u32> = blk
                    .iter()
                    .map(|x| ((x / d).round() + 16.0).clamp(0.0, 31.0) as u32)
                    .collect();
                let qh: u32 = (0..32).map(|j| ((q[j] >> 4) & 1) << j).sum();
                out.extend(qh.to_le_bytes());
                out.extend((0..16).map(|j| ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8));
            }
            _ => unreachable!(),
        }
    }
    out
}

#[test]
fn every_simple_type_dequantises_within_its_precision_in_v2_and_v3() {
    let v = values();
    for version in [2u32, 3] {
        let mut w = Writer::new(version);
        w.kv_str("general.architecture", "llama");
        w.kv_u32("llama.block_count", 1);
        w.kv_f32("llama.rope.freq_base", 100000.0);
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b"]);
        w.tensor(
            "f32",
            &[64],
            GgmlType::F32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
        w.tensor(
            "f16",
            &[32, 2],
            GgmlType::F16,
            v.iter().flat_map(|x| h(*x)).collect(),
        );
        w.tensor(
            "bf16",
            &[64],
            GgmlType::BF16,
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect(),
        );
        // (type, max error allowed relative to the block's range: half a quantisation step + f16 rounding)
        let quants = [
            (GgmlType::Q8_0, 1.0 / 127.0),
            (GgmlType::Q4_0, 1.0 / 7.0),
            (GgmlType::Q4_1, 2.0 / 15.0),
            (GgmlType::Q5_0, 1.0 / 15.0),
            (GgmlType::Q5_1, 2.0 / 31.0),
        ];
        for (ty, _) in quants {
            w.tensor(&format!("{ty:?}"), &[64], ty, quantize(ty, &v));
        }
        let (_d, p) = write(&w.bytes());
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.version, version);
        assert_eq!(
            g.get("general.architecture"),
            Some(&Value::String("llama".into()))
        );
        assert_eq!(g.get("llama.block_count").and_then(|x| x.as_u64()), Some(1));
        assert_eq!(
            g.get("tokenizer.ggml.tokens")
                .and_then(|x| x.as_array())
                .map(|a| a.len()),
            Some(2)
        );
        let get = |n: &str| g.tensor_f32(g.tensor_info(n).unwrap()).unwrap();
        assert_eq!(get("f32"), v);
        assert_eq!(g.tensor_info("f16").unwrap().shape(), vec![2, 32]);
        assert!(get("f16").iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-3));
        assert!(get("bf16")
            .iter()
            .zip(&v)
            .all(|(a, b)| (a - b).abs() < 1e-2));
        for (ty, step) in quants {
            let got = get(&format!("{ty:?}"));
            let err = got
                .iter()
                .zip(&v)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= step * 0.5 + 2e-3,
                "{ty:?}: max error {err} exceeds half a step {}",
                step * 0.5
            );
        }
    }
}

/// Q4_K/Q5_K pack eight 6-bit scales and mins into 12 bytes (ggml's layout): sub-blocks 0..4
/// in the low 6 bits of bytes j (scale) and j+4 (min), sub-blocks 4..8 as a nibble pair in byte
/// j+8 plus their top 2 bits in the top bits of bytes j and j+4.
fn pack_k_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    s
}

/// One hand-packed block of each K-quant type with the values its definition gives:
/// Q4_K/Q5_K x = d·scale·q − dmin·min; Q6_K x = d·scale·(q − 32); Q8_K x = d·q.
/// Scales are powers of two times small integers, so every expected value is exact in f32.
fn k_blocks() -> Vec<(GgmlType, Vec<u8>, Vec<f32>)> {
    // 6-bit scales and mins that use the high bits (≥ 16) of the packing
    let sc: [u8; 8] = [1, 63, 17, 40, 5, 33, 62, 48];
    let mn: [u8; 8] = [0, 7, 63, 20, 49, 3, 31, 56];
    let (d, dmin) = (0.5f32, 0.25f32);
    let mut out = vec![];
    for five in [false, true] {
        let bits = if five { 32 } else { 16 };
        let q: Vec<u8> = (0..256).map(|i| ((i * 11 + 3) % bits) as u8).collect();
        let (mut qs, mut qh) = (vec![0u8; 128], vec![0u8; 32]);
        let mut want = vec![0f32; 256];
        for g in 0..4 {
            for l in 0..32 {
                let (lo, hi) = (q[g * 64 + l], q[g * 64 + 32 + l]);
                qs[g * 32 + l] = (lo & 15) | ((hi & 15) << 4);
                qh[l] |= ((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1));
                want[g * 64 + l] = d * sc[2 * g] as f32 * lo as f32 - dmin * mn[2 * g] as f32;
                want[g * 64 + 32 + l] =
                    d * sc[2 * g + 1] as f32 * hi as f32 - dmin * mn[2 * g + 1] as f32;
            }
        }
        let mut blk = vec![];
        blk.extend(h(d));
        blk.extend(h(dmin));
        blk.extend(pack_k_scales(&sc, &mn));
        if five {
            blk.extend(&qh);
        }
        blk.extend(&qs);
        out.push((if five { GgmlType::Q5K } else { GgmlType::Q4K }, blk, want));
    }
    // Q6_K: 6-bit q = low 4 bits (ql) | 2 high bits (qh), minus 32, times d · scale[i/16]
    let q6: Vec<i32> = (0..256i32).map(|i| i * 7 % 64).collect();
    let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
    for half in 0..2 {
        for l in 0..32 {
            let base = half * 128;
            let (a, b, c, d) = (
                q6[base + l],
                q6[base + l + 32],
                q6[base + l + 64],
                q6[base + l + 96],
            );
            ql[half * 64 + l] = ((a & 15) | ((c & 15) << 4)) as u8;
            ql[half * 64 + l + 32] = ((b & 15) | ((d & 15) << 4)) as u8;
            qh[half * 32 + l] =
                ((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6)) as u8;
        }
    }
    let scales6: Vec<i8> = (0..16).map(|i| i as i8 * 9 - 70).collect();
    let mut blk = vec![];
    blk.extend(&ql);
    blk.extend(&qh);
    blk.extend(scales6.iter().map(|&s| s as u8));
    blk.extend(h(0.125));
    let want = (0..256)
        .map(|i| 0.125 * scales6[i / 16] as f32 * (q6[i] - 32) as f32)
        .collect();
    out.push((GgmlType::Q6K, blk, want));
    // Q8_K: f32 d, 256 signed bytes, 16 i16 sums of each 16 (ignored when dequantising)
    let q8: Vec<i8> = (0..256).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let mut blk = 0.03125f32.to_le_bytes().to_vec();
    blk.extend(q8.iter().map(|&q| q as u8));
    for c in q8.chunks(16) {
        blk.extend(c.iter().map(|&q| q as i16).sum::<i16>().to_le_bytes());
    }
    let want = q8.iter().map(|&q| 0.03125 * q as f32).collect();
    out.push((GgmlType::Q8K, blk, want));
    out
}

#[test]
fn k_quant_blocks_decode_to_hand_computed_values() {
    for (ty, blk, want) in k_blocks() {
        assert_eq!(blk.len(), ty.block().1, "{ty:?} block size");
        // exact equality: see k_blocks
        let got = cada::model::gguf::dequantize(ty, &blk, 256);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{ty:?} element {i}");
        }
        // a second block right after the first decodes the same way (block stride)
        let two = [blk.clone(), blk].concat();
        assert_eq!(
            cada::model::gguf::dequantize(ty, &two, 512)[256..],
            want[..]
        );
    }
}

#[test]
fn k_quants_load_from_files_of_both_versions_with_custom_alignment() {
    for version in [2u32, 3] {
        let mut w = Writer::new(version);
        w.align = 64;
        w.kv_u32("general.alignment", 64);
        let blocks = k_blocks();
        for (ty, blk, _) in &blocks {
            // a [256, 2] tensor: two rows of one block each
            w.tensor(
                &format!("{ty:?}"),
                &[256, 2],
                *ty,
                [blk.clone(), blk.clone()].concat(),
            );
        }
        let (_d, p) = write(&w.bytes());
        let g = GgufFile::open(&p).unwrap();
        for (ty, _, want) in &blocks {
            let t = g.tensor_info(&format!("{ty:?}")).unwrap();
            assert_eq!(t.shape(), vec![2, 256]);
            assert_eq!(
                g.tensor_f32(t).unwrap(),
                [want.clone(), want.clone()].concat(),
                "{ty:?} v{version}"
            );
        }
    }
}

#[test]
fn qk_unpermute_inverts_llama_cpp_permutation() {
    let (heads, hd, cols) = (3, 8, 5);
    let w: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
    let p = permute_qk(&w, heads, heads * hd, cols);
    assert_ne!(p, w);
    assert_eq!(unpermute_qk(&p, heads, heads * hd, cols), w);
    // HF row (head 0, first half, i=1) comes from GGUF row 2·1 + 0 = 2
    assert_eq!(
        &unpermute_qk(&w, heads, heads * hd, cols)[cols..2 * cols],
        &w[2 * cols..3 * cols]
    );
}

/// A v3 header claiming `n_tensors` tensors and `n_kv` metadata pairs, for hand-forged files.
fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    [
        &b"GGUF"[..],
        &3u32.to_le_bytes(),
        &n_tensors.to_le_bytes(),
        &n_kv.to_le_bytes(),
    ]
    .concat()
}

fn expect_err(bytes: &[u8], needle: &str) {
    let (_d, p) = write(bytes);
    match GgufFile::open(&p) {
        Ok(_) => panic!("expected an error containing {needle:?}"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains(needle) && msg.contains("t.gguf"), "{msg}");
        }
    }
}

#[test]
fn bad_files_are_clear_errors() {
    let mut w = Writer::new(3);
    w.kv_str("general.architecture", "llama");
    w.tensor(
        "x",
        &[32],
        GgmlType::Q8_0,
        quantize(GgmlType::Q8_0, &values()[..32]),
    );
    let good = w.bytes();
    assert!(GgufFile::open(&write(&good).1).is_ok());

    let mut bad = good.clone();
    bad[0] = b'X';
    expect_err(&bad, "not a GGUF file");
    expect_err(&good[..good.len() / 3], "truncated");
    let mut v1 = good.clone();
    v1[4] = 1;
    expect_err(&v1, "version 1");
    // unknown tensor type 99
    let mut w2 = Writer::new(3);
    w2.tensors.push(("q".into(), vec![32], 99, vec![0; 34]));
    expect_err(&w2.bytes(), "ggml type 99");
    // data beyond the end of the file
    let mut w3 = Writer::new(3);
    w3.tensors
        .push(("big".into(), vec![1 << 20], GgmlType::F32.id(), vec![0; 64]));
    expect_err(&w3.bytes(), "beyond the end of the file");
    // forged huge array length: must not allocate, must error
    let mut b = header(0, 1);
    b.extend(gstr(b"tokenizer.ggml.tokens"));
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    expect_err(&b, "forged length");
    // forged tensor count
    let b = header(1 << 60, 0);
    expect_err(&b, "tensor_count");
    // a metadata string that is not UTF-8
    let mut b = header(0, 1);
    b.extend(gstr(b"general.name"));
    b.extend(8u32.to_le_bytes());
    b.extend(gstr(&[0xff, 0xfe, 0x41]));
    expect_err(&b, "not valid UTF-8");
    // an array of u64 whose count fits the bytes left at 1 byte each but not at 8
    let mut b = header(0, 1);
    b.extend(gstr(b"x"));
    b.extend(9u32.to_le_bytes());
    b.extend(10u32.to_le_bytes());
    b.extend(64u64.to_le_bytes());
    b.extend([0u8; 100]);
    expect_err(&b, "forged length");
    // an array whose element type does not exist
    let mut b = header(0, 1);
    b.extend(gstr(b"x"));
    b.extend(9u32.to_le_bytes());
    b.extend(77u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend([0u8; 16]);
    expect_err(&b, "unknown value type 77");
    // dims whose product overflows 64 bits (would wrap to a small size if multiplied blindly)
    let mut w4 = Writer::new(3);
    w4.tensors.push((
        "wrap".into(),
        vec![1 << 32, 1 << 32],
        GgmlType::F32.id(),
        vec![0; 32],
    ));
    expect_err(&w4.bytes(), "overflow 64 bits");
    // the same tensor name twice
    let mut w5 = Writer::new(3);
    for _ in 0..2 {
        w5.tensor("dup", &[8], GgmlType::F32, vec![0; 32]);
    }
    expect_err(&w5.bytes(), "appears twice");
    // a tensor offset that breaks the alignment: patch the first tensor's offset field to 4
    let mut w6 = Writer::new(3);
    w6.tensor("a", &[8], GgmlType::F32, vec![0; 32]);
    let mut b = w6.bytes();
    // header (magic, version, counts) 24 bytes, then name (8 + 1), n_dims 4, dim 8, type 4
    let off_field = 24 + 8 + 1 + 4 + 8 + 4;
    b[off_field] = 4;
    expect_err(&b, "not a multiple of the alignment");
}

/// A one-layer Llama in GGUF (hidden 8, 2 query heads and 1 KV head of dim 4, FFN 12, vocab 6)
/// whose Q/K rows are stored permuted as llama.cpp's converter stores them; returns the file and
/// the HF-layout q_proj and k_proj it was made from.
fn tiny_llama(tied: bool) -> (tempfile::TempDir, std::path::PathBuf, Vec<f32>, Vec<f32>) {
    let ramp = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let (q, k) = (ramp(64, 0.7), ramp(32, 1.3));
    let mut w = Writer::new(3);
    w.kv_str("general.architecture", "llama");
    for (key, v) in [
        ("embedding_length", 8),
        ("block_count", 1),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("feed_forward_length", 12),
        ("context_length", 64),
    ] {
        w.kv_u32(&format!("llama.{key}"), v);
    }
    w.kv_f32("llama.rope.freq_base", 100000.0);
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.kv_str("tokenizer.ggml.model", "gpt2");
    w.kv_str("tokenizer.ggml.pre", "smollm");
    w.kv_strs(
        "tokenizer.ggml.tokens",
        &["<|end|>", "a", "b", "ab", "Ġ", "Ġab"],
    );
    w.kv_i32s("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1]);
    w.kv_strs("tokenizer.ggml.merges", &["a b", "Ġ ab"]);
    w.kv_u32("tokenizer.ggml.eos_token_id", 0);
    w.kv_str("tokenizer.chat_template", "{{ messages[0]['content'] }}");
    w.tensor_f32("token_embd.weight", &[8, 6], &ramp(48, 0.3));
    if !tied {
        w.tensor_f32("output.weight", &[8, 6], &ramp(48, 0.9));
    }
    w.tensor_f32("output_norm.weight", &[8], &ramp(8, 0.1));
    w.tensor_f32("blk.0.attn_norm.weight", &[8], &ramp(8, 0.2));
    w.tensor_f32("blk.0.attn_q.weight", &[8, 8], &permute_qk(&q, 2, 8, 8));
    w.tensor_f32("blk.0.attn_k.weight", &[8, 4], &permute_qk(&k, 1, 4, 8));
    w.tensor_f32("blk.0.attn_v.weight", &[8, 4], &ramp(32, 1.7));
    w.tensor_f32("blk.0.attn_output.weight", &[8, 8], &ramp(64, 0.4));
    w.tensor_f32("blk.0.ffn_norm.weight", &[8], &ramp(8, 0.5));
    w.tensor_f32("blk.0.ffn_gate.weight", &[8, 12], &ramp(96, 0.6));
    w.tensor_f32("blk.0.ffn_up.weight", &[8, 12], &ramp(96, 0.8));
    w.tensor_f32("blk.0.ffn_down.weight", &[12, 8], &ramp(96, 1.1));
    let (d, p) = write(&w.bytes());
    (d, p, q, k)
}

#[test]
fn tiny_llama_converts_to_hf_names_layout_config_and_tokenizer() {
    for tied in [true, false] {
        let (dir, p, q, k) = tiny_llama(tied);
        let hf = gguf_to_hf(&p).unwrap();
        let c = &hf.config;
        assert_eq!(c["architectures"][0], "LlamaForCausalLM");
        for (key, want) in [
            ("hidden_size", 8),
            ("intermediate_size", 12),
            ("num_hidden_layers", 1),
            ("num_attention_heads", 2),
            ("num_key_value_heads", 1),
            ("head_dim", 4),
            ("vocab_size", 6),
            ("max_position_embeddings", 64),
            ("eos_token_id", 0),
        ] {
            assert_eq!(c[key], want, "config {key}");
        }
        assert_eq!(c["rope_theta"], 100000.0);
        assert_eq!(c["tie_word_embeddings"], tied);
        let t = |n: &str| hf.tensors.iter().find(|t| t.0 == n);
        // Q/K are back in HF's rotate-half layout (exactly: un-permuting only moves rows)
        assert_eq!(t("model.layers.0.self_attn.q_proj.weight").unwrap().2, q);
        assert_eq!(
            t("model.layers.0.self_attn.k_proj.weight").unwrap().1,
            vec![4, 8]
        );
        assert_eq!(t("model.layers.0.self_attn.k_proj.weight").unwrap().2, k);
        assert_eq!(
            t("model.layers.0.mlp.down_proj.weight").unwrap().1,
            vec![8, 12]
        );
        assert_eq!(t("lm_head.weight").is_some(), !tied);
        assert_eq!(hf.tensors.len(), 11 + usize::from(!tied));

        let tok: tokenizers::Tokenizer = hf.tokenizer_json.parse().unwrap();
        let enc = tok.encode("ab ab<|end|>", false).unwrap();
        assert_eq!(enc.get_ids(), [3, 5, 0]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "ab ab<|end|>");
        assert_eq!(hf.tokenizer_config["eos_token"], "<|end|>");
        assert_eq!(
            hf.tokenizer_config["chat_template"],
            "{{ messages[0]['content'] }}"
        );

        // written and read back: f32 exact, bf16 within its rounding (relative 2^-8)
        for (dtype, tol) in [(SaveDtype::F32, 0.0), (SaveDtype::Bf16, 1.0 / 256.0)] {
            let out = dir.path().join(format!("hf-{dtype:?}"));
            write_hf_dir(&hf, &out, dtype).unwrap();
            let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let v = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
            assert_eq!(v.shape(), [8, 8]);
            let got: Vec<f32> = match dtype {
                SaveDtype::F32 => bytemuck::pod_collect_to_vec(v.data()),
                _ => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            };
            assert!(got
                .iter()
                .zip(&q)
                .all(|(a, b)| (a - b).abs() <= tol * b.abs()));
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(
                cfg["torch_dtype"],
                if tol == 0.0 { "float32" } else { "bfloat16" }
            );
            let reloaded = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
            assert_eq!(reloaded.encode("ab ab", false).unwrap().get_ids(), [3, 5]);
        }
    }
}

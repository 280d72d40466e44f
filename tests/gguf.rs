//! GGUF reader tests on small files written here: every supported tensor type (quantised by
//! the format's definition, then dequantised), v2 and v3 headers, the Q/K un-permutation, and
//! bad files (bad magic, truncation, unknown type, data out of bounds, forged lengths, non-UTF-8)
//! giving errors, never panics.

use cada::model::convert::{permute_qk, unpermute_qk};
use cada::model::gguf::{GgmlType, GgufFile, Value};
use half::f16;

/// Minimal GGUF writer: metadata (string/u32/f32/array of strings) and raw tensor blocks.
struct Writer {
    version: u32,
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
    fn kv_bool(&mut self, k: &str, v: bool) {
        let mut b = 7u32.to_le_bytes().to_vec();
        b.push(v as u8);
        self.kv.push((k.into(), b));
    }
    fn kv_u32s(&mut self, k: &str, v: &[u32]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(4u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
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
    fn kv_f32s(&mut self, k: &str, v: &[f32]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(6u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self.kv.push((k.into(), b));
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
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            b.extend(data);
            while !b.len().is_multiple_of(32) {
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

#[test]
fn k_quant_blocks_decode_to_hand_computed_values() {
    // Q4_K: d = 0.5, dmin = 0.25; sub-block scales 1..8 and mins 0..7 packed in 12 bytes
    let (sc, mn): ([u8; 8], [u8; 8]) = ([1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7]);
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = sc[j];
        scales[j + 4] = mn[j];
        scales[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    let qs: Vec<u8> = (0..128)
        .map(|i| ((i % 16) as u8) | ((((i + 3) % 16) as u8) << 4))
        .collect();
    let mut blk = vec![];
    blk.extend(h(0.5));
    blk.extend(h(0.25));
    blk.extend(scales);
    blk.extend(&qs);
    let got = cada::model::gguf::dequantize(GgmlType::Q4K, &blk, 256);
    for g in 0..4 {
        for l in 0..32 {
            let q = qs[g * 32 + l];
            let lo = 0.5 * sc[2 * g] as f32 * (q & 15) as f32 - 0.25 * mn[2 * g] as f32;
            let hi = 0.5 * sc[2 * g + 1] as f32 * (q >> 4) as f32 - 0.25 * mn[2 * g + 1] as f32;
            assert_eq!(got[g * 64 + l], lo);
            assert_eq!(got[g * 64 + 32 + l], hi);
        }
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
    let scales6: Vec<i8> = (0..16).map(|i| i as i8 - 8).collect();
    let mut blk = vec![];
    blk.extend(&ql);
    blk.extend(&qh);
    blk.extend(scales6.iter().map(|&s| s as u8));
    blk.extend(h(0.125));
    let got = cada::model::gguf::dequantize(GgmlType::Q6K, &blk, 256);
    for i in 0..256 {
        let want = 0.125 * scales6[i / 16] as f32 * (q6[i] - 32) as f32;
        assert_eq!(got[i], want, "element {i}");
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
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(gstr(b"tokenizer.ggml.tokens"));
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    expect_err(&b, "forged length");
    // forged tensor count
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    expect_err(&b, "tensor_count");
    // a metadata string that is not UTF-8
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(gstr(b"general.name"));
    b.extend(8u32.to_le_bytes());
    b.extend(gstr(&[0xff, 0xfe, 0x41]));
    expect_err(&b, "not valid UTF-8");
}

/// A GGUF tensor the converter does not map is an error naming the file and the tensor, not
/// silently dropped; a `rope_freqs.weight` that is no Llama 3 scaling (here: the wrong length)
/// gets its own explanation.
#[test]
fn unmapped_tensors_are_refused_not_dropped() {
    let f32_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect()
    };
    let model = |extra: &str| {
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "llama");
        w.kv_u32("llama.embedding_length", 8);
        w.kv_u32("llama.block_count", 0);
        w.kv_u32("llama.attention.head_count", 2);
        w.kv_u32("llama.feed_forward_length", 16);
        w.tensor("token_embd.weight", &[8, 4], GgmlType::F32, f32_bytes(32));
        w.tensor("output_norm.weight", &[8], GgmlType::F32, f32_bytes(8));
        w.tensor(extra, &[8], GgmlType::F32, f32_bytes(8));
        w.bytes()
    };
    for (extra, needle) in [
        ("output.bias", "silently drop"),
        ("rope_freqs.weight", "rope_freqs.weight"),
    ] {
        let (_d, p) = write(&model(extra));
        let e = match cada::model::convert::gguf_to_hf(&p) {
            Ok(_) => panic!("{extra}: converted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("t.gguf") && e.contains(extra) && e.contains(needle),
            "{e}"
        );
    }
}

/// Every quantised type against an implementation that is not ours: random blocks (finite f16
/// scales) and the values the `gguf` Python package (llama.cpp's reader) dequantises them to,
/// made by scripts/gguf_quant_dump.py. Both compute in f32 in the same order (d·scale·q − dmin·m),
/// so they agree to rounding: 1e-6 relative to the block's largest value.
#[test]
fn quantised_types_match_the_gguf_python_reference() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf_quant_blocks.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(
        cases.len(),
        10,
        "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K"
    );
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType::from_id(case["id"].as_u64().unwrap() as u32)
            .unwrap_or_else(|| panic!("{name}: not a type we read"));
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let (per_block, block_bytes) = ty.block();
        assert_eq!(bytes.len() / block_bytes * per_block, want.len(), "{name}");
        let got = cada::model::gguf::dequantize(ty, &bytes, want.len());
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / scale)
            .fold(0f32, f32::max);
        println!(
            "{name}: {} values, worst difference {worst:.1e} of the largest",
            want.len()
        );
        assert!(worst <= 1e-6, "{name}: worst relative difference {worst:e}");
    }
}

/// Llama 3.1+ GGUFs carry their RoPE scaling as `rope_freqs.weight`, one divisor per frequency,
/// computed by llama.cpp's converter (its formula, written out here from the converter, not from
/// our config code). The conversion recovers Llama 3.2's rope_scaling (factor 32, low 1, high 4,
/// original 8192) and then gives exactly llama.cpp's frequencies, base / divisor; divisors no
/// Llama 3 scaling makes are refused, and all-ones divisors mean no scaling.
#[test]
fn llama3_rope_divisors_become_rope_scaling() {
    let (hd, theta) = (64usize, 500_000f64);
    let llama_cpp_divisors = |factor: f64, low: f64, high: f64, original: f64| -> Vec<f32> {
        let (low_wavelen, high_wavelen) = (original / low, original / high);
        (0..hd / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                (if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }) as f32
            })
            .collect()
    };
    let model = |divisors: &[f32]| {
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "llama");
        w.kv_u32("llama.embedding_length", hd as u32);
        w.kv_u32("llama.block_count", 0);
        w.kv_u32("llama.attention.head_count", 1);
        w.kv_u32("llama.feed_forward_length", 16);
        w.kv_f32("llama.rope.freq_base", theta as f32);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
        let emb: Vec<f32> = (0..4 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        w.tensor(
            "token_embd.weight",
            &[hd as u64, 4],
            GgmlType::F32,
            f32_bytes(&emb),
        );
        w.tensor(
            "output_norm.weight",
            &[hd as u64],
            GgmlType::F32,
            f32_bytes(&vec![1.0; hd]),
        );
        w.tensor(
            "rope_freqs.weight",
            &[(hd / 2) as u64],
            GgmlType::F32,
            f32_bytes(divisors),
        );
        w.bytes()
    };
    let divisors = llama_cpp_divisors(32.0, 1.0, 4.0, 8192.0);
    assert!(
        divisors.iter().any(|&d| d > 1.0 && d < 32.0),
        "the blend region is exercised"
    );
    let (_d, p) = write(&model(&divisors));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    let rs = &hf.config["rope_scaling"];
    assert_eq!(rs["rope_type"], "llama3", "{rs}");
    for (field, want) in [
        ("factor", 32.0),
        ("low_freq_factor", 1.0),
        ("high_freq_factor", 4.0),
        ("original_max_position_embeddings", 8192.0),
    ] {
        assert_eq!(rs[field].as_f64(), Some(want), "{field}: {rs}");
    }
    // the file has no layers; the rope settings are what is read here
    let mut config = hf.config.clone();
    config["num_hidden_layers"] = serde_json::json!(1);
    let cfg = cada::model::config::LlamaConfig::from_json(&config, "config.json").unwrap();
    let ours = cfg.rope_inv_freq();
    for (i, (&f, &d)) in ours.iter().zip(&divisors).enumerate() {
        let want = (1.0 / theta.powf((2 * i) as f64 / hd as f64)) / d as f64;
        assert!(
            ((f as f64) - want).abs() <= 1e-6 * want,
            "frequency {i}: ours {f}, llama.cpp {want}"
        );
    }
    // no scaling: all ones
    let (_d, p) = write(&model(&vec![1.0; hd / 2]));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert!(hf.config.get("rope_scaling").is_none(), "{}", hf.config);
    // divisors of no Llama 3 scaling: refused by name
    let mut odd = divisors.clone();
    odd[hd / 4] *= 1.5;
    let (_d, p) = write(&model(&odd));
    let e = format!("{:#}", cada::model::convert::gguf_to_hf(&p).err().unwrap());
    assert!(
        e.contains("t.gguf") && e.contains("rope_freqs.weight"),
        "{e}"
    );
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model` = llama) without its scores, or with a
/// score count that is not the token count, is refused naming the file and field.
#[test]
fn sentencepiece_vocabularies_without_matching_scores_are_refused() {
    let file = |scores: Option<&[f32]>| {
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "llama");
        w.kv_str("tokenizer.ggml.model", "llama");
        w.kv_strs("tokenizer.ggml.tokens", &["<unk>", "\u{2581}a", "b"]);
        if let Some(s) = scores {
            w.kv_f32s("tokenizer.ggml.scores", s);
        }
        w.bytes()
    };
    for (scores, needle) in [
        (None, "missing metadata `tokenizer.ggml.scores`"),
        (Some(&[0.0f32, -1.0][..]), "holds 2 values for 3 tokens"),
    ] {
        let (_d, p) = write(&file(scores));
        let e = format!(
            "{:#}",
            cada::model::gguf_tokenizer::gguf_tokenizer_json(&p)
                .err()
                .unwrap()
        );
        assert!(e.contains("t.gguf") && e.contains(needle), "{e}");
    }
    // with the scores it converts
    let (_d, p) = write(&file(Some(&[0.0, -1.0, -2.0])));
    cada::model::gguf_tokenizer::gguf_tokenizer_json(&p).unwrap();
}

/// `tokenizer.ggml.add_bos_token` / `add_eos_token`: with special tokens, BOS goes before and EOS
/// after the text exactly where the file says (llama.cpp's and Hugging Face's rule); without
/// special tokens neither is added.
#[test]
fn bos_and_eos_are_added_where_the_file_says() {
    for (add_bos, add_eos) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut w = Writer::new(3);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "<s>", "</s>"]);
        // normal, normal, control, control: the two specials are matched whole
        w.kv_u32s("tokenizer.ggml.token_type", &[1, 1, 3, 3]);
        w.kv_u32("tokenizer.ggml.bos_token_id", 2);
        w.kv_u32("tokenizer.ggml.eos_token_id", 3);
        w.kv_bool("tokenizer.ggml.add_bos_token", add_bos);
        w.kv_bool("tokenizer.ggml.add_eos_token", add_eos);
        let (_d, p) = write(&w.bytes());
        let json = cada::model::gguf_tokenizer::gguf_tokenizer_json(&p).unwrap();
        let tok = cada::model::tokenizer::Tokenizer::from_json_str(&json, "t.gguf").unwrap();
        let mut want = vec![];
        if add_bos {
            want.push(2);
        }
        want.extend([0, 1]);
        if add_eos {
            want.push(3);
        }
        let case = format!("add_bos {add_bos}, add_eos {add_eos}");
        assert_eq!(tok.encode("ab", true).unwrap(), want, "{case}");
        assert_eq!(tok.encode("ab", false).unwrap(), [0, 1], "{case}");
    }
}

/// A `qwen3` file: its per-head q/k norms map to `self_attn.{q,k}_norm.weight`, Q and K are not
/// un-permuted (llama.cpp's Qwen converters do not permute them), head_dim comes from
/// `attention.key_length` (wider than hidden / heads), and the result loads as a
/// `Qwen3ForCausalLM` with every tensor in place.
#[test]
fn qwen3_files_convert_with_their_qk_norms() {
    let (d, heads, kv_heads, hd, ff, vocab) = (8usize, 2usize, 1usize, 8usize, 12usize, 4usize);
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ramp = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let mut w = Writer::new(3);
    w.kv_str("general.architecture", "qwen3");
    w.kv_u32("qwen3.embedding_length", d as u32);
    w.kv_u32("qwen3.block_count", 1);
    w.kv_u32("qwen3.attention.head_count", heads as u32);
    w.kv_u32("qwen3.attention.head_count_kv", kv_heads as u32);
    w.kv_u32("qwen3.attention.key_length", hd as u32);
    w.kv_u32("qwen3.feed_forward_length", ff as u32);
    w.kv_f32("qwen3.rope.freq_base", 1e6);
    w.kv_f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6);
    w.kv_str("tokenizer.ggml.model", "gpt2");
    w.kv_str("tokenizer.ggml.pre", "qwen2");
    w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
    // (GGUF name, GGUF dims: fastest first, values)
    let q = ramp(heads * hd * d, 0.31);
    let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = vec![
        (
            "token_embd.weight",
            vec![d as u64, vocab as u64],
            ramp(vocab * d, 0.37),
        ),
        ("output_norm.weight", vec![d as u64], ramp(d, 0.5)),
        ("blk.0.attn_norm.weight", vec![d as u64], ramp(d, 0.7)),
        (
            "blk.0.attn_q.weight",
            vec![d as u64, (heads * hd) as u64],
            q.clone(),
        ),
        (
            "blk.0.attn_k.weight",
            vec![d as u64, (kv_heads * hd) as u64],
            ramp(kv_heads * hd * d, 0.23),
        ),
        (
            "blk.0.attn_v.weight",
            vec![d as u64, (kv_heads * hd) as u64],
            ramp(kv_heads * hd * d, 0.29),
        ),
        ("blk.0.attn_q_norm.weight", vec![hd as u64], ramp(hd, 0.11)),
        ("blk.0.attn_k_norm.weight", vec![hd as u64], ramp(hd, 0.13)),
        (
            "blk.0.attn_output.weight",
            vec![(heads * hd) as u64, d as u64],
            ramp(heads * hd * d, 0.17),
        ),
        ("blk.0.ffn_norm.weight", vec![d as u64], ramp(d, 0.19)),
        (
            "blk.0.ffn_gate.weight",
            vec![d as u64, ff as u64],
            ramp(ff * d, 0.41),
        ),
        (
            "blk.0.ffn_up.weight",
            vec![d as u64, ff as u64],
            ramp(ff * d, 0.43),
        ),
        (
            "blk.0.ffn_down.weight",
            vec![ff as u64, d as u64],
            ramp(ff * d, 0.47),
        ),
    ];
    for (name, dims, v) in &tensors {
        w.tensor(name, dims, GgmlType::F32, f32_bytes(v));
    }
    let (_d, p) = write(&w.bytes());
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert_eq!(
        hf.config["architectures"][0], "Qwen3ForCausalLM",
        "{}",
        hf.config
    );
    assert_eq!(hf.config["model_type"], "qwen3");
    assert_eq!(hf.config["head_dim"], hd);
    let get = |name: &str| {
        hf.tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    };
    let qn = get("model.layers.0.self_attn.q_norm.weight");
    assert_eq!((qn.1.clone(), qn.2.clone()), (vec![hd], ramp(hd, 0.11)));
    let kn = get("model.layers.0.self_attn.k_norm.weight");
    assert_eq!(kn.2, ramp(hd, 0.13));
    // Q as stored: [out, in] row-major is the GGUF data as is, no permutation undone
    let qp = get("model.layers.0.self_attn.q_proj.weight");
    assert_eq!((qp.1.clone(), qp.2.clone()), (vec![heads * hd, d], q));
    // and it is a model the loader accepts whole
    let cfg = cada::model::config::LlamaConfig::from_json(&hf.config, "config.json").unwrap();
    assert!(cfg.qk_norm && cfg.q_dim() == heads * hd && cfg.q_dim() != d);
    let spec = cada::model::weights::Params::spec(&cfg);
    let names: Vec<&str> = hf.tensors.iter().map(|t| t.0.as_str()).collect();
    for s in spec.tensors() {
        assert!(names.contains(&s.name.as_str()), "{} missing", s.name);
    }
    assert_eq!(names.len(), spec.tensors().len(), "{names:?}");
}

/// A `phi3` file: q/k/v (`attn_qkv`) and gate/up (`ffn_up`, 2 × feed_forward_length rows)
/// arrive fused, as Hugging Face's Phi-3 checkpoint holds them, and load split ([q; k; v],
/// [gate; up]); its sliding window becomes the config's; RoPE over part of a head is refused.
#[test]
fn phi3_files_convert_fused_and_load_split() {
    let (d, heads, kv_heads, ff, vocab) = (8usize, 2usize, 1usize, 12usize, 4usize);
    let hd = d / heads;
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ramp = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let (qkv, gate_up) = (ramp((qd + 2 * kvd) * d, 0.31), ramp(2 * ff * d, 0.41));
    let file = |rotary_dims: u32| {
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "phi3");
        w.kv_u32("phi3.embedding_length", d as u32);
        w.kv_u32("phi3.block_count", 1);
        w.kv_u32("phi3.attention.head_count", heads as u32);
        w.kv_u32("phi3.attention.head_count_kv", kv_heads as u32);
        w.kv_u32("phi3.feed_forward_length", ff as u32);
        w.kv_u32("phi3.rope.dimension_count", rotary_dims);
        w.kv_u32("phi3.attention.sliding_window", 2047);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
        let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = vec![
            (
                "token_embd.weight",
                vec![d as u64, vocab as u64],
                ramp(vocab * d, 0.37),
            ),
            (
                "output.weight",
                vec![d as u64, vocab as u64],
                ramp(vocab * d, 0.39),
            ),
            ("output_norm.weight", vec![d as u64], ramp(d, 0.5)),
            ("blk.0.attn_norm.weight", vec![d as u64], ramp(d, 0.7)),
            (
                "blk.0.attn_qkv.weight",
                vec![d as u64, (qd + 2 * kvd) as u64],
                qkv.clone(),
            ),
            (
                "blk.0.attn_output.weight",
                vec![qd as u64, d as u64],
                ramp(qd * d, 0.17),
            ),
            ("blk.0.ffn_norm.weight", vec![d as u64], ramp(d, 0.19)),
            (
                "blk.0.ffn_up.weight",
                vec![d as u64, (2 * ff) as u64],
                gate_up.clone(),
            ),
            (
                "blk.0.ffn_down.weight",
                vec![ff as u64, d as u64],
                ramp(ff * d, 0.47),
            ),
        ];
        for (name, dims, v) in &tensors {
            w.tensor(name, dims, GgmlType::F32, f32_bytes(v));
        }
        w.bytes()
    };
    let (_d, p) = write(&file(hd as u32));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert_eq!(
        hf.config["architectures"][0], "Phi3ForCausalLM",
        "{}",
        hf.config
    );
    assert_eq!(hf.config["sliding_window"], 2047);
    let cfg = cada::model::config::LlamaConfig::from_json(&hf.config, "config.json").unwrap();
    assert_eq!(cfg.sliding_window, Some(2047));
    let src = cada::model::weights::InMemoryTensors {
        source: "t.gguf".into(),
        tensors: hf
            .tensors
            .into_iter()
            .map(|(n, s, v)| (n, (s, v)))
            .collect(),
    };
    let params = cada::model::weights::load_params(&cfg, &src).unwrap();
    let l = &params.layers[0];
    assert_eq!(l.q_proj, qkv[..qd * d]);
    assert_eq!(l.k_proj, qkv[qd * d..(qd + kvd) * d]);
    assert_eq!(l.v_proj, qkv[(qd + kvd) * d..]);
    assert_eq!(l.gate_proj, gate_up[..ff * d]);
    assert_eq!(l.up_proj, gate_up[ff * d..]);
    // RoPE over 2 of 4 dims of each head
    let (_d, p) = write(&file(2));
    let e = format!("{:#}", cada::model::convert::gguf_to_hf(&p).err().unwrap());
    assert!(
        e.contains("t.gguf") && e.contains("rope.dimension_count"),
        "{e}"
    );
}

//! GGUF reader tests on small files written here: every supported tensor type (quantised by
//! the format's definition, then dequantised), v2 and v3 headers, the Q/K un-permutation, and
//! bad files (bad magic, truncation, unknown type, data out of bounds, forged lengths, non-UTF-8)
//! giving errors, never panics.

mod common;

use cada::model::convert::{permute_qk, unpermute_qk};
use cada::model::gguf::{GgmlType, GgufFile, Value};
use common::gguf_writer::{gstr, write, Writer};
use half::f16;

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
            GgmlType::IQ4NL => {
                // the nearest of the 16 levels to x/d, d = amax/127 (the levels span −127..113)
                const LEVELS: [f32; 16] = [
                    -127., -104., -83., -65., -49., -35., -22., -10., 1., 13., 25., 38., 53., 69.,
                    89., 113.,
                ];
                let d = amax / 127.0;
                out.extend(h(d));
                let q: Vec<u8> = blk
                    .iter()
                    .map(|x| {
                        (0..16)
                            .min_by(|&a, &b| {
                                let (ea, eb) =
                                    ((LEVELS[a] * d - x).abs(), (LEVELS[b] * d - x).abs());
                                ea.total_cmp(&eb)
                            })
                            .unwrap() as u8
                    })
                    .collect();
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
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
            // non-uniform: the widest gap near the top, 113 → 127 (x = +amax), is 14 levels
            (GgmlType::IQ4NL, 28.0 / 127.0),
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
/// A reference case's raw block bytes (hex in the fixture) and the values they decode to.
fn block_bytes_and_values(case: &serde_json::Value) -> (Vec<u8>, Vec<f32>) {
    let hex = case["bytes"].as_str().unwrap();
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let values = case["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (bytes, values)
}

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
        12,
        "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS"
    );
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType::from_id(case["id"].as_u64().unwrap() as u32)
            .unwrap_or_else(|| panic!("{name}: not a type we read"));
        let (bytes, want) = block_bytes_and_values(case);
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

/// Each reference block of every quantised type, written as a tensor of a GGUF file and read
/// back through the file reader (block sizes, data offsets, alignment): the values the `gguf`
/// Python package gives, to the bit.
#[test]
fn every_quantised_type_reads_through_a_gguf_file() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf_quant_blocks.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let mut w = Writer::new(3);
    w.kv_str("general.architecture", "llama");
    let mut wants = vec![];
    for case in cases {
        let name = case["type"].as_str().unwrap().to_string();
        let ty = GgmlType::from_id(case["id"].as_u64().unwrap() as u32).unwrap();
        let (bytes, want) = block_bytes_and_values(case);
        w.tensor(&name, &[want.len() as u64], ty, bytes);
        wants.push((name, want));
    }
    let (_d, p) = write(&w.bytes());
    let g = GgufFile::open(&p).unwrap();
    for (name, want) in &wants {
        let got = g.tensor_f32(g.tensor_info(name).unwrap()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad: Vec<_> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
            .take(3)
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: read through the file, differs from the reference: {bad:?}"
        );
    }
    assert_eq!(wants.len(), 12);
}

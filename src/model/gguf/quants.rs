//! ggml's tensor types and their dequantisation to f32: block layouts as llama.cpp's
//! `ggml-common.h` defines them (each block: f16 scales, then packed quants).

use half::f16;

/// ggml tensor types this reader dequantises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// 4-bit indices into a fixed non-linear table of 16 levels, one f16 scale per 32
    IQ4NL,
    /// IQ4_NL's levels, 256-element super-blocks with a 6-bit scale per 32
    IQ4XS,
    BF16,
}

/// IQ4_NL's (and IQ4_XS's) 16 levels, a non-uniform grid denser near zero, where weights are
/// (ggml-common.h's `kvalues_iq4nl`).
const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 values from 16 bytes of IQ4 indices (low nibbles first, then high) and their scale.
fn iq4_32(qs: &[u8], scale: f32, out: &mut Vec<f32>) {
    out.extend(
        qs.iter()
            .map(|&q| scale * IQ4_LEVELS[(q & 0x0F) as usize] as f32),
    );
    out.extend(
        qs.iter()
            .map(|&q| scale * IQ4_LEVELS[(q >> 4) as usize] as f32),
    );
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            20 => GgmlType::IQ4NL,
            23 => GgmlType::IQ4XS,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::IQ4NL => 20,
            GgmlType::IQ4XS => 23,
            GgmlType::BF16 => 30,
        }
    }
    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::IQ4NL => (32, 18),
            GgmlType::IQ4XS => (256, 136),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K's and Q5_K's sub-block `j` of 8: a 6-bit scale and min packed in 12 bytes.
fn k4_scale_min(scales: &[u8], j: usize) -> (f32, f32) {
    if j < 4 {
        ((scales[j] & 63) as f32, (scales[j + 4] & 63) as f32)
    } else {
        (
            ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4)) as f32,
            ((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)) as f32,
        )
    }
}

/// Dequantises `n` elements of `ty` from `bytes` (whose length the caller has checked).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let (_, bb) = ty.block();
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(bb) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(bb) {
                let d = f16_at(b, 0);
                // Q4_0: x = (q − 8)·d; Q4_1: x = q·d + m
                let (m, qs, off) = if ty == GgmlType::Q4_1 {
                    (f16_at(b, 2), &b[4..20], 0.0)
                } else {
                    // −0 adds nothing, not even to a zero's sign (+0 would turn −0 into +0)
                    (-0.0, &b[2..18], 8.0)
                };
                let lo = qs.iter().map(|&q| ((q & 0x0F) as f32 - off) * d + m);
                let hi = qs.iter().map(|&q| ((q >> 4) as f32 - off) * d + m);
                out.extend(lo.collect::<Vec<_>>());
                out.extend(hi.collect::<Vec<_>>());
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            for b in bytes.chunks_exact(bb) {
                let d = f16_at(b, 0);
                let (m, qh_at, off) = if ty == GgmlType::Q5_1 {
                    (f16_at(b, 2), 4, 0.0)
                } else {
                    (-0.0, 2, 16.0) // as Q4_0's
                };
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let qs = &b[qh_at + 4..qh_at + 20];
                let mut blk = [0f32; 32];
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    blk[j] = (((qs[j] & 0x0F) as u32 | h0) as f32 - off) * d + m;
                    blk[j + 16] = (((qs[j] >> 4) as u32 | h1) as f32 - off) * d + m;
                }
                out.extend_from_slice(&blk);
            }
        }
        GgmlType::Q2K => {
            // 16 sub-blocks of 16: a 4-bit scale and min each, 2-bit values
            for b in bytes.chunks_exact(bb) {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for half in 0..2 {
                    let q = &qs[half * 32..(half + 1) * 32];
                    for j in 0..4 {
                        let shift = 2 * j;
                        for (k, q16) in [&q[..16], &q[16..]].into_iter().enumerate() {
                            let sc = scales[half * 8 + 2 * j + k];
                            let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                            out.extend(q16.iter().map(|&x| dl * ((x >> shift) & 3) as f32 - ml));
                        }
                    }
                }
            }
        }
        GgmlType::Q3K => {
            // 16 sub-blocks of 16: 6-bit signed scales, values of 2 low bits and a high bit
            // (`hmask`; clear: subtract 4)
            for b in bytes.chunks_exact(bb) {
                let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                let scale = |i: usize| -> f32 {
                    let low = if i < 8 {
                        packed[i] & 0x0F
                    } else {
                        packed[i - 8] >> 4
                    };
                    let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
                    ((low | (high << 4)) as i32 - 32) as f32
                };
                for half in 0..2 {
                    let q = &qs[half * 32..(half + 1) * 32];
                    for j in 0..4 {
                        let (shift, bit) = (2 * j, 1u8 << (4 * half + j));
                        for k in 0..2 {
                            let dl = d * scale(half * 8 + 2 * j + k);
                            out.extend((16 * k..16 * k + 16).map(|l| {
                                let low = ((q[l] >> shift) & 3) as i32;
                                let high = if hmask[l] & bit != 0 { 0 } else { 4 };
                                dl * (low - high) as f32
                            }));
                        }
                    }
                }
            }
        }
        GgmlType::Q4K => {
            for b in bytes.chunks_exact(bb) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for g in 0..4 {
                    let q = &qs[g * 32..(g + 1) * 32];
                    let (s1, m1) = k4_scale_min(scales, 2 * g);
                    let (s2, m2) = k4_scale_min(scales, 2 * g + 1);
                    out.extend(
                        q.iter()
                            .map(|&x| d * s1 * (x & 0x0F) as f32 - dmin * m1)
                            .collect::<Vec<_>>(),
                    );
                    out.extend(
                        q.iter()
                            .map(|&x| d * s2 * (x >> 4) as f32 - dmin * m2)
                            .collect::<Vec<_>>(),
                    );
                }
            }
        }
        GgmlType::Q5K => {
            // Q4_K's layout with a fifth bit per value in `qh` (bit 2g / 2g+1 for chunk g)
            for b in bytes.chunks_exact(bb) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for g in 0..4 {
                    let q = &qs[g * 32..(g + 1) * 32];
                    let (s1, m1) = k4_scale_min(scales, 2 * g);
                    let (s2, m2) = k4_scale_min(scales, 2 * g + 1);
                    let (d1, d2, m1, m2) = (d * s1, d * s2, dmin * m1, dmin * m2);
                    out.extend((0..32).map(|l| {
                        let hi = ((qh[l] >> (2 * g)) & 1) << 4;
                        d1 * ((q[l] & 0x0F) | hi) as f32 - m1
                    }));
                    out.extend((0..32).map(|l| {
                        let hi = ((qh[l] >> (2 * g + 1)) & 1) << 4;
                        d2 * ((q[l] >> 4) | hi) as f32 - m2
                    }));
                }
            }
        }
        GgmlType::Q6K => {
            for b in bytes.chunks_exact(bb) {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                let mut blk = [0f32; 256];
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[half * 64..], &qh[half * 32..], &sc[half * 8..]);
                    let y = &mut blk[half * 128..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
                out.extend_from_slice(&blk);
            }
        }
        GgmlType::IQ4NL => {
            for b in bytes.chunks_exact(bb) {
                iq4_32(&b[2..18], f16_at(b, 0), &mut out);
            }
        }
        GgmlType::IQ4XS => {
            // d, 8 six-bit scales (low 4 bits in scales_l's nibbles, high 2 in scales_h), then
            // 8 × 16 bytes of indices
            for b in bytes.chunks_exact(bb) {
                let d = f16_at(b, 0);
                let scales_h = u16::from_le_bytes([b[2], b[3]]);
                let (scales_l, qs) = (&b[4..8], &b[8..136]);
                for (ib, q16) in qs.chunks_exact(16).enumerate() {
                    let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
                    let hi = ((scales_h >> (2 * ib)) & 3) as u8;
                    let scale = (lo | (hi << 4)) as i32 - 32;
                    iq4_32(q16, d * scale as f32, &mut out);
                }
            }
        }
    }
    out
}

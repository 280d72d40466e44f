//! GGUF (v2/v3) reader: header, metadata of every value type, tensor infos, alignment, and
//! dequantisation to f32 of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K,
//! Q3_K, Q4_K, Q5_K and Q6_K (checked against the `gguf` Python package's dequantisation:
//! tests/gguf.rs, scripts/gguf_quant_dump.py).
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated, so a forged length cannot make us allocate gigabytes; every failure is an error
//! naming the file and the field.

use anyhow::{bail, Context, Result};
use half::f16;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

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
    BF16,
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
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (fastest-varying) dimension
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// offset from the start of the data section
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major shape (outermost first), as safetensors / Hugging Face write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    mmap: memmap2::Mmap,
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file: String,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.buf.len().saturating_sub(self.pos) {
            bail!(
                "{}: truncated while reading {what} at byte {} (needs {n} bytes, {} left)",
                self.file,
                self.pos,
                self.buf.len().saturating_sub(self.pos)
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A length that must fit in what is left of the file, `unit` bytes per element at least.
    fn len(&mut self, unit: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = self.buf.len().saturating_sub(self.pos) as u64;
        if n.saturating_mul(unit as u64) > left {
            bail!("{}: {what} claims {n} elements but only {left} bytes remain (file truncated, or a forged length)", self.file);
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| anyhow::anyhow!("{}: {what} is not valid UTF-8", self.file))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    bail!("{}: {what}: arrays nested too deeply", self.file);
                }
                let ety = self.u32(what)?;
                let n = self.len(1, what)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => bail!(
                "{}: {what} has unknown metadata value type {other}",
                self.file
            ),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only map; the file is not modified while we hold it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let name = path.display().to_string();
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            file: name.clone(),
        };
        let magic = c.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            bail!(
                "{name}: not a GGUF file (magic {:?}, expected \"GGUF\")",
                String::from_utf8_lossy(magic)
            );
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("{name}: GGUF version {version} is not supported (2 and 3 are)");
        }
        // each tensor info takes ≥ 24 bytes, each key/value ≥ 12
        let n_tensors = c.len(24, "tensor_count")?;
        let n_kv = c.len(12, "metadata_kv_count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("type of metadata `{key}`"))?;
            let v = c.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let tname = c.string(&format!("name of tensor #{i}"))?;
            let nd = c.u32(&format!("tensor `{tname}` n_dims"))? as usize;
            if nd == 0 || nd > 4 {
                bail!("{name}: tensor `{tname}` has {nd} dimensions (1 to 4 expected)");
            }
            let dims = (0..nd)
                .map(|_| c.u64(&format!("tensor `{tname}` dims")))
                .collect::<Result<Vec<_>>>()?;
            let tid = c.u32(&format!("tensor `{tname}` type"))?;
            let ty = GgmlType::from_id(tid).with_context(|| format!("{name}: tensor `{tname}` has ggml type {tid}, which this reader does not dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)"))?;
            let offset = c.u64(&format!("tensor `{tname}` offset"))?;
            tensors.push(TensorInfo {
                name: tname,
                dims,
                ty,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32) as usize;
        if align == 0 || !align.is_power_of_two() {
            bail!("{name}: metadata `general.alignment` = {align} is not a power of two");
        }
        let data_start = c.pos.div_ceil(align) * align;
        let f = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            mmap,
        };
        for t in &f.tensors {
            f.tensor_bytes(t)?; // validates every tensor's extent now, not on first use
        }
        Ok(f)
    }

    fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let (per_block, block_bytes) = t.ty.block();
        let n = t.numel();
        if !n.is_multiple_of(per_block as u64) {
            bail!("{}: tensor `{}` has {n} elements, not a multiple of its {:?} block size {per_block}", self.path.display(), t.name, t.ty);
        }
        let size = (n / per_block as u64)
            .checked_mul(block_bytes as u64)
            .context("tensor size overflows")?;
        let start = (self.data_start as u64)
            .checked_add(t.offset)
            .context("tensor offset overflows")?;
        let end = start.checked_add(size).context("tensor end overflows")?;
        if end > self.mmap.len() as u64 {
            bail!(
                "{}: tensor `{}` data [{start}, {end}) lies beyond the end of the file ({} bytes)",
                self.path.display(),
                t.name,
                self.mmap.len()
            );
        }
        Ok(&self.mmap[start as usize..end as usize])
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantised f32 values of a tensor, row-major.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        Ok(dequantize(t.ty, bytes, t.numel() as usize))
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
                    (0.0, &b[2..18], 8.0)
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
                    (0.0, 2, 16.0)
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
    }
    out
}

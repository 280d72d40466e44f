//! GGUF (v2/v3) reader: header, metadata of every value type, tensor infos, alignment, and
//! dequantisation to f32 of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K,
//! Q3_K, Q4_K, Q5_K and Q6_K, and IQ4_NL and IQ4_XS (quants.rs; checked against the `gguf` Python package's dequantisation:
//! tests/gguf.rs, scripts/gguf_quant_dump.py).
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated, so a forged length cannot make us allocate gigabytes; every failure is an error
//! naming the file and the field.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod quants;
pub use quants::{dequantize, GgmlType};

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
            let ty = GgmlType::from_id(tid).with_context(|| format!("{name}: tensor `{tname}` has ggml type {tid}, which this reader does not dequantise (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, IQ4_NL, IQ4_XS)"))?;
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

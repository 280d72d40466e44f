//! A minimal GGUF writer for the tests (tests/gguf.rs, tests/gguf_convert.rs): metadata and raw
//! tensor blocks, v2 or v3 headers, 32-byte aligned data.

use cada::model::gguf::GgmlType;

/// Minimal GGUF writer: metadata (string/u32/f32/array of strings) and raw tensor blocks.
pub struct Writer {
    pub version: u32,
    pub kv: Vec<(String, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

impl Writer {
    pub fn new(version: u32) -> Self {
        Writer {
            version,
            kv: vec![],
            tensors: vec![],
        }
    }
    pub fn kv_str(&mut self, k: &str, v: &str) {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend(gstr(v.as_bytes()));
        self.kv.push((k.into(), b));
    }
    pub fn kv_u32(&mut self, k: &str, v: u32) {
        let mut b = 4u32.to_le_bytes().to_vec();
        b.extend(v.to_le_bytes());
        self.kv.push((k.into(), b));
    }
    pub fn kv_bool(&mut self, k: &str, v: bool) {
        let mut b = 7u32.to_le_bytes().to_vec();
        b.push(v as u8);
        self.kv.push((k.into(), b));
    }
    pub fn kv_u32s(&mut self, k: &str, v: &[u32]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(4u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self.kv.push((k.into(), b));
    }
    pub fn kv_f32(&mut self, k: &str, v: f32) {
        let mut b = 6u32.to_le_bytes().to_vec();
        b.extend(v.to_le_bytes());
        self.kv.push((k.into(), b));
    }
    pub fn kv_strs(&mut self, k: &str, v: &[&str]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(8u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(gstr(s.as_bytes()));
        }
        self.kv.push((k.into(), b));
    }
    pub fn kv_f32s(&mut self, k: &str, v: &[f32]) {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(6u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self.kv.push((k.into(), b));
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) {
        self.tensors
            .push((name.into(), dims.to_vec(), ty.id(), data));
    }
    pub fn bytes(&self) -> Vec<u8> {
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

pub fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

//! Atomic checkpoint directories: `<dir>/model.safetensors` (f32 tensors) + `<dir>/meta.json`.
//!
//! Save protocol (one writer per checkpoint directory):
//! 1. write both files into `<dir>.tmp-<pid>`, fsync each file and the directory;
//! 2. if `<dir>` exists, rename it to `<dir>.old`;
//! 3. rename `<dir>.tmp-<pid>` to `<dir>`;
//! 4. remove `<dir>.old`.
//!
//! The parent directory is fsynced after every rename. A crash therefore leaves one of:
//! - before 2: `<dir>` is the old complete checkpoint (plus a partial `.tmp-*`, ignored);
//! - between 2 and 3: no `<dir>`, `<dir>.old` is the old complete checkpoint;
//! - between 3 and 4: `<dir>` is the new complete checkpoint, `<dir>.old` a stale copy.
//!
//! In every case [`load_checkpoint`] reads a complete checkpoint: `<dir>` if present, else
//! `<dir>.old`. [`recover_checkpoint`] turns any of these states back into the clean one
//! (it runs at the start of every save, too). A `.tmp-*` directory is never read.

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The tensor file inside a checkpoint directory.
pub const TENSORS_FILE: &str = "model.safetensors";
/// The metadata file inside a checkpoint directory.
pub const META_FILE: &str = "meta.json";
/// safetensors header metadata key holding the caller's tensor order as a JSON list
/// (the format itself stores tensors sorted, and callers expect their order back).
const ORDER_KEY: &str = "cada.tensor_order";

/// A named f32 tensor: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// What [`recover_checkpoint`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// nothing to do (or only `.tmp-*` leftovers were removed)
    Clean,
    /// a crash between the two renames: `<dir>.old` was renamed back to `<dir>`
    RestoredOld,
    /// a crash after the new checkpoint was in place: the stale `<dir>.old` was removed
    RemovedStaleOld,
}

/// `<parent>/<name><suffix>` for a checkpoint directory `<parent>/<name>`.
fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir.file_name().with_context(|| {
        format!(
            "checkpoint path {} has no final directory name",
            dir.display()
        )
    })?;
    let mut sibling_name = name.to_os_string();
    sibling_name.push(suffix);
    Ok(dir.with_file_name(sibling_name))
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or creation durable: fsync the directory that holds the entry.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync of directory {}", dir.display()))
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync of {}", path.display()))
}

fn check_tensors(tensors: &[NamedTensor]) -> Result<()> {
    let mut seen = HashSet::new();
    for (index, (name, shape, values)) in tensors.iter().enumerate() {
        ensure!(
            !name.is_empty(),
            "save_checkpoint: tensor {index} has an empty name"
        );
        ensure!(
            seen.insert(name.as_str()),
            "save_checkpoint: tensor name `{name}` appears twice"
        );
        let elements: usize = shape.iter().product();
        ensure!(
            elements == values.len(),
            "save_checkpoint: tensor `{name}` has shape {shape:?} ({elements} elements) but {} values",
            values.len()
        );
    }
    Ok(())
}

/// Writes `tensors` and `meta` as the checkpoint `dir`, atomically (see the module doc).
/// Values are stored bit-exactly (NaN payloads included).
pub fn save_checkpoint(
    dir: &Path,
    tensors: &[NamedTensor],
    meta: &serde_json::Value,
) -> Result<()> {
    check_tensors(tensors)?;
    // Also clears any `.tmp-*` leftover, including one of an earlier process with our pid.
    recover_checkpoint(dir)?;
    let parent = parent_of(dir);
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = sibling(dir, &format!(".tmp-{}", std::process::id()))?;
    let old = sibling(dir, ".old")?;
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

    // safetensors is little-endian, as are the hosts this engine targets (x86-64, aarch64),
    // so the in-memory bytes of an f32 slice are the file's bytes.
    let views = tensors
        .iter()
        .map(|(name, shape, values)| {
            safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(values),
            )
            .map(|view| (name.as_str(), view))
            .with_context(|| format!("save_checkpoint: tensor `{name}`"))
        })
        .collect::<Result<Vec<_>>>()?;
    let order: Vec<&str> = tensors.iter().map(|(name, _, _)| name.as_str()).collect();
    let header = Some(HashMap::from([(
        ORDER_KEY.to_string(),
        serde_json::to_string(&order)?,
    )]));
    let tensors_path = tmp.join(TENSORS_FILE);
    safetensors::serialize_to_file(views, &header, &tensors_path)
        .with_context(|| format!("writing {}", tensors_path.display()))?;
    File::open(&tensors_path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync of {}", tensors_path.display()))?;
    let meta_bytes =
        serde_json::to_vec_pretty(meta).context("save_checkpoint: serialising meta")?;
    write_file_synced(&tmp.join(META_FILE), &meta_bytes)?;
    sync_dir(&tmp)?;

    if dir.exists() {
        fs::rename(dir, &old)
            .with_context(|| format!("renaming {} to {}", dir.display(), old.display()))?;
        sync_dir(&parent)?;
    }
    fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    sync_dir(&parent)?;
    if old.exists() {
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        sync_dir(&parent)?;
    }
    Ok(())
}

/// Brings the checkpoint `dir` back to a clean state after a crash during a save:
/// restores `<dir>.old` when `<dir>` is missing, removes a stale `<dir>.old` when `<dir>`
/// exists, and removes `<dir>.tmp-*` leftovers (partial saves; one writer is assumed).
pub fn recover_checkpoint(dir: &Path) -> Result<Recovery> {
    let parent = parent_of(dir);
    let old = sibling(dir, ".old")?;
    let tmp_prefix = sibling(dir, ".tmp-")?;
    let tmp_prefix = tmp_prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if parent.is_dir() {
        let entries =
            fs::read_dir(&parent).with_context(|| format!("listing {}", parent.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", parent.display()))?;
            if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing leftover {}", entry.path().display()))?;
            }
        }
    }
    let recovery = match (dir.exists(), old.exists()) {
        (false, true) => {
            fs::rename(&old, dir)
                .with_context(|| format!("restoring {} to {}", old.display(), dir.display()))?;
            Recovery::RestoredOld
        }
        (true, true) => {
            fs::remove_dir_all(&old)
                .with_context(|| format!("removing stale {}", old.display()))?;
            Recovery::RemovedStaleOld
        }
        _ => return Ok(Recovery::Clean),
    };
    sync_dir(&parent)?;
    Ok(recovery)
}

/// Reads the checkpoint `dir` (or `<dir>.old` when a crash left only that; read-only, see
/// [`recover_checkpoint`] to repair). Tensors come back in the order they were saved.
pub fn load_checkpoint(dir: &Path) -> Result<(Vec<NamedTensor>, serde_json::Value)> {
    let old = sibling(dir, ".old")?;
    let source = if dir.is_dir() {
        dir.to_path_buf()
    } else if old.is_dir() {
        old
    } else {
        bail!("checkpoint {} does not exist", dir.display());
    };

    let meta_path = source.join(META_FILE);
    let meta_bytes =
        fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    let meta: serde_json::Value = serde_json::from_slice(&meta_bytes)
        .with_context(|| format!("{}: invalid JSON", meta_path.display()))?;

    let tensors_path = source.join(TENSORS_FILE);
    let file =
        File::open(&tensors_path).with_context(|| format!("opening {}", tensors_path.display()))?;
    // SAFETY: the checkpoint is not modified while it is read (saves never write into `dir`).
    let mapped = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", tensors_path.display()))?;
    let shown = tensors_path.display();
    let (_, header) = SafeTensors::read_metadata(&mapped)
        .with_context(|| format!("{shown}: bad safetensors header"))?;
    let file_tensors = SafeTensors::deserialize(&mapped)
        .with_context(|| format!("{shown}: corrupt or truncated"))?;

    let names: Vec<String> = match header.metadata().as_ref().and_then(|m| m.get(ORDER_KEY)) {
        Some(order) => serde_json::from_str(order)
            .with_context(|| format!("{shown}: header field `{ORDER_KEY}` is not a JSON list"))?,
        None => {
            let mut names: Vec<String> = file_tensors.names().into_iter().cloned().collect();
            names.sort();
            names
        }
    };
    ensure!(
        names.len() == file_tensors.len(),
        "{shown}: header field `{ORDER_KEY}` lists {} tensors but the file holds {}",
        names.len(),
        file_tensors.len()
    );

    let distinct: HashSet<&str> = names.iter().map(String::as_str).collect();
    ensure!(
        distinct.len() == names.len(),
        "{shown}: header field `{ORDER_KEY}` lists a tensor twice"
    );
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file_tensors.tensor(&name).with_context(|| {
            format!("{shown}: tensor `{name}` (listed in `{ORDER_KEY}`) is missing")
        })?;
        ensure!(
            view.dtype() == Dtype::F32,
            "{shown}: tensor `{name}` has dtype {:?}, expected F32",
            view.dtype()
        );
        // The mapping need not be 4-byte aligned for f32, so decode bytes explicitly.
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push((name, view.shape().to_vec(), values));
    }
    Ok((tensors, meta))
}

//! Atomic checkpoint directories: bit-exact round trips, overwrites, every crash state of
//! the save protocol (src/train/checkpoint.rs) and corrupted files.

use cada::train::checkpoint::{
    load_checkpoint, recover_checkpoint, save_checkpoint, NamedTensor, Recovery, META_FILE,
    TENSORS_FILE,
};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

/// Tensors whose bits a lossy path would change: NaN payloads, −0, subnormals, ±Inf,
/// a scalar and an empty tensor; names deliberately not in sorted order.
fn tensors(seed: f32) -> Vec<NamedTensor> {
    let weights: Vec<f32> = (0..24).map(|i| seed * (i as f32 - 11.5) / 7.0).collect();
    vec![
        (
            "model.layers.0.mlp.up_proj.weight".into(),
            vec![4, 6],
            weights,
        ),
        (
            "lm_head.weight".into(),
            vec![2, 3],
            vec![
                f32::from_bits(0x7fc0_1234),
                -0.0,
                f32::from_bits(1),
                f32::INFINITY,
                f32::NEG_INFINITY,
                seed,
            ],
        ),
        ("optimizer.step_scale".into(), vec![], vec![seed]),
        ("empty".into(), vec![0, 5], vec![]),
    ]
}

fn meta(step: u64) -> serde_json::Value {
    json!({ "step": step, "rng": [1u64, 2, 3], "note": "ünïcode" })
}

fn assert_bit_exact(got: &[NamedTensor], want: &[NamedTensor]) {
    assert_eq!(got.len(), want.len(), "tensor count");
    for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(want) {
        assert_eq!(gn, wn, "order and names");
        assert_eq!(gs, ws, "shape of {wn}");
        let gbits: Vec<u32> = gv.iter().map(|v| v.to_bits()).collect();
        let wbits: Vec<u32> = wv.iter().map(|v| v.to_bits()).collect();
        assert_eq!(gbits, wbits, "bits of {wn}");
    }
}

fn siblings(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn checkpoint_dir(root: &tempfile::TempDir) -> PathBuf {
    root.path().join("step-000010")
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    dir.with_file_name(format!(
        "{}{suffix}",
        dir.file_name().unwrap().to_string_lossy()
    ))
}

#[test]
fn round_trip_is_bit_exact_and_keeps_order() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    let saved = tensors(1.0);
    save_checkpoint(&dir, &saved, &meta(10)).unwrap();
    let (loaded, loaded_meta) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &saved);
    assert_eq!(loaded_meta, meta(10));
    // Only the final directory remains: no `.tmp-*` or `.old` beside it.
    assert_eq!(siblings(&dir), vec!["step-000010".to_string()]);
    assert!(dir.join(TENSORS_FILE).is_file() && dir.join(META_FILE).is_file());
}

#[test]
fn saving_over_an_existing_checkpoint_replaces_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    save_checkpoint(&dir, &tensors(1.0), &meta(10)).unwrap();
    // A stray file in the old directory must not survive into the new one.
    fs::write(dir.join("stray.txt"), b"old").unwrap();
    let newer = tensors(-3.0);
    save_checkpoint(&dir, &newer, &meta(20)).unwrap();
    let (loaded, loaded_meta) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &newer);
    assert_eq!(loaded_meta, meta(20));
    assert!(!dir.join("stray.txt").exists());
    assert_eq!(siblings(&dir), vec!["step-000010".to_string()]);
}

#[test]
fn crash_while_writing_temp_dir_leaves_old_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    let old = tensors(1.0);
    save_checkpoint(&dir, &old, &meta(10)).unwrap();
    // A save that died mid-write: partial tensor file, no meta.
    let tmp = with_suffix(&dir, ".tmp-999999");
    fs::create_dir(&tmp).unwrap();
    fs::write(
        tmp.join(TENSORS_FILE),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    )
    .unwrap();
    let (loaded, _) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &old);
    // Recovery (and any later save) clears the leftover.
    assert_eq!(recover_checkpoint(&dir).unwrap(), Recovery::Clean);
    assert!(!tmp.exists());
    // A leftover alone (a first save that crashed) is never mistaken for a checkpoint.
    let fresh = root.path().join("never-saved");
    let fresh_tmp = with_suffix(&fresh, ".tmp-4242");
    fs::create_dir(&fresh_tmp).unwrap();
    fs::write(fresh_tmp.join(META_FILE), b"{}").unwrap();
    let err = format!("{:#}", load_checkpoint(&fresh).unwrap_err());
    assert!(err.contains("does not exist"), "{err}");
    save_checkpoint(&fresh, &old, &meta(1)).unwrap();
    assert!(
        !fresh_tmp.exists(),
        "save must clear leftovers of earlier saves"
    );
}

#[test]
fn crash_between_renames_reads_and_restores_old() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    let old = tensors(1.0);
    save_checkpoint(&dir, &old, &meta(10)).unwrap();
    // State after step 2 of the protocol: `<dir>` renamed to `.old`, the new one still in tmp.
    let old_dir = with_suffix(&dir, ".old");
    fs::rename(&dir, &old_dir).unwrap();
    let tmp = with_suffix(&dir, ".tmp-31337");
    fs::create_dir(&tmp).unwrap();
    fs::write(tmp.join(TENSORS_FILE), b"complete or not, never read").unwrap();

    let (loaded, loaded_meta) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &old);
    assert_eq!(loaded_meta, meta(10));
    assert!(
        old_dir.exists() && !dir.exists(),
        "load must not modify anything"
    );

    assert_eq!(recover_checkpoint(&dir).unwrap(), Recovery::RestoredOld);
    assert_eq!(siblings(&dir), vec!["step-000010".to_string()]);
    let (loaded, _) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &old);
}

#[test]
fn crash_before_removing_old_keeps_new_and_drops_stale() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    let newer = tensors(2.0);
    save_checkpoint(&dir, &newer, &meta(20)).unwrap();
    // State after step 3: the new checkpoint in place, the previous one still at `.old`.
    let old_dir = with_suffix(&dir, ".old");
    save_checkpoint(&old_dir, &tensors(1.0), &meta(10)).unwrap();
    let (loaded, loaded_meta) = load_checkpoint(&dir).unwrap();
    assert_bit_exact(&loaded, &newer);
    assert_eq!(loaded_meta, meta(20));
    assert_eq!(recover_checkpoint(&dir).unwrap(), Recovery::RemovedStaleOld);
    assert_eq!(siblings(&dir), vec!["step-000010".to_string()]);
    // A save from this state also works (recovery runs first).
    save_checkpoint(&old_dir, &tensors(1.0), &meta(10)).unwrap();
    save_checkpoint(&dir, &tensors(3.0), &meta(30)).unwrap();
    assert_eq!(load_checkpoint(&dir).unwrap().1, meta(30));
    assert_eq!(siblings(&dir), vec!["step-000010".to_string()]);
}

#[test]
fn corrupted_or_truncated_tensor_file_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    save_checkpoint(&dir, &tensors(1.0), &meta(10)).unwrap();
    let path = dir.join(TENSORS_FILE);
    let bytes = fs::read(&path).unwrap();

    fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains(TENSORS_FILE), "truncated: {err}");

    fs::write(&path, &bytes[..4]).unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains(TENSORS_FILE), "header cut: {err}");

    // A header length pointing past the end of the file.
    let mut garbled = bytes.clone();
    garbled[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    fs::write(&path, &garbled).unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains(TENSORS_FILE), "garbled header: {err}");

    fs::remove_file(&path).unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains(TENSORS_FILE), "missing: {err}");
}

#[test]
fn corrupted_meta_and_foreign_dtype_are_errors_naming_file_and_tensor() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    save_checkpoint(&dir, &tensors(1.0), &meta(10)).unwrap();
    fs::write(dir.join(META_FILE), b"{\"step\": 1").unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains(META_FILE), "{err}");

    // A valid safetensors file holding a bf16 tensor: rejected by name.
    fs::write(dir.join(META_FILE), b"{}").unwrap();
    let raw = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2], &raw).unwrap();
    safetensors::serialize_to_file([("half.weight", view)], &None, &dir.join(TENSORS_FILE))
        .unwrap();
    let err = format!("{:#}", load_checkpoint(&dir).unwrap_err());
    assert!(err.contains("half.weight") && err.contains("F32"), "{err}");
}

#[test]
fn bad_tensors_are_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint_dir(&root);
    let wrong_shape: Vec<NamedTensor> = vec![("w".into(), vec![2, 3], vec![0.0; 5])];
    let err = format!(
        "{:#}",
        save_checkpoint(&dir, &wrong_shape, &meta(1)).unwrap_err()
    );
    assert!(err.contains("`w`") && err.contains("[2, 3]"), "{err}");
    let duplicate: Vec<NamedTensor> = vec![
        ("w".into(), vec![1], vec![0.0]),
        ("w".into(), vec![1], vec![1.0]),
    ];
    let err = format!(
        "{:#}",
        save_checkpoint(&dir, &duplicate, &meta(1)).unwrap_err()
    );
    assert!(err.contains("twice"), "{err}");
    assert!(
        fs::read_dir(root.path()).unwrap().next().is_none(),
        "nothing may be written"
    );
}

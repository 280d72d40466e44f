//! The bench report: one JSON document per run (device, driver, date, commit, the rooflines
//! measured in the same run, one record per kernel × shape × variant), the baseline gate
//! (`--baseline base.json --max-regression 5%`) and the our/peer ratio table.
//!
//! Peers (`bench/peers.py`, PyTorch on the GPU machine) write the same document with their own
//! `variant`s, so one function compares any two files record by record on `id`.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped when a field changes meaning; files of another schema are refused.
pub const SCHEMA: u32 = 1;

/// Rooflines measured in the same run as the records.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Roofline {
    /// device-to-device copy, bytes read + written per second / 1e9
    pub copy_gbps: f64,
    /// what was copied
    pub copy_what: String,
    /// the matrix rate: a large GEMM (cuBLAS bf16 on a GPU, the CPU backend's f32 GEMM on a CPU)
    pub gemm_tflops: f64,
    pub gemm_what: String,
    /// spec-sheet dense bf16 peak when the device is known (for MFU), else null
    pub dense_peak_tflops: Option<f64>,
}

/// One kernel (or fused op) at one shape in one implementation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// `<op>.<pass>/<shape>`, the same in our file, the baseline and the peers' file
    pub id: String,
    /// which implementation: `cpu`, `simt`, `mma`, `cuda`, or a peer's (`sdpa_cudnn`, `torch_naive`…)
    pub variant: String,
    /// median of `reps` timed repetitions (CUDA events on a GPU), milliseconds
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
    /// useful floating-point work per call (see the op's doc for the convention), 0 if bandwidth-bound
    pub flops: f64,
    /// minimum bytes the op must move per call, 0 if compute-bound
    pub bytes: f64,
    pub tflops: f64,
    pub gbps: f64,
    /// achieved / same-run roofline (GEMM rate when `flops > 0`, else copy bandwidth)
    pub roofline_fraction: f64,
    /// device memory allocated above the inputs at the op's peak, when the device measures it
    pub peak_extra_bytes: Option<u64>,
    /// free-form: why a record is missing, a note on the variant
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: u32,
    /// `cada` or the peer script's name
    pub tool: String,
    pub device: String,
    pub driver: String,
    /// UTC, `YYYY-MM-DD HH:MM:SS`
    pub date: String,
    pub commit: String,
    /// the shape set (`full`, `smoke`)
    pub set: String,
    pub roofline: Roofline,
    pub records: Vec<Record>,
}

impl Record {
    /// Fills the derived rates from the timing and the work counts.
    pub fn new(id: String, variant: &str, times_ms: &[f64], flops: f64, bytes: f64) -> Record {
        let median_ms = median(times_ms);
        let min_ms = times_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let s = median_ms / 1e3;
        Record {
            id,
            variant: variant.to_string(),
            median_ms,
            min_ms,
            reps: times_ms.len(),
            flops,
            bytes,
            tflops: if s > 0.0 { flops / s / 1e12 } else { 0.0 },
            gbps: if s > 0.0 { bytes / s / 1e9 } else { 0.0 },
            roofline_fraction: 0.0,
            peak_extra_bytes: None,
            note: String::new(),
        }
    }

    pub fn set_roofline(&mut self, r: &Roofline) {
        self.roofline_fraction = if self.flops > 0.0 && r.gemm_tflops > 0.0 {
            self.tflops / r.gemm_tflops
        } else if r.copy_gbps > 0.0 {
            self.gbps / r.copy_gbps
        } else {
            0.0
        };
    }
}

/// Median of a non-empty list (upper median for even lengths); NaN for an empty one.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

impl Report {
    pub fn load(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read bench report {}", path.display()))?;
        let r: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cada bench report", path.display()))?;
        ensure!(
            r.schema == SCHEMA,
            "{}: field `schema` is {}, this cada reads schema {SCHEMA}",
            path.display(),
            r.schema
        );
        Ok(r)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::util::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The fastest record per id (over variants).
    pub fn best_by_id(&self) -> BTreeMap<&str, &Record> {
        let mut best: BTreeMap<&str, &Record> = BTreeMap::new();
        for r in &self.records {
            if !r.median_ms.is_finite() {
                continue;
            }
            match best.get(r.id.as_str()) {
                Some(b) if b.median_ms <= r.median_ms => {}
                _ => {
                    best.insert(&r.id, r);
                }
            }
        }
        best
    }

    /// Plain-text table of every record.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} | {} | driver {} | {} | commit {} | set {}\nroofline: copy {:.0} GB/s ({}), GEMM {:.1} TFLOP/s ({})\n",
            self.tool,
            self.device,
            self.driver,
            self.date,
            self.commit,
            self.set,
            self.roofline.copy_gbps,
            self.roofline.copy_what,
            self.roofline.gemm_tflops,
            self.roofline.gemm_what
        );
        s.push_str(&format!(
            "{:<52} {:>8} {:>11} {:>9} {:>9} {:>7} {:>10}\n",
            "id", "variant", "median ms", "TFLOP/s", "GB/s", "roof", "peak MiB"
        ));
        for r in &self.records {
            s.push_str(&format!(
                "{:<52} {:>8} {:>11.4} {:>9.2} {:>9.1} {:>6.1}% {:>10}\n",
                r.id,
                r.variant,
                r.median_ms,
                r.tflops,
                r.gbps,
                100.0 * r.roofline_fraction,
                r.peak_extra_bytes
                    .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s
    }
}

/// Parses `5%`, `5` (percent) or `0.05` (a fraction below 1) into a fraction.
pub fn parse_threshold(text: &str) -> Result<f64> {
    let t = text.trim();
    let (num, percent) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("--max-regression {text:?}: expected e.g. 5% or 0.05"))?;
    ensure!(
        v.is_finite() && v >= 0.0,
        "--max-regression {text:?} must be ≥ 0"
    );
    Ok(if percent || v >= 1.0 { v / 100.0 } else { v })
}

/// One record of the current run against the same (id, variant) in the baseline.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub id: String,
    pub variant: String,
    pub baseline_ms: f64,
    pub current_ms: f64,
    /// current / baseline − 1 (positive = slower)
    pub slowdown: f64,
    pub regressed: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Gate {
    pub compared: Vec<Comparison>,
    /// records of the baseline the current run does not have (a kernel that vanished fails)
    pub missing: Vec<String>,
    pub threshold: f64,
}

impl Gate {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.compared.iter().all(|c| !c.regressed)
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "baseline gate: {} records compared, threshold +{:.1}%\n",
            self.compared.len(),
            100.0 * self.threshold
        );
        for c in &self.compared {
            s.push_str(&format!(
                "{} {:<52} {:>8} {:>10.4} → {:>10.4} ms ({:+.1}%)\n",
                if c.regressed { "SLOWER" } else { "  ok  " },
                c.id,
                c.variant,
                c.baseline_ms,
                c.current_ms,
                100.0 * c.slowdown
            ));
        }
        for m in &self.missing {
            s.push_str(&format!("MISSING {m} (in the baseline, not in this run)\n"));
        }
        s.push_str(if self.passed() {
            "baseline gate: passed\n"
        } else {
            "baseline gate: FAILED\n"
        });
        s
    }
}

/// Compares kernel by kernel. Records only in the current run are new and pass; records of
/// the baseline absent now are reported as missing (and fail), so a gate cannot pass by
/// silently dropping a kernel. Runs on different devices are refused: the numbers would not
/// be comparable.
pub fn compare(current: &Report, baseline: &Report, threshold: f64) -> Result<Gate> {
    if current.device != baseline.device {
        bail!(
            "baseline was measured on {:?}, this run on {:?}: the gate compares runs on the same device",
            baseline.device,
            current.device
        );
    }
    let now: BTreeMap<(&str, &str), &Record> = current
        .records
        .iter()
        .map(|r| ((r.id.as_str(), r.variant.as_str()), r))
        .collect();
    let mut gate = Gate {
        compared: Vec::new(),
        missing: Vec::new(),
        threshold,
    };
    for b in &baseline.records {
        match now.get(&(b.id.as_str(), b.variant.as_str())) {
            Some(c) => {
                let slowdown = c.median_ms / b.median_ms - 1.0;
                gate.compared.push(Comparison {
                    id: b.id.clone(),
                    variant: b.variant.clone(),
                    baseline_ms: b.median_ms,
                    current_ms: c.median_ms,
                    slowdown,
                    // NaN (a broken timing) is a regression, never a pass
                    regressed: slowdown.is_nan() || slowdown > threshold,
                });
            }
            None => gate.missing.push(format!("{} [{}]", b.id, b.variant)),
        }
    }
    Ok(gate)
}

/// One line of the our/peer table: our fastest variant against every peer variant of an id.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerRow {
    pub id: String,
    pub ours_variant: String,
    pub ours_ms: f64,
    pub ours_peak_extra_bytes: Option<u64>,
    /// (peer variant, peer ms, peer ms / our ms: > 1 means we are faster, peak extra bytes)
    pub peers: Vec<(String, f64, f64, Option<u64>)>,
}

/// Matches our records with the peers' on `id`.
pub fn peer_rows(ours: &Report, peers: &Report) -> Vec<PeerRow> {
    let best = ours.best_by_id();
    let mut rows = Vec::new();
    for (id, o) in best {
        let ps: Vec<_> = peers
            .records
            .iter()
            .filter(|p| p.id == id && p.median_ms.is_finite())
            .map(|p| {
                (
                    p.variant.clone(),
                    p.median_ms,
                    p.median_ms / o.median_ms,
                    p.peak_extra_bytes,
                )
            })
            .collect();
        if ps.is_empty() {
            continue;
        }
        rows.push(PeerRow {
            id: id.to_string(),
            ours_variant: o.variant.clone(),
            ours_ms: o.median_ms,
            ours_peak_extra_bytes: o.peak_extra_bytes,
            peers: ps,
        });
    }
    rows
}

/// Markdown for BENCHMARKS.md: one row per id, ratios peer/ours (> 1 = we are faster).
pub fn peer_table_markdown(ours: &Report, peers: &Report) -> String {
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
            .unwrap_or_else(|| "–".into())
    };
    let mut s = format!(
        "ours: {} on {} ({}, commit {}); peers: {} on {} ({})\n\n\
         same-run roofline (ours): copy {:.0} GB/s, GEMM {:.1} TFLOP/s\n\n\
         | id | ours (variant) | ours ms | ours mem | peer | peer ms | peer mem | peer/ours |\n\
         |---|---|---|---|---|---|---|---|\n",
        ours.tool,
        ours.device,
        ours.date,
        ours.commit,
        peers.tool,
        peers.device,
        peers.date,
        ours.roofline.copy_gbps,
        ours.roofline.gemm_tflops
    );
    for row in peer_rows(ours, peers) {
        for (variant, ms, ratio, mem) in &row.peers {
            s.push_str(&format!(
                "| {} | {} | {:.3} | {} | {} | {:.3} | {} | {:.2}× |\n",
                row.id,
                row.ours_variant,
                row.ours_ms,
                mib(row.ours_peak_extra_bytes),
                variant,
                ms,
                mib(*mem),
                ratio
            ));
        }
    }
    s
}

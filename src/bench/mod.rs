//! `cada bench kernels`: every op of the `Backend` trait timed at the shapes that matter
//! (`shapes.rs`), against the rooflines measured in the same run, written as one JSON report
//! (`report.rs`) that a later run can be gated against.
//!
//! The harness is written once against [`BenchDevice`]: on the GPU each repetition is timed
//! with CUDA events around the enqueued work, on the CPU with the wall clock. Between
//! repetitions a large buffer is overwritten so every repetition starts with cold caches
//! (L2 on the GPU, the last-level cache on the CPU).

pub mod cases;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod report;
pub mod shapes;

use crate::backend::Backend;
use anyhow::{ensure, Result};
use report::{Record, Report, Roofline};

/// What the harness needs from a device beyond the `Backend` ops.
pub trait BenchDevice: Backend + Sized {
    /// Times one call of `f` on the device's clock, in milliseconds. `f` only enqueues work;
    /// the implementation waits for it to finish.
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64>;
    /// Device-to-device copy bandwidth (bytes read + written per second / 1e9) and what was copied.
    fn copy_roofline(&self) -> Result<(f64, String)>;
    /// The matrix rate of a large GEMM in TFLOP/s and what was multiplied.
    fn gemm_roofline(&self) -> Result<(f64, String)>;
    /// Bytes to overwrite between repetitions to evict the caches.
    fn cache_flush_bytes(&self) -> usize;
    /// Starts a peak-memory window; returns false when the device cannot measure one.
    fn memory_window_start(&self) -> Result<bool>;
    /// Peak bytes allocated above the level at `memory_window_start`, if measured.
    fn memory_window_peak(&self) -> Result<Option<u64>>;
    /// Driver version string (`-` when not applicable).
    fn driver(&self) -> String;
    /// The attention implementations to time (`cpu`; `simt`, `mma`, and `wgmma` on a 9.0 device).
    fn attention_variants(&self) -> Vec<String>;
    /// Selects one of [`Self::attention_variants`] for the following attention calls.
    fn select_attention(&mut self, variant: &str) -> Result<()>;
    /// The decode-attention kernels to time (`cpu`; `lane_per_key`, `warp_per_key` on CUDA).
    fn decode_attention_variants(&self) -> Vec<String>;
    /// Selects one of [`Self::decode_attention_variants`] for the following decode attentions.
    fn select_decode_attention(&mut self, variant: &str) -> Result<()>;
    /// Bytes per KV-cache value under the selected variant (`Backend::keep_as_kv_cache`).
    fn kv_cache_value_bytes(&self) -> usize {
        4
    }
    /// The GEMM precisions to time the GEMM-bound ops in (`cpu`; `f32`, `tf32`, `bf16` on CUDA).
    fn gemm_variants(&self) -> Vec<String>;
    /// Selects one of [`Self::gemm_variants`] for the following GEMMs.
    fn select_gemm(&mut self, variant: &str) -> Result<()>;
    /// The variant label of every other op.
    fn variant(&self) -> String;
    /// The device as the report names it (without per-op modes such as the GEMM precision).
    fn device_label(&self) -> String;
}

/// How long and how often to time each case.
#[derive(Clone, Debug)]
pub struct Timing {
    /// untimed calls before timing (JIT, allocator warm-up, clocks)
    pub warmup: usize,
    pub min_reps: usize,
    pub max_reps: usize,
    /// stop adding repetitions once their total exceeds this many seconds (after `min_reps`)
    pub target_s: f64,
}

impl Timing {
    pub fn for_set(set: shapes::ShapeSet) -> Timing {
        match set {
            // the slowest kernels (f32 attention at 8k) take ~1 s a call: 2 + 5 calls keep
            // the whole full set within one device command
            shapes::ShapeSet::Full => Timing {
                warmup: 2,
                min_reps: 5,
                max_reps: 100,
                target_s: 0.3,
            },
            shapes::ShapeSet::Smoke => Timing {
                warmup: 1,
                min_reps: 3,
                max_reps: 20,
                target_s: 0.05,
            },
        }
    }
}

/// Runs a case's closure `warmup + reps` times with a cache flush before each timed call.
pub struct Harness<'a, B: BenchDevice> {
    pub be: &'a B,
    flush: B::Buf,
    timing: Timing,
    pub roofline: Roofline,
    flush_count: u64,
}

impl<'a, B: BenchDevice> Harness<'a, B> {
    pub fn new(be: &'a B, timing: Timing) -> Result<Self> {
        let (copy_gbps, copy_what) = be.copy_roofline()?;
        let (gemm_tflops, gemm_what) = be.gemm_roofline()?;
        let roofline = Roofline {
            copy_gbps,
            copy_what,
            gemm_tflops,
            gemm_what,
            dense_peak_tflops: be.dense_peak_tflops(),
        };
        Harness::with_roofline(be, timing, roofline)
    }

    /// A harness that reuses rooflines measured earlier in the same run.
    pub fn with_roofline(be: &'a B, timing: Timing, roofline: Roofline) -> Result<Self> {
        Ok(Harness {
            be,
            flush: be.zeros(be.cache_flush_bytes() / 4)?,
            timing,
            roofline,
            flush_count: 0,
        })
    }

    /// Times `f` and returns the per-repetition milliseconds.
    pub fn time(&mut self, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
        for _ in 0..self.timing.warmup {
            f()?;
        }
        let mut times = Vec::new();
        let mut total = 0.0;
        while times.len() < self.timing.min_reps
            || (times.len() < self.timing.max_reps && total < self.timing.target_s * 1e3)
        {
            self.flush_count += 1;
            self.be.fill(&mut self.flush, self.flush_count as f32)?;
            let ms = self.be.time_ms(f)?;
            ensure!(ms.is_finite() && ms >= 0.0, "timer returned {ms} ms");
            total += ms;
            times.push(ms);
        }
        Ok(times)
    }

    /// Times `f` and makes the record (rates and roofline fraction filled in); the peak memory
    /// is measured over one extra untimed call.
    pub fn record(
        &mut self,
        id: String,
        variant: &str,
        flops: f64,
        bytes: f64,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Record> {
        let times = self.time(f)?;
        let mut r = Record::new(id, variant, &times, flops, bytes);
        r.set_roofline(&self.roofline);
        if self.be.memory_window_start()? {
            f()?;
            r.peak_extra_bytes = self.be.memory_window_peak()?;
        }
        Ok(r)
    }
}

/// Options of one `cada bench kernels` run.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    pub set: shapes::ShapeSet,
    /// only ids containing this substring
    pub filter: Option<String>,
    /// print each record as it is measured
    pub verbose: bool,
    /// rewrite the report here (atomically) after every record, so a run stopped by a fault
    /// or a time limit keeps what it measured
    pub save_to: Option<std::path::PathBuf>,
}

/// Collects the records of a run into its report, saving it after each one when asked.
pub struct Sink {
    pub report: Report,
    save_to: Option<std::path::PathBuf>,
    verbose: bool,
}

impl Sink {
    pub fn push(&mut self, r: Record) -> Result<()> {
        if self.verbose {
            eprintln!(
                "{:<56} {:>6} {:>10.4} ms {:>8.2} TFLOP/s {:>8.1} GB/s {:>5.1}% roof",
                r.id,
                r.variant,
                r.median_ms,
                r.tflops,
                r.gbps,
                100.0 * r.roofline_fraction
            );
        }
        self.report.records.push(r);
        match &self.save_to {
            Some(p) => self.report.save(p),
            None => Ok(()),
        }
    }
}

/// Runs every case of the set on `be` and returns the report. On an error the records
/// measured so far are already in `opts.save_to` (when set) and the error says so.
pub fn run_kernel_bench<B: BenchDevice>(be: &mut B, opts: &KernelBenchOptions) -> Result<Report> {
    let variants = be.attention_variants();
    let gemm_variants = be.gemm_variants();
    let timing = Timing::for_set(opts.set);
    let harness = Harness::new(&*be, timing.clone())?;
    let roofline = harness.roofline.clone();
    if opts.verbose {
        eprintln!(
            "roofline: copy {:.1} GB/s ({}), GEMM {:.2} TFLOP/s ({})",
            roofline.copy_gbps, roofline.copy_what, roofline.gemm_tflops, roofline.gemm_what
        );
    }
    let mut sink = Sink {
        report: Report {
            schema: report::SCHEMA,
            tool: "cada".into(),
            device: be.device_label(),
            driver: be.driver(),
            date: crate::util::utc_now_string(),
            commit: crate::util::build_commit().into(),
            set: opts.set.name().into(),
            roofline: roofline.clone(),
            records: Vec::new(),
        },
        save_to: opts.save_to.clone(),
        verbose: opts.verbose,
    };
    let partial = |e: anyhow::Error, sink: &Sink| match &opts.save_to {
        Some(p) => e.context(format!(
            "bench kernels stopped after {} records (saved in {})",
            sink.report.records.len(),
            p.display()
        )),
        None => e,
    };
    {
        let mut h = harness;
        if let Err(e) = cases::run_memory_ops(&mut h, opts, &mut sink) {
            return Err(partial(e, &sink));
        }
    }
    // a fresh harness per mode: the device is re-borrowed mutably to switch it in between
    for v in &gemm_variants {
        be.select_gemm(v)?;
        let mut h = Harness::with_roofline(&*be, timing.clone(), roofline.clone())?;
        if let Err(e) = cases::run_gemm_ops(&mut h, v, opts, &mut sink) {
            return Err(partial(e, &sink));
        }
    }
    for v in &variants {
        be.select_attention(v)?;
        let mut h = Harness::with_roofline(&*be, timing.clone(), roofline.clone())?;
        if let Err(e) = cases::run_attention(&mut h, v, opts, &mut sink) {
            return Err(partial(e, &sink));
        }
    }
    let decode_variants = be.decode_attention_variants();
    for v in &decode_variants {
        be.select_decode_attention(v)?;
        let mut h = Harness::with_roofline(&*be, timing.clone(), roofline.clone())?;
        if let Err(e) = cases::run_decode_attention(&mut h, v, opts, &mut sink) {
            return Err(partial(e, &sink));
        }
    }
    if let Some(first) = decode_variants.first() {
        be.select_decode_attention(first)?;
    }
    // back to the defaults (the first of each list)
    if let Some(first) = gemm_variants.first() {
        be.select_gemm(first)?;
    }
    if let Some(first) = variants.first() {
        be.select_attention(first)?;
    }
    // the final state also when no record matched the filter
    if let Some(p) = &opts.save_to {
        sink.report.save(p)?;
    }
    Ok(sink.report)
}

/// Resolves the device and runs the kernel bench there (`--device auto|cpu|cuda`). The set
/// defaults to `full` on a GPU and `smoke` on the CPU.
pub fn run_on_device(
    choice: crate::backend::device::DeviceChoice,
    set: Option<shapes::ShapeSet>,
    filter: Option<String>,
    save_to: Option<std::path::PathBuf>,
) -> Result<Report> {
    let device = crate::backend::device::resolve_device(choice)?;
    let opts = |default| KernelBenchOptions {
        set: set.unwrap_or(default),
        filter: filter.clone(),
        verbose: true,
        save_to: save_to.clone(),
    };
    match device {
        #[cfg(feature = "cuda")]
        crate::backend::device::DeviceChoice::Cuda => {
            let mut be = crate::backend::cuda::Cuda::new(0)?;
            run_kernel_bench(&mut be, &opts(shapes::ShapeSet::Full))
        }
        _ => {
            let mut be = crate::backend::cpu::Cpu::new();
            run_kernel_bench(&mut be, &opts(shapes::ShapeSet::Smoke))
        }
    }
}

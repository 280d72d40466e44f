//! `Backend::record` / `replay` on CUDA: a fixed sequence of ops captured into a CUDA graph
//! and relaunched as one. A rollout's decode step is 9 launches per layer (270 for SmolLM2's
//! 30 layers; 12 with one GEMM per projection weight) of small kernels; launched one by one,
//! the host's per-launch cost bounds the step. Replayed as a graph, the host pays one launch per step.
//!
//! Capture does not run the work: `record` captures, instantiates and then launches the graph
//! once, so the work has run when it returns, as on the CPU. While capturing, every op that
//! would allocate, upload from the host, read results back to it (a download, the loss's
//! metrics, sampling) or fill a cache (a weight's bf16 copy, GEMM scratch growth) refuses with
//! an error instead (`not_capturing`): such work would either be baked
//! into the graph (a host buffer that is gone at replay, graph-owned memory the next launch
//! cannot reuse) or change host state for work that never ran. A refused capture ran nothing:
//! `record` says so once on stderr and runs the work again uncaptured, so a refusal costs
//! speed, never a result. The GEMM scratch the captured GEMMs used moves into the recording,
//! so a later, larger GEMM grows a new scratch instead of freeing the one the graph reads; so
//! do the split-KV decode attention's partials.
//! cuBLAS has a workspace of its own (mod.rs, `set_blas_workspace`), so a captured GEMM adds
//! no memory nodes to the graph.

use super::gemm::Bf16Scratch;
use super::Cuda;
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::result as driver;
use cudarc::driver::sys::{
    self, CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `CADA_CUDA_GRAPHS` = `1` (default) | `0`.
pub(super) fn graphs_from_env() -> Result<bool> {
    match std::env::var("CADA_CUDA_GRAPHS") {
        Err(std::env::VarError::NotPresent) => Ok(true),
        Ok(v) if v == "1" => Ok(true),
        Ok(v) if v == "0" => Ok(false),
        Ok(v) => Err(anyhow!(
            "cuda backend: CADA_CUDA_GRAPHS={v:?}: expected `1` (record decode steps as CUDA \
             graphs, the default) or `0` (launch every op)"
        )),
        Err(e) => Err(anyhow!("cuda backend: CADA_CUDA_GRAPHS: {e}")),
    }
}

/// An instantiated CUDA graph, with what its nodes point into that `Cuda` does not own for
/// the caller: the bf16 GEMM scratch of the captured GEMMs and the split-KV decode partials.
pub struct CudaRecording {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    /// replays go on this stream only (the one captured on)
    stream: Arc<CudaStream>,
    // dropped after the graph (fields drop in order): nothing frees them while the graph exists
    _scratch: Bf16Scratch,
    _decode_partials: Option<CudaSlice<f32>>,
}

impl Drop for CudaRecording {
    fn drop(&mut self) {
        // SAFETY: both handles were created by `record_impl` and are destroyed once, here. A
        // graph still running when its exec is destroyed finishes first (the driver defers).
        unsafe {
            let _ = driver::graph::exec_destroy(self.exec);
            let _ = driver::graph::destroy(self.graph);
        }
    }
}

impl Cuda {
    /// Turns recording on or off (initially from `CADA_CUDA_GRAPHS`); off, `record` only runs
    /// the work.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    pub fn graphs(&self) -> bool {
        self.graphs
    }

    /// Launches of recorded graphs so far (the first launch `record` makes, and every
    /// `replay`): lets a caller see that its steps really ran from a recording.
    pub fn graph_launches(&self) -> u64 {
        self.graph_launches.load(Ordering::Relaxed)
    }

    /// Whether `record` is capturing now.
    pub(super) fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// An error while a graph is being captured: called by every op that would allocate,
    /// upload from the host, read results back to it or fill a cache (see the module comment).
    pub(super) fn not_capturing(&self, what: &str) -> Result<()> {
        ensure!(
            !self.capturing.load(Ordering::Relaxed),
            "cuda backend: {what} would allocate, or copy between host and device, inside a CUDA graph \
             capture"
        );
        Ok(())
    }

    pub(super) fn record_impl(
        &self,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<CudaRecording>> {
        if !self.graphs {
            work()?;
            return Ok(None);
        }
        // an error a freed buffer left on the context is a real fault, not a refusal
        self.ctx
            .bind_to_thread()
            .context("cuda backend: before recording a graph")?;
        match self.capture(work) {
            Ok(recording) => {
                self.replay_impl(&recording)
                    .context("cuda backend: first launch of a recorded graph")?;
                Ok(Some(recording))
            }
            Err(refusal) => {
                // the fallback must not run into a capture still open
                // SAFETY: a query on our live stream.
                let status = unsafe { driver::stream::is_capturing(self.stream.cu_stream()) };
                ensure!(
                    matches!(
                        status,
                        Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
                    ),
                    "cuda backend: a refused graph capture left the stream capturing ({status:?}) \
                     after: {refusal:#}"
                );
                // an error the ops also give uncaptured is theirs, not the capture's
                work()?;
                if !self.graph_refusal_reported.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "cuda backend: warning: recording a CUDA graph failed ({refusal:#}); \
                         running those ops one launch at a time"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Captures `work` on the stream. Whatever happens inside, the capture is ended (through
    /// the driver directly: cudarc's `end_capture` returns early on an error a buffer's drop
    /// recorded, which would leave the stream capturing) before returning.
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<CudaRecording> {
        let stream = self.stream.cu_stream();
        // Thread-local: only this thread's calls are checked for capture-unsafe operations.
        // SAFETY: our live stream; the context is current (bound above).
        unsafe {
            driver::stream::begin_capture(
                stream,
                CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .context("begin capture")?;
        self.capturing.store(true, Ordering::Relaxed);
        let captured = work();
        self.capturing.store(false, Ordering::Relaxed);
        // SAFETY: ends the capture begun above on the same stream.
        let ended = unsafe { driver::stream::end_capture(stream) };
        let graph = match (captured, ended) {
            (Ok(()), Ok(graph)) if !graph.is_null() => graph,
            (captured, ended) => {
                if let Ok(graph) = ended {
                    if !graph.is_null() {
                        // SAFETY: the graph just returned by end_capture, not used again.
                        let _ = unsafe { driver::graph::destroy(graph) };
                    }
                }
                captured.context("an op during capture")?;
                ended.context("end capture")?;
                anyhow::bail!("the capture recorded no graph");
            }
        };
        // SAFETY: `graph` is the valid graph returned above.
        let exec = match unsafe { driver::graph::instantiate(graph, CUgraphInstantiate_flags(0)) } {
            Ok(exec) => exec,
            Err(e) => {
                // SAFETY: as above.
                let _ = unsafe { driver::graph::destroy(graph) };
                return Err(e).context("instantiate the captured graph");
            }
        };
        // the scratch the captured GEMMs read and wrote now belongs to the recording
        let scratch = std::mem::take(
            &mut *self
                .bf16_scratch
                .lock()
                .map_err(|_| anyhow!("cuda backend: GEMM scratch lock poisoned"))?,
        );
        // and so do the split-KV decode attention's partials
        let decode_partials = self.take_decode_partials()?;
        Ok(CudaRecording {
            graph,
            exec,
            stream: self.stream.clone(),
            _scratch: scratch,
            _decode_partials: decode_partials,
        })
    }

    pub(super) fn replay_impl(&self, recording: &CudaRecording) -> Result<()> {
        ensure!(
            Arc::ptr_eq(&recording.stream, &self.stream),
            "cuda backend: a recording replayed on another Cuda than the one that recorded it"
        );
        self.not_capturing("replaying a recording")?;
        // the one driver call that goes through no cudarc method (which would bind the context)
        self.ctx
            .bind_to_thread()
            .context("cuda backend: binding the context to replay a recording")?;
        // SAFETY: the exec is alive (owned by `recording`); our live stream.
        unsafe { driver::graph::launch(recording.exec, self.stream.cu_stream()) }
            .context("cuda backend: launching a recorded graph")?;
        self.graph_launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

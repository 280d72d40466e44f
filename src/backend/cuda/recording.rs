//! `Backend::record` / `replay` on CUDA: a fixed sequence of ops captured into a CUDA graph
//! and relaunched as one. A rollout's decode step is ~15 launches per layer (450 for
//! SmolLM2's 30 layers) of small kernels; launched one by one, the host's per-launch cost
//! bounds the step. Replayed as a graph, the host pays one launch per step.
//!
//! Capture does not run the work: `record` captures, instantiates and then launches the graph
//! once, so the work has run when it returns, as on the CPU. If the driver refuses the capture
//! (an op that synchronises or allocates synchronously, a device without stream-ordered
//! allocation), nothing of the captured work ran: `record` says so once on stderr and runs
//! `work` again uncaptured, so a refusal costs speed, never a result.

use super::Cuda;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use std::sync::atomic::Ordering;

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

impl Cuda {
    /// Turns recording on or off (initially from `CADA_CUDA_GRAPHS`); off, `record` only runs
    /// the work.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    pub fn graphs(&self) -> bool {
        self.graphs
    }

    pub(super) fn record_impl(
        &self,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<CudaGraph>> {
        if !self.graphs {
            work()?;
            return Ok(None);
        }
        match self.capture(work) {
            Ok(graph) => {
                graph
                    .launch()
                    .context("cuda backend: first launch of a recorded graph")?;
                Ok(Some(graph))
            }
            Err(refusal) => {
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

    /// Captures `work` on the stream. Whatever happens inside, the capture is ended before
    /// returning, so the stream is usable again.
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<CudaGraph> {
        // Thread-local: only this thread's calls are checked for capture-unsafe operations.
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("begin capture")?;
        let captured = work();
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        captured.context("an op during capture")?;
        ended
            .context("end capture / instantiate")?
            .ok_or_else(|| anyhow!("the capture recorded no graph"))
    }

    pub(super) fn replay_impl(&self, graph: &CudaGraph) -> Result<()> {
        graph
            .launch()
            .context("cuda backend: launching a recorded graph")
    }
}

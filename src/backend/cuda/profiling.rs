//! Device-side measurement primitives for the bench harness (`src/bench/cuda.rs`) and the
//! training logs: CUDA-event timing, the memory pool's high-water mark, the bf16 cuBLAS GEMM
//! rate and the driver version.

use super::Cuda;
use anyhow::{anyhow, Context, Result};
use cudarc::cublas::{sys as cublas_sys, Gemm, GemmConfig};
use cudarc::driver::{result as dr, sys};

impl Cuda {
    /// Milliseconds between two events recorded around the work `f` enqueues on the stream.
    pub fn time_enqueued_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(flags)
            .context("cuda backend: recording the start event")?;
        f()?;
        let end = self
            .stream
            .record_event(flags)
            .context("cuda backend: recording the end event")?;
        // elapsed_ms synchronises both events: a kernel fault surfaces here
        let ms = start
            .elapsed_ms(&end)
            .context("cuda backend: event timing (a kernel failed)")?;
        Ok(ms as f64)
    }

    fn mem_pool(&self) -> Result<sys::CUmemoryPool> {
        // SAFETY: the device handle comes from the live context.
        unsafe { dr::device::get_default_mem_pool(self.ctx.cu_device()) }
            .context("cuda backend: the device's default memory pool")
    }

    fn pool_attribute(&self, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let pool = self.mem_pool()?;
        let mut value: u64 = 0;
        // SAFETY: the USED_MEM_* attributes are cuuint64_t.
        unsafe { dr::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast()) }
            .context("cuda backend: reading a memory pool attribute")?;
        Ok(value)
    }

    /// Bytes allocated from the stream-ordered pool right now (cudarc allocates every buffer
    /// there when the device supports it, which every sm_80+ GPU does).
    pub fn pool_used_bytes(&self) -> Result<u64> {
        self.pool_attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    /// The pool's high-water mark since it was last reset.
    pub fn pool_high_water_bytes(&self) -> Result<u64> {
        self.pool_attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// The most memory CUDA graphs have held at once on this device (graph memory nodes: a
    /// `cudaMallocAsync` inside a capture). The decode step's recording should hold none: every
    /// allocation refuses inside a capture and cuBLAS has its own workspace.
    pub fn graph_memory_high_bytes(&self) -> Result<u64> {
        let mut value: u64 = 0;
        // SAFETY: USED_MEM_HIGH is a cuuint64_t; the device handle comes from the live context.
        let status = unsafe {
            sys::cuDeviceGetGraphMemAttribute(
                self.ctx.cu_device(),
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
                (&mut value as *mut u64).cast(),
            )
        };
        status
            .result()
            .context("cuda backend: reading the graph memory high-water mark")?;
        Ok(value)
    }

    /// Restarts the high-water mark from the current use (after the queued work finished).
    pub fn reset_pool_high_water(&self) -> Result<()> {
        self.synchronize()?;
        let pool = self.mem_pool()?;
        let mut zero: u64 = 0;
        // SAFETY: USED_MEM_HIGH can only be reset, to zero, as a cuuint64_t.
        unsafe {
            dr::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        }
        .context("cuda backend: resetting the memory pool's high-water mark")
    }

    /// The rate of an `n³` bf16 GEMM through cuBLAS (f32 accumulation), median of `reps`
    /// event-timed calls after warm-up, in TFLOP/s.
    pub fn bf16_gemm_tflops(&self, n: usize, reps: usize) -> Result<f64> {
        // random operands: a GEMM on zeros runs faster than on real data (METHOD.md)
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let host: Vec<half::bf16> = (0..n * n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                half::bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect();
        let a = self
            .stream
            .clone_htod(&host)
            .context("cuda backend: GEMM roofline buffers")?;
        let b = self
            .stream
            .clone_htod(&host[..])
            .context("cuda backend: GEMM roofline buffers")?;
        let mut c = self
            .stream
            .alloc_zeros::<half::bf16>(n * n)
            .context("cuda backend: GEMM roofline buffers")?;
        let ni = super::dim_i32(n, "GEMM roofline size")?;
        let cfg = GemmConfig {
            transa: cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: ni,
            n: ni,
            k: ni,
            alpha: half::bf16::ONE,
            lda: ni,
            ldb: ni,
            beta: half::bf16::ZERO,
            ldc: ni,
        };
        let mut run = || -> Result<()> {
            // SAFETY: three n×n buffers, leading dimension n.
            unsafe { self.blas.gemm(cfg, &a, &b, &mut c) }
                .map_err(|e| anyhow!("cuda backend: cuBLAS bf16 GEMM: {e:?}"))
        };
        for _ in 0..3 {
            run()?;
        }
        let mut times = Vec::new();
        for _ in 0..reps.max(1) {
            times.push(self.time_enqueued_ms(&mut run)?);
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2]; // the median
        Ok(2.0 * (n as f64).powi(3) / (ms / 1e3) / 1e12)
    }

    /// `major.minor` of the installed driver's CUDA version.
    pub fn driver_version(&self) -> String {
        let mut v: i32 = 0;
        // SAFETY: writes one int.
        match unsafe { sys::cuDriverGetVersion(&mut v) }.result() {
            Ok(()) => format!("CUDA {}.{}", v / 1000, (v % 1000) / 10),
            Err(e) => format!("unknown ({e:?})"),
        }
    }
}

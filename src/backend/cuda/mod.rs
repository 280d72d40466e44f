//! The CUDA backend: the kernels of `kernels/*.cu` (compiled by build.rs into PTX for
//! `compute_80` and a cubin for `sm_90a`, embedded in the binary) driven through cudarc 0.19,
//! plus cuBLAS for the GEMMs.
//!
//! Precision: buffers ([`CudaBuf`]) hold f32 values, the master copy: weights, optimiser state,
//! activations and gradients. GEMMs run in plain f32 (`CUBLAS_DEFAULT_MATH`, results
//! match the CPU to ~1e-6) unless `set_gemm_precision` (or `CADA_GEMM`) picks TF32 tensor cores
//! (~3e-4 relative in a host emulation of the tests) or bf16 tensor cores (f32 output and
//! accumulation, ~2e-3 emulated; see `gemm.rs`). In bf16 mode a weight is read through a bf16
//! working copy cached on its buffer, converted once per optimiser step, and the saved
//! activations read only in bf16 (the GEMM inputs: normed hidden states and SwiGLU output;
//! SwiGLU's gate/up; the attention output) are stored in bf16 alone (`buffer.rs`); other GEMM
//! operands are converted per GEMM. The kernels compute in f32 (attention's softmax
//! statistics, RMSNorm, log-sum-exp) and accumulate reductions in f32 or f64 as documented in
//! kernels/README.md. The exception, when selected with `set_attention_kernel` (or
//! `CADA_ATTENTION=mma`), is the tensor-core attention of kernels/attention_mma.cu: bf16
//! operands (q, k, v, dO converted once and cached on their buffers; the model keeps its saved
//! q, k, v in bf16 alone, `keep_as_attention_input`), f32 accumulation and softmax statistics,
//! ~1e-2 relative. Neither tensor-core mode has run on a GPU yet; the mma attention runs in CI
//! in a host emulation (kernels/emulation/).
//!
//! One stream per `Cuda`; every op is enqueued on it, so ops run in call order. Downloads and
//! scalar results synchronise the stream.

mod attention;
mod attention_mma;
mod backend_impl;
mod buffer;
mod dense;
mod gemm;
mod grpo_loss;
mod head;
mod profiling;

use anyhow::{anyhow, ensure, Context, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use buffer::CudaBuf;
pub use gemm::GemmPrecision;

/// One kernel file compiled by build.rs.
pub struct KernelModule {
    pub name: &'static str,
    /// PTX for `compute_80` (JIT-compiled by the driver on any Ampere-or-newer GPU)
    pub ptx: &'static str,
    /// native code for H100/H200 (`sm_90a`), loaded without JIT
    pub cubin_sm90a: &'static [u8],
}

// Defines `KERNELS_BUILT` and `KERNEL_MODULES` (empty when nvcc was missing at build time).
include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));

/// Threads per block of the 1-D elementwise kernels (`CADA_BLOCK` in kernels/common.cuh).
const BLOCK: u32 = 256;

/// True when the CUDA driver library can be loaded and reports at least one device.
/// Never panics: cudarc's dynamic loader panics when libcuda is missing, so the library is
/// probed first and the rest runs under `catch_unwind`.
pub fn cuda_available() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    std::panic::catch_unwind(|| matches!(CudaContext::device_count(), Ok(n) if n > 0))
        .unwrap_or(false)
}

/// Which kernels run the training attention (`attention_forward` / `attention_backward`).
/// Both write the same `lse` layout, so a forward from one and a backward from the other agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// kernels/attention.cu: f32 on CUDA cores (tracks the CPU to ~1e-5)
    Simt,
    /// kernels/attention_mma.cu: bf16 tensor cores, f32 accumulation (~1e-2 relative)
    Mma,
}

impl AttentionKernel {
    /// `CADA_ATTENTION` = `simt` | `mma`; unset means `simt`, since neither has yet run on a GPU
    /// and the f32 kernel is the one that matches the CPU to f32 rounding.
    pub fn from_env() -> Result<AttentionKernel> {
        match std::env::var("CADA_ATTENTION") {
            Err(std::env::VarError::NotPresent) => AttentionKernel::parse(None),
            Ok(v) => AttentionKernel::parse(Some(&v)),
            Err(e) => Err(anyhow!("cuda backend: CADA_ATTENTION: {e}")),
        }
    }

    /// The value of `CADA_ATTENTION`, if set.
    pub fn parse(value: Option<&str>) -> Result<AttentionKernel> {
        match value {
            None | Some("simt") => Ok(AttentionKernel::Simt),
            Some("mma") => Ok(AttentionKernel::Mma),
            Some(v) => Err(anyhow!(
                "cuda backend: CADA_ATTENTION={v:?}: expected `simt` or `mma`"
            )),
        }
    }
}

pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    gemm_precision: GemmPrecision,
    /// bf16 copies of the operands in `GemmPrecision::Bf16` (see `gemm.rs`)
    bf16_scratch: Mutex<gemm::Bf16Scratch>,
    attention: AttentionKernel,
    /// the last-block ticket of `grpo_loss_fused` (0 between calls: the last block wraps it)
    grpo_ticket: Mutex<Option<CudaSlice<u32>>>,
    /// whether `keep_as_gemm_input` narrows activations to bf16 in Bf16 mode (see gemm.rs)
    narrow_inputs: bool,
}

impl Cuda {
    /// Opens device `ordinal`, loads every kernel module and creates the cuBLAS handle.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let attention = AttentionKernel::from_env()?;
        let gemm_precision = GemmPrecision::from_env()?;
        ensure!(
            KERNELS_BUILT,
            "cuda backend: this binary was built with the `cuda` feature but without nvcc, so it \
             holds no kernels; run scripts/install_nvcc.sh (or set NVCC / CUDA_HOME) and rebuild"
        );
        ensure!(
            cuda_available(),
            "cuda backend: no CUDA driver (libcuda) or no GPU on this machine"
        );
        let count = CudaContext::device_count().context("cuda backend: counting devices")?;
        ensure!(
            (ordinal as i64) < count as i64,
            "cuda backend: device {ordinal} requested, {count} present"
        );
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("cuda backend: opening device {ordinal}"))?;
        let stream = ctx.default_stream();
        // cudarc's loader panics when libcublas is missing: probe it first for a clear error
        // SAFETY: only tries to dlopen libcublas by its usual names.
        ensure!(
            unsafe { cudarc::cublas::sys::is_culib_present() },
            "cuda backend: libcublas (CUDA 13) not found on the library path; add the folder \
             holding libcublas.so.13 (e.g. a pip nvidia-cublas package's nvidia/cu13/lib) to \
             LD_LIBRARY_PATH"
        );
        let blas = CudaBlas::new(stream.clone()).context("cuda backend: creating cuBLAS handle")?;
        // the loader also accepts older sonames (libcublas.so.12): the bindings are CUDA 13's
        let mut major = 0i32;
        // SAFETY: writes one int; the library is loaded (the handle exists).
        let status = unsafe {
            cudarc::cublas::sys::cublasGetProperty(
                cudarc::cublas::sys::libraryPropertyType_t::MAJOR_VERSION,
                &mut major,
            )
        };
        ensure!(
            status == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && major >= 13,
            "cuda backend: the libcublas on the library path is major version {major} (status \
             {status:?}); this build's bindings are CUDA 13's: put libcublas.so.13 first on \
             LD_LIBRARY_PATH"
        );
        // an optimisation only: a device without memory pools still works, more slowly
        if let Err(e) = keep_pool_memory(&ctx) {
            eprintln!("cuda backend: warning: {e:#}; freed memory goes back to the driver");
        }
        let cc = ctx
            .compute_capability()
            .context("cuda backend: reading the compute capability")?;
        ensure!(
            cc.0 >= 8,
            "cuda backend: device {ordinal} has compute capability {}.{}, the kernels need 8.0+",
            cc.0,
            cc.1
        );
        let mut functions = HashMap::new();
        for module in KERNEL_MODULES {
            // The sm_90a cubin runs only on 9.0 devices; anything else JIT-compiles the PTX.
            let image = if cc == (9, 0) {
                Ptx::from_binary(module.cubin_sm90a.to_vec())
            } else {
                Ptx::from_src(module.ptx)
            };
            let loaded = ctx
                .load_module(image)
                .with_context(|| format!("cuda backend: loading kernels/{}.cu", module.name))?;
            let names = kernel_names(module.name);
            ensure!(
                !names.is_empty(),
                "cuda backend: kernels/{}.cu is compiled in but kernel_names() lists none of \
                 its kernels",
                module.name
            );
            for &name in names {
                let f = loaded.load_function(name).with_context(|| {
                    format!(
                        "cuda backend: kernel `{name}` missing from kernels/{}.cu",
                        module.name
                    )
                })?;
                functions.insert(name, f);
            }
        }
        let cuda = Cuda {
            ctx,
            stream,
            blas,
            functions,
            gemm_precision,
            bf16_scratch: Mutex::new(gemm::Bf16Scratch::default()),
            attention,
            grpo_ticket: Mutex::new(None),
            narrow_inputs: true,
        };
        cuda.apply_math_mode()?;
        // the mma attention needs it; the f32 default does not, so a refusal only warns (an mma
        // launch would then fail with the driver's error)
        if let Err(e) = cuda.opt_in_mma_shared_memory() {
            eprintln!(
                "cuda backend: warning: {e:#}; CADA_ATTENTION=mma cannot run those kernels' \
                 head widths here"
            );
        }
        Ok(cuda)
    }

    /// Selects the training-attention kernels (initially from `CADA_ATTENTION`).
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.attention = kernel;
    }

    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention
    }

    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().context("cuda backend: device name")
    }

    /// Waits for every queued op; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("cuda backend: stream synchronize (a kernel failed)")
    }

    fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| anyhow!("cuda backend: kernel `{name}` not loaded"))
    }

    fn alloc_f64(&self, len: usize) -> Result<CudaSlice<f64>> {
        self.stream
            .alloc_zeros::<f64>(len.max(1))
            .context("cuda backend: allocating scratch")
    }

    /// A zero-length buffer. Not cudarc's `stream.null()`: that asks the driver for 0 bytes,
    /// which `cuMemAlloc` documents as CUDA_ERROR_INVALID_VALUE (cudarc issue #194). Instead a
    /// 1-element allocation is wrapped with length 0; dropping the slice frees it.
    fn empty<T: cudarc::driver::DeviceRepr>(&self) -> Result<CudaSlice<T>> {
        // SAFETY: nothing reads the element: the slice has length 0.
        let one = unsafe { self.stream.alloc::<T>(1) }
            .context("cuda backend: allocating an empty buffer")?;
        let ptr = one.leak();
        // SAFETY: `ptr` was allocated on this stream's context for at least 0 elements of T, and
        // its ownership passes to the new slice (freed on drop).
        Ok(unsafe { self.stream.upgrade_device_ptr(ptr, 0) })
    }

    fn alloc_u32(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.stream
            .alloc_zeros::<u32>(len.max(1))
            .context("cuda backend: allocating scratch")
    }
}

/// Tells the device's memory pool to keep freed memory instead of handing it back to the
/// driver at every synchronisation (the default threshold is 0): temporaries allocated inside
/// each op (the head's logit chunk, attention's δ, reduction partials) are then reused rather
/// than mapped again on every call.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::{result as dr, sys};
    // SAFETY: the device handle comes from the live context; the attribute is a cuuint64_t.
    unsafe {
        let pool = dr::device::get_default_mem_pool(ctx.cu_device())
            .context("cuda backend: the device's default memory pool")?;
        let mut keep = u64::MAX;
        dr::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .context("cuda backend: setting the memory pool's release threshold")
    }
}

/// Kernel names per module (they are `extern "C"` in the .cu files).
fn kernel_names(module: &str) -> &'static [&'static str] {
    match module {
        "adamw" => &["adamw_step"],
        "attention" => &[
            "attention_forward",
            "attention_backward_delta",
            "attention_backward_delta_bf16",
            "attention_backward_dq",
            "attention_backward_dkv",
        ],
        "attention_mma" => &[
            "attention_mma_forward_hd64",
            "attention_mma_forward_hd128",
            "attention_mma_backward_dq_hd64",
            "attention_mma_backward_dq_hd128",
            "attention_mma_backward_dkv_hd64",
            "attention_mma_backward_dkv_hd128",
        ],
        "convert" => &["f32_to_bf16"],
        "decode_attention" => &["kv_cache_write", "decode_attention"],
        "elementwise" => &[
            "fill_f32",
            "add_assign_f32",
            "scale_f32",
            "sum_squares_partial",
            "any_nonfinite",
            "add_bias_rows",
            "bias_grad_cols",
        ],
        "embedding" => &["embedding_forward", "embedding_backward"],
        "fused_logprob" => &[
            "logprob_state_init",
            "logprob_chunk_update",
            "logprob_finish",
            "logprob_chunk_grad",
        ],
        "grpo_loss" => &[
            "grpo_loss_forward",
            "grpo_mask_count",
            "grpo_loss_backward",
            "grpo_loss_fused",
            "grpo_advantages",
        ],
        "rmsnorm" => &[
            "rmsnorm_forward",
            "rmsnorm_backward_input",
            "rmsnorm_backward_weight",
        ],
        "rope" => &["rope_apply"],
        "sampling" => &["sample_rows"],
        "swiglu" => &["swiglu_forward", "swiglu_backward", "swiglu_backward_bf16"],
        _ => &[],
    }
}

/// Kernel dimension arguments are 32-bit: larger values are a caller error, reported.
fn dim_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("cuda backend: {what} = {v} exceeds the i32 range"))
}

/// Checks that a device buffer holds at least `need` values.
fn need<T>(buf: &CudaSlice<T>, need: usize, what: &str) -> Result<()> {
    ensure!(
        buf.len() >= need,
        "cuda backend: `{what}` holds {} values, the op needs {need}",
        buf.len()
    );
    Ok(())
}

/// Grid for a grid-stride loop over `n` elements (the kernels loop, so the grid is capped).
fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row; rows go on grid.x (limit 2^31 − 1).
fn grid_rows(rows: usize, threads: u32) -> Result<LaunchConfig> {
    ensure!(
        rows < i32::MAX as usize,
        "cuda backend: {rows} rows exceed one launch"
    );
    Ok(LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Threads for a one-block-per-row kernel whose row has `width` elements.
fn row_threads(width: usize) -> u32 {
    (width.next_multiple_of(32)).clamp(32, 1024) as u32
}

/// Grid for the column-parallel weight/bias gradient kernels: `cols` threads across
/// blockIdx.x, rows split into slices of `rows_per_slice` across blockIdx.y.
fn grid_cols(cols: usize, rows: usize) -> (LaunchConfig, i64) {
    let rows_per_slice = 256usize;
    let slices = rows.div_ceil(rows_per_slice).clamp(1, 65535);
    let rows_per_slice = rows.div_ceil(slices).max(1);
    let cfg = LaunchConfig {
        grid_dim: (
            (cols.div_ceil(BLOCK as usize)).max(1) as u32,
            slices as u32,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, rows_per_slice as i64)
}

/// Maps a driver error into anyhow with the op's name.
macro_rules! launch {
    ($cuda:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $cuda.function($name)?;
        let mut builder = $cuda.stream.launch_builder(f);
        $( builder.arg($arg); )+
        // SAFETY: argument types and order follow the kernel's signature in kernels/*.cu and
        // the callers check that every buffer covers the shapes the kernel indexes.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err(|e| ::anyhow::anyhow!("cuda backend: launching `{}`: {e:?}", $name))
    }};
}
pub(crate) use launch;

/// Rejects id buffers shorter than `n` (values are checked on the device side by bounds
/// the caller guarantees: the model only feeds ids below the vocabulary).
fn need_ids(ids: &CudaSlice<u32>, n: usize, what: &str) -> Result<()> {
    ensure!(
        ids.len() >= n,
        "cuda backend: `{what}` holds {} ids, the op needs {n}",
        ids.len()
    );
    Ok(())
}

//! The GEMM helper behind the linear layers (`dense.rs`) and the log-prob head's chunks
//! (`head.rs`), in three precisions chosen by [`GemmPrecision`].
//!
//! Bf16 mode keeps the f32 buffers as the interface and the master copy, and calls
//! `cublasGemmEx` with bf16 A/B, an f32 C and f32 compute, so outputs and `beta = 1` gradient
//! accumulations stay f32. Where the bf16 operands come from:
//! - **weights** (a linear layer's `w`, the head's `w`): the buffer's own cached bf16 copy
//!   ([`CudaBuf`], made on first use, dropped by the next write: the optimiser step), so a
//!   weight is converted once per update, not once per GEMM. See `buffer.rs` for why the copy
//!   cannot go stale.
//! - **activations and gradients**: converted into scratch in each GEMM (kernels/convert.cu,
//!   round to nearest even), or once per call where a caller reuses one operand in several
//!   GEMMs ([`Cuda::bf16_copy`]). The price is one memory-bound pass per operand (read 4 +
//!   write 2 bytes per element): against a compute-bound `[M × K]·[K × N]` GEMM at F flop/s
//!   and B bytes/s, converting the `[M × K]` operand costs ≈ 3·(F/B)/N of the GEMM's time, with
//!   F/B ≈ 200–300 on H100/H200 bf16 dense (an estimate, not measured).

use super::kernels;
use super::{dim_i32, grid_1d, Cuda, CudaBuf};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::cublas::{result as cublas_result, sys as cublas_sys, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use std::ffi::c_void;

/// How the GEMMs (linear layers, the log-prob head's chunks) multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPrecision {
    /// cuBLAS sgemm in `CUBLAS_DEFAULT_MATH`: true f32, tracks the CPU to ~1e-6
    F32,
    /// sgemm in `CUBLAS_TF32_TENSOR_OP_MATH`: inputs rounded to 10-bit mantissas, f32 accumulate
    Tf32,
    /// operands converted to bf16 (8-bit mantissas), `cublasGemmEx` with f32 output/accumulate
    Bf16,
}

impl GemmPrecision {
    /// `CADA_GEMM` = `f32` | `tf32` | `bf16`; unset means `f32`, since the tensor-core modes have
    /// not run on a GPU yet and f32 is the one that matches the CPU to f32 rounding.
    pub fn from_env() -> Result<GemmPrecision> {
        match std::env::var("CADA_GEMM") {
            Err(std::env::VarError::NotPresent) => GemmPrecision::parse(None),
            Ok(v) => GemmPrecision::parse(Some(&v)),
            Err(e) => Err(anyhow!("cuda backend: CADA_GEMM: {e}")),
        }
    }

    /// The value of `CADA_GEMM`, if set.
    pub fn parse(value: Option<&str>) -> Result<GemmPrecision> {
        match value {
            None | Some("f32") => Ok(GemmPrecision::F32),
            Some("tf32") => Ok(GemmPrecision::Tf32),
            Some("bf16") => Ok(GemmPrecision::Bf16),
            Some(v) => Err(anyhow!(
                "cuda backend: CADA_GEMM={v:?}: expected `f32`, `tf32` or `bf16`"
            )),
        }
    }

    /// For `Backend::name()`.
    pub fn label(self) -> &'static str {
        match self {
            GemmPrecision::F32 => "f32 gemm",
            GemmPrecision::Tf32 => "tf32 gemm",
            GemmPrecision::Bf16 => "bf16 gemm",
        }
    }

    /// The handle's math mode. Bf16 needs no opt-in (default math lets GemmEx use tensor cores
    /// for 16-bit inputs) and must not be TF32, which would also change the f32 fallback path.
    fn math_mode(self) -> cublas_sys::cublasMath_t {
        match self {
            GemmPrecision::Tf32 => cublas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            GemmPrecision::F32 | GemmPrecision::Bf16 => {
                cublas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
            }
        }
    }
}

/// Grow-only bf16 copies of a Bf16 GEMM's two operands, cached in `Cuda` behind a mutex.
/// Cached rather than allocated per call: a training step runs hundreds of GEMMs, and the
/// default memory pool returns freed memory to the driver at every synchronisation, so
/// per-call buffers would mean repeated real allocations. Reuse is safe without events because
/// every op is on the one stream (a later conversion cannot overtake the GEMM reading the
/// previous one); the mutex keeps `Cuda` `Sync` and holds across convert + GEMM so that two
/// host threads cannot interleave their conversions into the same scratch.
#[derive(Default)]
pub(super) struct Bf16Scratch {
    a: Option<CudaSlice<bf16>>,
    b: Option<CudaSlice<bf16>>,
}

/// An operand's bf16 copy for [`Cuda::gemm_pre`]: the operand starts `offset` elements into
/// `copy`, in the same layout as the f32 operand (a weight chunk of the head is a row range of
/// the whole weight's copy).
#[derive(Clone, Copy)]
pub(super) struct Bf16Operand<'a> {
    pub copy: &'a CudaSlice<bf16>,
    pub offset: usize,
}

impl<'a> Bf16Operand<'a> {
    /// The whole of `copy`, when there is one.
    pub fn whole(copy: Option<&'a CudaSlice<bf16>>) -> Option<Bf16Operand<'a>> {
        copy.map(|copy| Bf16Operand { copy, offset: 0 })
    }
}

/// Elements a row-major `rows × cols` operand with row stride `ld` spans, from its first
/// element to its last (the gaps between rows included when `ld > cols`).
fn span((rows, cols): (usize, usize), ld: usize, what: &str) -> Result<usize> {
    ensure!(
        ld >= cols,
        "cuda backend: gemm {what}: row stride {ld} < {cols} columns"
    );
    Ok(if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    })
}

fn blas_op(transpose: bool) -> cublas_sys::cublasOperation_t {
    if transpose {
        cublas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        cublas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

impl Cuda {
    /// Selects how the GEMMs multiply (initially from `CADA_GEMM`).
    pub fn set_gemm_precision(&mut self, precision: GemmPrecision) -> Result<()> {
        self.gemm_precision = precision;
        self.apply_math_mode()
    }

    pub fn gemm_precision(&self) -> GemmPrecision {
        self.gemm_precision
    }

    /// TF32 tensor cores on or off: `set_gemm_precision(Tf32)` or `(F32)`.
    pub fn set_tf32(&mut self, on: bool) -> Result<()> {
        self.set_gemm_precision(if on {
            GemmPrecision::Tf32
        } else {
            GemmPrecision::F32
        })
    }

    pub(super) fn apply_math_mode(&self) -> Result<()> {
        // SAFETY: the handle is alive for as long as `self.blas`.
        let status = unsafe {
            cublas_sys::cublasSetMathMode(*self.blas.handle(), self.gemm_precision.math_mode())
        };
        status
            .result()
            .map_err(|e| anyhow!("cuda backend: cublasSetMathMode: {e:?}"))
    }

    /// An uninitialised bf16 buffer of `len` values (Bf16 mode only; `None` otherwise): the
    /// head's chunk gradient, which `logprob_chunk_grad_bf16` writes before a GEMM reads it.
    pub(super) fn bf16_buffer(&self, len: usize) -> Result<Option<CudaSlice<bf16>>> {
        if self.gemm_precision != GemmPrecision::Bf16 {
            return Ok(None);
        }
        self.not_capturing("a bf16 operand buffer")?;
        // SAFETY: every use writes the buffer before a GEMM reads it.
        let buf = unsafe { self.stream.alloc::<bf16>(len.max(1)) }
            .with_context(|| format!("cuda backend: allocating {len} bf16 for an operand copy"))?;
        Ok(Some(buf))
    }

    /// The bf16 copy of a weight in Bf16 mode (`None` otherwise): the buffer's cached copy, made
    /// here on first use (see `buffer.rs`).
    pub(super) fn weight_bf16<'w>(&self, w: &'w CudaBuf) -> Result<Option<&'w CudaSlice<bf16>>> {
        if self.gemm_precision != GemmPrecision::Bf16 {
            return Ok(None);
        }
        if let Some(copy) = w.bf16_cached() {
            return Ok(Some(copy));
        }
        let copy = self.bf16_copy(w)?.expect("Bf16 mode checked above");
        Ok(Some(w.cache_bf16(copy)))
    }

    /// In Bf16 mode, the bf16 copy an op writes beside its f32 output (`*_with_bf16` kernels:
    /// RMSNorm, add + RMSNorm, SwiGLU), taken out of `out` for the launch: its old copy when the
    /// size fits (a reused buffer: the decode step, whose recording must not allocate), else a
    /// new one. `None` outside Bf16 mode, or when the op writes fewer than all `out.len()`
    /// values (`written`). [`Cuda::write_with_bf16_copy`] launches, then caches it.
    fn bf16_output_copy(
        &self,
        out: &mut CudaBuf,
        written: usize,
    ) -> Result<Option<CudaSlice<bf16>>> {
        if self.gemm_precision != GemmPrecision::Bf16 || out.is_empty() || out.len() != written {
            // a partial write would leave the copy's tail unwritten: no copy (the launch drops
            // any old one)
            return Ok(None);
        }
        if out.bf16_cached().is_none_or(|c| c.len() != out.len()) {
            // checked before the old copy is dropped: no free inside a capture either
            self.not_capturing("a bf16 output copy")?;
        }
        match out.take_bf16() {
            Some(copy) if copy.len() == out.len() => Ok(Some(copy)),
            _ => {
                // SAFETY: the `_with_bf16` kernel writes every element before anything reads it.
                let copy = unsafe { self.stream.alloc::<bf16>(out.len()) }.with_context(|| {
                    format!(
                        "cuda backend: allocating {} bf16 for an output copy",
                        out.len()
                    )
                })?;
                Ok(Some(copy))
            }
        }
    }

    /// Runs `launch`, the op writing `written` values of `out`, with the bf16 copy to write
    /// beside them (`Some` in Bf16 mode: the op's `_with_bf16` kernel) and caches that copy on
    /// `out` afterwards; `None`: the plain kernel.
    pub(super) fn write_with_bf16_copy(
        &self,
        out: &mut CudaBuf,
        written: usize,
        launch: impl FnOnce(&mut CudaBuf, Option<&mut CudaSlice<bf16>>) -> Result<()>,
    ) -> Result<()> {
        match self.bf16_output_copy(out, written)? {
            None => launch(out, None),
            Some(mut copy) => {
                let launched = launch(out, Some(&mut copy));
                // a failed launch inside a graph capture keeps the copy (dropping it would free
                // device memory, which the capture refuses with an error that hides the
                // launch's); the capture is then abandoned and the work re-run, rewriting both
                if launched.is_ok() || self.is_capturing() {
                    out.cache_bf16(copy);
                }
                launched
            }
        }
    }

    /// A GEMM input's bf16 values in Bf16 mode when it has them already: narrowed (its only
    /// values) or a cached copy (made by the op that wrote it, or an earlier conversion; a
    /// write drops it, so it always matches the f32 values). `None`: convert as usual.
    pub(super) fn input_bf16<'b>(
        &self,
        x: &'b CudaBuf,
        what: &str,
    ) -> Result<Option<&'b CudaSlice<bf16>>> {
        if let Some(copy) = self.narrowed_operand(x, what)? {
            return Ok(Some(copy));
        }
        Ok(if self.gemm_precision == GemmPrecision::Bf16 {
            x.bf16_cached()
        } else {
            None
        })
    }

    /// `keep_as_gemm_input`: in Bf16 mode, keeps only the buffer's bf16 copy (converted now) and
    /// frees its f32 values; other modes keep the f32 values (their GEMMs read f32), as does a
    /// `Cuda` with `set_narrow_saved_inputs(false)`.
    pub(super) fn narrow_to_bf16(&self, buf: &mut CudaBuf) -> Result<()> {
        if !self.narrow_inputs
            || self.gemm_precision != GemmPrecision::Bf16
            || buf.is_narrowed()
            || buf.is_empty()
        {
            return Ok(());
        }
        self.narrow_now(buf, "gemm input")
    }

    /// Keeps only `buf`'s bf16 copy (the cached one, else converted now) and frees its f32
    /// values: the step shared by every `Backend::keep_as_*` hint once it has decided to narrow.
    pub(super) fn narrow_now(&self, buf: &mut CudaBuf, what: &str) -> Result<()> {
        let copy = match buf.take_bf16() {
            Some(copy) => copy,
            None => self.to_bf16(buf, what)?,
        };
        let empty = self.empty()?;
        buf.narrow(empty, copy);
        Ok(())
    }

    /// A GEMM operand's bf16 copy when the buffer was narrowed (its f32 values are gone), or
    /// `None`; an error if it was narrowed but the GEMMs are no longer bf16.
    pub(super) fn narrowed_operand<'b>(
        &self,
        buf: &'b CudaBuf,
        what: &str,
    ) -> Result<Option<&'b CudaSlice<bf16>>> {
        if !buf.is_narrowed() {
            return Ok(None);
        }
        ensure!(
            self.gemm_precision == GemmPrecision::Bf16,
            "cuda backend: `{what}` was kept only in bf16 (a Backend::keep_as_* hint) but the GEMMs \
             are now {}",
            self.gemm_precision.label()
        );
        let copy = buf
            .bf16_cached()
            .ok_or_else(|| anyhow!("cuda backend: `{what}` was narrowed but lost its bf16 copy"))?;
        Ok(Some(copy))
    }

    /// Whether the `Backend::keep_as_*` hints narrow (in Bf16 mode; `keep_as_attention_input`
    /// with the mma attention), the default; off, the f32 values are kept. That gives the same
    /// results for GEMM and attention inputs, and differs by bf16 rounding for gate/up and the
    /// attention output (tests compare the two).
    pub fn set_narrow_saved_inputs(&mut self, on: bool) {
        self.narrow_inputs = on;
    }

    /// A new bf16 copy of `src` (round to nearest even), in any GEMM mode: the mma attention's
    /// operands.
    pub(super) fn to_bf16(&self, src: &CudaSlice<f32>, what: &str) -> Result<CudaSlice<bf16>> {
        // before any host state changes (a weight's cached copy is set only after this returns)
        self.not_capturing(what)?;
        // SAFETY: converted into right below, before anything reads it
        let mut dst = unsafe { self.stream.alloc::<bf16>(src.len().max(1)) }
            .with_context(|| format!("cuda backend: allocating {} bf16 for {what}", src.len()))?;
        self.convert_bf16(&mut dst, src, src.len(), what)?;
        Ok(dst)
    }

    /// A bf16 copy of an operand used by several GEMMs (the head's hidden states across every
    /// vocabulary chunk), so it is converted once, not once per GEMM. `None` outside Bf16 mode.
    pub(super) fn bf16_copy(&self, src: &CudaSlice<f32>) -> Result<Option<CudaSlice<bf16>>> {
        if self.gemm_precision != GemmPrecision::Bf16 {
            return Ok(None);
        }
        Ok(Some(self.to_bf16(src, "operand copy")?))
    }

    /// Row-major GEMM: `c[m, n] = alpha · op(a)[m, k] · op(b)[k, n] + beta · c`, where
    /// `op(x) = xᵀ` when the flag is set; `lda`, `ldb`, `ldc` are row strides. cuBLAS is
    /// column-major, so this computes `cᵀ = op(b)ᵀ · op(a)ᵀ` with the operands swapped.
    /// In Bf16 mode an operand given with its bf16 copy ([`Bf16Operand`], from
    /// [`Cuda::bf16_copy`], [`Cuda::weight_bf16`] or a narrowed buffer) is not converted again;
    /// other modes ignore the copies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_pre<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        trans_a: bool,
        trans_b: bool,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, a_pre): (&A, usize, Option<Bf16Operand>),
        (b, ldb, b_pre): (&B, usize, Option<Bf16Operand>),
        beta: f32,
        (c, ldc): (&mut C, usize),
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let c_span = span((m, n), ldc, "c")?;
        ensure!(
            c.len() >= c_span,
            "cuda backend: gemm c holds {} values, [{m} × {n}] with stride {ldc} needs {c_span}",
            c.len()
        );
        // stored shapes: op(a) is [m, k], so a is [k, m] when transposed; likewise b
        let a_shape = if trans_a { (k, m) } else { (m, k) };
        let b_shape = if trans_b { (n, k) } else { (k, n) };
        let (a_span, b_span) = (span(a_shape, lda, "a")?, span(b_shape, ldb, "b")?);
        // a narrowed activation (bf16 copy given, f32 buffer empty) is read only through its
        // copy, checked below; every other operand keeps its f32 bound (a weight chunk's view
        // included)
        let bf16 = self.gemm_precision == GemmPrecision::Bf16;
        let narrowed = |len: usize, pre: &Option<Bf16Operand>| bf16 && pre.is_some() && len == 0;
        ensure!(
            (narrowed(a.len(), &a_pre) || a.len() >= a_span)
                && (narrowed(b.len(), &b_pre) || b.len() >= b_span),
            "cuda backend: gemm operands hold {} and {} values, the shapes need {a_span} and \
             {b_span}",
            a.len(),
            b.len()
        );
        // k = 0 is a pure `c = beta · c`: sgemm with alpha 0 never reads a or b
        if self.gemm_precision == GemmPrecision::Bf16 && k > 0 {
            for (pre, need, what) in [(a_pre, a_span, "a"), (b_pre, b_span, "b")] {
                if let Some(p) = pre {
                    ensure!(
                        p.offset
                            .checked_add(need)
                            .is_some_and(|end| end <= p.copy.len()),
                        "cuda backend: gemm {what}: bf16 copy holds {} values, needs {need} \
                         from offset {}",
                        p.copy.len(),
                        p.offset
                    );
                }
            }
            return self.gemm_bf16(
                (trans_a, trans_b),
                (m, n, k),
                alpha,
                (a, lda, a_span, a_pre),
                (b, ldb, b_span, b_pre),
                beta,
                (c, ldc),
            );
        }
        let cfg = GemmConfig {
            transa: blas_op(trans_b),
            transb: blas_op(trans_a),
            m: dim_i32(n, "gemm n")?,
            n: dim_i32(m, "gemm m")?,
            // k = 0 is legal BLAS (c = beta · c, a and b never read); k = 1 with alpha = 0
            // would read a column of possibly empty operands, and NaN · 0 is NaN
            k: dim_i32(k, "gemm k")?,
            alpha,
            lda: dim_i32(ldb.max(1), "gemm ldb")?,
            ldb: dim_i32(lda.max(1), "gemm lda")?,
            beta,
            ldc: dim_i32(ldc.max(1), "gemm ldc")?,
        };
        // SAFETY: every buffer was checked above to span the rows × stride the shapes imply.
        unsafe { self.blas.gemm(cfg, b, a, c) }
            .map_err(|e| anyhow!("cuda backend: cuBLAS sgemm failed: {e:?}"))
    }

    /// The Bf16 path of `gemm_pre`: both operands' whole spans (strides kept, so a sub-slice or a
    /// padded row converts as the same layout) into the scratch, then GemmEx.
    #[allow(clippy::too_many_arguments)]
    fn gemm_bf16<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        (trans_a, trans_b): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, a_span, a_pre): (&A, usize, usize, Option<Bf16Operand>),
        (b, ldb, b_span, b_pre): (&B, usize, usize, Option<Bf16Operand>),
        beta: f32,
        (c, ldc): (&mut C, usize),
    ) -> Result<()> {
        let mut scratch = self
            .bf16_scratch
            .lock()
            .map_err(|_| anyhow!("cuda backend: bf16 GEMM scratch mutex poisoned"))?;
        let Bf16Scratch {
            a: a_slot,
            b: b_slot,
        } = &mut *scratch;
        let a16 = match a_pre {
            Some(p) => p,
            None => Bf16Operand {
                copy: self.stage_bf16(a_slot, a, a_span, "a")?,
                offset: 0,
            },
        };
        let b16 = match b_pre {
            Some(p) => p,
            None => Bf16Operand {
                copy: self.stage_bf16(b_slot, b, b_span, "b")?,
                offset: 0,
            },
        };
        let (tm, tn, tk) = (
            dim_i32(n, "gemm n")?,
            dim_i32(m, "gemm m")?,
            dim_i32(k, "gemm k")?,
        );
        let (ld_first, ld_second, ld_c) = (
            dim_i32(ldb, "gemm ldb")?,
            dim_i32(lda, "gemm lda")?,
            dim_i32(ldc, "gemm ldc")?,
        );
        // the guards order later work on other streams after this GEMM; dropped at return
        let (a_base, _a_rec) = a16.copy.device_ptr(&self.stream);
        let (b_base, _b_rec) = b16.copy.device_ptr(&self.stream);
        let elem = std::mem::size_of::<bf16>() as u64;
        let (a_ptr, b_ptr) = (
            a_base + a16.offset as u64 * elem,
            b_base + b16.offset as u64 * elem,
        );
        let (c_ptr, _c_rec) = c.device_ptr_mut(&self.stream);
        use cublas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
        // SAFETY: the bf16 copies hold the spans of a and b in their original layouts from
        // their offsets (checked in gemm_pre, or staged here), c was
        // checked to span [m × n] with stride ldc; alpha and beta are f32 as COMPUTE_32F expects
        // and are read before the call returns.
        unsafe {
            cublas_result::gemm_ex(
                *self.blas.handle(),
                blas_op(trans_b),
                blas_op(trans_a),
                tm,
                tn,
                tk,
                (&alpha as *const f32).cast::<c_void>(),
                b_ptr as *const c_void,
                CUDA_R_16BF,
                ld_first,
                a_ptr as *const c_void,
                CUDA_R_16BF,
                ld_second,
                (&beta as *const f32).cast::<c_void>(),
                c_ptr as *mut c_void,
                CUDA_R_32F,
                ld_c,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cuda backend: cublasGemmEx (bf16 × bf16 → f32) failed: {e:?}"))
    }

    /// Converts `len` f32 values of `src` into `slot` (grown first if too small) and returns it.
    fn stage_bf16<'s, S: DevicePtr<f32>>(
        &self,
        slot: &'s mut Option<CudaSlice<bf16>>,
        src: &S,
        len: usize,
        what: &str,
    ) -> Result<&'s CudaSlice<bf16>> {
        let dst = self.grow_scratch(slot, len, "bf16 GEMM scratch")?;
        self.convert_bf16(dst, src, len, what)?;
        Ok(dst)
    }

    /// `dst[..len] = bf16(src[..len])` (round to nearest even); `dst` may be a view (the
    /// prefill's copy into a bf16 KV cache).
    pub(super) fn convert_bf16<D: DevicePtrMut<bf16>, S: DevicePtr<f32>>(
        &self,
        dst: &mut D,
        src: &S,
        len: usize,
        what: &str,
    ) -> Result<()> {
        ensure!(
            dst.len() >= len,
            "cuda backend: bf16 copy of {what}: {} < {len} values",
            dst.len()
        );
        ensure!(
            src.len() >= len,
            "cuda backend: bf16 copy of {what}: the source holds {} < {len} values",
            src.len()
        );
        let n = len as i64;
        kernels::f32_to_bf16(self, grid_1d(len.div_ceil(4)), dst, src, &n)
            .with_context(|| format!("cuda backend: converting {what} to bf16"))
    }
}

#[cfg(test)]
mod tests {
    use super::{span, GemmPrecision};

    #[test]
    fn gemm_precision_choice() {
        assert_eq!(GemmPrecision::parse(None).unwrap(), GemmPrecision::F32);
        assert_eq!(
            GemmPrecision::parse(Some("f32")).unwrap(),
            GemmPrecision::F32
        );
        assert_eq!(
            GemmPrecision::parse(Some("tf32")).unwrap(),
            GemmPrecision::Tf32
        );
        assert_eq!(
            GemmPrecision::parse(Some("bf16")).unwrap(),
            GemmPrecision::Bf16
        );
        for bad in ["BF16", "fp16", ""] {
            let e = GemmPrecision::parse(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains("CADA_GEMM") && e.contains("`f32`, `tf32` or `bf16`"),
                "{e}"
            );
        }
        assert_eq!(GemmPrecision::Bf16.label(), "bf16 gemm");
    }

    #[test]
    fn operand_span() {
        assert_eq!(span((3, 4), 4, "a").unwrap(), 12);
        assert_eq!(span((3, 4), 10, "a").unwrap(), 24); // last row ends at 2·10 + 4
        assert_eq!(span((0, 4), 4, "a").unwrap(), 0);
        assert!(span((3, 4), 3, "a").is_err());
    }
}

//! `CudaBuf`, the CUDA backend's `Backend::Buf`: f32 values on the device (the master copy)
//! plus, for a weight used by the bf16 GEMMs, a cached bf16 copy of them.
//!
//! Why a cache on the buffer: in `GemmPrecision::Bf16` every GEMM reads bf16 operands. A weight
//! changes once per optimiser step but is read by every forward, every backward's d(input) and,
//! in a rollout, every decode step; converting it in each GEMM moves 6 bytes per parameter per
//! call (a 135M-parameter model: ~0.8 GB per decode step, 3× the GEMMs' own bf16 reads). The
//! copy is made on first use as a GEMM weight and lives until the buffer is next written.
//!
//! Why it can never go stale: the f32 values are reachable mutably only through `DerefMut` and
//! `DevicePtrMut`, and both drop the copy first. Every op that writes a buffer (the optimiser's
//! update, `copy`, `fill`, a kernel's output: the generated launchers take a kernel's `float*`
//! as `&mut impl DevicePtrMut<f32>`) takes `&mut CudaBuf`, so it goes through one of them.
//! Reads go through `Deref` and keep it. The cost is 2 bytes per weight parameter while the
//! copy lives (f32 master weights + bf16 working weights, the usual mixed-precision layout);
//! frozen weights (the reference model) keep theirs for good.
//!
//! Saved activations that the backward reads only in bf16 can be *narrowed*: the bf16 copy is
//! kept and the f32 storage freed, half the memory. In bf16 GEMM mode these are the inputs of
//! the q/k/v, gate/up and down projections (`Backend::keep_as_gemm_input`), SwiGLU's gate and
//! up (`keep_as_swiglu_input`) and the attention output (`keep_as_attention_output`); with the
//! mma attention, whose kernels read bf16 copies in any GEMM mode, q, k and v
//! (`keep_as_attention_input`). A weight made for inference only (the decoder's stacked q/k/v and
//! gate/up, `keep_as_gemm_weight`) is narrowed the same way in bf16 mode. The mma attention also caches copies here without narrowing
//! (its dO, or q/k/v the caller did not narrow). A narrowed buffer has no f32 values: the ops
//! refuse it (the length-sized ones by name, the others by their length check), and only its
//! bf16 readers take it: the GEMMs' operand paths (`linear_forward`'s `w` included), the mma attention, `swiglu_backward_bf16`
//! and the δ of either attention backward (`attention_backward_delta_bf16`).
//! The one narrowed buffer that is written is the decode KV cache (`keep_as_kv_cache`, with
//! `CADA_KV_CACHE=bf16`): the cache writers' `_bf16_kv` kernels and `copy` (the prefill) write
//! its bf16 values in place, `copy` into any narrowed buffer rounding its f32 source.

use cudarc::driver::{
    sys, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use half::bf16;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::OnceLock;

pub struct CudaBuf {
    data: CudaSlice<f32>,
    bf16: OnceLock<CudaSlice<bf16>>,
    /// `Some(len)` once narrowed ([`CudaBuf::narrow`]): the f32 values are gone (`data` is
    /// empty) and the bf16 copy of `len` values is all there is
    narrowed: Option<usize>,
}

impl CudaBuf {
    pub(super) fn new(data: CudaSlice<f32>) -> CudaBuf {
        CudaBuf {
            data,
            bf16: OnceLock::new(),
            narrowed: None,
        }
    }

    /// Keeps only `copy` (the bf16 values of this buffer) and frees the f32 storage, replaced by
    /// `empty`: `Backend::keep_as_gemm_input` / `keep_as_attention_input` for a saved activation
    /// that from now on is read only in bf16.
    pub(super) fn narrow(&mut self, empty: CudaSlice<f32>, copy: CudaSlice<bf16>) {
        let len = self.data.len();
        self.data = empty;
        self.bf16 = OnceLock::new();
        let _ = self.bf16.set(copy);
        self.narrowed = Some(len);
    }

    /// Whether only the bf16 copy is left (see [`CudaBuf::narrow`]).
    pub fn is_narrowed(&self) -> bool {
        self.narrowed.is_some()
    }

    /// The number of values, narrowed or not.
    pub fn logical_len(&self) -> usize {
        self.narrowed.unwrap_or(self.data.len())
    }

    /// The values of a narrowed buffer, to write in place (the KV cache kept in bf16); `None`
    /// when it holds f32 values.
    pub(super) fn narrowed_mut(&mut self) -> Option<&mut CudaSlice<bf16>> {
        self.narrowed?;
        self.bf16.get_mut()
    }

    /// The cached bf16 copy, if one was made since the last write.
    pub(super) fn bf16_cached(&self) -> Option<&CudaSlice<bf16>> {
        self.bf16.get()
    }

    /// Keeps `copy` (bf16 of the current values, converted on this buffer's stream) and returns
    /// the cached copy. Two threads racing here both converted the same values: either is right.
    pub(super) fn cache_bf16(&self, copy: CudaSlice<bf16>) -> &CudaSlice<bf16> {
        let _ = self.bf16.set(copy);
        self.bf16.get().expect("set just above")
    }

    /// Takes the cached bf16 copy out (to keep it as the narrowed values).
    pub(super) fn take_bf16(&mut self) -> Option<CudaSlice<bf16>> {
        self.bf16.take()
    }

    /// Whether a bf16 copy is held (for tests of the cache's invalidation).
    pub fn has_bf16_copy(&self) -> bool {
        self.bf16.get().is_some()
    }
}

impl Deref for CudaBuf {
    type Target = CudaSlice<f32>;
    fn deref(&self) -> &CudaSlice<f32> {
        &self.data
    }
}

impl DerefMut for CudaBuf {
    /// Any write invalidates the bf16 copy (see the module doc).
    fn deref_mut(&mut self) -> &mut CudaSlice<f32> {
        // a narrowed buffer is never written (every op writing f32 checks `is_narrowed` first)
        debug_assert!(self.narrowed.is_none(), "write to a narrowed buffer");
        self.bf16.take();
        &mut self.data
    }
}

// The slice traits, so a buffer is a GEMM operand and a copy source like a `CudaSlice<f32>`.
impl DeviceSlice<f32> for CudaBuf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.data.stream()
    }
}
impl DevicePtr<f32> for CudaBuf {
    fn device_ptr<'a>(&'a self, stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        self.data.device_ptr(stream)
    }
}
impl DevicePtrMut<f32> for CudaBuf {
    /// A write: drops the bf16 copy like `DerefMut`.
    fn device_ptr_mut<'a>(
        &'a mut self,
        stream: &'a CudaStream,
    ) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        let data: &'a mut CudaSlice<f32> = self;
        data.device_ptr_mut(stream)
    }
}

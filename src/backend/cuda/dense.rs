//! Launchers for the dense layers: linear (cuBLAS GEMM + bias kernels in elementwise.cu),
//! SwiGLU (swiglu.cu) and RoPE (rope.cu). In Bf16 GEMM mode `w` is read through its cached bf16
//! copy, and a narrowed `x` (a saved activation, `keep_as_gemm_input`) or `w` (the decoder's
//! stacked weights, `keep_as_gemm_weight`) through the bf16 copy that is all it holds
//! (`buffer.rs`).

use super::backend_impl::{f32_values, narrowed_copy};
use super::gemm::Bf16Operand;
use super::kernels;
use super::{dim_i32, grid_1d, grid_cols, grid_rows, need, need_ids, row_threads, Cuda, CudaBuf};
use crate::backend::{check_rope, Rope};
use anyhow::{ensure, Result};
use cudarc::driver::CudaSlice;

impl Cuda {
    /// RMSNorm over `n` rows of `dim`; with `gemm_copy`, in the bf16 GEMM mode, the output's
    /// bf16 copy is written beside it (for the GEMM that reads it next).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rmsnorm_rows(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        dim: usize,
        eps: f32,
        gemm_copy: bool,
    ) -> Result<()> {
        need(out, n * dim, "out")?;
        need(x, n * dim, "x")?;
        need(rstd, n, "rstd")?;
        need(w, dim, "w")?;
        if n == 0 {
            return Ok(());
        }
        let d = dim_i32(dim, "dim")?;
        let cfg = grid_rows(n, row_threads(dim))?;
        if !gemm_copy {
            // as the no-copy arm below: the launch's write drops any bf16 copy `out` had
            return kernels::rmsnorm_forward(self, cfg, out, rstd, x, w, &d, &eps);
        }
        self.write_with_bf16_copy(out, n * dim, |out, copy| match copy {
            None => kernels::rmsnorm_forward(self, cfg, out, rstd, x, w, &d, &eps),
            Some(c) => kernels::rmsnorm_forward_with_bf16(self, cfg, out, c, rstd, x, w, &d, &eps),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_forward_impl(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        bias: Option<&CudaBuf>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        need(out, n * m, "out")?;
        // a narrowed x (keep_as_gemm_input) is only its bf16 copy, checked in gemm_pre; a
        // cached one (the op that wrote x made it) saves the conversion
        let x16 = self.input_bf16(x, "x")?;
        if !x.is_narrowed() {
            need(x, n * k, "x")?;
        }
        // a narrowed w (keep_as_gemm_weight: the decoder's stacked weights) is its bf16 copy
        let w16 = match self.narrowed_operand(w, "w")? {
            Some(copy) => {
                ensure!(
                    w.logical_len() >= m * k,
                    "cuda backend: `w` holds {} values, the op needs {}",
                    w.logical_len(),
                    m * k
                );
                Some(copy)
            }
            None => {
                need(w, m * k, "w")?;
                self.weight_bf16(w)?
            }
        };
        let w16 = Bf16Operand::whole(w16);
        self.gemm_pre(
            false,
            true,
            (n, m, k),
            1.0,
            (x, k, Bf16Operand::whole(x16)),
            (w, k, w16),
            0.0,
            (out, m),
        )?;
        if let Some(b) = bias {
            need(b, m, "bias")?;
            let (rows, cols) = (n as i64, dim_i32(m, "m")?);
            if n * m > 0 {
                kernels::add_bias_rows(self, grid_1d(n * m), out, b, &rows, &cols)?;
            }
        }
        Ok(())
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_backward_impl(
        &self,
        dx: Option<&mut CudaBuf>,
        dw: &mut CudaBuf,
        dbias: Option<&mut CudaBuf>,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        need(dout, n * m, "dout")?;
        let x16 = self.input_bf16(x, "x")?;
        if !x.is_narrowed() {
            need(x, n * k, "x")?;
        }
        need(w, m * k, "w")?;
        need(dw, m * k, "dw")?;
        if let Some(dx) = dx {
            need(dx, n * k, "dx")?;
            let w16 = Bf16Operand::whole(self.weight_bf16(w)?);
            self.gemm_pre(
                false,
                false,
                (n, k, m),
                1.0,
                (dout, m, None),
                (w, k, w16),
                0.0,
                (dx, k),
            )?;
        }
        // dw[m, k] += doutᵀ · x
        self.gemm_pre(
            true,
            false,
            (m, k, n),
            1.0,
            (dout, m, None),
            (x, k, Bf16Operand::whole(x16)),
            1.0,
            (dw, k),
        )?;
        if let Some(db) = dbias {
            need(db, m, "dbias")?;
            if n * m > 0 {
                let (cfg, per_slice) = grid_cols(m, n);
                let (rows, cols) = (n as i64, dim_i32(m, "m")?);
                kernels::bias_grad_cols(self, cfg, db, dout, &rows, &cols, &per_slice)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope(
        &self,
        x: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        sign: f32,
    ) -> Result<()> {
        need(x, n * n_heads * head_dim, "x")?;
        need_ids(positions, n, "positions")?;
        let dims = rope_dims("rope", rope, head_dim)?;
        if n * n_heads * head_dim == 0 {
            return Ok(());
        }
        let rows = n as i64;
        let (h, hd) = (dim_i32(n_heads, "n_heads")?, dim_i32(head_dim, "head_dim")?);
        let cfg = grid_1d(n * n_heads * head_dim / 2);
        kernels::rope_apply(
            self,
            cfg,
            x,
            positions,
            &rope.inv_freq,
            &rows,
            &h,
            &hd,
            &dims,
            &sign,
        )
    }

    pub(super) fn swiglu_forward_impl(
        &self,
        out: &mut CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) -> Result<()> {
        f32_values(&[out, gate, up], "swiglu_forward")?;
        ensure!(
            out.len() == gate.len() && gate.len() == up.len(),
            "swiglu: length mismatch ({}, {}, {})",
            out.len(),
            gate.len(),
            up.len()
        );
        let n = out.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let cfg = grid_1d(n as usize);
        self.write_with_bf16_copy(out, n as usize, |out, copy| match copy {
            None => kernels::swiglu_forward(self, cfg, out, gate, up, &n),
            Some(c) => kernels::swiglu_forward_with_bf16(self, cfg, out, c, gate, up, &n),
        })
    }
    /// SwiGLU from the stacked gate/up projection's output `[rows, 2·f]`.
    pub(super) fn swiglu_forward_stacked_impl(
        &self,
        out: &mut CudaBuf,
        gate_up: &CudaBuf,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        f32_values(&[out, gate_up], "swiglu_forward_stacked")?;
        crate::backend::check_swiglu_stacked(gate_up.len(), out.len(), rows, f)?;
        if rows * f == 0 {
            return Ok(());
        }
        let (r, fi) = (rows as i64, dim_i32(f, "f")?);
        let cfg = grid_1d(rows * f);
        self.write_with_bf16_copy(out, rows * f, |out, copy| match copy {
            None => kernels::swiglu_forward_stacked(self, cfg, out, gate_up, &r, &fi),
            Some(c) => {
                kernels::swiglu_forward_stacked_with_bf16(self, cfg, out, c, gate_up, &r, &fi)
            }
        })
    }
    /// The backward from f32 gate/up, or from their bf16 copies when both were kept in bf16
    /// alone (`keep_as_swiglu_input`).
    pub(super) fn swiglu_backward_impl(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) -> Result<()> {
        f32_values(&[dgate, dup, dout], "swiglu_backward")?;
        let len = gate.logical_len();
        ensure!(
            dgate.len() == len && dup.len() == len && dout.len() == len && up.logical_len() == len,
            "swiglu_backward: length mismatch"
        );
        ensure!(
            gate.is_narrowed() == up.is_narrowed(),
            "swiglu_backward: one of gate and up was kept only in bf16 (keep_as_swiglu_input), \
             the other in f32"
        );
        let n = len as i64;
        if n == 0 {
            return Ok(());
        }
        let cfg = grid_1d(len);
        if gate.is_narrowed() {
            let g = narrowed_copy(gate, "swiglu_backward", "gate")?;
            let u = narrowed_copy(up, "swiglu_backward", "up")?;
            kernels::swiglu_backward_bf16(self, cfg, dgate, dup, dout, g, u, &n)
        } else {
            kernels::swiglu_backward(self, cfg, dgate, dup, dout, gate, up, &n)
        }
    }
}

/// The checks every RoPE launch makes of [`Rope`] for heads of `head_dim`, and the struct its
/// kernels take (kernels/rope_common.cuh).
pub(super) fn rope_dims(
    op: &str,
    rope: &Rope<CudaBuf>,
    head_dim: usize,
) -> Result<kernels::RopeDims> {
    check_rope(op, rope.rotary_dim, rope.inv_freq.len(), head_dim)?;
    need(&rope.inv_freq, rope.rotary_dim / 2, "inv_freq")?;
    Ok(kernels::RopeDims {
        rotary_dim: dim_i32(rope.rotary_dim, "rotary_dim")?,
        scale: rope.scale,
    })
}

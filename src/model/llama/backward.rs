//! The layer stack's backward, beside its forward in llama.rs (llm.c's order: the layers in
//! reverse, each from the activations its forward saved).

use super::{Forward, Llama};
use crate::backend::{AttnShape, Backend};
use crate::model::weights::{LayerParams, Params};
use anyhow::Result;

impl<B: Backend> Llama<B> {
    /// Backward from `dhidden` (gradient of the loss w.r.t. the final normed hidden states);
    /// accumulates every parameter gradient into `grads`. The head's own gradient
    /// (lm_head / tied embedding) is accumulated by the caller's `fused_logprob_backward`.
    pub fn backward(
        &self,
        be: &B,
        fwd: &Forward<B>,
        dhidden: &B::Buf,
        grads: &mut Params<B::Buf>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (batch, seq) = (fwd.batch, fwd.seq);
        let n = batch * seq;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let shape = AttnShape {
            batch,
            seq,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };

        let _range = crate::profile::range("model backward");
        // dx: gradient w.r.t. the residual stream entering the current point.
        let mut dx = be.zeros(n * d)?;
        be.rmsnorm_backward(
            &mut dx,
            &mut grads.final_norm,
            dhidden,
            &fwd.x_final,
            &self.params.final_norm,
            &fwd.rstd_final,
            n,
            d,
        )?;
        let mut tmp_d = be.zeros(n * d)?;
        for (l, a) in fwd.layers.iter().enumerate().rev() {
            let _layer = crate::profile::range_with(|| format!("layer {l} backward"));
            let lp: &LayerParams<B::Buf> = &self.params.layers[l];
            let g = &mut grads.layers[l];
            // MLP: y = h + down(act)
            let mut dact = be.zeros(n * f)?;
            be.linear_backward(
                Some(&mut dact),
                &mut g.down_proj,
                None,
                &dx,
                &a.act,
                &lp.down_proj,
                n,
                f,
                d,
            )?;
            let (mut dgate, mut dup) = (be.zeros(n * f)?, be.zeros(n * f)?);
            be.swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up)?;
            drop(dact);
            let mut dn2 = be.zeros(n * d)?;
            be.linear_backward(
                Some(&mut dn2),
                &mut g.gate_proj,
                None,
                &dgate,
                &a.n2,
                &lp.gate_proj,
                n,
                d,
                f,
            )?;
            be.linear_backward(
                Some(&mut tmp_d),
                &mut g.up_proj,
                None,
                &dup,
                &a.n2,
                &lp.up_proj,
                n,
                d,
                f,
            )?;
            be.add_assign(&mut dn2, &tmp_d)?;
            be.rmsnorm_backward(
                &mut tmp_d,
                &mut g.mlp_norm,
                &dn2,
                &a.h,
                &lp.mlp_norm,
                &a.rstd2,
                n,
                d,
            )?;
            be.add_assign(&mut dx, &tmp_d)?; // dx is now d(h)
                                             // Attention: h = x_in + o(attn)
            let mut dattn = be.zeros(n * qd)?;
            be.linear_backward(
                Some(&mut dattn),
                &mut g.o_proj,
                None,
                &dx,
                &a.attn,
                &lp.o_proj,
                n,
                qd,
                d,
            )?;
            let (mut dq, mut dk, mut dv) =
                (be.zeros(n * qd)?, be.zeros(n * kvd)?, be.zeros(n * kvd)?);
            be.attention_backward(
                &mut dq, &mut dk, &mut dv, &dattn, &a.q, &a.k, &a.v, &a.attn, &a.lse, shape,
            )?;
            drop(dattn);
            let rope = self.rope_for(fwd.seq);
            let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
            if let (Some(q_norm), Some(k_norm)) = (&lp.q_norm, &lp.k_norm) {
                // Qwen3: back through RoPE and the per-head RMSNorms of q and k
                let (Some(gq), Some(gk)) = (g.q_norm.as_mut(), g.k_norm.as_mut()) else {
                    anyhow::bail!("backward: layer {l} has q/k norms but its gradients do not");
                };
                let args = self.qk_norm_rope_args(
                    &a.q_raw,
                    &a.k_raw,
                    q_norm,
                    k_norm,
                    &fwd.positions,
                    rope,
                    n,
                );
                let (mut dq_raw, mut dk_raw) = (be.zeros(n * qd)?, be.zeros(n * kvd)?);
                be.qk_norm_rope_backward(
                    &mut dq_raw,
                    &mut dk_raw,
                    gq,
                    gk,
                    &mut dq,
                    &mut dk,
                    &a.rstd_q,
                    &a.rstd_k,
                    &args,
                )?;
                (dq, dk) = (dq_raw, dk_raw);
            } else {
                be.rope_backward(&mut dq, &fwd.positions, rope, n, hq, hd)?;
                be.rope_backward(&mut dk, &fwd.positions, rope, n, hkv, hd)?;
            }
            let mut dn1 = be.zeros(n * d)?;
            be.linear_backward(
                Some(&mut dn1),
                &mut g.q_proj,
                g.q_bias.as_mut(),
                &dq,
                &a.n1,
                &lp.q_proj,
                n,
                d,
                qd,
            )?;
            be.linear_backward(
                Some(&mut tmp_d),
                &mut g.k_proj,
                g.k_bias.as_mut(),
                &dk,
                &a.n1,
                &lp.k_proj,
                n,
                d,
                kvd,
            )?;
            be.add_assign(&mut dn1, &tmp_d)?;
            be.linear_backward(
                Some(&mut tmp_d),
                &mut g.v_proj,
                g.v_bias.as_mut(),
                &dv,
                &a.n1,
                &lp.v_proj,
                n,
                d,
                kvd,
            )?;
            be.add_assign(&mut dn1, &tmp_d)?;
            be.rmsnorm_backward(
                &mut tmp_d,
                &mut g.attn_norm,
                &dn1,
                &a.x_in,
                &lp.attn_norm,
                &a.rstd1,
                n,
                d,
            )?;
            be.add_assign(&mut dx, &tmp_d)?; // dx is now d(x_in)
        }
        be.embedding_backward(&mut grads.embed, &dx, &fwd.ids, n, d)?;
        Ok(())
    }
}

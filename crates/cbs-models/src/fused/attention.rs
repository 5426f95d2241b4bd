//! Multi-head self-attention from a fused qkv projection, as one node of the autograd graph.
//!
//! Composed, the attention core is a dozen graph nodes (reshape, permute, three `get`s and
//! copies, the scaling, two matrix products, the softmax, a transpose and a reshape), and candle's
//! backward gives every input of every node a zero-filled gradient buffer plus an add, and each
//! `get` a concatenation with zero padding as large as all of qkv. Here the forward runs the
//! same matrix products outside the graph and keeps `q`, `k`, `v` and the attention weights
//! `P` in the op (the memory the composed graph keeps too); the backward is four matrix
//! products and one softmax-backward pass, and writes the gradient of qkv in its layout in
//! one pass.

use std::sync::Mutex;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::{contiguous, last_dim, par_rows, F, PAR_MIN};

/// `[B, H, N, d]` parts (each contiguous) → `[B, N, P, H, d]`, `P` the number of parts.
fn merge_heads<T: F>(parts: &[&[T]], (b, h, n, d): (usize, usize, usize, usize)) -> Vec<T> {
    let p = parts.len();
    let row = p * h * d; // one token of the output
    let mut out = vec![T::of(0.0); b * n * row];
    let fill = |(r, o): (usize, &mut [T])| {
        let (bi, ni) = (r / n, r % n);
        for (pi, part) in parts.iter().enumerate() {
            for hi in 0..h {
                let src = ((bi * h + hi) * n + ni) * d;
                let dst = (pi * h + hi) * d;
                o[dst..dst + d].copy_from_slice(&part[src..src + d]);
            }
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(row).enumerate().for_each(fill);
    } else {
        out.chunks_mut(row).enumerate().for_each(fill);
    }
    out
}

/// Row softmax of `scale·s` (the attention weights).
fn softmax_scaled<T: F>(s: &[T], l: &Layout, scale: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); s.len()];
    par_rows(&mut out, last_dim(l), &[s], |o, i| {
        let max = i[0].iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
        let mut sum = 0.0;
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let e = T::exp_k(scale * (x.f() - max));
            sum += e;
            *o = T::of(e);
        }
        for o in o.iter_mut() {
            *o = T::of(o.f() / sum);
        }
    });
    out
}

/// `dS = scale·P ⊙ (dP − Σ_row dP·P)`.
fn softmax_scaled_bwd<T: F>(p: &[T], dp: &[T], l: &Layout, scale: f64) -> Vec<T> {
    let mut out = vec![T::of(0.0); p.len()];
    par_rows(&mut out, last_dim(l), &[p, dp], |o, i| {
        let dot: f64 = i[0].iter().zip(i[1]).map(|(p, g)| p.f() * g.f()).sum();
        for ((o, &p), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            *o = T::of(scale * p.f() * (g.f() - dot));
        }
    });
    out
}

/// Forward-only kernels applied outside the graph.
struct SoftmaxScaled(f64);
struct SoftmaxScaledBwd(f64);
/// `[B, H, N, d]` parts → `[B, N, P·H·d]`.
struct MergeHeads {
    dims: (usize, usize, usize, usize),
    parts: usize,
}

macro_rules! f32_or_f64 {
    ($op:expr, $s:expr, |$T:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $T = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $T = f64;
                CpuStorage::F64($body)
            }
            _ => bail!("{}: only f32 and f64 are supported", $op),
        }
    };
}

impl CustomOp1 for SoftmaxScaled {
    fn name(&self) -> &'static str {
        "fused-attention-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let out = f32_or_f64!(op, s, |T| softmax_scaled::<T>(
            contiguous(s, l, op)?,
            l,
            self.0
        ));
        Ok((out, l.shape().clone()))
    }
}

impl CustomOp2 for SoftmaxScaledBwd {
    fn name(&self) -> &'static str {
        "fused-attention-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        if l1.shape() != l2.shape() {
            bail!("{op}: P and dP differ in shape");
        }
        let out = f32_or_f64!(op, s1, |T| softmax_scaled_bwd::<T>(
            contiguous(s1, l1, op)?,
            contiguous(s2, l2, op)?,
            l1,
            self.0
        ));
        Ok((out, l1.shape().clone()))
    }
}

impl MergeHeads {
    fn check(&self, l: &Layout) -> Result<()> {
        let (b, h, n, d) = self.dims;
        if l.dims() != [b, h, n, d] {
            bail!(
                "fused-attention-merge-heads: expected {:?}, got {:?}",
                self.dims,
                l.dims()
            );
        }
        Ok(())
    }

    fn out_shape(&self) -> Shape {
        let (b, h, n, d) = self.dims;
        Shape::from((b, n, self.parts * h * d))
    }
}

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "fused-attention-merge-heads"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = <Self as CustomOp1>::name(self);
        self.check(l)?;
        let out = f32_or_f64!(op, s, |T| merge_heads::<T>(
            &[contiguous(s, l, op)?],
            self.dims
        ));
        Ok((out, self.out_shape()))
    }
}

impl CustomOp3 for MergeHeads {
    fn name(&self) -> &'static str {
        "fused-attention-merge-heads"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = <Self as CustomOp3>::name(self);
        for l in [l1, l2, l3] {
            self.check(l)?;
        }
        let out = f32_or_f64!(op, s1, |T| merge_heads::<T>(
            &[
                contiguous(s1, l1, op)?,
                contiguous(s2, l2, op)?,
                contiguous(s3, l3, op)?
            ],
            self.dims
        ));
        Ok((out, self.out_shape()))
    }
}

/// The attention node: its forward writes out the per-head output `o` (`[B, H, N, d]`)
/// computed beforehand in the `[B, N, C]` layout; its backward uses the saved `q`, `k`, `v`
/// (`[B, H, N, d]`) and `P` (`[B, H, N, N]`).
struct Attention {
    o: Mutex<Option<Tensor>>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    scale: f64,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let Some(o) = self.o.lock().expect("attention output lock").take() else {
            bail!("{op}: the op can be applied once only");
        };
        let merge = MergeHeads {
            dims: o.dims4()?,
            parts: 1,
        };
        let (st, l) = o.storage_and_layout();
        match &*st {
            candle_core::Storage::Cpu(s) => CustomOp1::cpu_fwd(&merge, s, l),
            _ => bail!("{op}: CPU only"),
        }
    }

    fn bwd(&self, _qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, n, d) = self.q.dims4()?;
        let go = grad
            .detach()
            .reshape((b, n, h, d))?
            .transpose(1, 2)?
            .contiguous()?; // [B, H, N, d]
        let dv = self.p.t()?.matmul(&go)?; // Pᵀ·dO
        let dp = go.matmul(&self.v.t()?)?; // dO·Vᵀ  [B, H, N, N]
        let ds = self
            .p
            .apply_op2_no_bwd(&dp, &SoftmaxScaledBwd(self.scale))?;
        let dq = ds.matmul(&self.k)?; // dS·K
        let dk = ds.t()?.matmul(&self.q)?; // dSᵀ·Q
        let merge = MergeHeads {
            dims: (b, h, n, d),
            parts: 3,
        };
        Ok(Some(dq.apply_op3_no_bwd(&dk, &dv, &merge)?))
    }
}

/// `softmax(scale·q·kᵀ)·v` over `heads` heads, from `qkv` `[B, N, 3C]` (channels ordered
/// (q|k|v, head, d), as PyTorch's `qkv.reshape(B, N, 3, H, d)`) to `[B, N, C]` (channels
/// (head, d)). One graph node; CPU, f32/f64.
pub fn attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, n, c3) = qkv.dims3()?;
    if c3 % (3 * heads.max(1)) != 0 || heads == 0 {
        bail!("attention: {c3} channels are not 3 × {heads} heads");
    }
    let d = c3 / 3 / heads;
    let x = qkv.detach();
    let parts = x
        .reshape((b, n, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?; // [3, B, H, N, d]
    let (q, k, v) = (parts.get(0)?, parts.get(1)?, parts.get(2)?);
    let p = q.matmul(&k.t()?)?.apply_op1_no_bwd(&SoftmaxScaled(scale))?; // [B, H, N, N]
    let o = p.matmul(&v)?; // [B, H, N, d]
    qkv.apply_op1(Attention {
        o: Mutex::new(Some(o)),
        q,
        k,
        v,
        p,
        scale,
    })
}

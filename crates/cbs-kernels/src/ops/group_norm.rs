//! GroupNorm with its affine weight and bias, optionally followed by SiLU (the UNet's
//! `normalization(ch)` + `SiLU()` pairs), as one graph node with a hand-written backward.
//! Composed, it was a LayerNorm over `[B, G, C/G·S]` plus a broadcast multiply and add over
//! `[B, C, S]`, whose weight and bias gradients candle reduces over the broadcast dimensions
//! with its strided reduction, and a separate SiLU: the largest cost of a UNet step after the
//! convolutions' products.
//!
//! `x`: `[B, C, …]` (the trailing dimensions flattened to `S`), `w`, `b`: `[C]`. One sample
//! per task; the weight and bias gradients are summed per sample in f64 and added in sample
//! order.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::layer_norm::row_stats;
use super::*;
#[cfg(feature = "cuda")]
use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage};

#[cfg(feature = "cuda")]
const CUDA: cuda::Module = cuda::ptx_module!("group_norm");

/// The op's parameters: group count, epsilon, and whether SiLU follows.
#[derive(Clone, Copy)]
struct Params {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// Forward: (x, w, b) → `GroupNorm(x)·w + b`, then SiLU if asked.
struct GroupNormAct(Params);
/// Backward: (x, w, grad) → packed (dx, dw, db); holds the bias (SiLU's derivative is taken
/// at `y`, recomputed from the normalised value).
struct GroupNormActBwd(Params, Tensor);

/// `(B, C, S)` after checking the shapes.
fn bcs(
    op: &str,
    x: &Layout,
    w: &Layout,
    b: &Layout,
    groups: usize,
) -> Result<(usize, usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 {
        bail!("{op}: x {dims:?} must be [B, C, …]");
    }
    let (bs, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    if w.dims() != [c] || b.dims() != [c] {
        bail!(
            "{op}: weight {:?} and bias {:?} must be [{c}]",
            w.dims(),
            b.dims()
        );
    }
    if groups == 0 || !c.is_multiple_of(groups) {
        bail!("{op}: {c} channels do not split into {groups} groups");
    }
    Ok((bs, c, s))
}

simd_kernel! {
    /// One sample `[C·S]`: normalise each group, scale and shift each channel, SiLU if asked.
    fn gn_fwd_sample<T: F>(o: &mut [T], x: &[T], w: &[T], b: &[T], s: usize, p: Params) {
        let len = x.len() / p.groups;
        let cg = w.len() / p.groups;
        for (k, (og, xg)) in o.chunks_mut(len).zip(x.chunks(len)).enumerate() {
            let (mean, rstd) = row_stats(xg, p.eps);
            let (wg, bg) = (&w[k * cg..(k + 1) * cg], &b[k * cg..(k + 1) * cg]);
            for ((oc, xc), (&w, &b)) in og.chunks_mut(s).zip(xg.chunks(s)).zip(wg.iter().zip(bg)) {
                let (w, b) = (w.f(), b.f());
                for (o, &x) in oc.iter_mut().zip(xc) {
                    let y = (x.f() - mean) * rstd * w + b;
                    *o = T::of(if p.silu { y * sigmoid_pair::<T>(y).0 } else { y });
                }
            }
        }
    }
}

/// One channel of the backward's first pass: writes `ĝ = gy·w` into `d` and returns
/// `[Σ gy·x̂, Σ gy, Σ ĝ, Σ ĝ·x̂]`, with `LANES` interleaved partial sums per total (single
/// running sums are chains of dependent additions that keep the loop scalar) and the SiLU
/// branch resolved at compile time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gn_bwd_channel<T: F, const SILU: bool>(
    d: &mut [T],
    x: &[T],
    g: &[T],
    mean: f64,
    rstd: f64,
    w: f64,
    b: f64,
) -> [f64; 4] {
    let one = |x: T, g: T| {
        let xh = (x.f() - mean) * rstd;
        let gy = if SILU {
            let y = xh * w + b;
            let (sg, sc) = sigmoid_pair::<T>(y);
            g.f() * sg * (1.0 + y * sc)
        } else {
            g.f()
        };
        (xh, gy, gy * w)
    };
    let split = x.len() - x.len() % LANES;
    let mut acc = [[0.0f64; LANES]; 4];
    let body = d[..split]
        .chunks_exact_mut(LANES)
        .zip(x[..split].chunks_exact(LANES));
    for ((d, x), g) in body.zip(g[..split].chunks_exact(LANES)) {
        for l in 0..LANES {
            let (xh, gy, gh) = one(x[l], g[l]);
            acc[0][l] += gy * xh;
            acc[1][l] += gy;
            acc[2][l] += gh;
            acc[3][l] += gh * xh;
            d[l] = T::of(gh);
        }
    }
    let mut tot = acc.map(|a| a.iter().sum::<f64>());
    for i in split..x.len() {
        let (xh, gy, gh) = one(x[i], g[i]);
        tot[0] += gy * xh;
        tot[1] += gy;
        tot[2] += gh;
        tot[3] += gh * xh;
        d[i] = T::of(gh);
    }
    tot
}

simd_kernel! {
    /// One sample of the backward: with `x̂` the normalised value, `y = x̂·w + b`, `gy` the
    /// gradient at `y` (through SiLU if asked) and `ĝ = gy·w`, writes
    /// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` per group and returns `[dw | db]` =
    /// `[Σ_S gy·x̂ | Σ_S gy]` per channel.
    fn gn_bwd_sample<T: F>(
        dx: &mut [T],
        x: &[T],
        g: &[T],
        w: &[T],
        b: &[T],
        s: usize,
        p: Params
    ) -> Vec<f64> {
        let c = w.len();
        let mut acc = vec![0.0f64; 2 * c];
        let len = x.len() / p.groups;
        let cg = c / p.groups;
        for (k, ((dg, xg), gg)) in dx.chunks_mut(len).zip(x.chunks(len)).zip(g.chunks(len)).enumerate() {
            let (mean, rstd) = row_stats(xg, p.eps);
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            // First pass: ĝ into dx, the per-channel sums, and the group's two means.
            for (j, ((dc, xc), gc)) in dg.chunks_mut(s).zip(xg.chunks(s)).zip(gg.chunks(s)).enumerate() {
                let ch = k * cg + j;
                let (w, b) = (w[ch].f(), b[ch].f());
                let [dw, db, t1, t2] = if p.silu {
                    gn_bwd_channel::<T, true>(dc, xc, gc, mean, rstd, w, b)
                } else {
                    gn_bwd_channel::<T, false>(dc, xc, gc, mean, rstd, w, b)
                };
                acc[ch] += dw;
                acc[c + ch] += db;
                s1 += t1;
                s2 += t2;
            }
            let (m1, m2) = (s1 / len as f64, s2 / len as f64);
            for (d, &x) in dg.iter_mut().zip(xg) {
                let xh = (x.f() - mean) * rstd;
                *d = T::of(rstd * (d.f() - m1 - xh * m2));
            }
        }
        acc
    }
}

impl CustomOp3 for GroupNormAct {
    fn name(&self) -> &'static str {
        "fused-group-norm"
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
        let op = self.name();
        let p = self.0;
        let (_, c, s) = bcs(op, l1, l2, l3, p.groups)?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, w, b| {
            new_chunks(x.len(), 0, c * s, |n, o| {
                gn_fwd_sample(o, &x[n * c * s..(n + 1) * c * s], w, b, s, p)
            })
            .0
        });
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let p = self.0;
        let (bs, c, s) = bcs(op, l1, l2, l3, p.groups)?;
        let (dev, groups, eps, silu) = (&s1.device, p.groups, p.eps as f32, p.silu as i32);
        let len = bs * c * s;
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, w) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let b = cuda::view::<T>(s3, l3, op)?;
            let mut y = cuda::alloc::<T>(dev, len, op)?;
            let cfg = cuda::rows(bs * groups, c / groups * s, op)?;
            launch!(CUDA.func::<T>(dev, "gn_fwd")?, cfg;
                &x, &w, &b, &mut y, &bs, &c, &s, &groups, &eps, &silu);
            cuda::wrap(y, dev)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = GroupNormActBwd(self.0, b.contiguous()?.detach());
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let shapes = [x.shape().clone(), w.shape().clone(), b.shape().clone()];
        let mut g = split_packed(&packed, &shapes)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

impl CustomOp3 for GroupNormActBwd {
    fn name(&self) -> &'static str {
        "fused-group-norm-bwd"
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
        let op = self.name();
        let p = self.0;
        let (_, c, s) = bcs(op, l1, l2, self.1.layout(), p.groups)?;
        if l3.dims() != l1.dims() {
            bail!("{op}: gradient {:?} vs input {:?}", l3.dims(), l1.dims());
        }
        let bias = &self.1;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, w, g| {
            super::with_slice(bias, |b| {
                let (dx, acc) = new_chunks(x.len(), 2 * c, c * s, |n, dx| {
                    let r = n * c * s..(n + 1) * c * s;
                    gn_bwd_sample(dx, &x[r.clone()], &g[r], w, b, s, p)
                });
                Ok(append_sum(dx, &acc, 2 * c))
            })?
        });
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * c)))
    }

    /// Two kernels: dx and per-sample weight and bias sums, then their sum over the samples
    /// (fixed order: no atomics).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let p = self.0;
        let (bs, c, s) = bcs(op, l1, l2, self.1.layout(), p.groups)?;
        if l3.dims() != l1.dims() {
            bail!("{op}: gradient {:?} vs input {:?}", l3.dims(), l1.dims());
        }
        let (dev, groups, eps, silu) = (&s1.device, p.groups, p.eps as f32, p.silu as i32);
        let len = bs * c * s;
        let out = dispatch!(op, s1.dtype(), |T| {
            let (x, w) = (cuda::view::<T>(s1, l1, op)?, cuda::view::<T>(s2, l2, op)?);
            let g = cuda::view::<T>(s3, l3, op)?;
            cuda::with_view::<T, _>(&self.1, op, |b| {
                let mut out = cuda::alloc::<T>(dev, len + 2 * c, op)?;
                let mut part = cuda::scratch(dev, bs * 2 * c, op)?;
                let cfg = cuda::rows(bs * groups, c / groups * s, op)?;
                launch!(CUDA.func::<T>(dev, "gn_bwd_groups")?, cfg;
                    &x, &w, &b, &g, &mut out, &mut part, &bs, &c, &s, &groups, &eps, &silu);
                launch!(CUDA.func::<T>(dev, "gn_bwd_sum")?, cuda::columns(2 * c, 1, op)?;
                    &part, &mut out, &bs, &c, &s);
                Ok(cuda::wrap(out, dev))
            })?
        });
        Ok((out, Shape::from(len + 2 * c)))
    }
}

/// GroupNorm over `groups` groups of the channels of `x` (`[B, C, …]`, epsilon `eps`) with the
/// affine weight and bias `w`, `b` (`[C]`), followed by SiLU when `silu` is set.
pub fn group_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let p = Params { groups, eps, silu };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, GroupNormAct(p))
}

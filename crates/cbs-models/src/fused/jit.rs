//! The kernels of a JiT block: RMSNorm fused with the adaLN modulation, the per-head RMS
//! qk-norm fused with the 2-D rotary embedding, and the SwiGLU gate. Composed from candle ops
//! (a dozen graph nodes each, every one with its zero-filled gradient buffer) they took about
//! two thirds of a `jit-mini-4` training step; the matrix products took 15%.
//!
//! As in [`super::adaln`], a backward is one op over the saved inputs and the upstream
//! gradient that returns every input's gradient packed in one flat buffer; per-sample sums are
//! accumulated in f64, one sample per task, and added in sample order (no dependence on the
//! thread count).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};

use super::adaln::{append_sum, bnc, new_chunks, pack, split_packed, unpack};
use super::{
    contiguous, lane_sum, lane_sum3, sigmoid_pair, simd_kernel, with_slices1, with_slices2,
    with_slices3, F,
};

/// `1/√(mean(x²) + eps)` of one row.
#[inline(always)]
fn rms_rstd<T: F>(x: &[T], eps: f64) -> f64 {
    1.0 / (lane_sum(x, |v| v * v) / x.len().max(1) as f64 + eps).sqrt()
}

// ------------------------------------------------------------------ RMSNorm + modulation

simd_kernel! {
    /// One token: `o = x·rstd·a + shift`.
    fn rms_mod_row<T: F>(o: &mut [T], xr: &[T], a: &[T], sh: &[T], eps: f64) {
        let rstd = rms_rstd(xr, eps);
        for (((o, &x), &a), &sh) in o.iter_mut().zip(xr).zip(a).zip(sh) {
            *o = T::of(x.f() * rstd * a.f() + sh.f());
        }
    }
}

simd_kernel! {
    /// One sample of the backward: with `x̂ = x·rstd`, `ĝ = g·a`, writes
    /// `dx = rstd·(ĝ − x̂·mean(ĝ·x̂))` per token and returns `[da | dshift] = [Σ_n g·x̂ | Σ_n g]`.
    fn rms_mod_bwd_sample<T: F>(dx: &mut [T], x: &[T], g: &[T], a: &[T], c: usize, eps: f64)
        -> Vec<f64>
    {
        let mut acc = vec![0.0f64; 2 * c];
        let (a_a, a_sh) = acc.split_at_mut(c);
        for ((dx, xr), gr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
            let rstd = rms_rstd(xr, eps);
            let m = lane_sum3(gr, a, xr, |g, a, x| g * a * x) * rstd / c as f64;
            let it = dx.iter_mut().zip(xr).zip(gr).zip(a);
            for ((((o, &x), &g), &a), (aa, ash)) in it.zip(a_a.iter_mut().zip(a_sh.iter_mut())) {
                let (xh, g) = (x.f() * rstd, g.f());
                *o = T::of(rstd * (g * a.f() - xh * m));
                *aa += g * xh;
                *ash += g;
            }
        }
        acc
    }
}

/// Forward: (x, a, shift) → `RMS(x)·a + shift`; the parameter is epsilon.
struct RmsModulate(f64);
/// Backward: (x, a, grad) → packed (dx, da, dshift).
struct RmsModulateBwd(f64);

impl CustomOp3 for RmsModulate {
    fn name(&self) -> &'static str {
        "fused-rms-norm-modulate"
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
        let (_, n, c) = bnc(op, l1, None, &[l2, l3])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, a, sh| {
            new_chunks(x.len(), 0, c, |r, o| {
                let b = r / n;
                let (a, sh) = (&a[b * c..(b + 1) * c], &sh[b * c..(b + 1) * c]);
                rms_mod_row(o, &x[r * c..(r + 1) * c], a, sh, self.0)
            })
            .0
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(a, &grad.contiguous()?, &RmsModulateBwd(self.0))?;
        let mut g = unpack(&packed, x.dims3()?, 2)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

impl CustomOp3 for RmsModulateBwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-modulate-bwd"
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
        let (b, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, a, g| {
            let (dx, acc) = new_chunks(x.len(), 2 * b * c, n * c, |b, dx| {
                let rows = b * n * c..(b + 1) * n * c;
                let a = &a[b * c..(b + 1) * c];
                rms_mod_bwd_sample(dx, &x[rows.clone()], &g[rows], a, c, self.0)
            });
            pack(dx, &acc, 2, c)
        });
        Ok((out, Shape::from(b * n * c + 2 * b * c)))
    }
}

// ------------------------------------------------------------------ qk-norm + RoPE

/// Head width, token count and the `[2, N, d]` (cos, sin) table of a qk-norm + RoPE op after
/// checking the shapes: `qkv` `[B, N, 3·H·d]`, `w` `[2, d]`.
fn qk_dims(
    op: &str,
    qkv: &Layout,
    w: &Layout,
    rope: &[usize],
    heads: usize,
) -> Result<(usize, usize)> {
    let (_, n, c3) = qkv.shape().dims3()?;
    if heads == 0 || !c3.is_multiple_of(3 * heads) || !(c3 / (3 * heads)).is_multiple_of(2) {
        bail!("{op}: {c3} qkv channels do not split into 3 × {heads} heads of an even width");
    }
    let d = c3 / (3 * heads);
    if w.dims() != [2, d] {
        bail!(
            "{op}: expected the [2, {d}] (q_norm, k_norm) weights, got {:?}",
            w.dims()
        );
    }
    if rope != [2, n, d] {
        bail!("{op}: expected a [2, {n}, {d}] (cos, sin) table for {n} tokens, got {rope:?}");
    }
    Ok((n, d))
}

simd_kernel! {
    /// One token `[q | k | v]` (`3·H·d`): q and k normalised per head with their weights
    /// (`w` = `[wq | wk]`) and rotated, pairs `(2i, 2i+1)`: `(y₀·cos₀ − y₁·sin₀,
    /// y₁·cos₁ + y₀·sin₁)`; v copied.
    fn qk_rope_row<T: F>(o: &mut [T], x: &[T], w: &[T], cos: &[T], sin: &[T], d: usize, eps: f64) {
        let c = x.len() / 3;
        for (h, (o, x)) in o[..2 * c].chunks_mut(d).zip(x[..2 * c].chunks(d)).enumerate() {
            let w = &w[(h * d / c) * d..][..d]; // heads of q use wq, heads of k use wk
            let rstd = rms_rstd(x, eps);
            for ((((o, x), w), cs), sn) in o.chunks_exact_mut(2)
                .zip(x.chunks_exact(2))
                .zip(w.chunks_exact(2))
                .zip(cos.chunks_exact(2))
                .zip(sin.chunks_exact(2))
            {
                let y0 = x[0].f() * rstd * w[0].f();
                let y1 = x[1].f() * rstd * w[1].f();
                o[0] = T::of(y0 * cs[0].f() - y1 * sn[0].f());
                o[1] = T::of(y1 * cs[1].f() + y0 * sn[1].f());
            }
        }
        o[2 * c..].copy_from_slice(&x[2 * c..]);
    }
}

simd_kernel! {
    /// One sample of the backward (`n` tokens): the rotation transposed, then the RMSNorm
    /// backward per head; v's gradient passes through. Returns `dw` = `[dwq | dwk]`.
    fn qk_rope_bwd_sample<T: F>(
        dx: &mut [T],
        x: &[T],
        g: &[T],
        w: &[T],
        cos: &[T],
        sin: &[T],
        c3: usize,
        d: usize,
        eps: f64
    ) -> Vec<f64> {
        let c = c3 / 3;
        let mut dw = vec![0.0f64; 2 * d];
        let mut gy = vec![0.0f64; d];
        for (t, ((dx, x), g)) in dx.chunks_mut(c3).zip(x.chunks(c3)).zip(g.chunks(c3)).enumerate() {
            let (cs, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
            for (h, ((dx, x), g)) in dx[..2 * c]
                .chunks_mut(d)
                .zip(x[..2 * c].chunks(d))
                .zip(g[..2 * c].chunks(d))
                .enumerate()
            {
                let part = h * d / c;
                let (w, dw) = (&w[part * d..][..d], &mut dw[part * d..][..d]);
                // dy₀ = g₀·cos₀ + g₁·sin₁, dy₁ = g₁·cos₁ − g₀·sin₀.
                for (i, gy) in gy.chunks_exact_mut(2).enumerate() {
                    let (g0, g1) = (g[2 * i].f(), g[2 * i + 1].f());
                    gy[0] = g0 * cs[2 * i].f() + g1 * sn[2 * i + 1].f();
                    gy[1] = g1 * cs[2 * i + 1].f() - g0 * sn[2 * i].f();
                }
                let rstd = rms_rstd(x, eps);
                let mut m = 0.0;
                for ((&gy, &w), &x) in gy.iter().zip(w).zip(x) {
                    m += gy * w.f() * x.f();
                }
                let m = m * rstd / d as f64;
                for ((((o, &gy), &w), &x), dw) in dx.iter_mut().zip(&gy).zip(w).zip(x).zip(dw) {
                    let xh = x.f() * rstd;
                    *o = T::of(rstd * (gy * w.f() - xh * m));
                    *dw += gy * xh;
                }
            }
            dx[2 * c..].copy_from_slice(&g[2 * c..]);
        }
        dw
    }
}

/// Forward: (qkv, w) → qkv with q and k normalised and rotated; holds the `[2, N, d]`
/// (cos, sin) table (a constant).
struct QkNormRope {
    rope: Tensor,
    heads: usize,
    eps: f64,
}
/// Backward: (qkv, w, grad) → packed (dqkv, dw).
struct QkNormRopeBwd {
    rope: Tensor,
    heads: usize,
    eps: f64,
}

/// `f(cos, sin)` on the two halves of the rope table as slices of `T`.
fn with_table<T: F, R>(rope: &Tensor, f: impl FnOnce(&[T], &[T]) -> R) -> Result<R> {
    super::with_slice::<T, _>(rope, |t| {
        let (cos, sin) = t.split_at(t.len() / 2);
        Ok(f(cos, sin))
    })
}

impl CustomOp2 for QkNormRope {
    fn name(&self) -> &'static str {
        "fused-qk-norm-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        let c3 = l1.dims()[2];
        let (rope, eps) = (&self.rope, self.eps);
        let out = with_slices2!(op, (s1, l1), (s2, l2), |x, w| {
            with_table(rope, |cos, sin| {
                new_chunks(x.len(), 0, c3, |r, o| {
                    let t = r % n;
                    let (cs, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
                    qk_rope_row(o, &x[r * c3..(r + 1) * c3], w, cs, sn, d, eps)
                })
                .0
            })?
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bwd = QkNormRopeBwd {
            rope: self.rope.clone(),
            heads: self.heads,
            eps: self.eps,
        };
        let packed = qkv.apply_op3_no_bwd(w, &grad.contiguous()?, &bwd)?;
        let mut g = split_packed(&packed, &[qkv.shape().clone(), w.shape().clone()])?.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl CustomOp3 for QkNormRopeBwd {
    fn name(&self) -> &'static str {
        "fused-qk-norm-rope-bwd"
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
        let (n, d) = qk_dims(op, l1, l2, self.rope.dims(), self.heads)?;
        if l3.dims() != l1.dims() {
            bail!("{op}: gradient {:?} vs input {:?}", l3.dims(), l1.dims());
        }
        let c3 = l1.dims()[2];
        let (rope, eps) = (&self.rope, self.eps);
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, w, g| {
            with_table(rope, |cos, sin| {
                let (dx, acc) = new_chunks(x.len(), 2 * d, n * c3, |b, dx| {
                    let rows = b * n * c3..(b + 1) * n * c3;
                    qk_rope_bwd_sample(dx, &x[rows.clone()], &g[rows], w, cos, sin, c3, d, eps)
                });
                append_sum(dx, &acc, 2 * d)
            })?
        });
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * d)))
    }
}

// ------------------------------------------------------------------ SwiGLU

simd_kernel! {
    /// Rows of `[a | b]` (`2m`) → rows of `silu(a)·b` (`m`).
    fn swiglu_rows<T: F>(o: &mut [T], x: &[T], m: usize) {
        for (o, x) in o.chunks_mut(m).zip(x.chunks(2 * m)) {
            let (a, b) = x.split_at(m);
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                let a = a.f();
                *o = T::of(a * sigmoid_pair::<T>(a).0 * b.f());
            }
        }
    }
}

simd_kernel! {
    /// Rows of the backward: `da = g·b·σ(a)·(1 + a·(1 − σ(a)))`, `db = g·a·σ(a)`.
    fn swiglu_bwd_rows<T: F>(o: &mut [T], x: &[T], g: &[T], m: usize) {
        for ((o, x), g) in o.chunks_mut(2 * m).zip(x.chunks(2 * m)).zip(g.chunks(m)) {
            let (a, b) = x.split_at(m);
            let (da, db) = o.split_at_mut(m);
            for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db).zip(a).zip(b).zip(g) {
                let (a, g) = (a.f(), g.f());
                let (s, sc) = sigmoid_pair::<T>(a);
                *da = T::of(g * b.f() * s * (1.0 + a * sc));
                *db = T::of(g * a * s);
            }
        }
    }
}

/// Rows per task of the SwiGLU kernels (a few thousand elements each).
fn swiglu_rows_per_task(m: usize) -> usize {
    (4096 / m.max(1)).max(1)
}

/// Forward: `[…, 2m]` → `[…, m]`.
struct SwiGlu;
/// Backward: (x, grad) → dx `[…, 2m]`.
struct SwiGluBwd;

fn half_last(op: &str, l: &Layout) -> Result<(usize, Shape)> {
    let mut dims = l.dims().to_vec();
    match dims.last_mut() {
        Some(m2) if *m2 % 2 == 0 && *m2 > 0 => {
            *m2 /= 2;
            Ok((*m2, Shape::from(dims)))
        }
        _ => bail!(
            "{op}: the last dimension must be even and positive, got {:?}",
            l.dims()
        ),
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (m, shape) = half_last(op, l)?;
        let rows = swiglu_rows_per_task(m);
        let out = with_slices1!(op, (s, l), |x| {
            new_chunks(x.len() / 2, 0, rows * m, |i, o| {
                swiglu_rows(o, &x[i * rows * 2 * m..], m)
            })
            .0
        });
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &SwiGluBwd)?))
    }
}

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "fused-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (m, half) = half_last(op, l1)?;
        if l2.shape() != &half {
            bail!(
                "{op}: gradient {:?} for an output of {:?}",
                l2.dims(),
                half.dims()
            );
        }
        let rows = swiglu_rows_per_task(m);
        let out = with_slices2!(op, (s1, l1), (s2, l2), |x, g| {
            new_chunks(x.len(), 0, rows * 2 * m, |i, o| {
                swiglu_bwd_rows(o, &x[i * rows * 2 * m..], &g[i * rows * m..], m)
            })
            .0
        });
        Ok((out, l1.shape().clone()))
    }
}

// ------------------------------------------------------------------ entry points

/// `RMS(x)·a + shift` over the last dimension of `x` (`[B, N, C]`, epsilon `eps`), with the
/// per-sample multiplier `a` and `shift` (`[B, C]`) broadcast over the tokens. JiT's
/// `modulate(norm(x), shift, scale)` is this with `a = weight·(1 + scale)`.
pub fn rms_norm_modulate(x: &Tensor, a: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &shift.contiguous()?, RmsModulate(eps))
}

/// JiT's qk-norm and rotary embedding on a fused projection: `qkv` `[B, N, 3·H·d]` (channels
/// (q|k|v, head, d)); q and k are RMS-normalised per head (epsilon `eps`) with the weights
/// `w` = `[wq; wk]` (`[2, d]`), then rotated by `rope` = `[cos; sin]` (`[2, N, d]`, a constant:
/// it gets no gradient); v is passed through. Returns the same layout, ready for attention.
pub fn qk_norm_rope(
    qkv: &Tensor,
    w: &Tensor,
    rope: &Tensor,
    heads: usize,
    eps: f64,
) -> Result<Tensor> {
    let op = QkNormRope {
        rope: rope.contiguous()?.detach(),
        heads,
        eps,
    };
    qkv.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// SwiGLU gate: `[…, 2m]` = `[a | b]` → `silu(a)·b` (`[…, m]`).
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SwiGlu)
}

//! The adaLN kernels of a DiT/SiT block: LayerNorm (no affine) fused with the modulation
//! `·(1 + scale) + shift`, and the gated residual `x + gate·h`. `x`, `h`: `[B, N, C]`;
//! `shift`, `scale`, `gate`: `[B, C]`, broadcast over the `N` tokens.
//!
//! Each backward is one op over (saved inputs, upstream gradient) that returns the gradients of
//! all inputs packed in one flat buffer (the `[B, N, C]` one first, then each `[B, C]` one),
//! handed out as contiguous views of it. The per-sample reductions (`Σ_n`) are accumulated in
//! f64, one sample per task.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{contiguous, lane_sum3, row_stats, simd_kernel, with_slices3, F, PAR_MIN};

/// A new `len`-element buffer (with room for `extra` more) from `f(i, chunk_i)` over its
/// `chunk`-long pieces, in parallel for large tensors (see [`crate::par::build`]); also the
/// results of `f` in order.
pub(super) fn new_chunks<T: F, R: Send>(
    len: usize,
    extra: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>) {
    let zero = T::of(0.0);
    if len >= PAR_MIN {
        let res: Vec<std::sync::Mutex<Option<R>>> = (0..len.div_ceil(chunk.max(1)))
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let out = crate::par::build(len, extra, chunk, zero, |i, o| {
            *res[i].lock().expect("one writer per chunk") = Some(f(i, o));
        });
        let res = res
            .into_iter()
            .map(|r| r.into_inner().expect("no writer panicked"))
            .map(|r| r.expect("every chunk ran"))
            .collect();
        (out, res)
    } else {
        let mut out = Vec::with_capacity(len + extra);
        out.resize(len, zero);
        let res = out
            .chunks_mut(chunk.max(1))
            .enumerate()
            .map(|(i, o)| f(i, o))
            .collect();
        (out, res)
    }
}

/// `(B, N, C)` of `big` after checking that every `small` is `[B, C]` (and `big2` is `big`'s
/// shape).
pub(super) fn bnc(
    op: &str,
    big: &Layout,
    big2: Option<&Layout>,
    small: &[&Layout],
) -> Result<(usize, usize, usize)> {
    let (b, n, c) = big.shape().dims3()?;
    if let Some(l) = big2 {
        if l.dims() != big.dims() {
            bail!("{op}: shape mismatch {:?} vs {:?}", big.dims(), l.dims());
        }
    }
    for l in small {
        if l.dims() != [b, c] {
            bail!(
                "{op}: expected a [{b}, {c}] vector per sample, got {:?}",
                l.dims()
            );
        }
    }
    Ok((b, n, c))
}

/// Write per-sample f64 accumulators (`acc[b][k·C + j]`) as `k` contiguous `[B, C]` blocks
/// after `big` (the layout the backward ops return).
pub(super) fn pack<T: F>(mut big: Vec<T>, acc: &[Vec<f64>], k: usize, c: usize) -> Vec<T> {
    // No-op for buffers made with room for the statistics (a reallocation would copy `big`).
    big.reserve(k * acc.len() * c);
    for q in 0..k {
        for a in acc {
            big.extend(a[q * c..(q + 1) * c].iter().map(|&v| T::of(v)));
        }
    }
    big
}

/// `out` followed by the `width` element-wise sums of the per-sample accumulators, added in
/// sample order (so the result does not depend on how samples were spread over threads).
pub(super) fn append_sum<T: F>(mut out: Vec<T>, acc: &[Vec<f64>], width: usize) -> Vec<T> {
    let mut sum = vec![0.0f64; width];
    for a in acc {
        sum.iter_mut().zip(a).for_each(|(s, v)| *s += v);
    }
    out.extend(sum.iter().map(|&v| T::of(v)));
    out
}

/// Consecutive views of a packed gradient buffer, one per shape.
pub(super) fn split_packed(packed: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let t = packed.narrow(0, at, s.elem_count())?.reshape(s)?;
            at += s.elem_count();
            Ok(t)
        })
        .collect()
}

/// Views of a packed gradient buffer: `[B, N, C]` then `k` blocks of `[B, C]`.
pub(super) fn unpack(
    packed: &Tensor,
    (b, n, c): (usize, usize, usize),
    k: usize,
) -> Result<Vec<Tensor>> {
    let shapes: Vec<Shape> = std::iter::once(Shape::from((b, n, c)))
        .chain((0..k).map(|_| Shape::from((b, c))))
        .collect();
    split_packed(packed, &shapes)
}

// ------------------------------------------------------------------ LayerNorm + modulation

/// `y = x̂·(1 + scale) + shift`, `x̂ = (x − mean)·rstd` per token.
pub(super) fn ln_mod_fwd<T: F>(
    x: &[T],
    shift: &[T],
    scale: &[T],
    n: usize,
    c: usize,
    eps: f64,
) -> Vec<T> {
    new_chunks(x.len(), 0, c, |r, o| {
        let b = r / n;
        let xr = &x[r * c..(r + 1) * c];
        let (sh, sc) = (&shift[b * c..(b + 1) * c], &scale[b * c..(b + 1) * c]);
        ln_mod_row(o, xr, sh, sc, eps)
    })
    .0
}

simd_kernel! {
    /// One token of [`ln_mod_fwd`].
    fn ln_mod_row<T: F>(o: &mut [T], xr: &[T], sh: &[T], sc: &[T], eps: f64) {
        let (mean, rstd) = row_stats(xr, eps);
        for (((o, &x), &sh), &sc) in o.iter_mut().zip(xr).zip(sh).zip(sc) {
            *o = T::of((x.f() - mean) * rstd * (1.0 + sc.f()) + sh.f());
        }
    }
}

/// With `ĝ = g·(1 + scale)`: `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` per token, plus
/// `residual` when it is not empty (a block half's skip connection, added while the row is
/// in cache); `dshift = Σ_n g`, `dscale = Σ_n g·x̂`; statistics recomputed from `x`.
#[allow(clippy::too_many_arguments)]
pub(super) fn ln_mod_bwd<T: F>(
    x: &[T],
    scale: &[T],
    g: &[T],
    residual: &[T],
    n: usize,
    c: usize,
    eps: f64,
) -> Vec<T> {
    let b = x.len() / (n * c).max(1);
    let (dx, acc) = new_chunks(x.len(), 2 * b * c, n * c, |b, dx| {
        let rows = b * n * c..(b + 1) * n * c;
        let sc = &scale[b * c..(b + 1) * c];
        let res = residual.get(rows.clone()).unwrap_or(&[]);
        ln_mod_bwd_sample(dx, &x[rows.clone()], &g[rows], res, sc, c, eps)
    });
    pack(dx, &acc, 2, c)
}

simd_kernel! {
    /// One sample of [`ln_mod_bwd`]: writes its `dx` rows, returns `[dshift | dscale]`.
    fn ln_mod_bwd_sample<T: F>(
        dx: &mut [T],
        x: &[T],
        g: &[T],
        res: &[T],
        sc: &[T],
        c: usize,
        eps: f64
    ) -> Vec<f64> {
        let mut acc = vec![0.0f64; 2 * c];
        let (a_sh, a_sc) = acc.split_at_mut(c);
        for (r, ((dx, xr), gr)) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)).enumerate() {
            let (mean, rstd) = row_stats(xr, eps);
            let mg = lane_sum3(gr, sc, sc, |g, s, _| g * (1.0 + s)) / c as f64;
            let mgx = lane_sum3(gr, sc, xr, |g, s, x| g * (1.0 + s) * (x - mean) * rstd) / c as f64;
            let it = dx.iter_mut().zip(xr).zip(gr).zip(sc);
            for ((((o, &x), &g), &s), (ash, asc)) in it.zip(a_sh.iter_mut().zip(a_sc.iter_mut())) {
                let (xh, g) = ((x.f() - mean) * rstd, g.f());
                *o = T::of(rstd * (g * (1.0 + s.f()) - mg - xh * mgx));
                *ash += g;
                *asc += g * xh;
            }
            if let Some(rr) = res.get(r * c..(r + 1) * c) {
                for (o, &v) in dx.iter_mut().zip(rr) {
                    *o = T::of(o.f() + v.f());
                }
            }
        }
        acc
    }
}

/// Forward: (x, shift, scale) → `LN(x)·(1 + scale) + shift`; the parameter is epsilon.
struct LnModulate(f64);
/// Backward: (x, scale, grad) → packed (dx, dshift, dscale).
struct LnModulateBwd(f64);

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "fused-layer-norm-modulate"
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
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, sh, sc| {
            ln_mod_fwd(x, sh, sc, n, c, self.0)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(scale, &grad.contiguous()?, &LnModulateBwd(self.0))?;
        let mut g = unpack(&packed, x.dims3()?, 2)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

impl CustomOp3 for LnModulateBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-modulate-bwd"
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
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, sc, g| {
            ln_mod_bwd(x, sc, g, &[], n, c, self.0)
        });
        Ok((out, Shape::from(b * n * c + 2 * b * c)))
    }
}

// ------------------------------------------------------------------ gated residual

/// `y = x + gate·h`.
pub(super) fn gated_fwd<T: F>(x: &[T], gate: &[T], h: &[T], n: usize, c: usize) -> Vec<T> {
    new_chunks(x.len(), 0, n * c, |b, o| {
        let rows = b * n * c..(b + 1) * n * c;
        gated_sample(o, &x[rows.clone()], &gate[b * c..(b + 1) * c], &h[rows], c)
    })
    .0
}

simd_kernel! {
    /// One sample of [`gated_fwd`].
    fn gated_sample<T: F>(o: &mut [T], x: &[T], gt: &[T], h: &[T], c: usize) {
        for ((o, x), h) in o.chunks_mut(c).zip(x.chunks(c)).zip(h.chunks(c)) {
            for (((o, &x), &h), &gt) in o.iter_mut().zip(x).zip(h).zip(gt) {
                *o = T::of(x.f() + gt.f() * h.f());
            }
        }
    }
}

/// `dh = g·gate`, `dgate = Σ_n g·h` (`dx = g` needs no kernel).
pub(super) fn gated_bwd<T: F>(gate: &[T], h: &[T], g: &[T], n: usize, c: usize) -> Vec<T> {
    let (dh, acc) = new_chunks(h.len(), gate.len(), n * c, |b, dh| {
        let rows = b * n * c..(b + 1) * n * c;
        gated_bwd_sample(dh, &gate[b * c..(b + 1) * c], &h[rows.clone()], &g[rows], c)
    });
    pack(dh, &acc, 1, c)
}

simd_kernel! {
    /// One sample of [`gated_bwd`]: writes its `dh` rows, returns `dgate`.
    fn gated_bwd_sample<T: F>(dh: &mut [T], gt: &[T], h: &[T], g: &[T], c: usize) -> Vec<f64> {
        let mut acc = vec![0.0f64; c];
        for ((dh, hr), gr) in dh.chunks_mut(c).zip(h.chunks(c)).zip(g.chunks(c)) {
            for ((((o, &h), &g), &gt), a) in dh.iter_mut().zip(hr).zip(gr).zip(gt).zip(&mut acc) {
                *o = T::of(g.f() * gt.f());
                *a += g.f() * h.f();
            }
        }
        acc
    }
}

/// Forward: (x, gate, h) → `x + gate·h`.
struct GatedResidual;
/// Backward: (gate, h, grad) → packed (dh, dgate).
struct GatedResidualBwd;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "fused-gated-residual"
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
        let (_, n, c) = bnc(op, l1, Some(l3), &[l2])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |x, gate, h| {
            gated_fwd(x, gate, h, n, c)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        gate: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = gate.apply_op3_no_bwd(h, &grad.contiguous()?, &GatedResidualBwd)?;
        let mut g = unpack(&packed, h.dims3()?, 1)?.into_iter();
        let (dh, dgate) = (g.next(), g.next());
        Ok((Some(grad.clone()), dgate, dh))
    }
}

impl CustomOp3 for GatedResidualBwd {
    fn name(&self) -> &'static str {
        "fused-gated-residual-bwd"
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
        let (b, n, c) = bnc(op, l2, Some(l3), &[l1])?;
        let out = with_slices3!(op, (s1, l1), (s2, l2), (s3, l3), |gate, h, g| {
            gated_bwd(gate, h, g, n, c)
        });
        Ok((out, Shape::from(b * n * c + b * c)))
    }
}

// ------------------------------------------------------------------ entry points

/// An empty tensor has nothing to fuse (and zero-length chunks cannot be split): callers fall
/// back to the composed versions.
fn empty(x: &Tensor) -> Result<bool> {
    let (b, n, c) = x.dims3()?;
    Ok(b * n * c == 0)
}

/// `LN(x)·(1 + scale) + shift`: LayerNorm over the last dimension without affine parameters
/// (epsilon `eps`) fused with the adaLN modulation; `x`: `[B, N, C]`, `shift`, `scale`:
/// `[B, C]`. The backward recomputes the row statistics.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if empty(x)? {
        return crate::nn::composed::layer_norm_modulate(x, shift, scale, eps);
    }
    x.contiguous()?
        .apply_op3(&shift.contiguous()?, &scale.contiguous()?, LnModulate(eps))
}

/// `x + gate·h` with `x`, `h`: `[B, N, C]` and `gate`: `[B, C]` broadcast over the tokens.
pub fn gated_residual(x: &Tensor, gate: &Tensor, h: &Tensor) -> Result<Tensor> {
    if empty(x)? {
        return crate::nn::composed::gated_residual(x, gate, h);
    }
    x.contiguous()?
        .apply_op3(&gate.contiguous()?, &h.contiguous()?, GatedResidual)
}

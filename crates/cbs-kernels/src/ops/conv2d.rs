//! 2-D convolution (NCHW, one group, no dilation) with bias as one graph node: per image an
//! im2col matrix and one matrix product, images in parallel; the backward recomputes each
//! image's im2col matrix for the kernel gradient and scatters `Wᵀ·g` back for the input
//! gradient. candle differentiates `conv2d` with its direct-loop `conv_transpose2d`, which
//! made up most of a classifier or UNet training step. The geometry and im2col here are also
//! the inference convolution's ([`super::conv_infer`]): one convolution for the UNet, the
//! classifier and Inception.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::gemm::{gemm_into, matmul, Threads, View};
use super::*;
use crate::par;

/// The batch is cut into at most this many groups of consecutive images; one task sums a
/// group's kernel gradients, then the groups' sums are added in order. The grouping depends
/// on the batch size only (not on how tasks land on threads).
const MAX_GROUPS: usize = 8;

/// Sizes of one convolution: input `[b, ci, h, w]`, kernel `[co, ci, kh, kw]`, stride `s`,
/// zero padding `ph` rows and `pw` columns on each side, output `[b, co, ho, wo]`. Shared by
/// the training op here and the inference driver ([`super::conv_infer`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geo {
    pub b: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub ph: usize,
    pub pw: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geo {
    /// Rows of the im2col matrix.
    pub fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    /// Output pixels per channel (its columns).
    pub fn pix(&self) -> usize {
        self.ho * self.wo
    }
    pub fn x_len(&self) -> usize {
        self.ci * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.co * self.pix()
    }

    /// Checks the shapes (`b`: the bias's, if any) and derives the output size.
    pub fn new(
        op: &str,
        x: &[usize],
        wt: &[usize],
        b: Option<&[usize]>,
        s: usize,
        (ph, pw): (usize, usize),
    ) -> Result<Self> {
        let (&[bs, ci, h, w], &[co, ci2, kh, kw]) = (x, wt) else {
            bail!("{op}: x {x:?} must be [B, C, H, W] and the weight {wt:?} [O, C, kh, kw]");
        };
        if ci != ci2 || b.is_some_and(|b| b != [co]) || s == 0 || kh == 0 || kw == 0 {
            bail!("{op}: x {x:?}, weight {wt:?}, bias {b:?}, stride {s}: shapes do not fit");
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            bail!("{op}: a {kh}×{kw} kernel does not fit a {h}×{w} input padded by ({ph}, {pw})");
        }
        let (ho, wo) = ((h + 2 * ph - kh) / s + 1, (w + 2 * pw - kw) / s + 1);
        Ok(Self {
            b: bs,
            ci,
            h,
            w,
            co,
            kh,
            kw,
            s,
            ph,
            pw,
            ho,
            wo,
        })
    }

    /// Input row of output row `oy` and kernel row `i`, if inside the image.
    fn src_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.s + i)
            .checked_sub(self.ph)
            .filter(|&v| v < self.h)
    }

    /// The output columns `lo..hi` whose input column `ox·s + j − pw` lies inside `0..w`
    /// for kernel column `j`: one contiguous run, so the copies below have no per-element
    /// bounds test.
    fn span(&self, j: usize) -> (usize, usize) {
        let lo = self.pw.saturating_sub(j).div_ceil(self.s);
        let hi = if self.w + self.pw > j {
            ((self.w + self.pw - j - 1) / self.s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Output rows `oy0..oy1` of one image `[C, H, W]` → their im2col matrix
/// `[C·kh·kw, (oy1 − oy0)·Wo]` (row `(c, i, j)`, column `(oy − oy0, ox)`), zeros where the
/// window reaches into the padding. The whole image is `oy0 = 0`, `oy1 = Ho`.
pub(crate) fn im2col<T: F>(x: &[T], g: &Geo, (oy0, oy1): (usize, usize), col: &mut [T]) {
    let (n, zero) = ((oy1 - oy0) * g.wo, T::of(0.0));
    for (r, row) in col.chunks_exact_mut(n.max(1)).take(g.k()).enumerate() {
        let (c, i, j) = (r / (g.kh * g.kw), r / g.kw % g.kh, r % g.kw);
        let (lo, hi) = g.span(j);
        for (oy, dst) in (oy0..oy1).zip(row.chunks_exact_mut(g.wo)) {
            let Some(iy) = g.src_row(oy, i) else {
                dst.fill(zero);
                continue;
            };
            let src = &x[(c * g.h + iy) * g.w..][..g.w];
            dst[..lo].fill(zero);
            dst[hi..].fill(zero);
            if lo == hi {
                continue;
            }
            // Input of output column `o`: `o·s + j − pw` (≥ 0 from `lo` on).
            let first = lo * g.s + j - g.pw;
            if g.s == 1 {
                dst[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
            } else {
                for (d, &v) in dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(g.s)) {
                    *d = v;
                }
            }
        }
    }
}

/// Adds an im2col-shaped gradient back onto the image it came from.
fn col2im_add<T: F>(col: &[T], g: &Geo, dx: &mut [T]) {
    for (r, row) in col.chunks_exact(g.pix()).enumerate() {
        let (c, i, j) = (r / (g.kh * g.kw), r / g.kw % g.kh, r % g.kw);
        for (oy, src) in row.chunks_exact(g.wo).enumerate() {
            let Some(iy) = g.src_row(oy, i) else {
                continue;
            };
            let dst = &mut dx[(c * g.h + iy) * g.w..][..g.w];
            let (lo, hi) = g.span(j);
            if lo == hi {
                continue;
            }
            let first = lo * g.s + j - g.pw;
            if g.s == 1 {
                for (d, &v) in dst[first..first + hi - lo].iter_mut().zip(&src[lo..hi]) {
                    *d = T::of(d.f() + v.f());
                }
            } else {
                let dst = dst[first..].iter_mut().step_by(g.s);
                for (d, &v) in dst.zip(&src[lo..hi]) {
                    *d = T::of(d.f() + v.f());
                }
            }
        }
    }
}

/// Whether to run one image per task with single-threaded products (else images one after
/// another, each product spread over the threads).
fn per_image(g: &Geo) -> bool {
    g.b >= par::threads()
}

fn fwd<T: F>(x: &[T], w: &[T], bias: &[T], g: &Geo) -> Vec<T> {
    let (k, pix) = (g.k(), g.pix());
    let one = |n: usize, out: &mut [T], th: Threads| {
        let mut col = vec![T::of(0.0); k * pix];
        im2col(&x[n * g.x_len()..][..g.x_len()], g, (0, g.ho), &mut col);
        for (row, &b) in out.chunks_exact_mut(pix).zip(bias) {
            row.fill(b);
        }
        let cv = View::rows(&col, k, pix, pix);
        gemm_into(out, pix, View::rows(w, g.co, k, k), cv, true, th);
    };
    if per_image(g) {
        par::build(g.b * g.out_len(), 0, g.out_len(), T::of(0.0), |n, out| {
            one(n, out, Threads::One)
        })
    } else {
        let mut out = vec![T::of(0.0); g.b * g.out_len()];
        for (n, o) in out.chunks_exact_mut(g.out_len().max(1)).enumerate() {
            one(n, o, Threads::All);
        }
        out
    }
}

/// One image group's kernel and bias gradients, filled by the task that ran the group.
type Slot<T> = std::sync::Mutex<Option<(Vec<T>, Vec<f64>)>>;

/// `(dx, dW, db)` from the output gradient `go` `[B, O, Ho, Wo]`.
fn bwd<T: F>(x: &[T], w: &[T], go: &[T], g: &Geo) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (k, pix, xl, ol) = (g.k(), g.pix(), g.x_len(), g.out_len());
    let per = g.b.div_ceil(MAX_GROUPS).max(1); // images per group
    let groups = g.b.div_ceil(per);
    // Groups in parallel when there are enough of them for the threads; otherwise (a batch of
    // 8 is one group) groups in turn, each product spread over the threads. Either way every
    // sum runs in the same order.
    let par_groups = groups >= par::threads();
    let th = if par_groups {
        Threads::One
    } else {
        Threads::All
    };
    // One group of images: their input gradients written into `dx`, their kernel and bias
    // gradients summed and returned (the kernel's transposed, `[k, O]`).
    let group = |gi: usize, dx: &mut [T]| -> (Vec<T>, Vec<f64>) {
        let (mut dwt, mut db) = (vec![T::of(0.0); k * g.co], vec![0.0f64; g.co]);
        let mut col = vec![T::of(0.0); k * pix];
        for (j, dxn) in dx.chunks_exact_mut(xl.max(1)).enumerate() {
            let n = gi * per + j;
            let gn = &go[n * ol..][..ol];
            im2col(&x[n * xl..][..xl], g, (0, g.ho), &mut col);
            let gv = View::rows(gn, g.co, pix, pix);
            // dWᵀ = col·gᵀ: the large im2col matrix is read row by row, and only the small
            // gradient is packed transposed (as dW = g·colᵀ, packing colᵀ took 7% of a step).
            gemm_into(
                &mut dwt,
                g.co,
                View::rows(&col, k, pix, pix),
                gv.t(),
                true,
                th,
            );
            for (d, row) in db.iter_mut().zip(gn.chunks_exact(pix)) {
                *d += row.iter().map(|v| v.f()).sum::<f64>();
            }
            let dcol = matmul(View::rows(w, g.co, k, k).t(), gv, th); // Wᵀ·g: [k, pix]
            col2im_add(&dcol, g, dxn);
        }
        (dwt, db)
    };
    let mut parts: Vec<Slot<T>> = (0..groups).map(|_| Slot::new(None)).collect();
    let dx = if par_groups {
        par::build(g.b * xl, 0, per * xl, T::of(0.0), |gi, dx| {
            *parts[gi].lock().expect("one writer per group") = Some(group(gi, dx));
        })
    } else {
        let mut dx = vec![T::of(0.0); g.b * xl];
        for (gi, d) in dx.chunks_mut((per * xl).max(1)).enumerate() {
            *parts[gi].get_mut().expect("not poisoned") = Some(group(gi, d));
        }
        dx
    };
    // Sums in the groups' `[k, O]` layout (contiguous adds), transposed once at the end.
    let (mut dwt, mut db) = (vec![0.0f64; k * g.co], vec![0.0f64; g.co]);
    for p in parts.iter_mut() {
        let (pw, pb) = p
            .get_mut()
            .expect("no group panicked")
            .take()
            .expect("every group ran");
        dwt.iter_mut().zip(&pw).for_each(|(a, v)| *a += v.f());
        db.iter_mut().zip(&pb).for_each(|(a, v)| *a += v);
    }
    let mut dw = vec![T::of(0.0); g.co * k];
    for (kk, row) in dwt.chunks_exact(g.co.max(1)).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dw[o * k + kk] = T::of(v); // entry (kk, o) of dWᵀ
        }
    }
    (dx, dw, db.into_iter().map(T::of).collect())
}

/// The graph node: (x, weight, bias) → output.
struct Conv {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "fused-conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let pad = (self.padding, self.padding);
        let g = Geo::new(op, lx.dims(), lw.dims(), Some(lb.dims()), self.stride, pad)?;
        let out = with_slices3!(op, (sx, lx), (sw, lw), (sb, lb), |x, w, b| fwd(x, w, b, &g));
        Ok((out, Shape::from((g.b, g.co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.name();
        let pad = (self.padding, self.padding);
        let g = Geo::new(op, x.dims(), w.dims(), Some(b.dims()), self.stride, pad)?;
        let (x, w, go) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let dev = x.device().clone();
        with_tensors3!(op, (&x, &w, &go), |xs, ws, gs| {
            let (dx, dw, db) = bwd(xs, ws, gs, &g);
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), &dev)?),
                Some(Tensor::from_vec(dw, w.shape(), &dev)?),
                Some(Tensor::from_vec(db, g.co, &dev)?),
            ))
        })
    }
}

/// `conv2d(x, weight, stride, padding) + bias` for `x` `[B, C, H, W]`, weight `[O, C, kh, kw]`,
/// bias `[O]` (one group, no dilation): CPU f32/f64 only.
pub fn conv2d(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Conv { stride, padding })
}

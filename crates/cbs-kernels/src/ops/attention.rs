//! Multi-head self-attention from a fused qkv projection, as one node of the autograd graph.
//!
//! Composed, the attention core is a dozen graph nodes (reshape, permute, three `get`s and
//! copies, the scaling, two matrix products, the softmax, a transpose and a reshape), and candle's
//! backward gives every input of every node a zero-filled gradient buffer plus an add. candle's
//! batched matmul also dispatches each `N×N` product of each (image, head) to the thread pool
//! on its own, which for ViT-sized heads costs more than the product.
//!
//! Here one task per image runs all of its heads with single-threaded products that read
//! `q`, `k`, `v` in place from the `[N, 3C]` rows (strided views, no permute copies) and write
//! the output and the qkv gradient straight into their `[N, C]` / `[N, 3C]` layouts. The
//! forward keeps the attention weights `P` (`[B, H, N, N]`, as the composed graph does); the
//! backward is four products and one softmax-backward pass per head.
//!
//! On CUDA (the `cuda` feature; f32 and bf16, head width 1…128, see [`cuda_supports`]) the same
//! node runs the memory-efficient kernels of `attention.cu` (launch code in
//! `attention_cuda.rs`): FlashAttention-2 tiles with an online softmax, no `N×N` matrix; the
//! forward keeps the per-row log-sum-exp (`[B, H, N]`, f32) instead of `P`, and the backward
//! recomputes `P` tile by tile. **Those kernels are compiled but unverified until
//! `scripts/gpu-check.sh` runs on a GPU** (their logic passed a CPU emulation,
//! `tests/cuda_emu/`).

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::gemm::{gemm_into, Threads, View};
use super::{contiguous, lane_sum, lane_sum3, simd_kernel, with_slice, with_tensors3, F, LANES};

/// The largest head width the CUDA kernels take.
pub const CUDA_MAX_HEAD_DIM: usize = 128;

/// Whether the CUDA kernels take a qkv of shape `dims` (`[B, N, 3·H·d]`) with `heads` heads:
/// `1 ≤ d ≤` [`CUDA_MAX_HEAD_DIM`], B and H at most 65535 (grid limits), N ≥ 1 and below 2³¹.
/// `Err` says why not; callers then take the composed attention
/// ([`crate::Kernels::fuses_attention`] checks this).
pub fn cuda_supports(dims: &[usize], heads: usize) -> std::result::Result<(), String> {
    let &[b, n, c3] = dims else {
        return Err(format!("qkv must be [B, N, 3C], got {dims:?}"));
    };
    if heads == 0 || c3 == 0 || !c3.is_multiple_of(3 * heads) {
        return Err(format!("{c3} channels are not 3 × {heads} heads"));
    }
    let d = c3 / (3 * heads);
    if d > CUDA_MAX_HEAD_DIM {
        return Err(format!(
            "head width {d}: the CUDA kernel takes 1..={CUDA_MAX_HEAD_DIM} (use the composed \
             attention)"
        ));
    }
    if b == 0 || n == 0 {
        return Err("empty input".into());
    }
    if b > 65535 || heads > 65535 || n > i32::MAX as usize {
        return Err(format!(
            "{b} images, {heads} heads, {n} tokens exceed the launch limits"
        ));
    }
    Ok(())
}

/// Sizes: batch, tokens, heads, head width (`C = H·d`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub b: usize,
    pub n: usize,
    pub h: usize,
    pub d: usize,
}

impl Dims {
    fn c(&self) -> usize {
        self.h * self.d
    }
}

simd_kernel! {
    /// In place: `row ← softmax(scale·row)` for each `n`-long row of `s`.
    fn softmax_rows<T: F>(s: &mut [T], n: usize, scale: f64) {
        for row in s.chunks_mut(n) {
            let mut m = [f64::NEG_INFINITY; LANES];
            let split = row.len() - row.len() % LANES;
            for c in row[..split].chunks_exact(LANES) {
                for l in 0..LANES {
                    m[l] = m[l].max(c[l].f());
                }
            }
            let max = row[split..].iter().fold(m.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)), |a, v| a.max(v.f()));
            for x in row.iter_mut() {
                *x = T::of(T::exp_k(scale * (x.f() - max)));
            }
            let inv = 1.0 / lane_sum(row, |v| v);
            for x in row.iter_mut() {
                *x = T::of(x.f() * inv);
            }
        }
    }
}

simd_kernel! {
    /// In place: `dp ← dS = scale·P ⊙ (dP − Σ dP·P)`, row by row (`n` long).
    fn softmax_bwd_rows<T: F>(dp: &mut [T], p: &[T], n: usize, scale: f64) {
        for (g, p) in dp.chunks_mut(n).zip(p.chunks(n)) {
            let dot = lane_sum3(g, p, p, |g, p, _| g * p);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = T::of(scale * p.f() * (g.f() - dot));
            }
        }
    }
}

/// Whether to run one image per task with single-threaded products, or images one after
/// another with products spread over the threads (fewer images than threads).
fn per_image(b: usize) -> bool {
    b >= crate::par::threads()
}

/// One image: `qkv` `[N, 3C]` → `out` `[N, C]`, `p` `[H, N, N]`.
fn fwd_image<T: F>(qkv: &[T], out: &mut [T], p: &mut [T], dm: Dims, scale: f64, th: Threads) {
    let Dims { n, d, .. } = dm;
    let c = dm.c();
    let part = |j: usize, hi: usize| View::rows(&qkv[j * c + hi * d..], n, d, 3 * c);
    for (hi, s) in p.chunks_mut(n * n).enumerate() {
        gemm_into(s, n, part(0, hi), part(1, hi).t(), false, th); // q·kᵀ
        softmax_rows(s, n, scale);
        let pv = View::rows(&*s, n, n, n);
        gemm_into(&mut out[hi * d..], c, pv, part(2, hi), false, th); // P·v
    }
}

/// One image: the qkv gradient `dqkv` `[N, 3C]` from `go` `[N, C]`; `tmp` is `N×N` scratch.
#[allow(clippy::too_many_arguments)]
fn bwd_image<T: F>(
    qkv: &[T],
    p: &[T],
    go: &[T],
    dqkv: &mut [T],
    tmp: &mut [T],
    dm: Dims,
    scale: f64,
    th: Threads,
) {
    let Dims { n, d, .. } = dm;
    let c = dm.c();
    let part = |j: usize, hi: usize| View::rows(&qkv[j * c + hi * d..], n, d, 3 * c);
    for (hi, p) in p.chunks(n * n).enumerate() {
        let pv = View::rows(p, n, n, n);
        let dout = View::rows(&go[hi * d..], n, d, c);
        gemm_into(&mut dqkv[2 * c + hi * d..], 3 * c, pv.t(), dout, false, th); // dv = Pᵀ·dO
        gemm_into(tmp, n, dout, part(2, hi).t(), false, th); // dP = dO·vᵀ
        softmax_bwd_rows(tmp, p, n, scale);
        let ds = View::rows(&*tmp, n, n, n);
        gemm_into(&mut dqkv[hi * d..], 3 * c, ds, part(1, hi), false, th); // dq = dS·k
        gemm_into(
            &mut dqkv[c + hi * d..],
            3 * c,
            ds.t(),
            part(0, hi),
            false,
            th,
        ); // dk = dSᵀ·q
    }
}

pub(super) fn fwd<T: F>(qkv: &[T], dm: Dims, scale: f64) -> (Vec<T>, Vec<T>) {
    let Dims { b, n, h, .. } = dm;
    let c = dm.c();
    let (xs, os, ps) = (n * 3 * c, n * c, h * n * n);
    let zero = T::of(0.0);
    if per_image(b) {
        return crate::par::build2((b * os, os, zero), (b * ps, ps, zero), |i, o, p| {
            fwd_image(&qkv[i * xs..(i + 1) * xs], o, p, dm, scale, Threads::One)
        });
    }
    let mut out = vec![zero; b * os];
    let mut p = vec![zero; b * ps];
    {
        qkv.chunks(xs)
            .zip(out.chunks_mut(os))
            .zip(p.chunks_mut(ps))
            .for_each(|((x, o), p)| fwd_image(x, o, p, dm, scale, Threads::All));
    }
    (out, p)
}

pub(super) fn bwd<T: F>(qkv: &[T], p: &[T], go: &[T], dm: Dims, scale: f64) -> Vec<T> {
    let Dims { b, n, h, .. } = dm;
    let c = dm.c();
    let (xs, os, ps) = (n * 3 * c, n * c, h * n * n);
    if per_image(b) {
        return crate::par::build(b * xs, 0, xs, T::of(0.0), |i, dx| {
            let mut tmp = vec![T::of(0.0); n * n];
            let (x, p, g) = (&qkv[i * xs..], &p[i * ps..], &go[i * os..]);
            bwd_image(
                &x[..xs],
                &p[..ps],
                &g[..os],
                dx,
                &mut tmp,
                dm,
                scale,
                Threads::One,
            )
        });
    }
    let mut dqkv = vec![T::of(0.0); b * n * 3 * c];
    {
        let mut tmp = vec![T::of(0.0); n * n];
        let items = qkv.chunks(xs).zip(p.chunks(ps)).zip(go.chunks(os));
        for (((x, p), g), dx) in items.zip(dqkv.chunks_mut(xs)) {
            bwd_image(x, p, g, dx, &mut tmp, dm, scale, Threads::All);
        }
    }
    dqkv
}

/// The attention node over `qkv` `[B, N, 3C]`; its forward keeps `P` for the backward (on
/// CUDA: the log-sum-exp `[B, H, N]`).
struct Attention {
    heads: usize,
    scale: f64,
    p: Mutex<Option<Tensor>>,
}

impl Attention {
    fn dims(&self, shape: &[usize]) -> Result<Dims> {
        let &[b, n, c3] = shape else {
            bail!("attention: qkv must be [B, N, 3C], got {shape:?}");
        };
        let h = self.heads;
        if h == 0 || c3 % (3 * h) != 0 {
            bail!("attention: {c3} channels are not 3 × {h} heads");
        }
        Ok(Dims {
            b,
            n,
            h,
            d: c3 / 3 / h,
        })
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dm = self.dims(l.dims())?;
        let p_shape = (dm.b, dm.h, dm.n, dm.n);
        let (out, p) = match s {
            CpuStorage::F32(_) => {
                let (o, p) = fwd::<f32>(contiguous(s, l, op)?, dm, self.scale);
                (
                    CpuStorage::F32(o),
                    Tensor::from_vec(p, p_shape, &candle_core::Device::Cpu)?,
                )
            }
            CpuStorage::F64(_) => {
                let (o, p) = fwd::<f64>(contiguous(s, l, op)?, dm, self.scale);
                (
                    CpuStorage::F64(o),
                    Tensor::from_vec(p, p_shape, &candle_core::Device::Cpu)?,
                )
            }
            _ => bail!("{op}: only f32 and f64 are supported"),
        };
        *self.p.lock().expect("attention weights lock") = Some(p);
        Ok((out, Shape::from((dm.b, dm.n, dm.c()))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dm = self.dims(l.dims())?;
        let (out, lse) = super::attention_cuda::fwd(s, l, dm, self.scale)?;
        *self.p.lock().expect("attention weights lock") = Some(lse);
        Ok((out, Shape::from((dm.b, dm.n, dm.c()))))
    }

    fn bwd(&self, qkv: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dm = self.dims(qkv.dims())?;
        let Some(p) = self.p.lock().expect("attention weights lock").clone() else {
            bail!("fused-attention: backward before forward");
        };
        #[cfg(feature = "cuda")]
        if qkv.device().is_cuda() {
            // `p` is the log-sum-exp; the kernels recompute P from it and q, k.
            let op = super::attention_cuda::AttentionBwd {
                dm,
                scale: self.scale,
                lse: p,
            };
            let (qkv, out, go) = (qkv.contiguous()?, res.contiguous()?, grad.contiguous()?);
            return Ok(Some(qkv.apply_op3_no_bwd(&out, &go, &op)?));
        }
        #[cfg(not(feature = "cuda"))]
        let _ = res;
        let (qkv, go) = (qkv.contiguous()?, grad.contiguous()?);
        let dev = qkv.device().clone();
        let dqkv = with_tensors3!("fused-attention", (&qkv, &p, &go), |x, p, g| {
            Tensor::from_vec(bwd(x, p, g, dm, self.scale), qkv.shape(), &dev)
        })?;
        Ok(Some(dqkv))
    }
}

/// `softmax(scale·q·kᵀ)·v` over `heads` heads, from `qkv` `[B, N, 3C]` (channels ordered
/// (q|k|v, head, d), as PyTorch's `qkv.reshape(B, N, 3, H, d)`) to `[B, N, C]` (channels
/// (head, d)). One graph node; CPU, f32/f64; with the `cuda` feature also CUDA, f32/bf16, for
/// the shapes [`cuda_supports`] accepts.
pub fn attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(Attention {
        heads,
        scale,
        p: Mutex::new(None),
    })
}

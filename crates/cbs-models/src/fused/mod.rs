//! Fused CPU kernels with hand-written backward passes for the element-wise and row-wise
//! operations that dominate a CPU training step (measured: candle's composed GELU and softmax
//! backward cost more than the matrix products, and every op of a composed graph costs its
//! backward a zero-filled gradient buffer plus an add).
//!
//! Each forward is one pass over contiguous memory; each backward is one more pass that
//! recomputes what it needs instead of keeping intermediates alive. The callers in
//! [`crate::nn`] use them on the CPU for f32/f64 and fall back to the composed (autograd)
//! versions elsewhere. Gradients of gradients are not provided.
//!
//! Here: GELU (tanh), SiLU, softmax and LayerNorm (one input each); `adaln`: LayerNorm fused
//! with the adaLN modulation, and the gated residual (three inputs each); `linear`: a linear
//! layer as one graph node, and a bias addition; `attention`: multi-head self-attention from a
//! fused qkv projection as one graph node; `jit`: JiT's RMSNorm + modulation, qk-norm + RoPE
//! and SwiGLU; `group_norm`: GroupNorm with affine weight and bias, optionally followed by
//! SiLU (the UNet's). The MSE loss kernel lives in `cbs_flow::interpolant` (it is the
//! trainer's loss, and cbs-flow cannot depend on this crate).

mod adaln;
mod attention;
mod block;
mod conv;
mod gemm;
pub use gemm::product;
mod group_norm;
pub use group_norm::group_norm;
mod jit;
pub use jit::{qk_norm_rope, rms_norm_modulate, swiglu};
mod linear;

pub use adaln::{gated_residual, layer_norm_modulate};
pub use attention::attention;
pub use block::{attention_half, mlp_half};
pub use conv::conv2d;
pub use linear::{bias_add, linear};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
/// Below this many elements the work is not split across threads.
const PAR_MIN: usize = 1 << 14;

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `f` on the CPU slice of a contiguous tensor (the backward passes read their saved
/// tensors this way, outside the graph).
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*st else {
        candle_core::bail!("fused kernels: CPU tensors only");
    };
    f(contiguous::<T>(s, l, "fused kernels")?)
}

/// A new `len`-element buffer from `f(out_row, input_rows)` over matching `row`-long chunks of
/// the output and `inputs`, in parallel for large tensors (each output chunk zeroed in the task
/// that fills it: see [`crate::par::build`]).
fn new_rows<T: F>(
    len: usize,
    row: usize,
    inputs: &[&[T]],
    f: impl Fn(&mut [T], &[&[T]]) + Sync,
) -> Vec<T> {
    let run = |i: usize, o: &mut [T]| {
        let ins: Vec<&[T]> = inputs.iter().map(|x| &x[i * row..(i + 1) * row]).collect();
        f(o, &ins)
    };
    if len >= PAR_MIN {
        crate::par::build(len, 0, row, T::of(0.0), run)
    } else {
        let mut out = vec![T::of(0.0); len];
        out.chunks_mut(row.max(1))
            .enumerate()
            .for_each(|(i, o)| run(i, o));
        out
    }
}

/// Run `$body` with `$a` bound to the contiguous f32 or f64 slice of the storage, wrapping the
/// `Vec` it returns into the matching `CpuStorage`.
macro_rules! with_slices1 {
    ($op:expr, ($s1:expr, $l1:expr), |$a:ident| $body:expr) => {
        match $s1 {
            CpuStorage::F32(_) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $op),
        }
    };
}
pub(crate) use with_slices1;

/// [`with_slices1`] over two storages of one dtype.
macro_rules! with_slices2 {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                let $b = contiguous::<f32>($s2, $l2, $op)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                let $b = contiguous::<f64>($s2, $l2, $op)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 (both the same) are supported", $op),
        }
    };
}
pub(crate) use with_slices2;

/// Run `$body` with `$a`, `$b`, `$c` bound to the contiguous f32 or f64 slices of the three
/// storages, wrapping the `Vec` it returns into the matching `CpuStorage`.
macro_rules! with_slices3 {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), ($s3:expr, $l3:expr),
     |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                let $b = contiguous::<f32>($s2, $l2, $op)?;
                let $c = contiguous::<f32>($s3, $l3, $op)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                let $b = contiguous::<f64>($s2, $l2, $op)?;
                let $c = contiguous::<f64>($s3, $l3, $op)?;
                CpuStorage::F64($body)
            }
            _ => bail!("{}: only f32 and f64 (all the same) are supported", $op),
        }
    };
}
pub(crate) use with_slices3;

/// Run `$body` (returning `Result`) with `$a`, `$b`, `$c` bound to the contiguous f32 or f64
/// slices of three CPU tensors of one dtype (the backward passes' saved tensors).
macro_rules! with_tensors3 {
    ($op:expr, ($ta:expr, $tb:expr, $tc:expr), |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($ta.dtype(), $tb.dtype(), $tc.dtype()) {
            (DType::F32, DType::F32, DType::F32) => with_slice::<f32, _>($ta, |$a| {
                with_slice::<f32, _>($tb, |$b| with_slice::<f32, _>($tc, |$c| $body))
            }),
            (DType::F64, DType::F64, DType::F64) => with_slice::<f64, _>($ta, |$a| {
                with_slice::<f64, _>($tb, |$b| with_slice::<f64, _>($tc, |$c| $body))
            }),
            dts => bail!(
                "{}: only f32 and f64 (all the same) are supported, got {dts:?}",
                $op
            ),
        }
    };
}
pub(crate) use with_tensors3;

/// Float arithmetic in f64 for both storage types keeps one kernel per op; the hottest
/// element-wise kernel (GELU, over the MLP's `4C` channels) has an f32-arithmetic version for
/// f32 storage, twice as many lanes per vector instruction.
trait F: WithDType + Send + Sync + Copy {
    fn f(self) -> f64;
    fn of(v: f64) -> Self;
    /// `e^v` at the storage type's precision: libm's for f64; for f32 [`exp_lo`], which has
    /// no call and no branch, so the kernels' loops vectorise.
    fn exp_k(v: f64) -> f64;

    /// `o = x·σ(2u)`, `u = √(2/π)·(x + c·x³)` (GELU, tanh form).
    fn gelu_row(o: &mut [Self], x: &[Self]) {
        for (o, &x) in o.iter_mut().zip(x) {
            let x = x.f();
            let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
            *o = Self::of(x * sigmoid_pair::<Self>(2.0 * u).0);
        }
    }

    /// `o = g·(s + 2·x·u'·s·(1 − s))`, `s = σ(2u)`, `u' = √(2/π)·(1 + 3c·x²)`.
    fn gelu_bwd_row(o: &mut [Self], x: &[Self], g: &[Self]) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            let x = x.f();
            let (s, sc) = sigmoid_pair::<Self>(2.0 * SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
            *o = Self::of(g.f() * (s + 2.0 * x * du * s * sc));
        }
    }
}
impl F for f32 {
    fn f(self) -> f64 {
        self as f64
    }
    fn of(v: f64) -> Self {
        v as f32
    }
    fn exp_k(v: f64) -> f64 {
        exp_lo(v)
    }

    fn gelu_row(o: &mut [f32], x: &[f32]) {
        gelu_row_f32(o, x)
    }

    fn gelu_bwd_row(o: &mut [f32], x: &[f32], g: &[f32]) {
        gelu_bwd_row_f32(o, x, g)
    }
}

/// Defines `fn $name(args)` running `$body` compiled for AVX-512F, else AVX2, when the CPU has
/// them (checked at run time; the default x86-64 target assumes SSE2 only, and these loops
/// vectorise to 4× / 2× its lanes: on sit-s-4 AVX2 → AVX-512 took another 4–5% off a step).
/// The body is an `#[inline(always)]` function, so it is compiled inside each wrapper with
/// that wrapper's instruction set. Exported for the optimizer's in-place kernels (`cbs-train`).
#[doc(hidden)]
#[macro_export]
macro_rules! simd_kernel {
    ($(#[$m:meta])* fn $name:ident$(<$g:ident: $bound:path>)?($($arg:ident: $ty:ty),*)
     $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
                    body$(::<$g>)?($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512$(::<$g>)?($($arg),*) };
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2$(<$g: $bound>)?($($arg: $ty),*) $(-> $ret)? {
                    body$(::<$g>)?($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2$(::<$g>)?($($arg),*) };
                }
            }
            body$(::<$g>)?($($arg),*)
        }
    };
}
pub(crate) use crate::simd_kernel;

/// Lanes of the partial sums in [`lane_sum3`] (one AVX-512 register of f64).
const LANES: usize = 8;

/// `Σ_i f(a_i, b_i, c_i)` in f64 over the common length, with `LANES` interleaved partial
/// sums: a single running sum is a chain of dependent additions the compiler must keep in
/// order, which stops the loop from vectorising.
#[inline(always)]
fn lane_sum3<T: F>(a: &[T], b: &[T], c: &[T], f: impl Fn(f64, f64, f64) -> f64) -> f64 {
    let n = a.len().min(b.len()).min(c.len());
    let split = n - n % LANES;
    let mut acc = [0.0f64; LANES];
    let body = a[..split].chunks_exact(LANES);
    for ((a, b), c) in body
        .zip(b[..split].chunks_exact(LANES))
        .zip(c[..split].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += f(a[l].f(), b[l].f(), c[l].f());
        }
    }
    let tail: f64 = (split..n).map(|i| f(a[i].f(), b[i].f(), c[i].f())).sum();
    acc.iter().sum::<f64>() + tail
}

/// `Σ_i f(x_i)` (see [`lane_sum3`]).
#[inline(always)]
fn lane_sum<T: F>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    lane_sum3(x, x, x, |v, _, _| f(v))
}

simd_kernel! {
    /// [`F::gelu_row`] in f32 arithmetic.
    fn gelu_row_f32(o: &mut [f32], x: &[f32]) {
        const S2: f32 = 2.0 * SQRT_2_OVER_PI as f32;
        const C: f32 = GELU_C as f32;
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * sigmoid_pair_f32(S2 * (x + C * x * x * x)).0;
        }
    }
}

simd_kernel! {
    /// [`F::gelu_bwd_row`] in f32 arithmetic.
    fn gelu_bwd_row_f32(o: &mut [f32], x: &[f32], g: &[f32]) {
        const S: f32 = SQRT_2_OVER_PI as f32;
        const C: f32 = GELU_C as f32;
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            let (s, sc) = sigmoid_pair_f32(2.0 * S * (x + C * x * x * x));
            let du = S * (1.0 + 3.0 * C * x * x);
            *o = g * (s + 2.0 * x * du * s * sc);
        }
    }
}

impl F for f64 {
    fn f(self) -> f64 {
        self
    }
    fn of(v: f64) -> Self {
        v
    }
    fn exp_k(v: f64) -> f64 {
        v.exp()
    }
}

/// `e^x` at f32 precision, as the f32 kernels compute it (see `exp_lo`): largest relative
/// error about 1e-7, no call and no branch.
pub fn exp_f32(x: f32) -> f32 {
    exp_lo(x as f64) as f32
}

/// `e^r` for |r| ≤ ln 2 / 2: Cephes' `expf` polynomial (both exp kernels reduce to this).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn expf_poly(r: f32) -> f32 {
    let mut p: f32 = 1.987_569_150_0e-4;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    p * r * r + r + 1.0
}

/// `e^v` to about 1e-7 relative error (f32 precision), over the whole f64 range: `v = n·ln 2
/// + r` in f64 (`n` rounded with the 1.5·2⁵² trick, so an f64 argument loses nothing), Cephes'
/// `expf` polynomial for `e^r` (|r| ≤ ln 2 / 2) in f32, and `2^n` assembled from bits. No call
/// and no branch, so loops over it vectorise (libm's f64 `tanh` behind GELU took a fifth of a
/// sit-mini training step). `v` is clamped to [−708, 709]; NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp_lo(v: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2: f64 = std::f64::consts::LN_2;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5·2⁵²: adding it rounds to an integer
    let v = v.clamp(-708.0, 709.0);
    let k = v * LOG2E + ROUND;
    let n = k - ROUND;
    let e = expf_poly((v - n * LN2) as f32);
    // The low bits of `k` hold n (two's complement, offset by ROUND's bits).
    let n_int = k.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f64::from_bits(n_int.wrapping_add(1023) << 52);
    e as f64 * two_n
}

/// `(σ(v), 1 − σ(v))`, both to full relative precision (no cancellation in either tail, no
/// overflow), from one `exp` at the storage precision. Always inlined, so that the vectorised
/// kernels calling it stay vectorised (as a call it was a tenth of the fused GroupNorm).
#[inline(always)]
fn sigmoid_pair<T: F>(v: f64) -> (f64, f64) {
    let e = T::exp_k(-v.abs());
    let a = 1.0 / (1.0 + e);
    let b = e * a;
    if v >= 0.0 {
        (a, b)
    } else {
        (b, a)
    }
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// One fused operation: a forward `CustomOp1` whose backward is a `CustomOp2` over
/// (`saved`, upstream gradient), where `saved` is the forward's input (`"arg"`) or output
/// (`"res"`).
/// `$ffn(x, layout, p)` and `$bfn(saved, grad, layout, p)` are the kernels; `p` is the op's
/// scalar parameter (LayerNorm's epsilon; unused by the others).
macro_rules! fused_op {
    ($fwd:ident, $bwd:ident, $name:literal, $ffn:ident, $bfn:ident, $saved:literal) => {
        struct $fwd(f64);
        struct $bwd(f64);

        impl CustomOp1 for $fwd {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
                let out = with_slices1!($name, (s, l), |x| $ffn(x, l, self.0));
                Ok((out, l.shape().clone()))
            }
            fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
                let saved = if $saved == "res" { res } else { arg };
                Ok(Some(
                    saved.apply_op2_no_bwd(&grad.contiguous()?, &$bwd(self.0))?,
                ))
            }
        }

        impl CustomOp2 for $bwd {
            fn name(&self) -> &'static str {
                concat!($name, "-bwd")
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let name = self.name();
                if l1.shape() != l2.shape() {
                    candle_core::bail!(
                        "{name}: shape mismatch {:?} vs {:?}",
                        l1.shape(),
                        l2.shape()
                    );
                }
                let out = with_slices2!(name, (s1, l1), (s2, l2), |a, g| $bfn(a, g, l1, self.0));
                Ok((out, l1.shape().clone()))
            }
        }
    };
}

// ---------------------------------------------------------------- GELU (tanh approximation)

// `0.5·x·(1 + tanh(u)) = x·σ(2u)` and `1 − tanh²(u) = 4·σ(2u)·(1 − σ(2u))`: the sigmoid form
// needs one `exp` and has no cancellation where `tanh(u)` is close to −1.

fn gelu_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    new_rows(x.len(), last_dim(l), &[x], |o, i| T::gelu_row(o, i[0]))
}

/// `dx = g·(s + 2·x·u'·s·(1 − s))`, `s = σ(2u)`, `u' = √(2/π)·(1 + 3c·x²)`.
fn gelu_bwd<T: F>(x: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        T::gelu_bwd_row(o, i[0], i[1])
    })
}

/// `e^x` for `x ≤ 0` in f32 arithmetic (Cephes' `expf`: Cody–Waite reduction, degree-5
/// polynomial; relative error about 1e-7), branch-free so that loops over it vectorise even
/// at SSE2 width. Arguments below −87 give `e^−87` instead of a denormal.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp_neg_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let k = x * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let e = expf_poly(x - n * 0.693_359_375 + n * 2.121_944_4e-4);
    // The low bits of `k` hold n (offset by ROUND's bits): 2ⁿ from integer operations only.
    let n_int = k.to_bits().wrapping_sub(ROUND.to_bits());
    e * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// `(σ(v), 1 − σ(v))` in f32 arithmetic (see [`sigmoid_pair`]).
#[inline(always)]
fn sigmoid_pair_f32(v: f32) -> (f32, f32) {
    let e = exp_neg_f32(-v.abs());
    let a = 1.0 / (1.0 + e);
    let b = e * a;
    if v >= 0.0 {
        (a, b)
    } else {
        (b, a)
    }
}

fused_op!(
    GeluTanh,
    GeluTanhBwd,
    "fused-gelu-tanh",
    gelu_fwd,
    gelu_bwd,
    "arg"
);

// ---------------------------------------------------------------- SiLU

fn silu_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let x = x.f();
            *o = T::of(x * sigmoid_pair::<T>(x).0);
        }
    });
    out
}

/// `dx = g·σ(x)·(1 + x·(1 − σ(x)))`.
fn silu_bwd<T: F>(x: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        for ((o, &x), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            let x = x.f();
            let (s, sc) = sigmoid_pair::<T>(x);
            *o = T::of(g.f() * s * (1.0 + x * sc));
        }
    });
    out
}

fused_op!(Silu, SiluBwd, "fused-silu", silu_fwd, silu_bwd, "arg");

// ---------------------------------------------------------------- softmax over the last dim

fn softmax_fwd<T: F>(x: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        let max = i[0].iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
        let mut sum = 0.0;
        for (o, &x) in o.iter_mut().zip(i[0]) {
            let e = T::exp_k(x.f() - max);
            sum += e;
            *o = T::of(e);
        }
        for o in o.iter_mut() {
            *o = T::of(o.f() / sum);
        }
    });
    out
}

/// `dx = y ⊙ (g − Σ g·y)` per row.
fn softmax_bwd<T: F>(y: &[T], g: &[T], l: &Layout, _: f64) -> Vec<T> {
    let out = new_rows(y.len(), last_dim(l), &[y, g], |o, i| {
        let dot: f64 = i[0].iter().zip(i[1]).map(|(y, g)| y.f() * g.f()).sum();
        for ((o, &y), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            *o = T::of(y.f() * (g.f() - dot));
        }
    });
    out
}

fused_op!(
    Softmax,
    SoftmaxBwd,
    "fused-softmax-last",
    softmax_fwd,
    softmax_bwd,
    "res"
);

// ---------------------------------------------------------------- LayerNorm without affine

#[inline(always)]
fn row_stats<T: F>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm_fwd<T: F>(x: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x], |o, i| {
        let (mean, rstd) = row_stats(i[0], eps);
        for (o, &x) in o.iter_mut().zip(i[0]) {
            *o = T::of((x.f() - mean) * rstd);
        }
    });
    out
}

/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, statistics recomputed from `x`.
fn layer_norm_bwd<T: F>(x: &[T], g: &[T], l: &Layout, eps: f64) -> Vec<T> {
    let out = new_rows(x.len(), last_dim(l), &[x, g], |o, i| {
        let (mean, rstd) = row_stats(i[0], eps);
        let n = i[0].len() as f64;
        let (mut mg, mut mgx) = (0.0, 0.0);
        for (&x, &g) in i[0].iter().zip(i[1]) {
            mg += g.f();
            mgx += g.f() * (x.f() - mean) * rstd;
        }
        let (mg, mgx) = (mg / n, mgx / n);
        for ((o, &x), &g) in o.iter_mut().zip(i[0]).zip(i[1]) {
            let xh = (x.f() - mean) * rstd;
            *o = T::of(rstd * (g.f() - mg - xh * mgx));
        }
    });
    out
}

fused_op!(
    LayerNorm,
    LayerNormBwd,
    "fused-layer-norm",
    layer_norm_fwd,
    layer_norm_bwd,
    "arg"
);

// ---------------------------------------------------------------- entry points

/// GELU, tanh approximation, with a one-pass backward.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh(0.0))
}

/// SiLU (`x·σ(x)`), with a one-pass backward.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Silu(0.0))
}

/// Mean over all elements of `(a − b)²`, with a one-pass backward for both inputs (the
/// kernel is `cbs_flow::interpolant::mse_fused`, which the trainer's loss uses).
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    cbs_flow::interpolant::mse_fused(a, b)
}

/// Softmax over the last dimension, with a one-pass backward.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax(0.0))
}

/// LayerNorm over the last dimension without affine parameters; the backward recomputes the
/// row statistics instead of storing them.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LayerNorm(eps))
}

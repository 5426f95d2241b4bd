//! Arithmetic shared by the CPU kernels: the float trait they are generic over, the
//! AVX-512/AVX2 code paths picked at run time ([`simd_kernel!`]), lane-wise partial sums that
//! keep reductions vectorised, and branch-free `exp`/sigmoid approximations.

use candle_core::WithDType;

pub(crate) const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
pub(crate) const GELU_C: f64 = 0.044_715;

/// Float arithmetic in f64 for both storage types keeps one kernel per op; the hottest
/// element-wise kernel (GELU, over the MLP's `4C` channels) has an f32-arithmetic version for
/// f32 storage, twice as many lanes per vector instruction.
pub(crate) trait F: WithDType + Send + Sync + Copy {
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
pub(crate) const LANES: usize = 8;

/// `Σ_i f(a_i, b_i, c_i)` in f64 over the common length, with `LANES` interleaved partial
/// sums: a single running sum is a chain of dependent additions the compiler must keep in
/// order, which stops the loop from vectorising.
#[inline(always)]
pub(crate) fn lane_sum3<T: F>(a: &[T], b: &[T], c: &[T], f: impl Fn(f64, f64, f64) -> f64) -> f64 {
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
pub(crate) fn lane_sum<T: F>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
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
pub(crate) fn expf_poly(r: f32) -> f32 {
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
pub(crate) fn exp_lo(v: f64) -> f64 {
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
pub(crate) fn sigmoid_pair<T: F>(v: f64) -> (f64, f64) {
    let e = T::exp_k(-v.abs());
    let a = 1.0 / (1.0 + e);
    let b = e * a;
    if v >= 0.0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// `e^x` for `x ≤ 0` in f32 arithmetic (Cephes' `expf`: Cody–Waite reduction, degree-5
/// polynomial; relative error about 1e-7), branch-free so that loops over it vectorise even
/// at SSE2 width. Arguments below −87 give `e^−87` instead of a denormal.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn exp_neg_f32(x: f32) -> f32 {
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
pub(crate) fn sigmoid_pair_f32(v: f32) -> (f32, f32) {
    let e = exp_neg_f32(-v.abs());
    let a = 1.0 / (1.0 + e);
    let b = e * a;
    if v >= 0.0 {
        (a, b)
    } else {
        (b, a)
    }
}

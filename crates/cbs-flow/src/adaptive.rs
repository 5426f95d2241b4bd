//! Dormand–Prince 5(4) with adaptive steps (`dopri5`, what SiT's `--sampling-method dopri5`
//! uses through torchdiffeq), one interval at a time.
//!
//! Each interval `[t0, t1]` is integrated on its own and ends exactly on `t1`, so expert
//! switching puts an interval edge on every knot: no step straddles two experts, and each
//! expert's field is only evaluated inside its own segment.
//!
//! Error control follows torchdiffeq: the local error estimate (5th minus embedded 4th order
//! solution) is scaled per element by `atol + rtol·max(|x|, |x_new|)` and its RMS over the
//! whole batch must be ≤ 1; the next step is `h·clamp(0.9·err^(−1/5), 0.2, 10)`; the first step
//! is Hairer's estimate. The last stage is the next step's first (FSAL).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::VelocityField;

/// Tolerances of the adaptive solver.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerances {
    pub atol: f64,
    pub rtol: f64,
}

impl Default for Tolerances {
    /// SiT's `sample.py` ODE defaults.
    fn default() -> Self {
        Tolerances {
            atol: 1e-6,
            rtol: 1e-3,
        }
    }
}

/// Velocity evaluations allowed on one interval before giving up (a stiff or non-finite field).
pub const MAX_EVALS: usize = 100_000;

const C: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    // The 5th-order weights: the last stage is evaluated at the new point (FSAL).
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// 5th-order weights minus the embedded 4th-order ones, for stages 1..=7.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

fn time(t: f64, x: &Tensor) -> Result<Tensor> {
    Tensor::full(t, x.dim(0)?, x.device())?.to_dtype(x.dtype())
}

/// `x + h·Σ w_i k_i` (zero weights skipped).
fn combine(x: &Tensor, h: f64, w: &[f64], k: &[Tensor]) -> Result<Tensor> {
    let mut acc = x.clone();
    for (wi, ki) in w.iter().zip(k) {
        if *wi != 0.0 {
            acc = (acc + (ki * (h * wi))?)?;
        }
    }
    Ok(acc)
}

/// RMS of `v / (atol + rtol·max(|a|, |b|))` over every element.
fn scaled_rms(v: &Tensor, a: &Tensor, b: &Tensor, tol: Tolerances) -> Result<f64> {
    let scale = ((a.abs()?.maximum(&b.abs()?)? * tol.rtol)? + tol.atol)?;
    let r = (v / scale)?;
    r.sqr()?
        .mean_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()
        .map(f64::sqrt)
}

fn fail(t0: f64, t1: f64, why: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "dopri5 on [{t0}, {t1}]: {why} (a non-finite or very stiff field; loosen --rtol/--atol \
         or use a fixed-step solver)"
    ))
}

/// Integrates `dx/dt = field(x, t, y)` from `t0` to `t1`; returns `x(t1)` and the number of
/// velocity evaluations.
pub fn dopri5(
    field: &dyn VelocityField,
    x: &Tensor,
    t0: f64,
    t1: f64,
    y: Option<&Tensor>,
    tol: Tolerances,
) -> Result<(Tensor, usize)> {
    let span = t1 - t0;
    if span <= 0.0 {
        return Ok((x.clone(), 0));
    }
    let f = |x: &Tensor, t: f64| field.velocity_shared(x, &time(t, x)?, t, y);
    let mut x = x.clone();
    let mut k1 = f(&x, t0)?;
    let mut evals = 1;
    // Hairer's initial step: a step small against the solution's and its slope's scales,
    // refined with one trial evaluation.
    let zero = x.zeros_like()?;
    let d0 = scaled_rms(&x, &x, &zero, tol)?;
    let d1 = scaled_rms(&k1, &x, &zero, tol)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let h0 = h0.min(span);
    let x_trial = (&x + (&k1 * h0)?)?;
    let k_trial = f(&x_trial, t0 + h0)?;
    evals += 1;
    let d2 = scaled_rms(&(&k_trial - &k1)?, &x, &zero, tol)? / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / 5.0)
    };
    let mut h = (100.0 * h0).min(h1).min(span);
    if !h.is_finite() || h <= 0.0 {
        h = span;
    }
    let mut t = t0;
    let min_h = 1e-12 * span;
    loop {
        // Land exactly on t1 (and do not leave a sliver of an interval for the last step).
        let last = t + h >= t1 - 1e-12 * span;
        if last {
            h = t1 - t;
        }
        let mut k = vec![k1.clone()];
        for (s, a) in A.iter().enumerate() {
            let xs = combine(&x, h, a, &k)?;
            let ts = if s == 5 { t + h } else { t + C[s] * h };
            k.push(f(&xs, ts)?);
            evals += 1;
        }
        // Stage 7 was evaluated at the 5th-order solution itself.
        let x_new = combine(&x, h, A[5], &k[..6])?;
        let err = combine(&x.zeros_like()?, h, &E, &k)?;
        let norm = scaled_rms(&err, &x, &x_new, tol)?;
        if norm.is_finite() && norm <= 1.0 {
            t = if last { t1 } else { t + h };
            x = x_new;
            k1 = k.pop().expect("seven stages");
            if last {
                return Ok((x, evals));
            }
        }
        let factor = if !norm.is_finite() {
            0.2
        } else if norm == 0.0 {
            10.0
        } else {
            (0.9 * norm.powf(-0.2)).clamp(0.2, 10.0)
        };
        h *= factor;
        if evals > MAX_EVALS {
            return Err(fail(t0, t1, &format!("more than {MAX_EVALS} evaluations")));
        }
        if h < min_h {
            return Err(fail(t0, t1, &format!("the step shrank below {min_h:e}")));
        }
    }
}

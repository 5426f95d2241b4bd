//! Training-time distributions on `t_range`: uniform, or logit-normal truncated to the range.
//!
//! Both draw exactly one uniform number per time (inverse-CDF sampling), so the draw order of
//! a training step, and hence exact resume, does not depend on the distribution.

use cbs_models::Architecture;

use crate::config::{TimeSampling, TrainSection};

/// A resolved time distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeDist {
    Uniform {
        lo: f64,
        hi: f64,
    },
    /// `t = sigmoid(n)`, `n ~ N(mean, std)` conditioned on `t ∈ [lo, hi]`.
    LogitNormal {
        mean: f64,
        std: f64,
        lo: f64,
        hi: f64,
    },
}

/// JiT's reference `(P_mean, P_std)`.
pub const JIT_LOGIT_NORMAL: [f64; 2] = [-0.8, 0.8];

impl TimeDist {
    /// The configured distribution, or the backbone's default when the config names none.
    pub fn resolve(tc: &TrainSection, arch: &Architecture) -> Self {
        let [lo, hi] = tc.t_range;
        let default = arch.default_time_sampling();
        let kind = tc.time_sampling.unwrap_or(if default.is_some() {
            TimeSampling::LogitNormal
        } else {
            TimeSampling::Uniform
        });
        match kind {
            TimeSampling::Uniform => TimeDist::Uniform { lo, hi },
            TimeSampling::LogitNormal => {
                let [mean, std] = tc
                    .logit_normal
                    .or(default.map(|(m, s)| [m, s]))
                    .unwrap_or(JIT_LOGIT_NORMAL);
                TimeDist::LogitNormal { mean, std, lo, hi }
            }
        }
    }

    /// The time for a uniform draw `u ∈ [0, 1)`.
    pub fn time(&self, u: f64) -> f64 {
        match *self {
            TimeDist::Uniform { lo, hi } => lo + (hi - lo) * u,
            TimeDist::LogitNormal { mean, std, lo, hi } => {
                let z = |t: f64| (logit(t) - mean) / std;
                let (pa, pb) = (normal_cdf(z(lo)), normal_cdf(z(hi)));
                let p = pa + (pb - pa) * u;
                if p <= 0.0 {
                    return lo;
                }
                if p >= 1.0 {
                    return hi;
                }
                sigmoid(mean + std * normal_quantile(p)).clamp(lo, hi)
            }
        }
    }
}

fn logit(t: f64) -> f64 {
    (t / (1.0 - t)).ln() // ±∞ at the ends, which the CDF maps to 0 and 1
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Standard normal CDF, double precision (Hart's rational approximation as given by West,
/// "Better approximations to cumulative normal functions", 2005).
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    let tail = if a > 37.0 {
        0.0
    } else {
        let e = (-a * a / 2.0).exp();
        if a < 7.071_067_811_865_47 {
            let num = [
                0.035_262_496_599_891_1,
                0.700_383_064_443_688,
                6.373_962_203_531_65,
                33.912_866_078_383,
                112.079_291_497_871,
                221.213_596_169_931,
                220.206_867_912_376,
            ]
            .iter()
            .fold(0.0, |acc, c| acc * a + c);
            let den = [
                0.088_388_347_648_318_4,
                1.755_667_163_182_64,
                16.064_177_579_207,
                86.780_732_202_946_1,
                296.564_248_779_674,
                637.333_633_378_831,
                793.826_512_519_948,
                440.413_735_824_752,
            ]
            .iter()
            .fold(0.0, |acc, c| acc * a + c);
            e * num / den
        } else {
            let mut b = a + 0.65;
            for k in [4.0, 3.0, 2.0, 1.0] {
                b = a + k / b;
            }
            e / b / 2.506_628_274_631
        }
    };
    if x > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Standard normal quantile for `p ∈ (0, 1)`: Acklam's rational approximation refined by one
/// Halley step on [`normal_cdf`] (relative error near machine precision).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let poly = |c: &[f64], x: f64| c.iter().fold(0.0, |acc, k| acc * x + k);
    const P_LOW: f64 = 0.02425;
    let x = if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        poly(&C, q) / (poly(&D, q) * q + 1.0)
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        poly(&A, r) * q / (poly(&B, r) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -poly(&C, q) / (poly(&D, q) * q + 1.0)
    };
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

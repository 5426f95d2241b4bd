//! Tests of the GMM oracle, the monitors, equidistribution and the bootstrap, including the
//! reference knots of `shared/reference/gmm_ring8_expected.json`.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};
use cbs_flow::path::Interpolant;
use cbs_flow::VelocityField;
use cbs_split::{
    bootstrap_knots, equidistribute, frobenius_sq_estimate, monitor_curve, GmmOracle, GmmSpec,
    HutchinsonOptions, JvpMethod, MonitorCurve, MonitorKind, MonitorOptions, ProbeKind, SplitError,
    SplitMode,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TIMES: [f64; 4] = [0.0, 0.3, 0.7, 0.99];

/// 8 components on a circle of radius 3, std 0.2, equal weights (same as `gmm_ring8.json`).
fn ring8() -> GmmOracle {
    let means = (0..8)
        .map(|k| {
            let a = 2.0 * std::f64::consts::PI * k as f64 / 8.0;
            vec![3.0 * a.cos(), 3.0 * a.sin()]
        })
        .collect();
    GmmOracle::new(GmmSpec::new(means, vec![0.2; 8], vec![1.0; 8])).unwrap()
}

/// An uneven 3-D mixture (different stds and weights) for the derivative checks.
fn uneven3d() -> GmmOracle {
    let spec = GmmSpec::new(
        vec![
            vec![1.0, -0.5, 2.0],
            vec![-1.5, 0.3, 0.0],
            vec![0.2, 1.8, -1.0],
        ],
        vec![0.3, 0.7, 0.15],
        vec![1.0, 2.5, 0.7],
    );
    GmmOracle::new(spec).unwrap()
}

/// Both mixtures on every interpolation path.
fn oracles_on_all_paths() -> Vec<GmmOracle> {
    [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp]
        .into_iter()
        .flat_map(|p| [ring8().with_path(p), uneven3d().with_path(p)])
        .collect()
}

fn random_points(n: usize, d: usize, scale: f64, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| scale * (2.0 * rng.random::<f64>() - 1.0))
                .collect()
        })
        .collect()
}

fn reference_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference");
    if dir.join("gmm_ring8.json").is_file() && dir.join("gmm_ring8_expected.json").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: reference files not found under {}", dir.display());
        None
    }
}

// ---------------------------------------------------------------- oracle

#[test]
fn candle_oracle_equals_f64_velocity() {
    for oracle in oracles_on_all_paths() {
        let d = oracle.dim();
        let pts = random_points(12, d, 3.5, 1);
        let ts: Vec<f64> = (0..12).map(|i| i as f64 / 11.0).collect(); // includes 0 and 1
        let flat: Vec<f64> = pts.iter().flatten().copied().collect();
        for dtype in [DType::F64, DType::F32] {
            let x = Tensor::from_vec(flat.clone(), (12, d), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let t = Tensor::from_vec(ts.clone(), 12, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let v = oracle.velocity(&x, &t, None).unwrap();
            assert_eq!(v.dtype(), dtype);
            let v: Vec<Vec<f64>> = v.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
            let tol = if dtype == DType::F64 { 1e-11 } else { 2e-4 };
            for i in 0..12 {
                let want = oracle.velocity_f64(&pts[i], ts[i]).unwrap();
                for (a, b) in v[i].iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{dtype:?} t={} {a} vs {b}",
                        ts[i]
                    );
                }
            }
        }
    }
}

/// An independent check of the velocity on every path: for one Gaussian component N(μ, s²I)
/// the marginal flow is known in closed form, `x_t = α(t)μ + √(α(t)²s² + σ(t)²)·z`, so Heun
/// integration of the oracle's field from `x(0)` must land on `μ + √(s² + σ(1)²)·z`.
#[test]
fn single_gaussian_flow_lands_on_the_closed_form() {
    let (mu, s) = ([1.5, -0.7], 0.4);
    for path in [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp] {
        let oracle = GmmOracle::new(GmmSpec::new(vec![mu.to_vec()], vec![s], vec![1.0]))
            .unwrap()
            .with_path(path);
        let std_at = |t: f64| {
            let c = path.coefficients(t);
            ((c.alpha * s).powi(2) + c.sigma * c.sigma).sqrt()
        };
        for z in [[0.3, -1.2], [-2.0, 0.8]] {
            let c0 = path.coefficients(0.0);
            let mut x: Vec<f64> = (0..2)
                .map(|i| c0.alpha * mu[i] + std_at(0.0) * z[i])
                .collect();
            let n = 4000;
            for k in 0..n {
                let (t, h) = (k as f64 / n as f64, 1.0 / n as f64);
                let v = oracle.velocity_f64(&x, t).unwrap();
                let xe: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + h * b).collect();
                let v2 = oracle.velocity_f64(&xe, t + h).unwrap();
                for i in 0..2 {
                    x[i] += 0.5 * h * (v[i] + v2[i]);
                }
            }
            let c1 = path.coefficients(1.0);
            for i in 0..2 {
                let want = c1.alpha * mu[i] + std_at(1.0) * z[i];
                assert!((x[i] - want).abs() < 1e-5, "{path}: {} vs {want}", x[i]);
            }
        }
    }
}

#[test]
fn oracle_accepts_image_shaped_input_and_rejects_wrong_dim() {
    let oracle = ring8();
    let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.1], (2, 1, 2), &Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![0.2f32, 0.9], 2, &Device::Cpu).unwrap();
    let v = oracle.velocity(&x, &t, None).unwrap();
    assert_eq!(v.dims(), &[2, 1, 2]);
    let bad = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(oracle.velocity(&bad, &t, None).is_err());
    assert!(matches!(
        oracle.velocity_f64(&[1.0], 0.5),
        Err(SplitError::DimensionMismatch { .. })
    ));
    assert!(oracle.jacobian_f64(&[1.0, 2.0, 3.0], 0.5).is_err());
    assert!(oracle.log_density(&[]).is_err());
}

#[test]
fn jacobian_matches_central_differences() {
    for oracle in oracles_on_all_paths() {
        let d = oracle.dim();
        for (n, &t) in TIMES.iter().enumerate() {
            for x in random_points(6, d, 3.0, 10 + n as u64) {
                let jac = oracle.jacobian_f64(&x, t).unwrap();
                let h = 1e-5;
                let mut fd = vec![0.0; d * d];
                for j in 0..d {
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[j] += h;
                    xm[j] -= h;
                    let (vp, vm) = (
                        oracle.velocity_f64(&xp, t).unwrap(),
                        oracle.velocity_f64(&xm, t).unwrap(),
                    );
                    for i in 0..d {
                        fd[i * d + j] = (vp[i] - vm[i]) / (2.0 * h);
                    }
                }
                let scale = jac.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let err = jac
                    .iter()
                    .zip(&fd)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err / scale <= 1e-6,
                    "t={t} x={x:?}: rel err {:e}",
                    err / scale
                );
            }
        }
    }
}

#[test]
fn autograd_vjp_matches_exact_jacobian_transpose() {
    for oracle in [ring8(), uneven3d()] {
        let d = oracle.dim();
        let pts = random_points(16, d, 3.0, 5);
        let ts: Vec<f64> = (0..16).map(|i| TIMES[i % 4]).collect();
        let eps: Vec<f64> = random_points(16, d, 1.0, 6).into_iter().flatten().collect();
        let flat: Vec<f64> = pts.iter().flatten().copied().collect();
        let x = Var::from_tensor(&Tensor::from_vec(flat, (16, d), &Device::Cpu).unwrap()).unwrap();
        let t = Tensor::from_vec(ts.clone(), 16, &Device::Cpu).unwrap();
        let e = Tensor::from_vec(eps.clone(), (16, d), &Device::Cpu).unwrap();
        let v = oracle.velocity(x.as_tensor(), &t, None).unwrap();
        let grads = (v * e).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f64>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();
        for b in 0..16 {
            let jac = oracle.jacobian_f64(&pts[b], ts[b]).unwrap();
            for j in 0..d {
                let want: f64 = (0..d).map(|i| jac[i * d + j] * eps[b * d + i]).sum();
                assert!(
                    (g[b][j] - want).abs() <= 1e-9 * (1.0 + want.abs()),
                    "sample {b} t={} comp {j}: {} vs {want}",
                    ts[b],
                    g[b][j]
                );
            }
        }
    }
}

#[test]
fn hutchinson_estimators_match_exact_frobenius_norm() {
    let oracle = ring8();
    let n = 40_000;
    // Points where the Jacobian is far from a multiple of the identity.
    let cases = [
        ([1.0, 0.6], 0.5),
        ([2.2, 1.0], 0.8),
        ([0.3, -0.4], 0.3),
        ([2.6, 1.2], 0.95),
    ];
    for (x, t) in cases {
        let jac = oracle.jacobian_f64(&x, t).unwrap();
        let exact: f64 = jac.iter().map(|a| a * a).sum();
        let xs = Tensor::from_vec([x[0], x[1]].repeat(n), (n, 2), &Device::Cpu).unwrap();
        let ts = Tensor::full(t, n, &Device::Cpu).unwrap();
        for probe in [ProbeKind::Gaussian, ProbeKind::Rademacher] {
            for (jvp, fd_eps) in [(JvpMethod::Vjp, 0.0), (JvpMethod::FiniteDifference, 1e-4)] {
                let opts = HutchinsonOptions {
                    probes: 1,
                    probe,
                    jvp,
                    fd_eps,
                };
                let mut rngs: Vec<ChaCha8Rng> = (0..n as u64)
                    .map(|k| {
                        let mut r = ChaCha8Rng::seed_from_u64(99);
                        r.set_stream(k);
                        r
                    })
                    .collect();
                let (v, est) =
                    frobenius_sq_estimate(&oracle, &xs, &ts, None, &opts, &mut rngs).unwrap();
                let mean = est.iter().sum::<f64>() / n as f64;
                let rel = (mean - exact).abs() / exact;
                eprintln!("hutchinson x={x:?} t={t} {probe:?}/{jvp:?}: {mean:.5} vs exact {exact:.5} (rel {rel:.4})");
                assert!(
                    rel < 0.03,
                    "{probe:?}/{jvp:?} at x={x:?} t={t}: {mean} vs {exact}"
                );
                // The returned velocity is the field's.
                let v0: Vec<f64> = v.get(0).unwrap().to_vec1().unwrap();
                let want = oracle.velocity_f64(&x, t).unwrap();
                assert!((v0[0] - want[0]).abs() < 1e-12 && (v0[1] - want[1]).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn sampling_and_log_density() {
    let spec = GmmSpec::new(vec![vec![1.0, -2.0]], vec![0.5], vec![3.0]);
    let single = GmmOracle::new(spec).unwrap();
    let lp = single.log_density(&[1.0, -2.0]).unwrap();
    let want = -(2.0 * std::f64::consts::PI * 0.25f64).ln();
    assert!((lp - want).abs() < 1e-12, "{lp} vs {want}");
    let lp2 = single.log_density(&[1.5, -2.0]).unwrap();
    assert!((lp2 - (want - 0.5)).abs() < 1e-12);
    let s = single.sample(20_000, 3);
    assert_eq!(s.len(), 40_000);
    let mean_x = s.iter().step_by(2).sum::<f64>() / 20_000.0;
    let var_y = s
        .iter()
        .skip(1)
        .step_by(2)
        .map(|v| (v + 2.0).powi(2))
        .sum::<f64>()
        / 20_000.0;
    assert!((mean_x - 1.0).abs() < 0.02, "{mean_x}");
    assert!((var_y - 0.25).abs() < 0.01, "{var_y}");
    assert_eq!(
        s,
        single.sample(20_000, 3),
        "seeded sampling is reproducible"
    );

    // Mixture weights are respected; a mixture log-density is the log of the weighted sum.
    let spec = GmmSpec::new(
        vec![vec![-10.0], vec![10.0]],
        vec![1.0, 1.0],
        vec![1.0, 3.0],
    );
    let two = GmmOracle::new(spec).unwrap();
    let s = two.sample(20_000, 4);
    let frac = s.iter().filter(|v| **v > 0.0).count() as f64 / 20_000.0;
    assert!((frac - 0.75).abs() < 0.015, "{frac}");
    let n = |x: f64, m: f64| (-(x - m).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let want = (0.25 * n(0.5, -10.0) + 0.75 * n(0.5, 10.0)).ln();
    assert!((two.log_density(&[0.5]).unwrap() - want).abs() < 1e-10);
    // Far in the tail the log-sum-exp stays finite.
    assert!(two.log_density(&[1e4]).unwrap().is_finite());
}

#[test]
fn spec_validation_names_field_and_value() {
    let ok = r#"{"means": [[0, 1], [2, 3]], "stds": [1, 2], "weights": [1, 1], "grid": 50, "whatever": true}"#;
    let spec = GmmSpec::from_json_str(ok).unwrap();
    assert_eq!(spec.grid, Some(50));
    assert_eq!(spec.dim(), 2);
    let cases = [
        (
            r#"{"means": [[0, 1], [2]], "stds": [1, 2], "weights": [1, 1]}"#,
            "means[1]",
        ),
        (
            r#"{"means": [[0, 1], [2, 3]], "stds": [1, -0.5], "weights": [1, 1]}"#,
            "-0.5",
        ),
        (
            r#"{"means": [[0, 1], [2, 3]], "stds": [1, 2], "weights": [1, 0]}"#,
            "weights[1]",
        ),
        (
            r#"{"means": [[0, 1], [2, 3]], "stds": [1], "weights": [1, 1]}"#,
            "stds",
        ),
        (r#"{"means": [], "stds": [], "weights": []}"#, "means"),
        // Each weight finite, their sum not: normalising would give zeros (null metrics).
        (
            r#"{"means": [[0, 1], [2, 3]], "stds": [1, 2], "weights": [1e308, 1e308]}"#,
            "finite sum",
        ),
    ];
    for (json, needle) in cases {
        let err = GmmSpec::from_json_str(json).unwrap_err();
        assert!(matches!(err, SplitError::InvalidSpec { .. }), "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    let missing = std::env::temp_dir().join("cbs-split-no-such-file.json");
    let err = GmmSpec::from_file(&missing).unwrap_err();
    assert!(
        err.to_string().contains("cbs-split-no-such-file.json"),
        "{err}"
    );
    let bad = std::env::temp_dir().join(format!("cbs-split-bad-{}.json", std::process::id()));
    std::fs::write(&bad, r#"{"means": [[0]], "stds": [0], "weights": [1]}"#).unwrap();
    let err = GmmSpec::from_file(&bad).unwrap_err();
    std::fs::remove_file(&bad).ok();
    let msg = err.to_string();
    assert!(
        msg.contains("cbs-split-bad-") && msg.contains("stds[0]"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- equidistribution

fn uniform(g: usize) -> Vec<f64> {
    (0..=g).map(|i| i as f64 / g as f64).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn equidistribute_known_answers() {
    let grid = uniform(100);
    let flat = vec![0.7; 100];
    for mode in [SplitMode::Grid, SplitMode::Linear] {
        let k = equidistribute(&grid, &flat, 4, mode).unwrap();
        assert!(close(&k, &[0.25, 0.5, 0.75], 1e-12), "{mode:?}: {k:?}");
        assert!(equidistribute(&grid, &flat, 1, mode).unwrap().is_empty());
        // All mass in the second half: knots split [0.5, 1] evenly.
        let half: Vec<f64> = (0..100).map(|j| if j < 50 { 0.0 } else { 2.0 }).collect();
        let k = equidistribute(&grid, &half, 5, mode).unwrap();
        assert!(close(&k, &[0.6, 0.7, 0.8, 0.9], 1e-12), "{mode:?}: {k:?}");
    }
    // Linear vs grid: C = 0, 1, 3, 6, 10; target 5.
    let g4 = uniform(4);
    let m = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(
        equidistribute(&g4, &m, 2, SplitMode::Grid).unwrap(),
        vec![0.75]
    );
    let lin = equidistribute(&g4, &m, 2, SplitMode::Linear).unwrap();
    assert!(close(&lin, &[0.5 + 0.25 * 2.0 / 3.0], 1e-12), "{lin:?}");
    // Tie (target 1.5 between C = 1 and C = 2): grid mode takes the first.
    let g3 = uniform(3);
    assert_eq!(
        equidistribute(&g3, &[1.0, 1.0, 1.0], 2, SplitMode::Grid).unwrap(),
        vec![1.0 / 3.0]
    );
    assert!(close(
        &equidistribute(&g3, &[1.0, 1.0, 1.0], 2, SplitMode::Linear).unwrap(),
        &[0.5],
        1e-12
    ));
    // Non-uniform grids are honoured.
    let g = [0.0, 0.1, 0.5, 1.0];
    assert!(close(
        &equidistribute(&g, &[1.0, 1.0, 2.0], 2, SplitMode::Linear).unwrap(),
        &[0.5],
        1e-12
    ));
    assert!(close(
        &equidistribute(&g, &[1.0, 1.0, 2.0], 4, SplitMode::Linear).unwrap(),
        &[0.1, 0.5, 0.75],
        1e-12
    ));
}

#[test]
fn equidistribute_output_strictly_increasing_on_random_monitors() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let grid = uniform(100);
    for _ in 0..200 {
        let mass: Vec<f64> = (0..100)
            .map(|_| rng.random::<f64>().powi(3) + 0.01)
            .collect();
        for n in 1..=8 {
            for mode in [SplitMode::Grid, SplitMode::Linear] {
                let k = equidistribute(&grid, &mass, n, mode).unwrap();
                assert_eq!(k.len(), n - 1);
                assert!(k.windows(2).all(|w| w[0] < w[1]) && k.iter().all(|&t| t > 0.0 && t < 1.0));
                // Linear knots really equidistribute the piecewise-linear cumulative mass.
                if mode == SplitMode::Linear {
                    let total: f64 = mass.iter().sum();
                    for (i, &t) in k.iter().enumerate() {
                        let cells = t * 100.0;
                        let j = cells.floor() as usize;
                        let c = mass[..j].iter().sum::<f64>()
                            + mass.get(j).map_or(0.0, |m| m * (cells - j as f64));
                        assert!((c - (i + 1) as f64 / n as f64 * total).abs() < 1e-9 * total);
                    }
                }
            }
        }
    }
}

#[test]
fn equidistribute_errors() {
    let grid = uniform(100);
    let g = SplitMode::Grid;
    assert!(matches!(
        equidistribute(&grid, &[0.0; 100], 3, g),
        Err(SplitError::DegenerateMonitor)
    ));
    let msg = equidistribute(&grid, &[0.0; 100], 3, g)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("degenerate monitor"), "{msg}");
    let mut nan = vec![1.0; 100];
    nan[17] = f64::NAN;
    assert!(matches!(
        equidistribute(&grid, &nan, 3, g),
        Err(SplitError::InvalidMass { index: 17, .. })
    ));
    let mut neg = vec![1.0; 100];
    neg[3] = -1.0;
    assert!(matches!(
        equidistribute(&grid, &neg, 3, g),
        Err(SplitError::InvalidMass { index: 3, .. })
    ));
    let mut inf = vec![1.0; 100];
    inf[99] = f64::INFINITY;
    assert!(matches!(
        equidistribute(&grid, &inf, 3, g),
        Err(SplitError::InvalidMass { index: 99, .. })
    ));
    assert!(matches!(
        equidistribute(&grid, &[1.0; 99], 3, g),
        Err(SplitError::MassLength { .. })
    ));
    assert!(matches!(
        equidistribute(&grid, &[1.0; 100], 0, g),
        Err(SplitError::NoExperts(0))
    ));
    assert!(matches!(
        equidistribute(&[0.0], &[], 2, g),
        Err(SplitError::GridTooShort(1))
    ));
    let bad_grid = [0.0, 0.5, 0.5, 1.0];
    assert!(matches!(
        equidistribute(&bad_grid, &[1.0; 3], 2, g),
        Err(SplitError::GridNotIncreasing { index: 2, .. })
    ));

    // A huge spike in cell 50: knots 1 and 2 of 5 both land on t = 0.5 in grid mode.
    let mut spike = vec![1.0; 100];
    spike[50] = 1e6;
    let err = equidistribute(&grid, &spike, 5, g).unwrap_err();
    assert!(
        matches!(
            err,
            SplitError::CoincidingKnots {
                first: 1,
                second: 2,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("knots 1 and 2 coincide")
            && msg.contains("finer grid")
            && msg.contains("fewer experts"),
        "{msg}"
    );
    // The linear mode separates them inside the cell.
    let k = equidistribute(&grid, &spike, 5, SplitMode::Linear).unwrap();
    assert!(
        k.iter().all(|&t| (0.5..=0.51).contains(&t)) && k.windows(2).all(|w| w[0] < w[1]),
        "{k:?}"
    );
    // A spike in the first cell pushes knot 1 onto t = 0.
    let mut first = vec![1.0; 100];
    first[0] = 1e6;
    let err = equidistribute(&grid, &first, 4, g).unwrap_err();
    assert!(
        matches!(err, SplitError::KnotAtBoundary { index: 1, .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------- monitors

#[test]
fn monitor_options_are_validated() {
    let oracle = ring8();
    let dev = Device::Cpu;
    let run = |o: MonitorOptions, shape: &[usize]| {
        monitor_curve(&oracle, &o, shape, None, &dev, &mut |_, _| {})
    };
    let base = MonitorOptions {
        trajectories: 4,
        grid: 4,
        ..Default::default()
    };
    assert!(run(
        MonitorOptions {
            grid: 0,
            ..base.clone()
        },
        &[2]
    )
    .is_err());
    assert!(run(
        MonitorOptions {
            trajectories: 0,
            ..base.clone()
        },
        &[2]
    )
    .is_err());
    assert!(run(
        MonitorOptions {
            batch: 0,
            ..base.clone()
        },
        &[2]
    )
    .is_err());
    assert!(run(
        MonitorOptions {
            kind: MonitorKind::Dirichlet,
            probes: 0,
            ..base.clone()
        },
        &[2]
    )
    .is_err());
    let fd = MonitorOptions {
        kind: MonitorKind::Dirichlet,
        jvp: JvpMethod::FiniteDifference,
        fd_eps: 0.0,
        ..base.clone()
    };
    assert!(run(fd, &[2]).is_err());
    assert!(run(
        MonitorOptions {
            dtype: DType::U32,
            ..base.clone()
        },
        &[2]
    )
    .is_err());
    assert!(run(base.clone(), &[]).is_err());
    assert!(run(base.clone(), &[3]).is_err(), "field error propagates");
    let curve = run(base, &[2]).unwrap();
    assert_eq!(curve.grid.len(), 5);
    assert_eq!(curve.mass.len(), 4);
    assert_eq!(curve.per_trajectory.len(), 16);
}

#[test]
fn monitor_does_not_depend_on_chunking_and_reports_progress() {
    let oracle = ring8();
    for kind in [MonitorKind::Acceleration, MonitorKind::Dirichlet] {
        let opts = MonitorOptions {
            kind,
            trajectories: 300,
            grid: 20,
            batch: 300,
            dtype: DType::F64,
            seed: 11,
            ..Default::default()
        };
        let whole =
            monitor_curve(&oracle, &opts, &[2], None, &Device::Cpu, &mut |_, _| {}).unwrap();
        let mut calls = Vec::new();
        let chunked = monitor_curve(
            &oracle,
            &MonitorOptions {
                batch: 64,
                ..opts.clone()
            },
            &[2],
            None,
            &Device::Cpu,
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
        assert_eq!(calls.len(), 5 * 20);
        assert_eq!(*calls.last().unwrap(), (100, 100));
        assert!(
            close(
                &whole.mass,
                &chunked.mass,
                1e-12 * whole.mass.iter().fold(1.0, |m: f64, v| m.max(*v))
            ),
            "{kind:?}"
        );
        let other_seed = monitor_curve(
            &oracle,
            &MonitorOptions { seed: 12, ..opts },
            &[2],
            None,
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap();
        assert_ne!(whole.mass, other_seed.mass);
        // The mean is the mean of the per-trajectory masses.
        for j in [0, 7, 19] {
            let m = (0..300)
                .map(|k| whole.trajectory(k).unwrap()[j] as f64)
                .sum::<f64>()
                / 300.0;
            assert!((m - whole.mass[j]).abs() <= 1e-6 * whole.mass[j].abs().max(1e-3));
        }
    }
}

/// `v(x, t, y) = y · t` in every coordinate: cell acceleration `y · Δt · √dim`.
struct LabelField;

impl VelocityField for LabelField {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let y = y.expect("labels are passed").to_dtype(x.dtype())?;
        let b = x.dim(0)?;
        let s = (y * t)?.reshape((b, 1, 1, 1))?;
        x.zeros_like()?.broadcast_add(&s)
    }
    fn null_class(&self) -> Option<u32> {
        Some(10)
    }
}

#[test]
fn labels_reach_a_conditional_field() {
    let opts = MonitorOptions {
        trajectories: 10,
        grid: 4,
        batch: 3,
        ..Default::default()
    };
    let labels = |k: usize| (k % 5) as u32;
    let curve = monitor_curve(
        &LabelField,
        &opts,
        &[1, 2, 2],
        Some(&labels),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    for k in 0..10 {
        for &m in curve.trajectory(k).unwrap() {
            let want = (k % 5) as f64 * 0.25 * 2.0;
            assert!(
                (m as f64 - want).abs() < 1e-6,
                "trajectory {k}: {m} vs {want}"
            );
        }
    }
}

/// A field whose output is detached from `x`: the VJP estimator must fail clearly.
struct Detached;

impl VelocityField for Detached {
    fn velocity(
        &self,
        x: &Tensor,
        _t: &Tensor,
        _y: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        x.detach() * 2.0
    }
}

#[test]
fn vjp_without_gradient_is_an_error_and_fd_still_works() {
    let opts = MonitorOptions {
        kind: MonitorKind::Dirichlet,
        trajectories: 4,
        grid: 3,
        ..Default::default()
    };
    let err =
        monitor_curve(&Detached, &opts, &[2], None, &Device::Cpu, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SplitError::NoGradient), "{err}");
    let fd = MonitorOptions {
        jvp: JvpMethod::FiniteDifference,
        probe: ProbeKind::Rademacher,
        ..opts
    };
    let curve = monitor_curve(&Detached, &fd, &[2], None, &Device::Cpu, &mut |_, _| {}).unwrap();
    // J = 2I: ½||Jε||² = ½·4·2 = 4 exactly with Rademacher probes.
    assert!(
        curve.mass.iter().all(|m| (m - 4.0).abs() < 1e-3),
        "{:?}",
        curve.mass
    );
}

// ---------------------------------------------------------------- reference knots

const K_REF: usize = 8192;

fn ring8_acceleration() -> &'static MonitorCurve {
    static CURVE: OnceLock<MonitorCurve> = OnceLock::new();
    CURVE.get_or_init(|| {
        let opts = MonitorOptions {
            kind: MonitorKind::Acceleration,
            grid: 100,
            trajectories: K_REF,
            batch: 4096,
            dtype: DType::F64,
            seed: 0,
            ..Default::default()
        };
        monitor_curve(&ring8(), &opts, &[2], None, &Device::Cpu, &mut |_, _| {}).unwrap()
    })
}

fn expected_splits(v: &serde_json::Value, key: &str, n: usize) -> Vec<f64> {
    v["splits"][key][n.to_string()]
        .as_array()
        .unwrap_or_else(|| panic!("missing splits {key}/{n}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_knots(name: &str, curve: &MonitorCurve, expected: &serde_json::Value, tol: f64) {
    for (mode, mname) in [(SplitMode::Grid, "grid"), (SplitMode::Linear, "linear")] {
        for n in 2..=5 {
            let got = curve.knots(n, mode).unwrap();
            let want = expected_splits(expected, &format!("{}/{mname}", kind_key(curve.kind)), n);
            let dev = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{name} {mname} N={n}: got {got:.4?} expected {want:?} max|Δ| {dev:.4}");
            assert_eq!(got.len(), want.len());
            assert!(
                dev <= tol + 1e-9,
                "{name} {mname} N={n}: {got:?} vs {want:?}"
            );
        }
    }
}

fn kind_key(k: MonitorKind) -> &'static str {
    match k {
        MonitorKind::Acceleration => "acceleration",
        MonitorKind::Dirichlet => "dirichlet",
    }
}

fn check_curve_shape(
    name: &str,
    curve: &MonitorCurve,
    expected: &serde_json::Value,
    tol: f64,
    cdf_tol: f64,
) {
    let want: Vec<f64> = expected[kind_key(curve.kind)]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), curve.mass.len());
    let total: f64 = want.iter().sum();
    let want_n: Vec<f64> = want.iter().map(|m| m / total).collect();
    let got_n = curve.normalized();
    let peak = want_n.iter().fold(0.0f64, |m, v| m.max(*v));
    let dev = got_n
        .iter()
        .zip(&want_n)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    // The cumulative (normalised) mass is what the knots are read from.
    let (mut cg, mut cw, mut cdf_dev) = (0.0, 0.0, 0.0f64);
    for (a, b) in got_n.iter().zip(&want_n) {
        cg += a;
        cw += b;
        cdf_dev = cdf_dev.max((cg - cw).abs());
    }
    eprintln!(
        "{name}: max |normalized curve difference| / peak = {:.4}, max |cumulative difference| = {cdf_dev:.4}",
        dev / peak
    );
    assert!(
        dev <= tol * peak,
        "{name}: curve differs by {dev} (peak {peak})"
    );
    assert!(
        cdf_dev <= cdf_tol,
        "{name}: cumulative mass differs by {cdf_dev}"
    );
}

#[test]
fn oracle_knots_match_reference() {
    let Some(dir) = reference_dir() else { return };
    let oracle = GmmOracle::from_file(dir.join("gmm_ring8.json")).unwrap();
    // The file's mixture is the one built in code here.
    let inline = ring8();
    for p in random_points(5, 2, 3.0, 1) {
        let (a, b) = (
            oracle.velocity_f64(&p, 0.6).unwrap(),
            inline.velocity_f64(&p, 0.6).unwrap(),
        );
        assert!((a[0] - b[0]).abs() < 1e-12 && (a[1] - b[1]).abs() < 1e-12);
    }
    let text = std::fs::read_to_string(dir.join("gmm_ring8_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(expected["grid"].as_u64(), Some(100));

    // Path acceleration with the candle oracle along Euler trajectories.
    let acc = ring8_acceleration();
    check_curve_shape("acceleration", acc, &expected, 0.03, 0.005);
    check_knots("acceleration", acc, &expected, 0.01);

    // Dirichlet energy with the exact Jacobian along the same trajectories (f64).
    let (acc_exact, dir_exact) = oracle.exact_monitor_curves(100, K_REF, 0).unwrap();
    let dev = acc_exact
        .mass
        .iter()
        .zip(&acc.mass)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        dev < 1e-9,
        "plain-f64 and candle trajectories agree ({dev})"
    );
    // Not normalised in the reference: at t = 0 the Jacobian is −I, so ½||J||² = d/2 = 1.
    assert!((dir_exact.mass[0] - 1.0).abs() < 1e-12);
    assert!((expected["dirichlet"][0].as_f64().unwrap() - 1.0).abs() < 1e-9);
    check_curve_shape("dirichlet (exact)", &dir_exact, &expected, 0.1, 0.015);
    check_knots("dirichlet (exact)", &dir_exact, &expected, 0.01);
}

#[test]
fn hutchinson_dirichlet_knots_match_reference() {
    let Some(dir) = reference_dir() else { return };
    let text = std::fs::read_to_string(dir.join("gmm_ring8_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let opts = MonitorOptions {
        kind: MonitorKind::Dirichlet,
        grid: 100,
        trajectories: K_REF,
        batch: 4096,
        probes: 1,
        probe: ProbeKind::Gaussian,
        jvp: JvpMethod::Vjp,
        dtype: DType::F64,
        seed: 0,
        ..Default::default()
    };
    let curve = monitor_curve(&ring8(), &opts, &[2], None, &Device::Cpu, &mut |_, _| {}).unwrap();
    // S = 1 is noisy cell by cell (≈ 20% of the peak here) but its cumulative mass is not.
    check_curve_shape(
        "dirichlet (Hutchinson VJP, S=1)",
        &curve,
        &expected,
        0.35,
        0.015,
    );
    check_knots("dirichlet (Hutchinson VJP, S=1)", &curve, &expected, 0.01);
}

// ---------------------------------------------------------------- bootstrap

#[test]
fn bootstrap_intervals_contain_estimate_and_shrink_with_k() {
    let curve = ring8_acceleration();
    let g = curve.cells();
    let small = &curve.per_trajectory[..256 * g];
    for mode in [SplitMode::Linear, SplitMode::Grid] {
        let full = curve.bootstrap(3, mode, 200, 0.9, 1).unwrap();
        let few = bootstrap_knots(&curve.grid, small, 3, mode, 200, 0.9, 1).unwrap();
        let point = curve.knots(3, mode).unwrap();
        for (i, iv) in full.iter().enumerate() {
            // Per-trajectory masses are stored in f32; the curve's mean is accumulated in f64.
            assert!(
                (iv.knot - point[i]).abs() < 1e-6,
                "point estimate from all trajectories"
            );
            assert!(iv.lo <= iv.knot && iv.knot <= iv.hi, "{iv:?}");
        }
        for iv in &few {
            assert!(iv.lo <= iv.knot && iv.knot <= iv.hi, "{iv:?}");
        }
        eprintln!("bootstrap {mode:?}: K=256 {few:?}\n   K=8192 {full:?}");
        if mode == SplitMode::Linear {
            for (a, b) in few.iter().zip(&full) {
                assert!(
                    b.width() > 0.0 && a.width() > 2.0 * b.width(),
                    "K=256 {a:?} vs K=8192 {b:?}"
                );
            }
        }
    }
    // Deterministic in the seed.
    assert_eq!(
        bootstrap_knots(&curve.grid, small, 3, SplitMode::Linear, 50, 0.9, 5).unwrap(),
        bootstrap_knots(&curve.grid, small, 3, SplitMode::Linear, 50, 0.9, 5).unwrap()
    );
}

#[test]
fn bootstrap_errors() {
    let grid = uniform(4);
    let per = vec![1.0f32; 12];
    assert!(bootstrap_knots(&grid, &per, 2, SplitMode::Grid, 10, 0.9, 0).is_ok());
    assert!(bootstrap_knots(&grid, &per[..10], 2, SplitMode::Grid, 10, 0.9, 0).is_err());
    assert!(bootstrap_knots(&grid, &[], 2, SplitMode::Grid, 10, 0.9, 0).is_err());
    assert!(bootstrap_knots(&grid, &per, 2, SplitMode::Grid, 0, 0.9, 0).is_err());
    assert!(bootstrap_knots(&grid, &per, 2, SplitMode::Grid, 10, 1.0, 0).is_err());
    assert!(bootstrap_knots(&grid, &per, 0, SplitMode::Grid, 10, 0.9, 0).is_err());
    assert!(matches!(
        bootstrap_knots(&grid, &[0.0f32; 12], 2, SplitMode::Grid, 10, 0.9, 0),
        Err(SplitError::DegenerateMonitor)
    ));
    // Identical trajectories: zero-width intervals at the point estimate.
    let iv = bootstrap_knots(&grid, &per, 2, SplitMode::Linear, 10, 0.9, 0).unwrap();
    assert_eq!(iv.len(), 1);
    assert_eq!((iv[0].lo, iv[0].knot, iv[0].hi), (0.5, 0.5, 0.5));
}

// ---------------------------------------------------------------- SDE sampling

mod sde {
    use super::{ring8, GmmOracle, GmmSpec};
    use candle_core::{DType, Device, Tensor};
    use cbs_flow::path::Interpolant;
    use cbs_flow::sde::{integrate_sde, BrownianStreams, Diffusion, SdeSettings};
    use cbs_flow::solver::uniform_grid;
    use cbs_flow::VelocityField;
    use rand::SeedableRng;

    const PATHS: [Interpolant; 3] = [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp];

    fn gaussian(path: Interpolant) -> GmmOracle {
        GmmOracle::new(GmmSpec::new(vec![vec![1.5, -0.7]], vec![0.4], vec![1.0]))
            .unwrap()
            .with_path(path)
    }

    /// The score recovered from the exact velocity is the exact score of p_t:
    /// `−(x − αμ) / (α²s² + σ²)` for one Gaussian component, on every path.
    #[test]
    fn score_from_velocity_is_the_exact_score() {
        for path in PATHS {
            let oracle = gaussian(path);
            let settings = SdeSettings {
                path,
                diffusion: Diffusion::Sbdm,
                norm: 1.0,
            };
            for &t in &[0.1, 0.4, 0.75, 0.95] {
                let x = Tensor::new(&[[0.3f64, 2.0], [-1.0, 0.5]], &Device::Cpu).unwrap();
                let tt = Tensor::full(t, 2, &Device::Cpu).unwrap();
                let v = oracle.velocity(&x, &tt, None).unwrap();
                let s = settings.score_from_velocity(&v, &x, t).unwrap();
                let c = path.coefficients(t);
                let var = (c.alpha * 0.4).powi(2) + c.sigma * c.sigma;
                let mu = Tensor::new(&[[1.5f64, -0.7]], &Device::Cpu).unwrap();
                let want = ((x.broadcast_sub(&(mu * c.alpha).unwrap()).unwrap()) / -var).unwrap();
                let err = (s - &want).unwrap().abs().unwrap().max_all().unwrap();
                let err = err.to_scalar::<f64>().unwrap();
                assert!(err < 1e-9, "{path} t={t}: {err}");
            }
        }
    }

    /// `n` SDE samples of `oracle` from t = 0 to `t_end` with `steps` steps.
    fn sde_samples(
        oracle: &GmmOracle,
        settings: &SdeSettings,
        n: usize,
        steps: usize,
        t_end: f64,
    ) -> Vec<Vec<f64>> {
        let d = oracle.dim();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x0 = {
            use rand_distr::{Distribution, StandardNormal};
            let v: Vec<f64> = (0..n * d)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
        };
        let streams = (0..n as u64)
            .map(|i| cbs_core::rng::stream(9, cbs_core::rng::Purpose::SdeNoise, i))
            .collect();
        let mut bm = BrownianStreams::new(streams, &[d], DType::F64, &Device::Cpu);
        let grid: Vec<f64> = uniform_grid(steps).iter().map(|t| t * t_end).collect();
        let (x, evals) = integrate_sde(
            &x0,
            &grid,
            settings,
            None,
            &|_| oracle as &dyn VelocityField,
            &mut |_| bm.draw(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(evals, steps);
        x.to_vec2::<f64>().unwrap()
    }

    fn moments(xs: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let (n, d) = (xs.len() as f64, xs[0].len());
        let mean: Vec<f64> = (0..d)
            .map(|i| xs.iter().map(|x| x[i]).sum::<f64>() / n)
            .collect();
        let std = (0..d)
            .map(|i| (xs.iter().map(|x| (x[i] - mean[i]).powi(2)).sum::<f64>() / n).sqrt())
            .collect();
        (mean, std)
    }

    /// SDE samples of one Gaussian have the exact marginal's mean and spread at t = 0.5 and
    /// at t = 1, on every path and for several diffusions (an ODE-only bug, a wrong score or
    /// a wrong noise scale would each move the spread).
    #[test]
    fn marginals_of_one_gaussian_match_the_exact_ones() {
        for path in PATHS {
            let oracle = gaussian(path);
            for diffusion in [Diffusion::Sbdm, Diffusion::Sigma, Diffusion::Constant] {
                let settings = SdeSettings {
                    path,
                    diffusion,
                    norm: 1.0,
                };
                for t_end in [0.5, 1.0] {
                    let xs = sde_samples(&oracle, &settings, 4000, 400, t_end);
                    let (mean, std) = moments(&xs);
                    let c = path.coefficients(t_end);
                    let want_std = ((c.alpha * 0.4).powi(2) + c.sigma * c.sigma).sqrt();
                    for (i, mu) in [1.5, -0.7].iter().enumerate() {
                        let m_err = (mean[i] - c.alpha * mu).abs();
                        let s_rel = (std[i] / want_std - 1.0).abs();
                        assert!(
                            m_err < 0.04 && s_rel < 0.06,
                            "{path} {diffusion:?} t={t_end}: mean {} vs {}, std {} vs {want_std}",
                            mean[i],
                            c.alpha * mu,
                            std[i]
                        );
                    }
                }
            }
        }
    }

    /// On the ring mixture the SDE samples land on the ring with the data's spread and
    /// visit every component evenly; their mean log-density matches the data's.
    #[test]
    fn ring_mixture_samples_match_the_data() {
        let oracle = ring8();
        let settings = SdeSettings {
            path: Interpolant::Linear,
            diffusion: Diffusion::Sbdm,
            norm: 1.0,
        };
        let xs = sde_samples(&oracle, &settings, 4000, 500, 1.0);
        let mut counts = [0usize; 8];
        let mut loglik = 0.0;
        for x in &xs {
            let a = x[1].atan2(x[0]).rem_euclid(2.0 * std::f64::consts::PI);
            counts[((a / (std::f64::consts::PI / 4.0)).round() as usize) % 8] += 1;
            loglik += oracle.log_density(x).unwrap();
        }
        let loglik = loglik / xs.len() as f64;
        let data = oracle.sample(4000, 3);
        let truth: f64 = data
            .chunks(2)
            .map(|x| oracle.log_density(x).unwrap())
            .sum::<f64>()
            / 4000.0;
        assert!((loglik - truth).abs() < 0.15, "{loglik} vs {truth}");
        for c in counts {
            assert!((400..600).contains(&c), "{counts:?}");
        }
    }
}

/// dopri5 on the exact field of one Gaussian lands on the closed-form flow map
/// `μ + √(s² + σ(1)²)·z` within its tolerance, on every path, and across expert segments.
#[test]
fn dopri5_follows_the_exact_gaussian_flow() {
    use cbs_flow::adaptive::{dopri5, Tolerances};
    let (mu, s) = ([1.5, -0.7], 0.4);
    for path in [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp] {
        let oracle = GmmOracle::new(GmmSpec::new(vec![mu.to_vec()], vec![s], vec![1.0]))
            .unwrap()
            .with_path(path);
        let std_at = |t: f64| {
            let c = path.coefficients(t);
            ((c.alpha * s).powi(2) + c.sigma * c.sigma).sqrt()
        };
        let z = [[0.3, -1.2], [-2.0, 0.8]];
        let c0 = path.coefficients(0.0);
        let x0: Vec<f64> = z
            .iter()
            .flat_map(|zi| (0..2).map(move |i| c0.alpha * mu[i] + std_at(0.0) * zi[i]))
            .collect();
        let mut x = Tensor::from_vec(x0, (2, 2), &Device::Cpu).unwrap();
        let tol = Tolerances {
            atol: 1e-8,
            rtol: 1e-8,
        };
        // Two segments, as expert switching integrates them.
        let mut evals = 0;
        for (a, b) in [(0.0, 0.4), (0.4, 1.0)] {
            let (next, n) = dopri5(&oracle, &x, a, b, None, tol).unwrap();
            x = next;
            evals += n;
        }
        let got: Vec<Vec<f64>> = x.to_vec2().unwrap();
        let c1 = path.coefficients(1.0);
        // VP's coefficients stop at t = 1 − 1e-5, so its field over that last stretch is not
        // the exact flow's: O(1e-5) there.
        let tol = if path == Interpolant::Vp { 1e-5 } else { 1e-6 };
        for (k, zk) in z.iter().enumerate() {
            for i in 0..2 {
                let want = c1.alpha * mu[i] + std_at(1.0) * zk[i];
                assert!(
                    (got[k][i] - want).abs() < tol,
                    "{path}: {} vs {want}",
                    got[k][i]
                );
            }
        }
        assert!(evals < 2000, "{path}: {evals} evaluations");
    }
}

/// The Bayes floor agrees with a brute-force Monte Carlo of `‖y − u(x_t)‖²/d` over pairs
/// `(x1, x0)` on every path (y = α'x1 + σ'x0, u the exact velocity); at t = 0 on the linear
/// path it is the data variance per element (nothing of x1 is in x_t = x0).
#[test]
fn bayes_floor_matches_brute_force_monte_carlo() {
    use rand_distr::{Distribution, StandardNormal};
    for path in [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp] {
        let oracle = ring8().with_path(path);
        for &t in &[0.2, 0.5, 0.8] {
            let floor = oracle.bayes_floor(t, 4000, 1).unwrap();
            let c = path.coefficients(t);
            let n = 20000;
            let x1 = oracle.sample(n, 2);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut errs = Vec::with_capacity(n);
            for i in 0..n {
                let x0: Vec<f64> = (0..2).map(|_| StandardNormal.sample(&mut rng)).collect();
                let xt: Vec<f64> = (0..2)
                    .map(|j| c.alpha * x1[2 * i + j] + c.sigma * x0[j])
                    .collect();
                let u = oracle.velocity_f64(&xt, t).unwrap();
                let e: f64 = (0..2)
                    .map(|j| (c.d_alpha * x1[2 * i + j] + c.d_sigma * x0[j] - u[j]).powi(2))
                    .sum::<f64>()
                    / 2.0;
                errs.push(e);
            }
            let mean = errs.iter().sum::<f64>() / n as f64;
            let se = (errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
                / (n as f64).sqrt();
            assert!(
                (floor - mean).abs() < 4.0 * se + 0.01 * mean,
                "{path} t={t}: floor {floor} vs brute force {mean} ± {se}"
            );
        }
    }
    // Linear path, t = 0: E[y | x0] = E[x1] − x0, so the floor is Var(x1) per element:
    // radius² / 2 + std² = 4.5 + 0.04 for the ring.
    let f0 = ring8().bayes_floor(0.0, 2000, 1).unwrap();
    assert!((f0 - 4.54).abs() < 1e-9, "{f0}");
}

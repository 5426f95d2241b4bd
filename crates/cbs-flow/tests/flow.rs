//! Interpolant, loss, solvers and guidance on fields with known answers.

use candle_core::{DType, Device, Result, Tensor};
use cbs_flow::guidance::Guided;
use cbs_flow::interpolant::{interpolate, target_velocity, velocity_mse};
use cbs_flow::solver::{integrate_single, segmented_grid, uniform_grid, Solver};
use cbs_flow::VelocityField;

fn t1(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn interpolant_endpoints_and_target() {
    let x0 = Tensor::new(&[[1.0f64, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
    let x1 = Tensor::new(&[[4.0f64, 0.0], [-1.0, 1.0]], &Device::Cpu).unwrap();
    let xt = interpolate(&x0, &x1, &t1(&[0.0, 1.0])).unwrap();
    // Row 0 at t = 0 is the noise, row 1 at t = 1 is the data.
    assert_eq!(vals(&xt), vec![1.0, -2.0, -1.0, 1.0]);
    let xt = interpolate(&x0, &x1, &t1(&[0.25, 0.5])).unwrap();
    assert_eq!(vals(&xt), vec![1.75, -1.5, -0.25, 2.0]);
    assert_eq!(
        vals(&target_velocity(&x0, &x1).unwrap()),
        vec![3.0, 2.0, -1.5, -2.0]
    );
}

#[test]
fn mse_is_mean_over_all_elements() {
    let a = Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[1.0f64, 0.0], [0.0, 4.0]], &Device::Cpu).unwrap();
    for k in [cbs_kernels::Kernels::Fused, cbs_kernels::Kernels::Composed] {
        let l = velocity_mse(&a, &b, k).unwrap().to_scalar::<f64>().unwrap();
        assert!((l - (4.0 + 9.0) / 4.0).abs() < 1e-15, "{k:?}: {l}");
    }
}

/// v(x, t) = a + c·t, independent of x.
struct Affine {
    a: f64,
    c: f64,
}
impl VelocityField for Affine {
    fn velocity(&self, x: &Tensor, t: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        let v = ((t * self.c)? + self.a)?;
        v.reshape((x.dim(0)?, 1))?
            .broadcast_as(x.shape())?
            .contiguous()
    }
}

/// v(x, t) = λ·x.
struct Linear(f64);
impl VelocityField for Linear {
    fn velocity(&self, x: &Tensor, _: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        x * self.0
    }
}

fn x0() -> Tensor {
    Tensor::new(&[[0.3f64, -1.2], [2.0, 0.5]], &Device::Cpu).unwrap()
}

#[test]
fn euler_is_exact_for_constant_velocity() {
    let f = Affine { a: 1.5, c: 0.0 };
    let x = integrate_single(&f, &x0(), &uniform_grid(7), Solver::Euler, None).unwrap();
    for (got, want) in vals(&x).iter().zip(vals(&x0()).iter().map(|v| v + 1.5)) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}

#[test]
fn heun_is_exact_for_time_linear_velocity_and_euler_has_the_known_error() {
    // x(1) = x0 + a + c/2 exactly. Euler with S steps misses by c/(2S).
    let f = Affine { a: -0.7, c: 3.0 };
    let steps = 5;
    let grid = uniform_grid(steps);
    let heun = integrate_single(&f, &x0(), &grid, Solver::Heun, None).unwrap();
    let euler = integrate_single(&f, &x0(), &grid, Solver::Euler, None).unwrap();
    for ((h, e), x) in vals(&heun).iter().zip(vals(&euler)).zip(vals(&x0())) {
        let exact = x - 0.7 + 1.5;
        assert!((h - exact).abs() < 1e-12, "heun {h} vs {exact}");
        let euler_exact = exact - 3.0 / (2.0 * steps as f64);
        assert!(
            (e - euler_exact).abs() < 1e-12,
            "euler {e} vs {euler_exact}"
        );
    }
}

#[test]
fn solvers_match_their_closed_forms_on_linear_dynamics() {
    // dx/dt = λx: Euler multiplies by (1 + λh) per step, Heun by (1 + λh + (λh)²/2);
    // both converge to e^λ, Heun at second order.
    let lam = -1.3;
    for steps in [1usize, 4, 16] {
        let h = 1.0 / steps as f64;
        let grid = uniform_grid(steps);
        let e = integrate_single(&Linear(lam), &x0(), &grid, Solver::Euler, None).unwrap();
        let hn = integrate_single(&Linear(lam), &x0(), &grid, Solver::Heun, None).unwrap();
        let fe = (1.0 + lam * h).powi(steps as i32);
        let fh = (1.0 + lam * h + (lam * h).powi(2) / 2.0).powi(steps as i32);
        for ((ge, gh), x) in vals(&e).iter().zip(vals(&hn)).zip(vals(&x0())) {
            assert!((ge - x * fe).abs() < 1e-12);
            assert!((gh - x * fh).abs() < 1e-12);
        }
    }
    let err = |s: Solver, steps: usize| {
        let x = integrate_single(&Linear(lam), &x0(), &uniform_grid(steps), s, None).unwrap();
        (vals(&x)[0] - 0.3 * lam.exp()).abs()
    };
    // Halving h divides the error by ≈2 (Euler) and ≈4 (Heun).
    let (e1, e2) = (err(Solver::Euler, 32), err(Solver::Euler, 64));
    let (h1, h2) = (err(Solver::Heun, 32), err(Solver::Heun, 64));
    assert!((e1 / e2 - 2.0).abs() < 0.1, "euler order {}", e1 / e2);
    assert!((h1 / h2 - 4.0).abs() < 0.2, "heun order {}", h1 / h2);
}

#[test]
fn solver_keeps_dtype_f32() {
    let x = x0().to_dtype(DType::F32).unwrap();
    let y = integrate_single(&Linear(0.5), &x, &uniform_grid(3), Solver::Heun, None).unwrap();
    assert_eq!(y.dtype(), DType::F32);
}

#[test]
fn segmented_grid_puts_an_edge_on_every_knot() {
    let knots = [0.4, 0.77];
    let (grid, owner) = segmented_grid(&knots, 20);
    assert_eq!(grid.len(), 21);
    assert_eq!(owner.len(), 20);
    assert_eq!(grid[0], 0.0);
    assert_eq!(*grid.last().unwrap(), 1.0);
    for k in knots {
        assert!(grid.contains(&k), "knot {k} not a step edge: {grid:?}");
    }
    assert!(grid.windows(2).all(|w| w[1] > w[0]));
    // Proportional allocation: 0.4·20 = 8, 0.37·20 = 7.4, 0.23·20 = 4.6 → 8, 7, 5.
    let counts: Vec<usize> = (0..3)
        .map(|s| owner.iter().filter(|&&o| o == s).count())
        .collect();
    assert_eq!(counts, vec![8, 7, 5]);
    // Each step lies inside its owner's segment.
    let edges = [0.0, 0.4, 0.77, 1.0];
    for (i, &o) in owner.iter().enumerate() {
        assert!(grid[i] >= edges[o] && grid[i + 1] <= edges[o + 1]);
    }
}

#[test]
fn segmented_grid_gives_each_segment_at_least_one_step() {
    let (grid, owner) = segmented_grid(&[0.01, 0.02], 3);
    assert_eq!(grid, vec![0.0, 0.01, 0.02, 1.0]);
    assert_eq!(owner, vec![0, 1, 2]);
    // A budget smaller than the number of segments is raised to one step each.
    let (grid, _) = segmented_grid(&[0.3, 0.6], 1);
    assert_eq!(grid, vec![0.0, 0.3, 0.6, 1.0]);
    // No knots: the uniform grid.
    let (grid, _) = segmented_grid(&[], 4);
    assert_eq!(grid, uniform_grid(4));
}

/// A conditional field whose velocity is the label (null class 9 gives 0).
struct LabelField;
impl VelocityField for LabelField {
    fn velocity(&self, x: &Tensor, _: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let y = y.unwrap().to_dtype(DType::F64)?;
        let y = y.ne(9.0)?.where_cond(&y, &y.zeros_like()?)?;
        y.reshape((x.dim(0)?, 1))?
            .broadcast_as(x.shape())?
            .contiguous()
    }
    fn null_class(&self) -> Option<u32> {
        Some(9)
    }
}

#[test]
fn guidance_combines_conditional_and_unconditional() {
    let x = x0();
    let t = t1(&[0.5, 0.5]);
    let y = Tensor::new(&[2u32, 5], &Device::Cpu).unwrap();
    for scale in [1.0, 1.5, 4.0] {
        let g = Guided::new(LabelField, scale);
        let v = vals(&g.velocity(&x, &t, Some(&y)).unwrap());
        // v_uncond = 0, v_cond = label ⇒ v = scale·label.
        assert_eq!(v, vec![2.0 * scale, 2.0 * scale, 5.0 * scale, 5.0 * scale]);
    }
}

#[test]
fn heun_with_a_final_euler_step_differs_from_heun_on_the_last_step_only() {
    // v = a + c·t: Heun is exact; an Euler step [t0, t0 + h] misses by c·h²/2.
    let f = Affine { a: 0.4, c: 2.0 };
    let steps = 4;
    let h = 1.0 / steps as f64;
    let got = integrate_single(&f, &x0(), &uniform_grid(steps), Solver::HeunEulerLast, None);
    for (g, x) in vals(&got.unwrap()).iter().zip(vals(&x0())) {
        let exact = x + 0.4 + 1.0;
        let want = exact - 2.0 * h * h / 2.0;
        assert!((g - want).abs() < 1e-12, "{g} vs {want}");
    }
    assert_eq!(Solver::HeunEulerLast.evals_per_step(), 2);
}

#[test]
fn guidance_interval_guides_inside_only() {
    let x = x0();
    let y = Tensor::new(&[2u32, 5], &Device::Cpu).unwrap();
    let g = Guided {
        inner: LabelField,
        scale: 3.0,
        interval: Some((0.1, 1.0)),
    };
    for (t, factor) in [(0.05, 1.0), (0.1, 1.0), (0.5, 3.0), (0.99, 3.0), (1.0, 1.0)] {
        let v = vals(&g.velocity(&x, &t1(&[t, t]), Some(&y)).unwrap());
        assert_eq!(
            v,
            vec![2.0 * factor, 2.0 * factor, 5.0 * factor, 5.0 * factor],
            "t = {t}"
        );
    }
}

/// Samplers pass the shared time on the host: the interval decides from it (rounded to the
/// state's dtype, as the tensor holds it), never from the tensor.
#[test]
fn guidance_interval_takes_the_samplers_host_time() {
    let y = Tensor::new(&[2u32, 5], &Device::Cpu).unwrap();
    let g = Guided {
        inner: LabelField,
        scale: 3.0,
        interval: Some((0.1, 1.0)),
    };
    for dtype in [DType::F64, DType::F32] {
        let x = x0().to_dtype(dtype).unwrap();
        // 0.1 in f32 is 0.10000000149 > 0.1: inside for f32 state, outside for f64.
        for t in [0.05, 0.1, 0.5, 0.99, 1.0] {
            let tt = Tensor::new(&[t, t], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let read = vals(
                &g.velocity(&x, &tt, Some(&y))
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            );
            let shared = g.velocity_shared(&x, &tt, t, Some(&y)).unwrap();
            let shared = vals(&shared.to_dtype(DType::F64).unwrap());
            assert_eq!(read, shared, "t = {t}, {dtype:?}");
        }
        let tt = Tensor::new(&[0.1f64, 0.1], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let v = vals(
            &g.velocity_shared(&x, &tt, 0.1, Some(&y))
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        );
        let factor = if dtype == DType::F32 { 3.0 } else { 1.0 };
        assert_eq!(v[0], 2.0 * factor, "{dtype:?}");
    }
    // The tensor is not read: a tensor saying 0.5 with a host time of 0.05 is unguided.
    let x = x0();
    let v = vals(
        &g.velocity_shared(&x, &t1(&[0.5, 0.5]), 0.05, Some(&y))
            .unwrap(),
    );
    assert_eq!(v, vec![2.0, 2.0, 5.0, 5.0]);
}

/// v = λ·x for t < knot, μ·x after, recording every time it is evaluated at.
struct Piecewise {
    rate: f64,
    seen: std::cell::RefCell<Vec<f64>>,
}
impl VelocityField for Piecewise {
    fn velocity(&self, x: &Tensor, t: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        self.seen
            .borrow_mut()
            .extend(t.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        x * self.rate
    }
}

#[test]
fn dopri5_meets_its_tolerance_and_tighter_tolerances_cost_more() {
    use cbs_flow::adaptive::{dopri5, Tolerances};
    let x = x0();
    let exact = (&x * 1.7f64.exp()).unwrap();
    let mut last = (f64::INFINITY, 0);
    for rtol in [1e-3, 1e-5, 1e-7, 1e-9] {
        let tol = Tolerances {
            atol: rtol * 1e-3,
            rtol,
        };
        let (got, evals) = dopri5(&Linear(1.7), &x, 0.0, 1.0, None, tol).unwrap();
        let err = vals(&(&got - &exact).unwrap())
            .iter()
            .zip(vals(&exact))
            .map(|(e, v)| e.abs() / v.abs().max(1.0))
            .fold(0.0, f64::max);
        // Local control keeps the global error within a small multiple of the tolerance.
        assert!(err < 50.0 * rtol, "rtol {rtol}: error {err}");
        assert!(
            err < last.0 && evals > last.1,
            "rtol {rtol}: {err} {evals} vs {last:?}"
        );
        last = (err, evals);
    }
    // A 5th-order method: two decades of tolerance cost far less than 10× the evaluations.
    let cheap = dopri5(
        &Linear(1.7),
        &x,
        0.0,
        1.0,
        None,
        Tolerances {
            atol: 1e-9,
            rtol: 1e-6,
        },
    );
    let tight = dopri5(
        &Linear(1.7),
        &x,
        0.0,
        1.0,
        None,
        Tolerances {
            atol: 1e-11,
            rtol: 1e-8,
        },
    );
    let (c, t) = (cheap.unwrap().1, tight.unwrap().1);
    assert!(t < 4 * c, "{c} → {t} evaluations");
}

#[test]
fn dopri5_integrates_each_expert_segment_on_its_own() {
    use cbs_flow::adaptive::Tolerances;
    use cbs_flow::solver::integrate_counted;
    let knot = 0.37;
    let (a, b) = (
        Piecewise {
            rate: 2.0,
            seen: Default::default(),
        },
        Piecewise {
            rate: -1.5,
            seen: Default::default(),
        },
    );
    let x = x0();
    let tol = Tolerances {
        atol: 1e-10,
        rtol: 1e-8,
    };
    let fields: [&dyn VelocityField; 2] = [&a, &b];
    let (got, evals) = integrate_counted(
        &x,
        &[0.0, knot, 1.0],
        Solver::Dopri5,
        tol,
        None,
        &|i| fields[i],
        &mut |_, _| {},
    )
    .unwrap();
    // The exact solution of the piecewise-linear field.
    let exact = (&x * (2.0 * knot - 1.5 * (1.0 - knot)).exp()).unwrap();
    let err = vals(&(&got - &exact).unwrap())
        .iter()
        .fold(0.0f64, |m, e| m.max(e.abs()));
    assert!(err < 1e-6, "{err}");
    // Each expert is evaluated only inside its own segment, and the knot is reached exactly.
    let (sa, sb) = (a.seen.borrow(), b.seen.borrow());
    assert!(sa.iter().all(|&t| (0.0..=knot).contains(&t)), "{sa:?}");
    assert!(sb.iter().all(|&t| (knot..=1.0).contains(&t)), "{sb:?}");
    assert!(sa.contains(&knot) && sb.contains(&knot) && sb.contains(&1.0));
    let b_size = x.dim(0).unwrap();
    assert_eq!(evals * b_size, sa.len() + sb.len());
}

/// A field that turns non-finite after t = 0.5.
struct Blowup;
impl VelocityField for Blowup {
    fn velocity(&self, x: &Tensor, t: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        let t0 = t.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
        if t0 > 0.5 {
            x * f64::NAN
        } else {
            x * 1.0
        }
    }
}

#[test]
fn dopri5_on_a_non_finite_field_is_an_error_not_a_hang() {
    use cbs_flow::adaptive::{dopri5, Tolerances};
    let e = dopri5(&Blowup, &x0(), 0.0, 1.0, None, Tolerances::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dopri5 on [0, 1]") && e.contains("step shrank"),
        "{e}"
    );
}

mod paths {
    use super::{t1, vals};
    use candle_core::{Device, Tensor};
    use cbs_flow::path::{Interpolant, VP_T_MAX};

    const ALL: [Interpolant; 3] = [Interpolant::Linear, Interpolant::Gvp, Interpolant::Vp];

    /// α' and σ' are the derivatives of α and σ (central differences), on every path.
    #[test]
    fn derivatives_match_finite_differences() {
        let h = 1e-6;
        for p in ALL {
            for &t in &[0.0, 0.1, 0.37, 0.5, 0.8, 0.99] {
                let c = p.coefficients(t);
                let (lo, hi) = (p.coefficients(t - h), p.coefficients(t + h));
                let da = (hi.alpha - lo.alpha) / (2.0 * h);
                let ds = (hi.sigma - lo.sigma) / (2.0 * h);
                let tol = 1e-6 * (1.0 + c.d_alpha.abs().max(c.d_sigma.abs()));
                assert!(
                    (da - c.d_alpha).abs() < tol,
                    "{p} α' at {t}: {da} vs {}",
                    c.d_alpha
                );
                assert!(
                    (ds - c.d_sigma).abs() < tol,
                    "{p} σ' at {t}: {ds} vs {}",
                    c.d_sigma
                );
            }
        }
    }

    /// Noise at t = 0, data at t = 1 (VP: α(0) = e^{-5.025}), and golden values of SiT's
    /// formulas computed by hand.
    #[test]
    fn endpoints_and_golden_values() {
        let l = Interpolant::Linear.coefficients(0.25);
        assert_eq!(
            (l.alpha, l.sigma, l.d_alpha, l.d_sigma),
            (0.25, 0.75, 1.0, -1.0)
        );
        let g = Interpolant::Gvp.coefficients(0.3);
        assert!((g.alpha - 0.45399049973954675).abs() < 1e-15);
        assert!((g.sigma - 0.8910065241883679).abs() < 1e-15);
        let v = Interpolant::Vp.coefficients(0.5);
        assert!((v.alpha - 0.2811828807967524).abs() < 1e-15);
        assert!((v.sigma - 0.9596542020680363).abs() < 1e-15);
        for p in ALL {
            let (a, b) = (p.coefficients(0.0), p.coefficients(1.0));
            assert!(a.alpha < 7e-3 && (a.sigma - 1.0).abs() < 1e-4, "{p} at 0");
            assert!((b.alpha - 1.0).abs() < 1e-4 && b.sigma < 5e-3, "{p} at 1");
            assert!(b.d_sigma.is_finite(), "{p}: σ'(1) must stay finite");
        }
        // VP is evaluated at min(t, 1 − 1e-5).
        assert_eq!(
            Interpolant::Vp.coefficients(1.0),
            Interpolant::Vp.coefficients(VP_T_MAX)
        );
    }

    /// The tensor coefficients equal the f64 ones, and `d x_t / dt` is the target.
    #[test]
    fn tensors_interpolant_and_target_agree() {
        let ts = [0.0, 0.2, 0.55, 0.9, 1.0];
        let x0 = Tensor::new(&[[1.0f64, -2.0]; 5], &Device::Cpu).unwrap();
        let x1 = Tensor::new(&[[0.5f64, 3.0]; 5], &Device::Cpu).unwrap();
        for p in ALL {
            let c = p.coefficient_tensors(&t1(&ts)).unwrap();
            for (i, &t) in ts.iter().enumerate() {
                let want = p.coefficients(t);
                let got: Vec<f64> = c.iter().map(|x| vals(x)[i]).collect();
                let want = [want.alpha, want.sigma, want.d_alpha, want.d_sigma];
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() < 1e-12 * (1.0 + w.abs()),
                        "{p} at {t}: {g} vs {w}"
                    );
                }
            }
            let h = 1e-6;
            let mid = [0.2, 0.55, 0.9];
            let lo = p
                .interpolate(
                    &x0.narrow(0, 0, 3).unwrap(),
                    &x1.narrow(0, 0, 3).unwrap(),
                    &t1(&mid.map(|t| t - h)),
                )
                .unwrap();
            let hi = p
                .interpolate(
                    &x0.narrow(0, 0, 3).unwrap(),
                    &x1.narrow(0, 0, 3).unwrap(),
                    &t1(&mid.map(|t| t + h)),
                )
                .unwrap();
            let fd = vals(&((hi - lo).unwrap() / (2.0 * h)).unwrap());
            let target = vals(
                &p.target(
                    &x0.narrow(0, 0, 3).unwrap(),
                    &x1.narrow(0, 0, 3).unwrap(),
                    &t1(&mid),
                )
                .unwrap(),
            );
            for (a, b) in fd.iter().zip(&target) {
                assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{p}: {a} vs {b}");
            }
        }
    }
}

//! ODE integrators for `dx/dt = v(x, t)` on an explicit time grid: fixed-step Euler and Heun,
//! and adaptive Dormand–Prince 5(4) ([`crate::adaptive`]) within each grid interval.
//!
//! The grid is explicit so that expert-switching sampling can put a step edge on every knot:
//! each step `[grid[i], grid[i+1]]` is integrated by one field chosen per step.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::adaptive::{dopri5, Tolerances};
use crate::VelocityField;

/// Which fixed-step integrator to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Solver {
    /// First order: `x ← x + h·v(x, t)`.
    #[default]
    #[cfg_attr(feature = "clap", value(help = None::<&str>))]
    Euler,
    /// Second order (explicit trapezoid): predictor Euler, corrector averages both slopes.
    #[cfg_attr(feature = "clap", value(help = None::<&str>))]
    Heun,
    /// Heun on every step but the last, which is Euler (JiT's sampler: an x-predicting
    /// model's velocity is least reliable at t = 1, where the last Heun slope would be taken).
    #[cfg_attr(
        feature = "clap",
        value(help = "Heun with a final Euler step (JiT's sampler)")
    )]
    HeunEulerLast,
    /// Adaptive Dormand–Prince 5(4) with `--atol`/`--rtol` inside each grid interval; sampling
    /// gives it one interval per expert segment, ending exactly on each knot.
    #[cfg_attr(
        feature = "clap",
        value(help = "Adaptive Dormand-Prince 5(4) (--atol, --rtol), one run per expert segment")
    )]
    Dopri5,
    /// Euler–Maruyama on SiT's SDE (`--diffusion`, `--diffusion-norm`; [`crate::sde`]): a
    /// noise-free first and last step, the score from the velocity on the model's path.
    #[cfg_attr(
        feature = "clap",
        value(help = "Euler-Maruyama on SiT's SDE (--diffusion, --diffusion-norm)")
    )]
    EulerMaruyama,
}

impl Solver {
    /// Velocity evaluations per step.
    /// For [`Solver::Dopri5`], the evaluations of one accepted step (it takes as many steps
    /// as its tolerances need).
    pub fn evals_per_step(self) -> usize {
        match self {
            Solver::Euler | Solver::EulerMaruyama => 1,
            Solver::Heun | Solver::HeunEulerLast => 2,
            Solver::Dopri5 => 6,
        }
    }

    /// Whether the solver picks its own steps inside each grid interval.
    pub fn is_adaptive(self) -> bool {
        self == Solver::Dopri5
    }

    /// Whether the solver integrates the SDE ([`crate::sde::integrate_sde`]; it needs the
    /// model's path, a diffusion and Brownian noise).
    pub fn is_stochastic(self) -> bool {
        self == Solver::EulerMaruyama
    }
}

/// `steps + 1` equally spaced points from 0 to 1.
pub fn uniform_grid(steps: usize) -> Vec<f64> {
    (0..=steps).map(|i| i as f64 / steps as f64).collect()
}

/// A step grid from 0 to 1 with a step edge on every knot.
///
/// `knots` are the interior boundaries `t_1 < … < t_{N−1}`; the `steps` budget is shared
/// between the `N` segments in proportion to their length (largest remainders first), with at
/// least one step per segment. Returns the grid and, for each step, the segment that owns it.
pub fn segmented_grid(knots: &[f64], steps: usize) -> (Vec<f64>, Vec<usize>) {
    let mut edges = Vec::with_capacity(knots.len() + 2);
    edges.push(0.0);
    edges.extend_from_slice(knots);
    edges.push(1.0);
    let n = edges.len() - 1;
    let steps = steps.max(n);
    let lengths: Vec<f64> = edges.windows(2).map(|w| w[1] - w[0]).collect();
    // One step per segment is guaranteed; the rest is shared by largest remainder.
    let spare = (steps - n) as f64;
    let ideal: Vec<f64> = lengths.iter().map(|l| l * spare).collect();
    let mut counts: Vec<usize> = ideal.iter().map(|v| 1 + v.floor() as usize).collect();
    let mut left = steps - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let ra = ideal[a] - ideal[a].floor();
        let rb = ideal[b] - ideal[b].floor();
        rb.partial_cmp(&ra)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    let mut grid = vec![0.0];
    let mut owner = Vec::with_capacity(steps);
    for (seg, &c) in counts.iter().enumerate() {
        let (a, b) = (edges[seg], edges[seg + 1]);
        for k in 1..=c {
            // The last point of a segment is the knot itself, exactly.
            let t = if k == c {
                b
            } else {
                a + (b - a) * k as f64 / c as f64
            };
            grid.push(t);
            owner.push(seg);
        }
    }
    (grid, owner)
}

/// Integrate from `grid[0]` to `grid[last]`, using `field_for_step(i)` for step `i`.
///
/// `on_step(i, total)` is called after each completed step (progress reporting).
pub fn integrate<'a>(
    x: &Tensor,
    grid: &[f64],
    solver: Solver,
    y: Option<&Tensor>,
    field_for_step: &dyn Fn(usize) -> &'a dyn VelocityField,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let tol = Tolerances::default();
    integrate_counted(x, grid, solver, tol, y, field_for_step, on_step).map(|(x, _)| x)
}

/// [`integrate`] with the adaptive solver's tolerances, also returning the number of
/// velocity evaluations.
pub fn integrate_counted<'a>(
    x: &Tensor,
    grid: &[f64],
    solver: Solver,
    tol: Tolerances,
    y: Option<&Tensor>,
    field_for_step: &dyn Fn(usize) -> &'a dyn VelocityField,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, usize)> {
    let b = x.dim(0)?;
    let steps = grid.len().saturating_sub(1);
    let mut x = x.clone();
    let mut evals = 0;
    for i in 0..steps {
        let (t0, t1) = (grid[i], grid[i + 1]);
        let h = t1 - t0;
        let field = field_for_step(i);
        if solver.is_stochastic() {
            candle_core::bail!(
                "the Euler-Maruyama sampler integrates an SDE: use cbs_flow::sde::integrate_sde"
            );
        }
        if solver == Solver::Dopri5 {
            let (next, n) = dopri5(field, &x, t0, t1, y, tol)?;
            x = next;
            evals += n;
            on_step(i + 1, steps);
            continue;
        }
        let v0 = field.velocity_shared(&x, &time(t0, b, x.dtype(), x.device())?, t0, y)?;
        evals += 1;
        let last = i + 1 == steps;
        x = match solver {
            Solver::Euler => (&x + (v0 * h)?)?,
            Solver::HeunEulerLast if last => (&x + (v0 * h)?)?,
            Solver::Heun | Solver::HeunEulerLast | Solver::Dopri5 | Solver::EulerMaruyama => {
                let x_pred = (&x + (&v0 * h)?)?;
                let v1 =
                    field.velocity_shared(&x_pred, &time(t1, b, x.dtype(), x.device())?, t1, y)?;
                evals += 1;
                (&x + ((v0 + v1)? * (0.5 * h))?)?
            }
        };
        on_step(i + 1, steps);
    }
    Ok((x, evals))
}

/// Integrate with one field on every step.
pub fn integrate_single(
    field: &dyn VelocityField,
    x: &Tensor,
    grid: &[f64],
    solver: Solver,
    y: Option<&Tensor>,
) -> Result<Tensor> {
    integrate(x, grid, solver, y, &|_| field, &mut |_, _| {})
}

fn time(t: f64, b: usize, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
    Tensor::full(t, b, dev)?.to_dtype(dtype)
}

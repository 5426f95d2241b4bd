//! De Boor equidistribution: cell masses → knots with equal mass between them.
//!
//! With grid points `t_0 < … < t_G` and cell masses `m_0, …, m_{G−1}`, the cumulative mass is
//! `C(t_0) = 0`, `C(t_{j+1}) = Σ_{i ≤ j} m_i`. Knot `i` (of `N − 1`) targets `(i/N)·C(t_G)`:
//!
//! - [`SplitMode::Grid`] (the paper): the grid point whose `C` is closest to the target; on a tie
//!   the earlier grid point.
//! - [`SplitMode::Linear`]: where the piecewise-linear interpolation of `C` reaches the target
//!   (if the target equals a flat stretch of `C`, its right end).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SplitError};

/// How knots are read off the cumulative mass.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SplitMode {
    /// Closest grid point (knots on the grid).
    #[default]
    #[cfg_attr(
        feature = "clap",
        value(help = "The grid point whose cumulative mass is closest to i/N (the paper's rule)")
    )]
    Grid,
    /// Piecewise-linear crossing (knots anywhere).
    #[cfg_attr(
        feature = "clap",
        value(
            help = "Where the piecewise-linear cumulative mass crosses i/N (knots off the grid)"
        )
    )]
    Linear,
}

/// Check the grid and masses; returns the cumulative mass `C` at the grid points.
pub(crate) fn cumulative(grid: &[f64], mass: &[f64]) -> Result<Vec<f64>> {
    if grid.len() < 2 {
        return Err(SplitError::GridTooShort(grid.len()));
    }
    if mass.len() + 1 != grid.len() {
        return Err(SplitError::MassLength {
            mass: mass.len(),
            grid: grid.len(),
        });
    }
    if !grid[0].is_finite() {
        return Err(SplitError::GridNotIncreasing {
            index: 1,
            prev: grid[0],
            value: grid[1],
        });
    }
    for i in 1..grid.len() {
        if !(grid[i].is_finite() && grid[i] > grid[i - 1]) {
            return Err(SplitError::GridNotIncreasing {
                index: i,
                prev: grid[i - 1],
                value: grid[i],
            });
        }
    }
    let mut c = Vec::with_capacity(grid.len());
    c.push(0.0);
    let mut acc = 0.0;
    for (index, &m) in mass.iter().enumerate() {
        if !(m.is_finite() && m >= 0.0) {
            return Err(SplitError::InvalidMass { index, value: m });
        }
        acc += m;
        c.push(acc);
    }
    if !acc.is_finite() {
        return Err(SplitError::InvalidMass {
            index: mass.len() - 1,
            value: acc,
        });
    }
    if acc <= 0.0 {
        return Err(SplitError::DegenerateMonitor);
    }
    Ok(c)
}

/// Knots from a validated cumulative mass (no checks of the result).
pub(crate) fn knots_from_cumulative(
    grid: &[f64],
    c: &[f64],
    n_experts: usize,
    mode: SplitMode,
) -> Vec<f64> {
    let total = c[c.len() - 1];
    (1..n_experts)
        .map(|i| {
            let target = i as f64 / n_experts as f64 * total;
            match mode {
                SplitMode::Grid => {
                    let mut best = 0;
                    let mut best_err = f64::INFINITY;
                    for (j, cj) in c.iter().enumerate() {
                        let err = (cj - target).abs();
                        if err < best_err {
                            best = j;
                            best_err = err;
                        }
                    }
                    grid[best]
                }
                SplitMode::Linear => {
                    // Last j with C[j] ≤ target; target < C[G], so j < G.
                    let j = c.partition_point(|&cj| cj <= target).saturating_sub(1);
                    let j = j.min(c.len() - 2);
                    let (c0, c1) = (c[j], c[j + 1]);
                    if c1 <= c0 || target <= c0 {
                        grid[j]
                    } else {
                        grid[j] + (target - c0) / (c1 - c0) * (grid[j + 1] - grid[j])
                    }
                }
            }
        })
        .collect()
}

/// Check that knots are strictly increasing and strictly inside the grid.
pub(crate) fn check_knots(grid: &[f64], knots: &[f64], n_experts: usize) -> Result<()> {
    let (lo, hi) = (grid[0], grid[grid.len() - 1]);
    for (i, &k) in knots.iter().enumerate() {
        if k <= lo || k >= hi {
            return Err(SplitError::KnotAtBoundary { index: i + 1, t: k });
        }
        if i > 0 && k <= knots[i - 1] {
            return Err(SplitError::CoincidingKnots {
                first: i,
                second: i + 1,
                t: k,
                n_experts,
                cells: grid.len() - 1,
            });
        }
    }
    Ok(())
}

/// The `n_experts − 1` interior knots that equidistribute `mass` over `grid`.
///
/// `grid` has `G + 1` strictly increasing points and `mass` the `G` cell masses (finite,
/// non-negative, not all zero). Knots are numbered from 1 in error messages. `n_experts = 1`
/// gives no knots.
pub fn equidistribute(
    grid: &[f64],
    mass: &[f64],
    n_experts: usize,
    mode: SplitMode,
) -> Result<Vec<f64>> {
    if n_experts < 1 {
        return Err(SplitError::NoExperts(n_experts));
    }
    let c = cumulative(grid, mass)?;
    let knots = knots_from_cumulative(grid, &c, n_experts, mode);
    check_knots(grid, &knots, n_experts)?;
    Ok(knots)
}

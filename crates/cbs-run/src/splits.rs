//! What `cbs estimate-splits` writes: `splits.toml` (the knots it found, how it found them,
//! and their confidence intervals; `train-experts` and `sample --experts` read it) and
//! `monitor.csv` (the monitor curve).

use std::fmt::Write as _;
use std::path::Path;

use cbs_split::{MonitorKind, ProbeKind, SplitMode};
use serde::{Deserialize, Serialize};

use crate::{Result, RunError};

/// The knots file, in an `estimate-splits` output and in an experts directory.
pub const SPLITS_FILE: &str = "splits.toml";
/// `t,m,cumulative` of the monitor curve.
pub const MONITOR_CSV: &str = "monitor.csv";
/// The plot of the monitor curve (drawn by the CLI).
pub const MONITOR_PNG: &str = "monitor.png";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitsFile {
    /// Interior knots `t_1 < … < t_{N−1}` in (0, 1).
    pub knots: Vec<f64>,
    pub settings: SplitSettings,
    /// Bootstrap interval of every knot, in order (empty if not computed).
    #[serde(default)]
    pub intervals: Vec<KnotIntervalEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSettings {
    pub monitor: MonitorKind,
    pub experts: usize,
    pub grid: usize,
    pub trajectories: usize,
    pub mode: SplitMode,
    pub seed: u64,
    pub probes: usize,
    pub probe: ProbeKind,
    pub cfg_scale: f64,
    /// The auxiliary checkpoint directory, or `oracle:<json>`, or `uniform`.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnotIntervalEntry {
    pub knot: f64,
    pub lo: f64,
    pub hi: f64,
    pub confidence: f64,
}

impl SplitsFile {
    /// The naive equal split into `n` segments (what `--uniform N` trains).
    pub fn uniform(n: usize) -> Self {
        Self {
            knots: (1..n).map(|i| i as f64 / n as f64).collect(),
            settings: SplitSettings {
                monitor: MonitorKind::Acceleration,
                experts: n,
                grid: 0,
                trajectories: 0,
                mode: SplitMode::Linear,
                seed: 0,
                probes: 0,
                probe: ProbeKind::Gaussian,
                cfg_scale: 1.0,
                source: "uniform".into(),
            },
            intervals: vec![],
        }
    }

    /// Segment edges `[0, t_1, …, t_{N−1}, 1]`.
    pub fn edges(&self) -> Vec<f64> {
        Self::edges_of(&self.knots)
    }

    /// The segment edges of interior `knots` (no knots: `[0, 1]`).
    pub fn edges_of(knots: &[f64]) -> Vec<f64> {
        let mut e = vec![0.0];
        e.extend_from_slice(knots);
        e.push(1.0);
        e
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let e = self.edges();
        if !e.windows(2).all(|w| w[1] > w[0]) || self.knots.iter().any(|k| !k.is_finite()) {
            return Err(format!(
                "knots {:?} must be strictly increasing and inside (0, 1)",
                self.knots
            ));
        }
        if self.settings.experts != self.knots.len() + 1 {
            return Err(format!(
                "settings.experts = {} but there are {} knots (expected experts − 1)",
                self.settings.experts,
                self.knots.len()
            ));
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| RunError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = cbs_core::read_text(path)?;
        let f: SplitsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        f.validate().map_err(err)?;
        Ok(f)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("splits serialise")
    }

    /// Write the file (crash-safe).
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(cbs_core::atomic::write_text(path, &self.to_toml())?)
    }
}

/// `monitor.csv`: a header `t,m,cumulative`, then per grid point `t_j`, the mass `m_j` of cell
/// `[t_j, t_{j+1}]` (empty on the last row) and the cumulative mass `C(t_j)`.
pub fn monitor_csv(grid: &[f64], mass: &[f64], cumulative: &[f64]) -> String {
    let mut csv = String::from("t,m,cumulative\n");
    for (j, (&t, cj)) in grid.iter().zip(cumulative).enumerate() {
        match mass.get(j) {
            Some(m) => writeln!(csv, "{t},{m},{cj}"),
            None => writeln!(csv, "{t},,{cj}"),
        }
        .expect("writing to a String");
    }
    csv
}

/// Write [`monitor_csv`] to `path` (crash-safe).
pub fn write_monitor_csv(
    path: &Path,
    grid: &[f64],
    mass: &[f64],
    cumulative: &[f64],
) -> Result<()> {
    Ok(cbs_core::atomic::write_text(
        path,
        &monitor_csv(grid, mass, cumulative),
    )?)
}

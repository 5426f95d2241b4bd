//! One result per arm × seed × guidance scale (`result-cfg<s>.json`), the table of all of them
//! (`results.tsv`) and the summary (`summary.md`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::{ArmKind, ExperimentConfig};
use crate::stats::{summarize, SeedSummary};

/// A value and its bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Everything measured for one arm, seed and guidance scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmResult {
    pub arm: String,
    pub kind: ArmKind,
    pub seed: u64,
    pub cfg_scale: f64,
    pub experts: usize,
    /// Training steps of each model of the arm.
    pub steps: u64,
    /// CBS arms: the monitor, auxiliary model and knot shift.
    pub monitor: Option<String>,
    pub aux: Option<String>,
    pub knot_shift: f64,
    /// Interior knots the experts were trained on (empty for a monolithic arm).
    pub knots: Vec<f64>,
    /// Classifier-space FID, Inception Score, precision and recall with bootstrap intervals.
    pub fid: Estimate,
    pub inception_score: Option<Estimate>,
    pub precision: Estimate,
    pub recall: Estimate,
    pub num_samples: usize,
    pub sample_steps: usize,
    pub solver: String,
    /// The per-time velocity error (test images, conditional target): its mean over the grid,
    /// its mean within each of the arm's segments (`None`: no time of the grid falls in that
    /// segment), and the largest of those.
    pub per_t_mean: f64,
    pub segment_errors: Vec<Option<f64>>,
    pub per_t_max_segment: f64,
}

/// The paired FID difference `a − b` over seeds, with the bootstrap of the samples (same
/// indices in both arms of a seed; the mean over seeds of each replicate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedFid {
    pub a: String,
    pub b: String,
    pub cfg_scale: f64,
    /// Per seed, in the order of `seeds`.
    pub seeds: Vec<u64>,
    pub differences: Vec<f64>,
    /// Mean over seeds and its bootstrap interval (sampling noise only).
    pub bootstrap: Estimate,
}

fn fmt_opt(e: Option<Estimate>) -> [String; 3] {
    match e {
        Some(e) => fmt_est(e),
        None => ["".into(), "".into(), "".into()],
    }
}

fn fmt_est(e: Estimate) -> [String; 3] {
    [e.value, e.lo, e.hi].map(|v| format!("{v:.6}"))
}

fn join(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The header of `results.tsv`.
pub const TSV_HEADER: &str = "seed\tarm\tkind\tcfg_scale\texperts\tsteps\tmonitor\taux\t\
knot_shift\tknots\tfid\tfid_lo\tfid_hi\tis\tis_lo\tis_hi\tprecision\tprecision_lo\t\
precision_hi\trecall\trecall_lo\trecall_hi\tper_t_mean\tper_t_max_segment\tsegment_errors\t\
num_samples\tsample_steps\tsolver";

/// `results.tsv`: one row per result, every metric and setting.
pub fn results_tsv(rows: &[ArmResult]) -> String {
    let mut s = String::from(TSV_HEADER);
    s.push('\n');
    for r in rows {
        let mut cols = vec![
            r.seed.to_string(),
            r.arm.clone(),
            r.kind.name().to_string(),
            r.cfg_scale.to_string(),
            r.experts.to_string(),
            r.steps.to_string(),
            r.monitor.clone().unwrap_or_default(),
            r.aux.clone().unwrap_or_default(),
            r.knot_shift.to_string(),
            join(&r.knots, 6),
        ];
        cols.extend(fmt_est(r.fid));
        cols.extend(fmt_opt(r.inception_score));
        cols.extend(fmt_est(r.precision));
        cols.extend(fmt_est(r.recall));
        cols.push(format!("{:.6}", r.per_t_mean));
        cols.push(format!("{:.6}", r.per_t_max_segment));
        let segs: Vec<f64> = r
            .segment_errors
            .iter()
            .map(|e| e.unwrap_or(f64::NAN))
            .collect();
        cols.push(join(&segs, 6));
        cols.push(r.num_samples.to_string());
        cols.push(r.sample_steps.to_string());
        cols.push(r.solver.clone());
        s.push_str(&cols.join("\t"));
        s.push('\n');
    }
    s
}

fn cell(s: &SeedSummary, digits: usize) -> String {
    if s.n < 2 {
        return format!("{:.digits$}", s.mean);
    }
    format!(
        "{:.digits$} ± {:.digits$} [{:.digits$}, {:.digits$}]",
        s.mean, s.std, s.lo, s.hi
    )
}

/// The rows of one arm at one scale, in seed order.
fn of<'a>(rows: &'a [ArmResult], arm: &str, cfg: f64) -> Vec<&'a ArmResult> {
    let mut v: Vec<&ArmResult> = rows
        .iter()
        .filter(|r| r.arm == arm && r.cfg_scale == cfg)
        .collect();
    v.sort_by_key(|r| r.seed);
    v
}

/// `summary.md`: per arm and scale the mean ± std [95% interval] over seeds of every metric,
/// the knots, and the paired differences.
pub fn summary_markdown(
    cfg: &ExperimentConfig,
    rows: &[ArmResult],
    paired: &[PairedFid],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Experiment summary\n\nSeeds {:?}; {} samples per arm, {} {:?} steps; metrics in \
         the classifier feature space (not comparable with Inception FID). Cells: mean ± std \
         [95% Student-t interval of the mean] over seeds. Per-t error: velocity MSE on test \
         images against the conditional target (it includes the data's irreducible floor, \
         the same for every arm).\n",
        cfg.seeds, cfg.sample.num, cfg.sample.steps, cfg.sample.solver
    );
    for &scale in &cfg.sample.cfg_scales {
        let _ = writeln!(s, "## Guidance scale {scale}\n");
        let _ = writeln!(
            s,
            "| arm | seeds | FID | IS | precision | recall | per-t error (mean) | per-t error \
             (max segment) |\n|---|---|---|---|---|---|---|---|"
        );
        for arm in &cfg.arms {
            let v = of(rows, &arm.name, scale);
            if v.is_empty() {
                let _ = writeln!(s, "| {} | 0 | | | | | | |", arm.name);
                continue;
            }
            let m = |f: &dyn Fn(&ArmResult) -> Option<f64>| -> Option<SeedSummary> {
                let x: Vec<f64> = v.iter().filter_map(|r| f(r)).collect();
                (!x.is_empty()).then(|| summarize(&x))
            };
            let c = |x: Option<SeedSummary>, d: usize| x.map(|x| cell(&x, d)).unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                arm.name,
                v.len(),
                c(m(&|r| Some(r.fid.value)), 2),
                c(m(&|r| r.inception_score.map(|e| e.value)), 2),
                c(m(&|r| Some(r.precision.value)), 3),
                c(m(&|r| Some(r.recall.value)), 3),
                c(m(&|r| Some(r.per_t_mean)), 4),
                c(m(&|r| Some(r.per_t_max_segment)), 4),
            );
        }
        let here: Vec<&PairedFid> = paired.iter().filter(|p| p.cfg_scale == scale).collect();
        if !here.is_empty() {
            let _ = writeln!(
                s,
                "\nPaired differences (A − B, paired by seed; negative FID = A better). \
                 Seeds: mean ± std [95% t-interval over seeds: training and sampling noise]; \
                 bootstrap: [95% interval of the samples' noise only].\n\n\
                 | A − B | seeds | FID difference | bootstrap | per-t max-segment difference \
                 |\n|---|---|---|---|---|"
            );
            for p in here {
                let d = summarize(&p.differences);
                let pt: Vec<f64> = p
                    .seeds
                    .iter()
                    .filter_map(|&seed| {
                        let a = rows
                            .iter()
                            .find(|r| r.arm == p.a && r.seed == seed && r.cfg_scale == scale)?;
                        let b = rows
                            .iter()
                            .find(|r| r.arm == p.b && r.seed == seed && r.cfg_scale == scale)?;
                        Some(a.per_t_max_segment - b.per_t_max_segment)
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} − {} | {} | {} | {:.2} [{:.2}, {:.2}] | {} |",
                    p.a,
                    p.b,
                    p.differences.len(),
                    cell(&d, 2),
                    p.bootstrap.value,
                    p.bootstrap.lo,
                    p.bootstrap.hi,
                    if pt.is_empty() {
                        String::new()
                    } else {
                        cell(&summarize(&pt), 4)
                    }
                );
            }
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Knots\n\n| arm | seed | knots |\n|---|---|---|");
    let first = cfg.sample.cfg_scales[0];
    for arm in cfg.arms.iter().filter(|a| a.kind != ArmKind::Monolithic) {
        for r in of(rows, &arm.name, first) {
            let _ = writeln!(s, "| {} | {} | {} |", arm.name, r.seed, join(&r.knots, 4));
        }
    }
    s
}

//! `cbs eval-gmm`: quality of point samples against the true Gaussian mixture; `cbs
//! loss-floor`: a mixture run's training loss against the exact Bayes floor.

use anyhow::{bail, Result};
use cbs_split::GmmOracle;

use crate::cli::{EvalGmmArgs, LossFloorArgs, PlotArgs};
use crate::plot::{loss_curves_png, loss_floor_png, FloorBin};

pub fn eval_gmm(a: EvalGmmArgs) -> Result<()> {
    let path = if a.samples.is_dir() {
        a.samples.join(cbs_run::outputs::SAMPLES_NPZ)
    } else {
        a.samples.clone()
    };
    let mut npz = cbs_data::NpzArchive::open(&path)?;
    if !npz.has("arr_0") {
        bail!(
            "{}: no arr_0 array (expected arr_0 = float [N, D]); the archive holds {:?}",
            path.display(),
            npz.names()
        );
    }
    let x = npz.read("arr_0")?;
    let Some(v) = x.to_f64().filter(|_| !x.header.fortran_order) else {
        bail!(
            "{}: arr_0 is {} {:?}{}; expected a C-ordered float array [N, D]",
            path.display(),
            x.header.dtype.name(),
            x.header.shape,
            if x.header.fortran_order {
                " in Fortran order"
            } else {
                ""
            }
        );
    };
    // The error names the file already.
    let oracle = GmmOracle::from_file(&a.gmm)?;
    let &[n, d] = x.header.shape.as_slice() else {
        bail!(
            "{}: arr_0 must be [N, D], found {:?}",
            path.display(),
            x.header.shape
        );
    };
    if d != oracle.dim() {
        bail!(
            "{}: samples have dimension {d}, the mixture {}",
            path.display(),
            oracle.dim()
        );
    }
    let m = cbs_split::toy_metrics::evaluate(&oracle, &v, a.projections, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "{n} samples: mean log-likelihood {:.4} (true samples: {:.4}), sliced W2 {:.4} \
             ({} projections)",
            m.mean_log_likelihood, m.reference_log_likelihood, m.sliced_w2, m.projections
        );
    }
    Ok(())
}

pub fn loss_floor(a: LossFloorArgs) -> Result<()> {
    let rows = cbs_train::floor::loss_floor(&a.run, a.last, a.points)?;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    println!(
        "{:>11}  {:>9}  {:>9}  {:>9}",
        "t", "loss", "floor", "excess"
    );
    let mut csv = String::from("t_lo,t_hi,loss,floor,excess\n");
    let cell = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for r in &rows {
        println!(
            "[{:.1}, {:.1})  {:>9}  {:>9}  {:>9}",
            r.lo,
            r.hi,
            fmt(r.loss),
            fmt(r.floor),
            fmt(r.excess)
        );
        csv += &format!(
            "{},{},{},{},{}\n",
            r.lo,
            r.hi,
            cell(r.loss),
            cell(r.floor),
            cell(r.excess)
        );
    }
    let path = a.csv.unwrap_or_else(|| a.run.join("loss-floor.csv"));
    cbs_core::atomic::write_text(&path, &csv)?;
    let png = path.with_extension("png");
    let bins: Vec<FloorBin> = rows
        .iter()
        .map(|r| FloorBin {
            lo: r.lo,
            hi: r.hi,
            loss: r.loss,
            floor: r.floor,
        })
        .collect();
    let title = format!("loss per time bin vs the Bayes floor: {}", a.run.display());
    loss_floor_png(&png, &title, &bins)?;
    eprintln!("wrote {} and {}", path.display(), png.display());
    Ok(())
}

/// `cbs plot`: training-loss curves of runs (or expert directories) from `metrics.jsonl`.
pub fn plot(a: PlotArgs) -> Result<()> {
    let mut runs = Vec::new();
    for dir in &a.runs {
        let expanded: Vec<std::path::PathBuf> = if dir.join("expert-0").is_dir() {
            (0..)
                .map(|i| dir.join(format!("expert-{i}")))
                .take_while(|d| d.is_dir())
                .collect()
        } else {
            vec![dir.clone()]
        };
        for d in expanded {
            let path = d.join(cbs_run::checkpoint::METRICS_FILE);
            let text = cbs_core::read_text(&path)?;
            let mut pts = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("{}: line {}: not JSON: {e}", path.display(), i + 1)
                })?;
                if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
                    pts.push((s, l));
                }
            }
            runs.push((d.display().to_string(), pts));
        }
    }
    if runs.is_empty() {
        bail!("give at least one run directory");
    }
    loss_curves_png(&a.out, "training loss", &runs)?;
    eprintln!("wrote {} ({} curves)", a.out.display(), runs.len());
    Ok(())
}

//! `cbs eval-gmm`: quality of point samples against the true Gaussian mixture; `cbs
//! loss-floor`: a mixture run's training loss against the exact Bayes floor.

use anyhow::{bail, Result};
use cbs_split::GmmOracle;

use crate::cli::{EvalGmmArgs, LossFloorArgs};

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
    eprintln!("wrote {}", path.display());
    Ok(())
}

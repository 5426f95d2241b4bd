//! `cbs eval-gmm`: quality of point samples against the true Gaussian mixture.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use cbs_split::GmmOracle;

use crate::cli::EvalGmmArgs;

pub fn eval_gmm(a: EvalGmmArgs) -> Result<()> {
    let path = if a.samples.is_dir() {
        a.samples.join("samples.npz")
    } else {
        a.samples.clone()
    };
    let arrays = Tensor::read_npz(&path).with_context(|| {
        format!(
            "{}: not a readable .npz (expected arr_0 = float [N, D])",
            path.display()
        )
    })?;
    let Some((_, x)) = arrays.into_iter().find(|(n, _)| n == "arr_0") else {
        bail!("{}: no arr_0 array", path.display());
    };
    let oracle = GmmOracle::from_file(&a.gmm).with_context(|| format!("{}", a.gmm.display()))?;
    let (n, d) = x.dims2().with_context(|| {
        format!(
            "{}: arr_0 must be [N, D], found {:?}",
            path.display(),
            x.dims()
        )
    })?;
    if d != oracle.dim() {
        bail!(
            "{}: samples have dimension {d}, the mixture {}",
            path.display(),
            oracle.dim()
        );
    }
    let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
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

//! `cbs estimate-splits`: monitor curve of an auxiliary model (or the exact field of a
//! Gaussian mixture) → equidistributed knots → splits.toml, monitor.csv, monitor.png.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use cbs_flow::guidance::Guided;
use cbs_flow::VelocityField;
use cbs_run::checkpoint::WeightsKind;
use cbs_run::splits::{write_monitor_csv, MONITOR_CSV, MONITOR_PNG, SPLITS_FILE};
use cbs_run::{KnotIntervalEntry, SplitSettings, SplitsFile};
use cbs_split::{GmmOracle, MonitorCurve, MonitorOptions};

use crate::cli::EstimateArgs;
use crate::plot::{monitor_png, MonitorPlot};
use crate::progress::bar;

pub fn estimate_splits(a: EstimateArgs) -> Result<()> {
    let dev = a.device.open()?;
    if a.experts == 0 {
        bail!("--experts must be at least 1");
    }
    if a.bootstrap > 0 && !(a.confidence > 0.0 && a.confidence < 1.0) {
        bail!(
            "--confidence {} must be strictly between 0 and 1",
            a.confidence
        );
    }
    let (kind, mode, probe, jvp) = (a.monitor, a.mode, a.probe, a.jvp);
    let mut opts = MonitorOptions {
        kind,
        grid: a.grid,
        trajectories: a.trajectories,
        batch: a.batch,
        probes: a.probes,
        probe,
        jvp,
        seed: a.seed,
        ..MonitorOptions::default()
    };

    let run = |field: &dyn VelocityField,
               opts: &MonitorOptions,
               shape: &[usize],
               labels: Option<&dyn Fn(usize) -> u32>|
     -> Result<MonitorCurve> {
        let total = opts.trajectories.div_ceil(opts.batch.max(1)) * opts.grid;
        let pb = bar(total as u64, "steps");
        let curve = cbs_split::monitor_curve(field, opts, shape, labels, &dev, &mut |done, _| {
            pb.set_position(done as u64)
        });
        pb.finish_and_clear();
        curve.context("computing the monitor curve")
    };

    let (curve, source) = match (&a.aux, &a.oracle_gmm) {
        (Some(aux), None) => {
            let spec = a.torch.spec();
            let (loaded, entry) = cbs_run::torch_checkpoint::load_any(
                aux,
                WeightsKind::Ema,
                spec.as_ref(),
                a.precision,
                &dev,
            )
            .with_context(|| format!("loading the auxiliary model --aux {}", aux.display()))?;
            if let Some(e) = &entry {
                eprintln!("--aux {}: PyTorch file, entry `{e}`", aux.display());
            }
            let arch = &loaded.architecture;
            let classes = arch.num_classes();
            if a.cfg_scale != 1.0 {
                if classes == 0 {
                    bail!(
                        "--cfg-scale {} applies only to class-conditional models; {} is \
                         unconditional",
                        a.cfg_scale,
                        loaded.dir.display()
                    );
                }
                if arch.null_class().is_none() {
                    bail!(
                        "--cfg-scale {} needs a model trained with label dropout (it has no null \
                         class)",
                        a.cfg_scale
                    );
                }
            }
            let shape = arch.sample_shape();
            eprintln!(
                "monitor {:?} of {} (step {}), sample shape {shape:?}, {} trajectories × {} cells",
                kind,
                loaded.dir.display(),
                loaded.state.step,
                a.trajectories,
                a.grid
            );
            let field = Guided::new(&loaded.model, a.cfg_scale);
            let labels = (classes > 0)
                .then(|| cbs_split::trajectory_labels(a.trajectories, classes, a.seed));
            let label_fn = labels.as_ref().map(|l| move |k: usize| l[k]);
            let label_ref: Option<&dyn Fn(usize) -> u32> =
                label_fn.as_ref().map(|f| f as &dyn Fn(usize) -> u32);
            opts.dtype = DType::F32;
            let curve = run(&field, &opts, &shape, label_ref)?;
            (curve, loaded.dir.display().to_string())
        }
        (None, Some(json)) => {
            let oracle = GmmOracle::from_file(json)
                .with_context(|| format!("loading --oracle-gmm {}", json.display()))?
                .with_path(a.path);
            if a.cfg_scale != 1.0 {
                bail!("--cfg-scale applies only to class-conditional models, not to --oracle-gmm");
            }
            let shape = [oracle.dim()];
            eprintln!(
                "monitor {:?} of the exact GMM field {} (dim {}), {} trajectories × {} cells",
                kind,
                json.display(),
                oracle.dim(),
                a.trajectories,
                a.grid
            );
            // The oracle is exact and cheap: integrate in f64.
            opts.dtype = DType::F64;
            let curve = run(&oracle, &opts, &shape, None)?;
            let source = match a.path {
                cbs_flow::path::Interpolant::Linear => format!("oracle:{}", json.display()),
                p => format!("oracle:{} (path {p})", json.display()),
            };
            (curve, source)
        }
        _ => bail!("give exactly one of --aux RUN_DIR and --oracle-gmm FILE.json"),
    };

    let knots = curve
        .knots(a.experts, mode)
        .with_context(|| format!("placing {} knots ({:?} mode)", a.experts - 1, mode))?;
    let intervals = if a.bootstrap > 0 && !knots.is_empty() {
        curve
            .bootstrap(a.experts, mode, a.bootstrap, a.confidence, a.seed)
            .with_context(|| format!("bootstrapping the knots ({} resamples)", a.bootstrap))?
            .into_iter()
            .zip(&knots)
            // The bootstrap's own point estimate averages f32 masses; report the f64 one.
            .map(|(iv, &knot)| KnotIntervalEntry {
                knot,
                lo: iv.lo.min(knot),
                hi: iv.hi.max(knot),
                confidence: a.confidence,
            })
            .collect()
    } else {
        vec![]
    };

    let splits = SplitsFile {
        knots: knots.clone(),
        settings: SplitSettings {
            monitor: kind,
            experts: a.experts,
            grid: a.grid,
            trajectories: a.trajectories,
            mode,
            seed: a.seed,
            probes: a.probes,
            probe,
            cfg_scale: a.cfg_scale,
            source,
        },
        intervals,
    };
    write_outputs(&a.out, &curve, &splits)?;

    println!("knots = {}", fmt_list(&splits.knots));
    let ivs: Vec<String> = splits
        .intervals
        .iter()
        .map(|iv| format!("[{:.6}, {:.6}]", iv.lo, iv.hi))
        .collect();
    println!("intervals = [{}]", ivs.join(", "));
    eprintln!(
        "wrote splits.toml, monitor.csv and monitor.png to {}{}",
        a.out.display(),
        if splits.intervals.is_empty() {
            String::new()
        } else {
            format!(
                " (intervals: {:.0}% bootstrap over {} resamples)",
                100.0 * a.confidence,
                a.bootstrap
            )
        }
    );
    Ok(())
}

fn fmt_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", items.join(", "))
}

fn write_outputs(out: &Path, curve: &MonitorCurve, splits: &SplitsFile) -> Result<()> {
    cbs_core::atomic::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    splits.write(&out.join(SPLITS_FILE))?;
    let c = curve.cumulative();
    write_monitor_csv(&out.join(MONITOR_CSV), &curve.grid, &curve.mass, &c)?;

    let intervals: Vec<(f64, f64)> = splits.intervals.iter().map(|i| (i.lo, i.hi)).collect();
    monitor_png(
        &out.join(MONITOR_PNG),
        &MonitorPlot {
            title: format!(
                "{} monitor, {} trajectories, N = {}",
                format!("{:?}", splits.settings.monitor).to_lowercase(),
                splits.settings.trajectories,
                splits.settings.experts
            ),
            grid: &curve.grid,
            mass: &curve.mass,
            cumulative: &c,
            knots: &splits.knots,
            intervals: &intervals,
            experts: splits.settings.experts,
        },
    )
}

//! `cbs experiment`: a declared grid of arms × seeds, run stage by stage through the same
//! commands a user would type (each is printed as it starts), skipping every stage that has
//! already finished, so a killed experiment continues where it stopped. The file layout and
//! the tables are `cbs_experiment`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use cbs_eval::bootstrap::{bootstrap_metrics, paired_fid_difference, BootstrapOptions, Reference};
use cbs_eval::extractors::ClassifierFeatures;
use cbs_eval::features::{extract_all, Features};
use cbs_eval::fid::Stats;
use cbs_eval::inputs::{read_input, Input};
use cbs_experiment::config::{shift_knots, ArmKind, ArmSpec, ExperimentConfig};
use cbs_experiment::layout::{self, DONE};
use cbs_experiment::results::{results_tsv, summary_markdown, ArmResult, Estimate, PairedFid};
use cbs_flow::VelocityField;
use cbs_run::{SplitsFile, TrainConfig, WeightsKind};
use cbs_sample::velocity_error::{midpoint_times, segment_means, velocity_error, ErrorGrid};

use crate::cli::ExperimentArgs;

/// Runs `cbs ARGS…` in this process, as if typed (printed first).
fn cbs(args: &[String]) -> Result<()> {
    use clap::Parser;
    eprintln!("\n$ cbs {}", args.join(" "));
    let cli = crate::cli::Cli::try_parse_from(
        std::iter::once("cbs".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| anyhow::anyhow!("internal command line `cbs {}`: {e}", args.join(" ")))?;
    crate::run(cli.command)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Stops between stages after SIGINT/SIGTERM (training stops itself after its current step).
fn check_stop() -> Result<()> {
    if crate::signals::stop_after_step().load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted between stages; run the same command again to continue");
    }
    Ok(())
}

/// A stage whose output directory is complete only once `DONE` is written in it: a partial
/// directory (a killed run) is removed and the stage run again.
fn once(dir: &Path, what: &str, run: impl FnOnce() -> Result<()>) -> Result<()> {
    if dir.join(DONE).is_file() {
        return Ok(());
    }
    check_stop()?;
    if dir.exists() {
        eprintln!("{what}: removing the unfinished {}", dir.display());
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run().with_context(|| format!("{what} ({})", dir.display()))?;
    cbs_core::atomic::write_text(&dir.join(DONE), "")?;
    Ok(())
}

/// A training run: continued from its latest checkpoint if it has one (exact resume), done
/// when the checkpoint of its last step exists (the trainer then returns at once).
fn train_args(dir: &Path, mut args: Vec<String>) -> Result<Vec<String>> {
    if cbs_run::checkpoint::latest(dir)?.is_some() {
        args.push("--resume".into());
    }
    Ok(args)
}

/// The experiment's record of its configuration: written on the first run; a later run may
/// only add seeds, arms and comparisons.
fn record_config(out: &Path, cfg: &ExperimentConfig) -> Result<()> {
    let path = out.join(layout::CONFIG_COPY);
    let text = toml::to_string_pretty(cfg)?;
    if path.is_file() {
        let prev: ExperimentConfig = toml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let strip = |c: &ExperimentConfig| {
            let mut c = c.clone();
            c.seeds.clear();
            c.arms.clear();
            c.compare.clear();
            c
        };
        let changed_arm = prev
            .arms
            .iter()
            .find(|a| cfg.arm(&a.name).is_some_and(|b| b != *a));
        if strip(&prev) != strip(cfg) || changed_arm.is_some() {
            bail!(
                "{} records another configuration (only seeds, arms and comparisons may be \
                 added to a running experiment{}); use another --out",
                path.display(),
                changed_arm.map_or(String::new(), |a| format!("; arm `{}` changed", a.name))
            );
        }
    }
    cbs_core::atomic::create_dir_all(out)?;
    cbs_core::atomic::write_text(&path, &text)?;
    Ok(())
}

/// Writes a resolved training config (the base with overrides); a different one already
/// there means a config file the experiment reads was edited since it started.
fn write_config(path: &Path, cfg: &TrainConfig) -> Result<()> {
    let text = cfg.to_toml();
    if path.is_file() && std::fs::read_to_string(path)? != text {
        bail!(
            "{} differs from the training config the experiment started with (was a config \
             file it reads edited?); finished arms would mix two configurations: use another \
             --out, or restore the file",
            path.display()
        );
    }
    cbs_core::atomic::write_text(path, &text)?;
    Ok(())
}

pub fn experiment(a: ExperimentArgs) -> Result<()> {
    let started = Instant::now();
    let cfg = ExperimentConfig::from_file(&a.config)?;
    let out = &a.out;
    // One driver per experiment directory (its stages lock their own run directories too).
    let _lock = cbs_run::RunLock::acquire(out)?;
    record_config(out, &cfg)?;
    let dev = a.device.open()?;
    let device_arg = a.device.device.clone();
    let base = TrainConfig::from_file(&cfg.train.config)
        .with_context(|| format!("train.config of {}", a.config.display()))?;
    let configs = out.join("configs");
    cbs_core::atomic::create_dir_all(&configs)?;
    let train_cfg = configs.join("train.toml");
    write_config(&train_cfg, &base)?;
    let mut aux_cfgs = HashMap::new();
    for (name, plan) in &cfg.aux {
        let mut c =
            TrainConfig::from_file(&plan.config).with_context(|| format!("aux.{name}.config"))?;
        if let Some(st) = plan.steps {
            c.train.steps = st;
        }
        if let Some(p) = &plan.preset {
            c.model.preset = p.clone();
        }
        if let Some(f) = plan.data_fraction {
            c.data.data_fraction = f;
        }
        let p = configs.join(format!("aux-{name}.toml"));
        write_config(&p, &c)?;
        aux_cfgs.insert(name.clone(), p);
    }
    let total = cfg.seeds.len() * cfg.arms.len();
    eprintln!(
        "experiment {}: {} arms × {} seeds → {}",
        a.config.display(),
        cfg.arms.len(),
        cfg.seeds.len(),
        out.display()
    );

    // The feature space: one classifier for every arm and seed.
    let cls_dir = layout::classifier_dir(out);
    once(&cls_dir, "classifier", || {
        cbs(&[
            strs(&["train-classifier", "--config"]),
            vec![s(&cfg.metrics.classifier), "--out".into(), s(&cls_dir)],
            vec!["--device".into(), device_arg.clone()],
        ]
        .concat())
    })?;
    let net = cbs_run::classifier::load_classifier(&cls_dir, &dev)?;
    let extractor = ClassifierFeatures::new(net, &cls_dir);
    let reference = features_of(
        &extractor,
        &cls_dir.join(cbs_run::outputs::classifier::REFERENCE_FILE),
        &dev,
    )?;
    let reference = Reference::new(reference, BootstrapOptions::default().k, &dev)?;

    // Held-out images of the per-time error: the test split of the training data.
    let (test_x, test_y) = test_images(&base, cfg.metrics.per_t_images, &dev)?;
    let times = midpoint_times(cfg.metrics.per_t_times);

    let mut done = 0;
    for &seed in &cfg.seeds {
        for arm in &cfg.arms {
            done += 1;
            let dir = layout::arm_dir(out, seed, arm);
            let finished = cfg
                .sample
                .cfg_scales
                .iter()
                .all(|&c| layout::result_file(&dir, c).is_file());
            if finished {
                continue;
            }
            eprintln!(
                "\n=== [{done}/{total}] seed {seed}, arm {} ({}) — {:.1} min elapsed",
                arm.name,
                arm.kind.name(),
                started.elapsed().as_secs_f64() / 60.0
            );
            let ctx = ArmCtx {
                cfg: &cfg,
                out,
                seed,
                arm,
                dir: &dir,
                device: &device_arg,
                train_cfg: &train_cfg,
                aux_cfgs: &aux_cfgs,
            };
            let (knots, models) = ctx.train()?;
            check_stop()?;
            let per_t = ctx.per_t_error(&models, &test_x, test_y.as_ref(), &times, &dev)?;
            let edges = SplitsFile::edges_of(&knots);
            let seg = segment_means(&times, &per_t, &edges);
            for &scale in &cfg.sample.cfg_scales {
                let result = layout::result_file(&dir, scale);
                if result.is_file() {
                    continue;
                }
                let sdir = layout::samples_dir(&dir, scale);
                once(&sdir, "sampling", || ctx.sample(&models, scale, &sdir))?;
                let feats = cached_features(&extractor, &sdir, &dev)?;
                let opts = BootstrapOptions {
                    replicates: cfg.metrics.bootstrap,
                    confidence: cfg.metrics.confidence,
                    seed,
                    ..BootstrapOptions::default()
                };
                let m = bootstrap_metrics(&feats, &reference, &opts, &dev)?;
                let est = |i: cbs_eval::bootstrap::Interval| Estimate {
                    value: i.value,
                    lo: i.lo,
                    hi: i.hi,
                };
                let r = ArmResult {
                    arm: arm.name.clone(),
                    kind: arm.kind,
                    seed,
                    cfg_scale: scale,
                    experts: arm.experts(cfg.experts),
                    steps: arm.steps.unwrap_or(cfg.train.steps),
                    monitor: (arm.kind == ArmKind::Cbs)
                        .then(|| layout::monitor_name(arm.monitor()).to_string()),
                    aux: (arm.kind == ArmKind::Cbs).then(|| arm.aux().to_string()),
                    knot_shift: arm.knot_shift,
                    knots: knots.clone(),
                    fid: est(m.fid),
                    inception_score: m.inception_score.map(est),
                    precision: est(m.precision),
                    recall: est(m.recall),
                    num_samples: m.num_samples,
                    sample_steps: cfg.sample.steps,
                    solver: format!("{:?}", cfg.sample.solver).to_lowercase(),
                    per_t_mean: per_t.iter().sum::<f64>() / per_t.len() as f64,
                    per_t_max_segment: seg.iter().cloned().fold(f64::NAN, f64::max),
                    segment_errors: seg.iter().map(|&e| e.is_finite().then_some(e)).collect(),
                };
                eprintln!(
                    "seed {seed}, {} at cfg {scale}: FID {:.3} [{:.3}, {:.3}], per-t error \
                     max segment {:.5}",
                    arm.name, r.fid.value, r.fid.lo, r.fid.hi, r.per_t_max_segment
                );
                cbs_core::atomic::write_text(&result, &serde_json::to_string_pretty(&r)?)?;
            }
        }
    }
    report(out, &cfg, &reference.stats, &dev)?;
    eprintln!(
        "\nexperiment finished in {:.1} min: {}, {}",
        started.elapsed().as_secs_f64() / 60.0,
        out.join(layout::RESULTS_TSV).display(),
        out.join(layout::SUMMARY_MD).display()
    );
    Ok(())
}

/// Everything one arm of one seed needs.
struct ArmCtx<'a> {
    cfg: &'a ExperimentConfig,
    out: &'a Path,
    seed: u64,
    arm: &'a ArmSpec,
    dir: &'a Path,
    device: &'a str,
    train_cfg: &'a Path,
    aux_cfgs: &'a HashMap<String, PathBuf>,
}

/// The trained models of an arm: a run directory or an experts directory.
enum Models {
    Monolithic(PathBuf),
    Experts(PathBuf),
}

impl ArmCtx<'_> {
    fn common(&self) -> Vec<String> {
        vec![
            "--seed".into(),
            self.seed.to_string(),
            "--device".into(),
            self.device.to_string(),
        ]
    }

    fn steps(&self) -> u64 {
        self.arm.steps.unwrap_or(self.cfg.train.steps)
    }

    /// Trains what the arm needs (the auxiliary model and splits first for CBS); returns its
    /// interior knots and where the models are.
    fn train(&self) -> Result<(Vec<f64>, Models)> {
        let n = self.arm.experts(self.cfg.experts);
        let steps = self.steps().to_string();
        match self.arm.kind {
            ArmKind::Monolithic => {
                let run = self.dir.join("model");
                let args = [
                    strs(&["train-aux", "--config"]),
                    vec![s(self.train_cfg), "--out".into(), s(&run)],
                    vec!["--steps".into(), steps],
                    self.common(),
                ]
                .concat();
                cbs(&train_args(&run, args)?)?;
                Ok((vec![], Models::Monolithic(run)))
            }
            ArmKind::Uniform | ArmKind::Cbs => {
                let experts = self.dir.join("experts");
                let mut args = vec!["train-experts".to_string()];
                let knots = if self.arm.kind == ArmKind::Uniform {
                    args.extend(["--uniform".into(), n.to_string()]);
                    SplitsFile::uniform(n).knots
                } else {
                    let file = self.splits(n)?;
                    args.extend(["--splits".into(), s(&file)]);
                    SplitsFile::from_file(&file)?.knots
                };
                args.extend([
                    "--config".into(),
                    s(self.train_cfg),
                    "--out".into(),
                    s(&experts),
                    "--steps".into(),
                    steps,
                ]);
                args.extend(self.common());
                if cbs_run::experts::expert_dir(&experts, 0).exists() {
                    args.push("--resume".into());
                }
                cbs(&args)?;
                Ok((knots, Models::Experts(experts)))
            }
        }
    }

    /// The CBS arm's knots file: the auxiliary model (trained once per seed and name), its
    /// split for this monitor and N (once per seed), shifted by `knot_shift` if set.
    fn splits(&self, n: usize) -> Result<PathBuf> {
        let aux = self.arm.aux();
        let aux_run = layout::aux_dir(self.out, self.seed, aux);
        let aux_cfg = &self.aux_cfgs[aux];
        let args = [
            strs(&["train-aux", "--config"]),
            vec![s(aux_cfg), "--out".into(), s(&aux_run)],
            self.common(),
        ]
        .concat();
        cbs(&train_args(&aux_run, args)?)?;
        let monitor = self.arm.monitor();
        let sdir = layout::splits_dir(self.out, self.seed, aux, monitor, n);
        let sp = &self.cfg.splits;
        once(&sdir, "estimate-splits", || {
            cbs(&[
                strs(&["estimate-splits", "--aux"]),
                vec![
                    s(&aux_run),
                    "--monitor".into(),
                    layout::monitor_name(self.arm.monitor()).into(),
                ],
                vec!["--experts".into(), n.to_string()],
                vec!["--trajectories".into(), sp.trajectories.to_string()],
                vec!["--batch".into(), sp.batch.to_string()],
                vec!["--grid".into(), sp.grid.to_string()],
                vec!["--bootstrap".into(), sp.bootstrap.to_string()],
                vec!["--out".into(), s(&sdir)],
                self.common(),
            ]
            .concat())
        })?;
        let file = sdir.join(cbs_run::splits::SPLITS_FILE);
        if self.arm.knot_shift == 0.0 {
            return Ok(file);
        }
        let mut f = SplitsFile::from_file(&file)?;
        f.knots = shift_knots(&f.knots, self.arm.knot_shift)
            .map_err(|e| anyhow::anyhow!("arm `{}`: {e}", self.arm.name))?;
        f.intervals.clear();
        let shifted = self.dir.join("splits-shifted.toml");
        cbs_core::atomic::create_dir_all(self.dir)?;
        f.write(&shifted)?;
        Ok(shifted)
    }

    fn sample(&self, models: &Models, scale: f64, sdir: &Path) -> Result<()> {
        let src = match models {
            Models::Monolithic(d) => vec!["--checkpoint".into(), s(d)],
            Models::Experts(d) => vec!["--experts".into(), s(d)],
        };
        let sp = &self.cfg.sample;
        cbs(&[
            vec!["sample".to_string()],
            src,
            vec!["--num".into(), sp.num.to_string()],
            vec!["--steps".into(), sp.steps.to_string()],
            vec!["--solver".into(), solver_arg(sp.solver)],
            vec!["--cfg-scale".into(), scale.to_string()],
            vec!["--batch".into(), sp.batch.to_string()],
            vec!["--out".into(), s(sdir)],
            self.common(),
        ]
        .concat())
    }

    /// The per-time velocity error of the arm's EMA weights (cached in per-t.csv).
    fn per_t_error(
        &self,
        models: &Models,
        x: &Tensor,
        y: Option<&Tensor>,
        times: &[f64],
        dev: &Device,
    ) -> Result<Vec<f64>> {
        let csv = self.dir.join(layout::PER_T_CSV);
        if let Some(v) = read_per_t(&csv, times)? {
            return Ok(v);
        }
        let precision = cbs_kernels::Precision::F32;
        let (loaded, edges) = match models {
            Models::Monolithic(d) => {
                let (m, _) =
                    cbs_run::torch_checkpoint::load_any(d, WeightsKind::Ema, None, precision, dev)?;
                (vec![m], vec![0.0, 1.0])
            }
            Models::Experts(d) => {
                let (_, set) =
                    cbs_sample::experts::load_experts(d, WeightsKind::Ema, precision, dev)?;
                (set.experts, set.edges)
            }
        };
        let path = loaded[0].config.train.path;
        let conditional = loaded[0].architecture.num_classes() > 0;
        let fields: Vec<&dyn VelocityField> = loaded.iter().map(|m| &m.model as _).collect();
        let owner = |t: f64| -> &dyn VelocityField {
            let i = edges[1..]
                .iter()
                .position(|&hi| t < hi)
                .unwrap_or(fields.len() - 1);
            fields[i.min(fields.len() - 1)]
        };
        let grid = ErrorGrid {
            data: x,
            labels: if conditional { y } else { None },
            path,
            times,
            seed: self.seed,
            batch: self.cfg.sample.batch,
        };
        let pb = crate::progress::bar(times.len() as u64, "times");
        pb.set_message(format!("per-t error of {}", self.arm.name));
        let v = velocity_error(
            &owner,
            &cbs_sample::velocity_error::Reference::Conditional,
            &grid,
            &mut |d, _| pb.set_position(d as u64),
        );
        pb.finish_and_clear();
        let v = v?;
        let mut text = String::from("t,mse\n");
        for (t, e) in times.iter().zip(&v) {
            text.push_str(&format!("{t},{e}\n"));
        }
        cbs_core::atomic::write_text(&csv, &text)?;
        Ok(v)
    }
}

fn solver_arg(s: cbs_flow::solver::Solver) -> String {
    use clap::ValueEnum;
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| "heun".into())
}

/// `per-t.csv` if it was written for these times.
fn read_per_t(csv: &Path, times: &[f64]) -> Result<Option<Vec<f64>>> {
    Ok(read_csv_pairs(csv)?.and_then(|(ts, v)| (ts == times).then_some(v)))
}

/// The first `n` test images (no flips) and labels of the training data's source.
fn test_images(base: &TrainConfig, n: usize, dev: &Device) -> Result<(Tensor, Option<Tensor>)> {
    let mut d = base.data.clone();
    d.split = cbs_data::Split::Test;
    d.hflip = false;
    d.data_fraction = 1.0;
    let data = cbs_train::load_data(&d, 0).context(
        "loading the test split for the per-time error (the [data] of train.config with \
         split = \"test\")",
    )?;
    let n = n.min(data.len());
    if n == 0 {
        bail!("the test split is empty");
    }
    let idx: Vec<usize> = (0..n).collect();
    let (x, y) = data.batch(&idx, &vec![false; n])?;
    let mut shape = vec![n];
    shape.extend(data.sample_shape());
    let x = Tensor::from_vec(x, shape, dev)?;
    let y = (data.num_classes() > 0)
        .then(|| Tensor::from_vec(y, n, dev))
        .transpose()?;
    Ok((x, y))
}

fn features_of(ex: &ClassifierFeatures, path: &Path, dev: &Device) -> Result<Features> {
    let images = match read_input(path).with_context(|| format!("reading {}", path.display()))? {
        Input::Images(i) => i,
        Input::Stats { .. } => bail!("{}: expected images, found statistics", path.display()),
    };
    Ok(extract_all(ex, &images, 256, dev, &mut |_, _| {})?)
}

/// The classifier features of a samples directory (saved beside them for the paired
/// comparisons).
fn cached_features(ex: &ClassifierFeatures, sdir: &Path, dev: &Device) -> Result<Features> {
    let path = sdir.join(layout::FEATURES_FILE);
    if let Some(f) = load_features(&path, dev)? {
        return Ok(f);
    }
    let f = features_of(ex, sdir, dev)?;
    let mut map = HashMap::new();
    map.insert("pool".to_string(), f.pool.clone());
    if let Some(l) = &f.logits {
        map.insert("logits".to_string(), l.clone());
    }
    cbs_core::atomic::write_with_path(&path, |tmp| {
        candle_core::safetensors::save(&map, tmp).map_err(std::io::Error::other)
    })?;
    Ok(f)
}

fn load_features(path: &Path, dev: &Device) -> Result<Option<Features>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut map = candle_core::safetensors::load(path, dev)
        .with_context(|| format!("reading {}", path.display()))?;
    let pool = map
        .remove("pool")
        .with_context(|| format!("{}: no `pool` tensor", path.display()))?;
    Ok(Some(Features {
        pool,
        logits: map.remove("logits"),
        spatial: None,
    }))
}

/// Every finished result, the paired differences, and the tables and charts.
fn report(out: &Path, cfg: &ExperimentConfig, reference: &Stats, dev: &Device) -> Result<()> {
    let mut rows = vec![];
    for &seed in &cfg.seeds {
        for arm in &cfg.arms {
            for &c in &cfg.sample.cfg_scales {
                let p = layout::result_file(&layout::arm_dir(out, seed, arm), c);
                if p.is_file() {
                    let r: ArmResult = serde_json::from_str(&std::fs::read_to_string(&p)?)
                        .with_context(|| format!("reading {}", p.display()))?;
                    rows.push(r);
                }
            }
        }
    }
    let mut paired = vec![];
    for [a, b] in cfg.comparisons() {
        let (arm_a, arm_b) = (
            cfg.arm(&a).expect("validated"),
            cfg.arm(&b).expect("validated"),
        );
        for &scale in &cfg.sample.cfg_scales {
            let (mut seeds, mut diffs, mut reps) = (vec![], vec![], Vec::<Vec<f64>>::new());
            for &seed in &cfg.seeds {
                let fa = layout::samples_dir(&layout::arm_dir(out, seed, arm_a), scale)
                    .join(layout::FEATURES_FILE);
                let fb = layout::samples_dir(&layout::arm_dir(out, seed, arm_b), scale)
                    .join(layout::FEATURES_FILE);
                let (Some(x), Some(y)) = (load_features(&fa, dev)?, load_features(&fb, dev)?)
                else {
                    continue;
                };
                let opts = BootstrapOptions {
                    replicates: cfg.metrics.bootstrap,
                    confidence: cfg.metrics.confidence,
                    seed,
                    ..BootstrapOptions::default()
                };
                let (d, r) = paired_fid_difference(&x.pool, &y.pool, reference, &opts)?;
                seeds.push(seed);
                diffs.push(d);
                reps.push(r);
            }
            if seeds.is_empty() {
                continue;
            }
            let k = seeds.len() as f64;
            let pooled: Vec<f64> = (0..cfg.metrics.bootstrap)
                .map(|i| reps.iter().map(|r| r[i]).sum::<f64>() / k)
                .collect();
            let (lo, hi) =
                cbs_eval::bootstrap::percentile_interval(&pooled, cfg.metrics.confidence);
            paired.push(PairedFid {
                a: a.clone(),
                b: b.clone(),
                cfg_scale: scale,
                seeds,
                bootstrap: Estimate {
                    value: diffs.iter().sum::<f64>() / k,
                    lo,
                    hi,
                },
                differences: diffs,
            });
        }
    }
    cbs_core::atomic::write_text(&out.join(layout::RESULTS_TSV), &results_tsv(&rows))?;
    cbs_core::atomic::write_text(
        &out.join(layout::SUMMARY_MD),
        &summary_markdown(cfg, &rows, &paired),
    )?;
    cbs_core::atomic::write_text(
        &out.join(layout::PAIRED_JSON),
        &serde_json::to_string_pretty(&paired)?,
    )?;
    charts(out, cfg, &rows)
}

/// `fid-cfg<c>.png` (mean FID per arm with its interval over seeds) and `per-t-error.png`
/// (mean per-time error over seeds per arm, with the knots of the first seed).
fn charts(out: &Path, cfg: &ExperimentConfig, rows: &[ArmResult]) -> Result<()> {
    use cbs_experiment::stats::summarize;
    for &scale in &cfg.sample.cfg_scales {
        let bars: Vec<crate::plot::Bar> = cfg
            .arms
            .iter()
            .filter_map(|arm| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.arm == arm.name && r.cfg_scale == scale)
                    .map(|r| r.fid.value)
                    .collect();
                (!v.is_empty()).then(|| {
                    let sm = summarize(&v);
                    crate::plot::Bar {
                        label: arm.name.clone(),
                        mean: sm.mean,
                        lo: sm.lo,
                        hi: sm.hi,
                        values: v,
                    }
                })
            })
            .collect();
        if !bars.is_empty() {
            crate::plot::bars_png(
                &out.join(format!("fid-{}.png", layout::scale_tag(scale))),
                &format!("classifier-space FID, guidance {scale} (mean, 95% interval, seeds)"),
                "FID (lower is better)",
                &bars,
            )?;
        }
    }
    // Per arm and seed: the per-time error curve, and the arm's knots in that seed.
    let mut per_seed: Vec<Vec<Option<TimeCurve>>> = vec![];
    for arm in &cfg.arms {
        let mut v = vec![];
        for &seed in &cfg.seeds {
            let csv = layout::arm_dir(out, seed, arm).join(layout::PER_T_CSV);
            v.push(read_csv_pairs(&csv)?);
        }
        per_seed.push(v);
    }
    let knots_of = |arm: &ArmSpec| -> Vec<f64> {
        rows.iter()
            .find(|r| r.arm == arm.name)
            .map(|r| r.knots.clone())
            .unwrap_or_default()
    };
    // The mean over the seeds where `f` gives a curve.
    let mean_curve =
        |f: &dyn Fn(usize) -> Option<(Vec<f64>, Vec<f64>)>| -> Option<Vec<(f64, f64)>> {
            let got: Vec<TimeCurve> = (0..cfg.seeds.len()).filter_map(f).collect();
            let (t, _) = got.first()?;
            let n = got.len() as f64;
            Some(
                t.iter()
                    .enumerate()
                    .map(|(j, &tj)| (tj, got.iter().map(|g| g.1[j]).sum::<f64>() / n))
                    .collect(),
            )
        };
    let mut curves = vec![];
    let mut diffs = vec![];
    for (a, arm) in cfg.arms.iter().enumerate() {
        if let Some(points) = mean_curve(&|s| per_seed[a][s].clone()) {
            curves.push(crate::plot::Curve {
                label: arm.name.clone(),
                points,
                knots: knots_of(arm),
            });
        }
        if a == 0 {
            continue;
        }
        // Paired by seed against the first arm: the data's floor cancels.
        let paired = |s: usize| -> Option<TimeCurve> {
            let (t, x) = per_seed[a][s].clone()?;
            let (t0, y) = per_seed[0][s].clone()?;
            (t == t0).then(|| (t, x.iter().zip(&y).map(|(p, q)| p - q).collect()))
        };
        if let Some(points) = mean_curve(&paired) {
            diffs.push(crate::plot::Curve {
                label: format!("{} − {}", arm.name, cfg.arms[0].name),
                points,
                knots: knots_of(arm),
            });
        }
    }
    if !curves.is_empty() {
        crate::plot::per_t_png(
            &out.join("per-t-error.png"),
            "velocity error on test images against t (mean over seeds; knots dashed)",
            &curves,
        )?;
    }
    if !diffs.is_empty() {
        crate::plot::per_t_difference_png(
            &out.join("per-t-difference.png"),
            &format!(
                "per-time error minus {}'s, paired by seed (mean over seeds)",
                cfg.arms[0].name
            ),
            "velocity MSE difference",
            &diffs,
        )?;
    }
    Ok(())
}

/// Times and values of a per-time curve.
type TimeCurve = (Vec<f64>, Vec<f64>);

fn read_csv_pairs(csv: &Path) -> Result<Option<TimeCurve>> {
    if !csv.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(csv)?;
    let (mut t, mut v) = (vec![], vec![]);
    for line in text.lines().skip(1) {
        if let Some((a, b)) = line.split_once(',') {
            t.push(a.parse()?);
            v.push(b.parse()?);
        }
    }
    Ok(Some((t, v)))
}

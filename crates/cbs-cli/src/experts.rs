//! `cbs train-experts`: N experts, expert i trained only on its segment [t_i, t_{i+1}] (the
//! directory layout and the interval/seed rule are `cbs_run::experts`).

use anyhow::{bail, Context, Result};
use cbs_run::experts::{expert_config, expert_dir, init_dir};
use cbs_run::{SplitsFile, TrainConfig};
use cbs_train::TrainOptions;

use crate::cli::TrainExpertsArgs;
use crate::progress::bar;

pub fn train_experts(a: TrainExpertsArgs) -> Result<()> {
    let splits = match (&a.splits, a.uniform) {
        (Some(p), None) => SplitsFile::from_file(p)?,
        (None, Some(n)) if n >= 1 => SplitsFile::uniform(n),
        (None, Some(_)) => bail!("--uniform N needs N ≥ 1"),
        _ => bail!("give exactly one of --splits FILE (from estimate-splits) or --uniform N"),
    };
    init_dir(&a.out, &splits)?;
    let mut base = TrainConfig::from_file(&a.config)?;
    a.run.apply(&mut base);
    let n = splits.edges().len() - 1;
    let which: Vec<usize> = match a.expert {
        Some(i) if i < n => vec![i],
        Some(i) => bail!("--expert {i}: the splits define experts 0..={}", n - 1),
        None => (0..n).collect(),
    };
    let mut opts = TrainOptions {
        resume: a.run.resume,
        device: a.run.device.open()?,
        stop: Some(crate::signals::stop_after_step()),
        ..Default::default()
    };
    let data = cbs_train::load_dataset(&base)?;
    for i in which {
        let cfg = expert_config(&base, &splits, i);
        let [lo, hi] = cfg.train.t_range;
        let dir = expert_dir(&a.out, i);
        // Continuing a set of experts: one not started yet starts fresh.
        opts.resume = a.run.resume && cbs_run::checkpoint::latest(&dir)?.is_some();
        eprintln!(
            "expert {i}/{n}: t in [{lo:.4}, {hi:.4}], {} steps → {}",
            cfg.train.steps,
            dir.display()
        );
        crate::commands::print_init(&cfg.train, opts.resume);
        let pb = bar(cfg.train.steps, "steps");
        let res = cbs_train::train(&dir, &cfg, data.as_ref(), &opts, &mut |r| {
            pb.set_position(r.step);
            pb.set_message(format!(
                "loss {:.4} | {:.1} samples/s",
                r.loss, r.images_per_s
            ));
        });
        pb.finish_and_clear();
        let s = res.with_context(|| format!("expert {i}"))?;
        eprintln!(
            "expert {i}: steps {}..{} in {:.1}s, last loss {:.4}",
            s.start_step,
            s.final_step,
            s.seconds,
            s.losses.last().map(|l| l.1).unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

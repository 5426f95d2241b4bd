//! `cbs train-experts`: N experts, expert i trained only on its segment [t_i, t_{i+1}].

use anyhow::{bail, Context, Result};
use cbs_sample::experts::expert_dir;
use cbs_split::SplitsFile;
use cbs_train::{TrainConfig, TrainOptions};

use crate::cli::TrainExpertsArgs;
use crate::commands::device;
use crate::progress::bar;

pub fn train_experts(a: TrainExpertsArgs) -> Result<()> {
    let splits = match (&a.splits, a.uniform) {
        (Some(p), None) => SplitsFile::from_file(p)?,
        (None, Some(n)) if n >= 1 => SplitsFile::uniform(n),
        (None, Some(_)) => bail!("--uniform N needs N ≥ 1"),
        _ => bail!("give exactly one of --splits FILE (from estimate-splits) or --uniform N"),
    };
    let stored = a.out.join("splits.toml");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if stored.is_file() {
        let prev = SplitsFile::from_file(&stored)?;
        if prev.knots != splits.knots {
            bail!(
                "{} already holds experts for knots {:?}; these splits have {:?}. Use another --out",
                a.out.display(),
                prev.knots,
                splits.knots
            );
        }
    } else {
        cbs_train::checkpoint::write_text(&stored, &splits.to_toml())?;
    }
    let mut base = TrainConfig::from_file(&a.config)?;
    a.run.apply(&mut base);
    let edges = splits.edges();
    let n = edges.len() - 1;
    let which: Vec<usize> = match a.expert {
        Some(i) if i < n => vec![i],
        Some(i) => bail!("--expert {i}: the splits define experts 0..={}", n - 1),
        None => (0..n).collect(),
    };
    let opts = TrainOptions {
        resume: a.run.resume,
        device: device(&a.run.device)?,
    };
    let data = cbs_train::load_dataset(&base)?;
    for i in which {
        let mut cfg = base.clone();
        cfg.train.t_range = [edges[i], edges[i + 1]];
        // Independent experts: each its own data order and noise.
        cfg.train.seed = base.train.seed.wrapping_add(i as u64);
        let dir = expert_dir(&a.out, i);
        eprintln!(
            "expert {i}/{n}: t in [{:.4}, {:.4}], {} steps → {}",
            edges[i],
            edges[i + 1],
            cfg.train.steps,
            dir.display()
        );
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

//! `cbs train-experts`: N experts, expert i trained only on its segment [t_i, t_{i+1}] (the
//! directory layout and the interval/seed rule are `cbs_run::experts`).

use anyhow::{bail, Context, Result};
use cbs_run::experts::{expert_config, expert_dir, init_dir};
use cbs_run::{SplitsFile, TrainConfig};

use crate::cli::TrainExpertsArgs;
use crate::progress::bar_if;

pub fn train_experts(a: TrainExpertsArgs) -> Result<()> {
    let splits = match (&a.splits, a.uniform) {
        (Some(p), None) => SplitsFile::from_file(p)?,
        (None, Some(n)) if n >= 1 => SplitsFile::uniform(n),
        (None, Some(_)) => bail!("--uniform N needs N ≥ 1"),
        _ => bail!("give exactly one of --splits FILE (from estimate-splits) or --uniform N"),
    };
    if a.run.dist.is_main() {
        // One writer per directory: the other ranks of a group only read.
        init_dir(&a.out, &splits)?;
    }
    let mut base = TrainConfig::from_file(&a.config)?;
    a.run.apply(&mut base);
    let n = splits.edges().len() - 1;
    let devices = parallel_devices(&a)?;
    if devices.is_none() && a.gpus_per_expert != 1 {
        bail!("--gpus-per-expert needs --gpus N or --devices LIST");
    }
    if let Some(devices) = devices {
        if a.run.dist.is_distributed() {
            bail!(
                "--gpus/--devices start one process per expert; within a data-parallel group \
                 (WORLD_SIZE {}) every rank trains the same expert: give --expert i instead",
                a.run.dist.world_size
            );
        }
        return parallel::run(&a, n, &devices);
    }
    let which: Vec<usize> = match a.expert {
        Some(i) if i < n => vec![i],
        Some(i) => bail!("--expert {i}: the splits define experts 0..={}", n - 1),
        None => (0..n).collect(),
    };
    let mut opts = a.run.options()?;
    let main = a.run.dist.is_main();
    let data = cbs_train::load_dataset(&base)?;
    for i in which {
        let cfg = expert_config(&base, &splits, i);
        let [lo, hi] = cfg.train.t_range;
        let dir = expert_dir(&a.out, i);
        // Continuing a set of experts: one not started yet starts fresh.
        opts.resume = a.run.resume && cbs_run::checkpoint::latest(&dir)?.is_some();
        if main {
            eprintln!(
                "expert {i}/{n}: t in [{lo:.4}, {hi:.4}], {} steps → {}",
                cfg.train.steps,
                dir.display()
            );
            crate::commands::print_init(&cfg.train, opts.resume);
        }
        let pb = bar_if(main, cfg.train.steps, "steps");
        let res = cbs_train::train(&dir, &cfg, data.as_ref(), &opts, &mut |r| {
            pb.set_position(r.step);
            pb.set_message(format!(
                "loss {:.4} | {:.1} samples/s",
                r.loss, r.images_per_s
            ));
        });
        pb.finish_and_clear();
        let s = res.with_context(|| format!("expert {i}"))?;
        if !main {
            continue;
        }
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

/// The devices of `--gpus N` / `--devices LIST`, if given.
fn parallel_devices(a: &TrainExpertsArgs) -> Result<Option<Vec<String>>> {
    Ok(match (a.gpus, &a.devices) {
        (Some(0), _) => bail!("--gpus 0: give at least one GPU"),
        (Some(g), _) => Some((0..g).map(|i| format!("cuda:{i}")).collect()),
        (None, Some(d)) if d.is_empty() => bail!("--devices: give at least one device"),
        (None, Some(d)) => Some(d.clone()),
        (None, None) => None,
    })
}

/// Expert parallelism: every expert in its own `cbs train-experts --expert i --device D`
/// process, at most one per device (or per group of `--gpus-per-expert` devices, a data-parallel
/// `cbs launch` group) at a time.
mod parallel {
    use std::collections::VecDeque;
    use std::process::{Child, Command};

    use anyhow::{bail, Context, Result};

    use crate::cli::{DeviceArgs, TrainExpertsArgs};
    use crate::launch::spawn_prefixed;

    /// This command line without the parallelism flags and the device (each child gets its
    /// expert and device).
    fn base_args() -> Vec<String> {
        let mut out = vec![];
        let mut args = std::env::args().skip(1);
        while let Some(x) = args.next() {
            let flag = x.split('=').next().unwrap_or("").to_string();
            if matches!(
                flag.as_str(),
                "--gpus" | "--devices" | "--device" | "--gpus-per-expert"
            ) {
                if !x.contains('=') {
                    args.next();
                }
                continue;
            }
            out.push(x);
        }
        out
    }

    /// The command of expert `i` on `slot` (one device, or a data-parallel group of devices of
    /// one kind: all `cpu`, or all `cuda:N`, made visible as cuda:0… of the group).
    fn expert_command(
        exe: &std::path::Path,
        args: &[String],
        i: usize,
        slot: &[String],
    ) -> Result<Command> {
        let mut cmd = Command::new(exe);
        let expert = ["--expert".to_string(), i.to_string()];
        if let [d] = slot {
            cmd.args(args).args(&expert).args(["--device", d]);
            return Ok(cmd);
        }
        let device = if slot.iter().all(|d| d == "cpu") {
            "cpu"
        } else {
            let ordinals = slot
                .iter()
                .map(|d| {
                    d.strip_prefix("cuda:")
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!(
                        "--gpus-per-expert: the devices {} of one expert must be all `cpu` or \
                         all `cuda:N`",
                        slot.join(",")
                    )
                })?;
            let visible: Vec<String> = ordinals.iter().map(|o| o.to_string()).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", visible.join(","));
            "cuda"
        };
        cmd.args(["launch", "--gpus", &slot.len().to_string(), "--"])
            .args(args)
            .args(&expert)
            .args(["--device", device]);
        Ok(cmd)
    }

    pub fn run(a: &TrainExpertsArgs, n: usize, devices: &[String]) -> Result<()> {
        for d in devices {
            // Fails early, and clearly, on a device this binary or machine cannot open.
            DeviceArgs { device: d.clone() }.open()?;
        }
        let per = a.gpus_per_expert;
        if per == 0 || !devices.len().is_multiple_of(per) {
            bail!(
                "--gpus-per-expert {per}: expected a divisor of the {} device(s)",
                devices.len()
            );
        }
        let slots: Vec<Vec<String>> = devices.chunks(per).map(<[String]>::to_vec).collect();
        let args = base_args();
        if !args.iter().any(|x| x == "train-experts") {
            bail!("--gpus/--devices: run from the `cbs train-experts` command line");
        }
        let exe = std::env::current_exe().context("locating the cbs binary")?;
        let cpus = devices.iter().filter(|d| d.as_str() == "cpu").count();
        let threads = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut queue: VecDeque<usize> = (0..n).collect();
        let mut running: Vec<(usize, usize, Child, std::thread::JoinHandle<()>)> = vec![];
        let mut failed = vec![];
        eprintln!(
            "{n} experts on {} device(s), {per} per expert: {} → {}",
            devices.len(),
            devices.join(", "),
            a.out.display()
        );
        loop {
            // Start an expert on every free slot.
            for (k, slot) in slots.iter().enumerate() {
                if running.iter().any(|r| r.1 == k) {
                    continue;
                }
                let Some(i) = queue.pop_front() else { break };
                let mut cmd = expert_command(&exe, &args, i, slot)?;
                if slot.iter().all(|d| d == "cpu")
                    && std::env::var_os("RAYON_NUM_THREADS").is_none()
                {
                    // Per process (a group's launcher keeps it for each rank).
                    let share = (threads / cpus.max(1)).max(1);
                    cmd.env("RAYON_NUM_THREADS", share.to_string());
                }
                let (child, echo) = spawn_prefixed(&mut cmd, format!("expert {i}"))?;
                running.push((i, k, child, echo));
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut j = 0;
            while j < running.len() {
                if let Some(status) = running[j].2.try_wait()? {
                    let (i, k, _, echo) = running.remove(j);
                    let _ = echo.join();
                    if !status.success() {
                        failed.push(format!("expert {i} on {} ({status})", slots[k].join(",")));
                    }
                } else {
                    j += 1;
                }
            }
        }
        if !failed.is_empty() {
            bail!(
                "{} failed; the others finished. Rerun the same command with --resume to \
                 continue",
                failed.join(", ")
            );
        }
        eprintln!("all {n} experts trained → {}", a.out.display());
        Ok(())
    }
}

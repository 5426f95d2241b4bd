//! `cbs train-aux`, `cbs sample` and `cbs inspect`: parse → call the library → report.

use anyhow::{bail, Result};
use cbs_flow::guidance::Guided;
use cbs_flow::solver::uniform_grid;
use cbs_flow::VelocityField;
use cbs_models::{shapes, ModelSpec};
use cbs_run::checkpoint;
use cbs_run::outputs::LATENTS_NPZ;
use cbs_run::TrainConfig;
use cbs_sample::images;
use cbs_sample::{SampleOptions, SampleShape};

use crate::cli::{InspectArgs, SampleArgs, TrainArgs};
use crate::progress::{bar, bar_if};

pub fn train_aux(a: TrainArgs) -> Result<()> {
    let stored = a.out.join(checkpoint::CONFIG_FILE);
    let mut cfg = match (&a.config, a.run.resume) {
        (Some(p), _) => TrainConfig::from_file(p)?,
        (None, true) if stored.is_file() => TrainConfig::from_file(&stored)?,
        (None, _) => bail!("--config FILE is required (or --resume on a run directory)"),
    };
    a.run.apply(&mut cfg);
    if a.run.resume && stored.is_file() {
        // Only the step budget may change when continuing a run.
        let mut prev = TrainConfig::from_file(&stored)?;
        prev.train.steps = cfg.train.steps;
        // The memory limit belongs to the machine, not the run.
        prev.data.max_memory_gib = cfg.data.max_memory_gib;
        if prev != cfg {
            bail!(
                "the configuration differs from {} in more than train.steps; a resumed run \
                 keeps its configuration (and seed)",
                stored.display()
            );
        }
    }
    let opts = a.run.options()?;
    let data = cbs_train::load_dataset(&cfg)?;
    let main = a.run.dist.is_main();
    if main {
        print_init(&cfg.train, a.run.resume);
        eprintln!(
            "training {} on {} samples of shape {:?} for {} steps, batch {} → {}",
            cfg.model.preset,
            data.len(),
            data.sample_shape(),
            cfg.train.steps,
            cfg.train.batch_size,
            a.out.display()
        );
    }
    let pb = bar_if(main, cfg.train.steps, "steps");
    let summary = cbs_train::train(&a.out, &cfg, data.as_ref(), &opts, &mut |r| {
        pb.set_position(r.step);
        pb.set_message(format!("loss {:.4} | {:.1} img/s", r.loss, r.images_per_s));
        if let Some(c) = &r.checkpoint {
            pb.println(format!("step {}: checkpoint {}", r.step, c.display()));
        }
    });
    pb.finish_and_clear();
    let summary = summary?;
    if !main {
        return Ok(());
    }
    let steps_run = summary.final_step - summary.start_step;
    let Some(&(_, last)) = summary.losses.last() else {
        eprintln!(
            "already complete at step {} (checkpoint {}): nothing to train; raise --steps to \
             continue",
            summary.final_step,
            summary.checkpoint.display()
        );
        return Ok(());
    };
    eprintln!(
        "done: steps {}..{} in {:.1}s ({:.1} img/s), last loss {last:.4}, checkpoint {}",
        summary.start_step,
        summary.final_step,
        summary.seconds,
        (steps_run as f64 * cfg.train.batch_size as f64) / summary.seconds.max(1e-9),
        summary.checkpoint.display()
    );
    Ok(())
}

/// Says where a fresh run's weights start from, when not from the reference initialisation.
pub fn print_init(tc: &cbs_run::TrainSection, resume: bool) {
    if let (Some(p), false) = (&tc.init_from, resume) {
        eprintln!(
            "initial weights: {} ({:?} weights)",
            p.display(),
            tc.init_weights
        );
    }
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let dev = a.device.open()?;
    let which = a.weights;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    // The adaptive solver picks its own steps: one grid interval per segment (it lands on
    // every knot), so --steps does not apply.
    let plan_steps = if a.solver.is_adaptive() { 1 } else { a.steps };
    // One model owning every step, or a set of experts each owning its segment's steps.
    let (models, grid, owner, source) = match (&a.checkpoint, &a.experts) {
        (Some(ck), None) => {
            let spec = a.torch.spec();
            let (mut m, entry) =
                cbs_run::torch_checkpoint::load_any(ck, which, spec.as_ref(), a.precision, &dev)?;
            if entry.is_some() {
                // A PyTorch file records no path: the one given is taken as its.
                m.config.train.path = a.path.unwrap_or_default();
            }
            let source = match entry {
                Some(e) => format!("{} (PyTorch file, entry `{e}`)", m.dir.display()),
                None => format!("{} (step {})", m.dir.display(), m.state.step),
            };
            (
                vec![m],
                uniform_grid(plan_steps),
                vec![0; plan_steps],
                source,
            )
        }
        (None, Some(dir)) => {
            let (splits, set) = cbs_sample::experts::load_experts(dir, which, a.precision, &dev)?;
            let (grid, owner) = set.plan(plan_steps);
            let source = format!("{} experts, knots {:?}", set.experts.len(), splits.knots);
            (set.experts, grid, owner, source)
        }
        _ => bail!("give exactly one of --checkpoint or --experts"),
    };
    let trained = models[0].config.train.path;
    if let Some(m) = models.iter().find(|m| m.config.train.path != trained) {
        bail!(
            "{} was trained on the {} path but {} on the {trained} path; experts must share one",
            m.dir.display(),
            m.config.train.path,
            models[0].dir.display()
        );
    }
    if let Some(p) = a.path.filter(|&p| p != trained) {
        bail!(
            "--path {p}: {source} was trained on the {trained} path (train.path); its velocity \
             is that path's, so it is not sampled as another"
        );
    }
    let arch = &models[0].architecture;
    let shape = SampleShape {
        dims: arch.sample_shape(),
        num_classes: arch.num_classes(),
    };
    if a.cfg_scale != 1.0 && arch.null_class().is_none() {
        bail!(
            "--cfg-scale {} needs a model trained with label dropout (it has no null class)",
            a.cfg_scale
        );
    }
    if let Some(v) = &a.cfg_interval {
        if v.len() != 2 || v[0] >= v[1] {
            bail!("--cfg-interval {v:?}: expected two times LO,HI with LO < HI, e.g. 0.1,1.0");
        }
    }
    let noise = match &a.noise {
        Some(p) => Some(cbs_sample::read_noise(p, a.num, &shape, &dev)?),
        None => None,
    };
    let steps = grid.len() - 1;
    let opts = SampleOptions {
        num: a.num,
        grid,
        solver: a.solver,
        seed: a.seed,
        labels: a.labels.clone(),
        noise,
        batch: a.batch,
        tolerances: cbs_flow::adaptive::Tolerances {
            atol: a.atol,
            rtol: a.rtol,
        },
        sde: Some(cbs_flow::sde::SdeSettings {
            path: trained,
            diffusion: a.diffusion,
            norm: a.diffusion_norm,
        }),
    };
    let guided: Vec<Guided<&cbs_models::Model>> = models
        .iter()
        .map(|m| Guided {
            inner: &m.model,
            scale: a.cfg_scale,
            interval: a.cfg_interval.as_deref().map(|v| (v[0], v[1])),
        })
        .collect();
    let field_for_step = |i: usize| -> &dyn VelocityField { &guided[owner[i]] };
    let batches = a.num.div_ceil(a.batch.max(1));
    let pb = bar((steps * batches) as u64, "steps");
    let result =
        cbs_sample::generate_counted(&field_for_step, &shape, &opts, &dev, &mut |done, _| {
            pb.set_position(done as u64)
        });
    pb.finish_and_clear();
    let (x, labels, evals) = result?;
    if a.solver.is_adaptive() {
        eprintln!(
            "dopri5 (atol {}, rtol {}): {evals} velocity evaluations over {batches} batch(es)",
            a.atol, a.rtol
        );
    }
    let out_opts = a.images.options();
    let latent = x.rank() == 4 && !matches!(x.dim(1)?, 1 | 3);
    match (&a.vae, latent) {
        (Some(dir), true) => {
            let vae = crate::vae::load_vae(dir, &dev)?;
            let z = (x / vae.config().scaling_factor)?;
            cbs_core::atomic::create_dir_all(&a.out)?;
            cbs_sample::vae::write_latents(&a.out.join(LATENTS_NPZ), &z, labels.as_deref())?;
            let images = crate::vae::decode_with_bar(&vae, &z, a.vae_batch)?;
            images::write_outputs(&a.out, &images, labels.as_deref(), &out_opts)?;
        }
        (Some(dir), false) => bail!(
            "--vae {}: the model's samples are {:?}, not latents (images have 1 or 3 channels)",
            dir.display(),
            &x.dims()[1..]
        ),
        (None, true) => {
            let z = (x / cbs_models::vae::SD_VAE_SCALING_FACTOR)?;
            cbs_core::atomic::create_dir_all(&a.out)?;
            let path = a.out.join(LATENTS_NPZ);
            cbs_sample::vae::write_latents(&path, &z, labels.as_deref())?;
            eprintln!(
                "the samples are latents {:?}: written to {} (divided by 0.18215); pass --vae DIR \
                 to decode them, or run `cbs decode --vae DIR --latents {}`",
                &z.dims()[1..],
                path.display(),
                path.display()
            );
        }
        (None, false) => images::write_outputs(&a.out, &x, labels.as_deref(), &out_opts)?,
    }
    eprintln!(
        "wrote {} samples from {source} to {}",
        a.num,
        a.out.display()
    );
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    if a.list {
        for n in cbs_models::all_preset_names() {
            println!("{n}");
        }
        return Ok(());
    }
    let spec = ModelSpec::new(a.model.as_deref().unwrap_or_default());
    let (mut shape, mut classes) = spec.default_geometry()?;
    match shape.as_mut_slice() {
        [d] => *d = a.dim.unwrap_or(*d),
        [c, h, w] => {
            *c = a.in_channels.unwrap_or(*c);
            *h = a.image_size.unwrap_or(*h);
            *w = *h;
        }
        _ => {}
    }
    classes = a.num_classes.unwrap_or(classes);
    let arch = spec.resolve(&shape, classes)?;
    let shapes = shapes::parameter_shapes(&arch)?;
    let count = |v: &[(String, Vec<usize>)]| -> usize {
        v.iter().map(|(_, d)| d.iter().product::<usize>()).sum()
    };
    let total = count(&shapes);
    let buffers = shapes::buffer_names(&arch)?;
    let trainable = count(
        &shapes
            .iter()
            .filter(|(n, _)| !buffers.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if a.json {
        let tensors: serde_json::Map<String, serde_json::Value> = shapes
            .iter()
            .map(|(n, d)| (n.clone(), serde_json::json!(d)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "parameters": total,
                "trainable": trainable,
                "geometry": shape,
                "num_classes": classes,
                "tensors": tensors,
            }))?
        );
    } else {
        for (n, d) in &shapes {
            println!("{n:60} {d:?}");
        }
        println!("sample shape {shape:?}, {classes} classes");
        println!("total parameters (buffers included): {total}");
        println!("trainable parameters: {trainable}");
    }
    Ok(())
}

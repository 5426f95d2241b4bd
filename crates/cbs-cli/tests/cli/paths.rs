//! Interpolation paths end to end: a model trained on the GVP path learns the GVP velocity
//! of the mixture (not the linear one), the run records its path, sampling refuses another
//! path, JiT refuses a non-linear one, and the oracle's knots follow the path.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cbs_flow::path::Interpolant;
use cbs_flow::VelocityField;
use cbs_split::GmmOracle;

use super::{cbs, ring8, stderr, WORKSPACE};

/// Mean squared distance between two velocity sets.
fn msd(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn gvp_training_learns_the_gvp_velocity_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cfg = d.join("ring8-gvp.toml");
    let text = std::fs::read_to_string(format!("{WORKSPACE}/configs/toy/ring8-mlp.toml"))
        .unwrap()
        .replace("configs/toy/ring8.json", &ring8())
        .replace("steps = 6000", "steps = 2500\npath = \"gvp\"")
        .replace("ema_decay = 0.999", "ema_decay = 0.99");
    std::fs::write(&cfg, text).unwrap();
    let run = d.join("aux");
    let o = cbs(&["train-aux", "--config", &s(&cfg), "--out", &s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let resolved = cbs_train::TrainConfig::from_file(&run.join("config.toml")).unwrap();
    assert_eq!(resolved.train.path, Interpolant::Gvp);

    // The learned velocity against both exact fields at points along GVP paths.
    let oracle = GmmOracle::from_file(ring8()).unwrap();
    let n = 512;
    let x1 = Tensor::from_vec(
        oracle
            .sample(n, 7)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (n, 2),
        &Device::Cpu,
    )
    .unwrap();
    let x0 = Tensor::randn(0f32, 1.0, (n, 2), &Device::Cpu).unwrap();
    let ts: Vec<f32> = (0..n).map(|i| 0.05 + 0.9 * i as f32 / n as f32).collect();
    let t = Tensor::from_vec(ts, n, &Device::Cpu).unwrap();
    let xt = Interpolant::Gvp.interpolate(&x0, &x1, &t).unwrap();
    let inputs = d.join("in.safetensors");
    candle_core::safetensors::save(
        &[("x".to_string(), xt.clone()), ("t".to_string(), t.clone())]
            .into_iter()
            .collect(),
        &inputs,
    )
    .unwrap();
    let out = d.join("out.safetensors");
    let o = cbs(&[
        "forward",
        "--checkpoint",
        &s(&run),
        "--inputs",
        &s(&inputs),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["velocity"].clone();
    let gvp = oracle.clone().with_path(Interpolant::Gvp);
    let (to_gvp, to_linear) = (
        msd(&v, &gvp.velocity(&xt, &t, None).unwrap()),
        msd(&v, &oracle.velocity(&xt, &t, None).unwrap()),
    );
    eprintln!("mean squared distance to the GVP field {to_gvp:.4}, to the linear {to_linear:.4}");
    assert!(to_gvp < 0.25 * to_linear, "{to_gvp} vs {to_linear}");

    // The training loss per time bin never goes below the exact Bayes floor of the GVP path
    // (beyond the noise of the estimates), and is above it somewhere.
    let csv = d.join("floor.csv");
    let o = cbs(&[
        "loss-floor",
        &s(&run),
        "--last",
        "5",
        "--points",
        "1500",
        "--csv",
        &s(&csv),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 10);
    for r in &rows {
        let (loss, floor, excess) = (r[2], r[3], r[4]);
        assert!(floor > 0.0, "{text}");
        if loss.is_finite() {
            assert!(excess > -0.1 * floor, "{text}");
        }
    }
    assert!(rows.iter().any(|r| r[4] > 0.0), "{text}");
    let png = image::open(d.join("floor.png")).unwrap();
    assert_eq!((png.width(), png.height()), (800, 500));
    let curves = d.join("loss.png");
    let o = cbs(&["plot", &s(&run), "--out", &s(&curves)]);
    assert!(o.status.success() && curves.is_file(), "{}", stderr(&o));

    // Sampling takes the recorded path and refuses another.
    let common = ["--checkpoint", &s(&run), "--num", "16", "--steps", "8"];
    let mut args = vec!["sample", "--out"];
    let good = s(&d.join("s"));
    args.push(&good);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--path", "gvp"]);
    let o = cbs(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = vec!["sample", "--out"];
    let bad = s(&d.join("s2"));
    args.push(&bad);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--path", "linear"]);
    let o = cbs(&args);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("gvp path"), "{e}");

    // SDE sampling takes the recorded path for the score.
    let mut args = vec!["sample", "--out"];
    let sde = s(&d.join("sde"));
    args.push(&sde);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--solver", "euler-maruyama", "--diffusion", "sigma"]);
    let o = cbs(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("sde/samples.npz").is_file());
}

#[test]
fn jit_refuses_a_non_linear_path_and_the_oracle_knots_follow_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // JiT on points is not a thing; the path check comes before any data is read.
    let cfg = d.join("jit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npreset = \"jit-nano-4\"\n[data]\nsource = \"npz\"\npath = \"{}\"\n\
             [train]\nsteps = 1\npath = \"vp\"\n",
            d.join("missing.npz").display()
        ),
    )
    .unwrap();
    let o = cbs(&["train-aux", "--config", &s(&cfg), "--out", &s(&d.join("j"))]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("train.path") && e.contains("JiT"),
        "{e}"
    );

    let knots = |path: &str| -> Vec<f64> {
        let out = d.join(format!("split-{path}"));
        let o = cbs(&[
            "estimate-splits",
            "--oracle-gmm",
            &ring8(),
            "--path",
            path,
            "--experts",
            "3",
            "--trajectories",
            "512",
            "--bootstrap",
            "0",
            "--out",
            &s(&out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        cbs_run::SplitsFile::from_file(&out.join("splits.toml"))
            .unwrap()
            .knots
    };
    let (lin, gvp) = (knots("linear"), knots("gvp"));
    // The floor is known for mixture data only.
    let o = cbs(&["loss-floor", &s(d)]);
    assert!(
        !o.status.success() && stderr(&o).contains("config.toml"),
        "{}",
        stderr(&o)
    );
    eprintln!("ring8 acceleration knots: linear {lin:?}, gvp {gvp:?}");
    assert!(lin.iter().zip(&gvp).any(|(a, b)| (a - b).abs() > 0.02));
}

//! The `cbs` binary end to end: help, inspect, train-aux → sample on a small generated
//! Fashion-MNIST directory, and the errors a user meets first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

#[path = "cli/errors.rs"]
mod errors;
#[path = "cli/experiment.rs"]
mod experiment;
#[path = "cli/parallel.rs"]
mod parallel;
#[path = "cli/paths.rs"]
mod paths;
#[path = "cli/vae.rs"]
mod vae;

fn cbs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args(args)
        .output()
        .expect("run cbs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_idx_gz(path: &Path, dims: &[u32], data: &[u8]) {
    let mut raw = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(data);
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap();
}

/// A Fashion-MNIST-shaped directory with 30 training images (vertical bars per class).
fn fake_fashion(dir: &Path) {
    let n = 30u32;
    let mut img = Vec::new();
    for i in 0..n {
        for _y in 0..28 {
            for x in 0..28u32 {
                img.push(if x / 3 == i % 10 { 255 } else { 0 });
            }
        }
    }
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx_gz(&dir.join("train-images-idx3-ubyte.gz"), &[n, 28, 28], &img);
    write_idx_gz(&dir.join("train-labels-idx1-ubyte.gz"), &[n], &labels);
}

fn config(dir: &Path, data_dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        format!(
            "[model]\npreset = \"sit-nano-4\"\n[data]\ndir = \"{}\"\n[train]\nsteps = 4\n\
             batch_size = 4\nlr = 1e-3\ncheckpoint_every = 2\nlog_every = 1\n",
            data_dir.display()
        ),
    )
    .unwrap();
    p
}

/// A small generated Fashion-MNIST directory under `dir` and a config for it.
fn fake_setup(dir: &Path) -> PathBuf {
    let data = dir.join("fashion");
    std::fs::create_dir_all(&data).unwrap();
    fake_fashion(&data);
    config(dir, &data)
}

/// Generate a small Fashion-MNIST directory under `dir`, write a config for it and run
/// `train-aux` (with `extra` arguments). Returns the config path and the run directory.
fn trained_fake_run(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let data = dir.join("fashion");
    std::fs::create_dir_all(&data).unwrap();
    fake_fashion(&data);
    let cfg = config(dir, &data);
    let run = dir.join("run");
    let mut args = vec![
        "train-aux",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = cbs(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    (cfg, run)
}

#[test]
fn help_lists_the_pipeline_stages() {
    let o = cbs(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for sub in [
        "train-aux",
        "estimate-splits",
        "train-experts",
        "sample",
        "eval-fid",
        "inspect",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}:\n{text}");
    }
    // eval-fid names a missing input and what it expected.
    let o = cbs(&["eval-fid", "a", "b"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a: not found") && stderr(&o).contains(".npz"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_json_reports_the_reference_total() {
    let o = cbs(&["inspect", "--model", "sit-xl-2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"], 675_129_632u64);
    assert_eq!(v["tensors"]["pos_embed"], serde_json::json!([1, 256, 1152]));
    assert_eq!(
        v["tensors"]["y_embedder.embedding_table.weight"],
        serde_json::json!([1001, 1152])
    );
    let o = cbs(&["inspect", "--model", "sit-huge-2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sit-xl-2"), "{}", stderr(&o));
}

#[test]
fn train_then_sample_writes_grid_and_npz_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, run) = trained_fake_run(tmp.path(), &[]);
    for f in ["config.toml", "metrics.jsonl", "checkpoints/latest"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let ck = run.join("checkpoints/step-00000004");
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(ck.join(f).exists(), "missing {f}");
    }

    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            run.to_str().unwrap(),
            "--num",
            "6",
            "--steps",
            "3",
            "--seed",
            "5",
            "--cfg-scale",
            "1.5",
            "--weights",
            "model",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = cbs(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out.join("samples.npz")).unwrap()
    };
    let a = sample(&tmp.path().join("s1"), &["--individual"]);
    let b = sample(
        &tmp.path().join("s2"),
        &["--batch", "4", "--solver", "euler"],
    );
    let c = sample(&tmp.path().join("s3"), &["--batch", "4"]);
    assert_eq!(
        a, c,
        "same seed must give the same images, whatever the batch size"
    );
    assert_ne!(a, b, "another solver gives other images");
    assert!(tmp.path().join("s1/grid.png").exists());
    assert!(tmp.path().join("s1/images/000005.png").exists());
    let arr = Tensor::read_npz(tmp.path().join("s1/samples.npz")).unwrap();
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0].0, "arr_0");
    assert_eq!(arr[0].1.dims(), &[6, 32, 32, 1]);
    assert_eq!(arr[0].1.dtype(), candle_core::DType::U8);

    // Given noise: the run is reproducible from the file alone.
    let noise = Tensor::randn(0f32, 1.0, (6, 1, 32, 32), &Device::Cpu).unwrap();
    let npy = tmp.path().join("noise.npy");
    noise.write_npy(&npy).unwrap();
    // (EMA weights after 4 steps are still the zero-output init, so the tests sample the raw ones.)
    let n1 = sample(
        &tmp.path().join("n1"),
        &["--noise", npy.to_str().unwrap(), "--seed", "1"],
    );
    let n2 = sample(
        &tmp.path().join("n2"),
        &["--noise", npy.to_str().unwrap(), "--seed", "2"],
    );
    assert_eq!(n1, n2);
    assert_ne!(n1, a);

    // Wrong noise shape is named.
    let bad = tmp.path().join("bad.npy");
    Tensor::zeros((2, 1, 32, 32), candle_core::DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&bad)
        .unwrap();
    let o = cbs(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--num",
        "6",
        "--noise",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[6, 1, 32, 32]"), "{}", stderr(&o));

    // Resume extends the run; a second plain run into the same directory is refused.
    let o = cbs(&[
        "train-aux",
        "--out",
        run.to_str().unwrap(),
        "--resume",
        "--steps",
        "6",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run.join("checkpoints/step-00000006").exists());
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
}

#[test]
fn missing_data_names_the_path_and_the_install_command() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &tmp.path().join("nowhere"));
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("nowhere") && e.contains("apt-get install -y dataset-fashion-mnist"),
        "{e}"
    );
}

#[test]
fn bad_config_names_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        "[model]\npreset = \"sit-nano-4\"\n[train]\nbatchsize = 3\n",
    )
    .unwrap();
    let o = cbs(&[
        "train-aux",
        "--config",
        p.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.toml") && e.contains("batchsize"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn ring8() -> String {
    format!("{WORKSPACE}/configs/toy/ring8.json")
}

/// Knots of the ring mixture from the reference computation (shared/reference/
/// gmm_ring8_expected.json, `splits`, 8192 trajectories, 100 cells, linear mode).
const RING8_ACCELERATION_3: [f64; 2] = [0.2633, 0.5564];
const RING8_DIRICHLET_2: [f64; 1] = [0.6609];

fn assert_knots_near(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "knots {got:?} vs expected {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol,
            "knots {got:?} vs expected {want:?} (±{tol})"
        );
    }
}

#[test]
fn estimate_splits_on_the_ring_oracle_writes_splits_csv_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("splits");
    let o = cbs(&[
        "estimate-splits",
        "--oracle-gmm",
        &ring8(),
        "--experts",
        "3",
        "--trajectories",
        "2048",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("knots = [")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("intervals = [")),
        "{stdout}"
    );

    let f = cbs_run::SplitsFile::from_file(&out.join("splits.toml")).unwrap();
    assert_eq!(f.settings.experts, 3);
    assert_eq!(f.settings.grid, 100);
    assert_eq!(f.settings.trajectories, 2048);
    assert_eq!(f.settings.monitor, cbs_split::MonitorKind::Acceleration);
    assert_eq!(f.settings.mode, cbs_split::SplitMode::Linear);
    assert!(
        f.settings.source.starts_with("oracle:"),
        "{}",
        f.settings.source
    );
    assert_knots_near(&f.knots, &RING8_ACCELERATION_3, 0.02);
    assert_eq!(f.intervals.len(), 2);
    for (iv, &k) in f.intervals.iter().zip(&f.knots) {
        assert_eq!(iv.knot, k);
        assert!(iv.lo <= k && k <= iv.hi, "{iv:?}");
        assert!(iv.hi - iv.lo < 0.1, "implausibly wide interval {iv:?}");
        assert_eq!(iv.confidence, 0.9);
    }

    let csv = std::fs::read_to_string(out.join("monitor.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("t,m,cumulative"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 101);
    let cum: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert_eq!(cum[0], 0.0);
    assert!(
        cum.windows(2).all(|w| w[1] > w[0]),
        "cumulative not increasing"
    );
    assert_eq!(rows[100][1], "", "the last grid point has no cell");
    assert_eq!(rows[100][0].parse::<f64>().unwrap(), 1.0);
    let m: Vec<f64> = rows[..100].iter().map(|r| r[1].parse().unwrap()).collect();
    assert!((m.iter().sum::<f64>() - cum[100]).abs() < 1e-9 * cum[100]);

    let png = image::open(out.join("monitor.png")).unwrap();
    assert_eq!((png.width(), png.height()), (800, 500));
}

#[test]
fn estimate_splits_dirichlet_on_the_ring_oracle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("splits");
    let o = cbs(&[
        "estimate-splits",
        "--oracle-gmm",
        &ring8(),
        "--monitor",
        "dirichlet",
        "--experts",
        "2",
        "--trajectories",
        "2048",
        "--bootstrap",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = cbs_run::SplitsFile::from_file(&out.join("splits.toml")).unwrap();
    assert_eq!(f.settings.monitor, cbs_split::MonitorKind::Dirichlet);
    assert_knots_near(&f.knots, &RING8_DIRICHLET_2, 0.02);
    assert!(f.intervals[0].lo <= f.knots[0] && f.knots[0] <= f.intervals[0].hi);
}

#[test]
fn estimate_splits_needs_exactly_one_source() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("splits");
    let out = out.to_str().unwrap();
    let o = cbs(&["estimate-splits", "--out", out]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--aux") && e.contains("--oracle-gmm"), "{e}");

    let ring = ring8();
    let o = cbs(&[
        "estimate-splits",
        "--aux",
        WORKSPACE,
        "--oracle-gmm",
        &ring,
        "--out",
        out,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--aux") && e.contains("--oracle-gmm"), "{e}");
}

#[test]
fn estimate_splits_from_an_image_model_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = trained_fake_run(tmp.path(), &["--steps", "2"]);
    let out = tmp.path().join("splits");
    let o = cbs(&[
        "estimate-splits",
        "--aux",
        run.to_str().unwrap(),
        "--experts",
        "2",
        "--grid",
        "10",
        "--trajectories",
        "16",
        "--batch",
        "8",
        "--bootstrap",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = cbs_run::SplitsFile::from_file(&out.join("splits.toml")).unwrap();
    assert_eq!(f.knots.len(), 1);
    assert!(f.settings.source.contains("step-"), "{}", f.settings.source);
    let csv = std::fs::read_to_string(out.join("monitor.csv")).unwrap();
    assert_eq!(csv.lines().count(), 12);
}

/// JiT and UNet through every stage: train-aux → estimate-splits (both monitors) →
/// train-experts → sample from the experts, chosen by the config alone.
#[test]
fn every_backbone_runs_every_stage() {
    for preset in ["jit-nano-4", "unet-mini"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("fashion");
        std::fs::create_dir_all(&data).unwrap();
        fake_fashion(&data);
        let cfg = tmp.path().join("b.toml");
        std::fs::write(
            &cfg,
            format!(
                "[model]\npreset = \"{preset}\"\n[data]\ndir = \"{}\"\n[train]\nsteps = 3\n\
                 batch_size = 4\nlr = 1e-3\ncheckpoint_every = 3\nlog_every = 1\n",
                data.display()
            ),
        )
        .unwrap();
        let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_string();
        let c = cfg.to_str().unwrap();
        let o = cbs(&["train-aux", "--config", c, "--out", &p("aux")]);
        assert!(o.status.success(), "{preset} train-aux: {}", stderr(&o));
        for monitor in ["acceleration", "dirichlet"] {
            let o = cbs(&[
                "estimate-splits",
                "--aux",
                &p("aux"),
                "--experts",
                "2",
                "--monitor",
                monitor,
                "--grid",
                "6",
                "--trajectories",
                "4",
                "--batch",
                "4",
                "--bootstrap",
                "0",
                "--out",
                &p(&format!("splits-{monitor}")),
            ]);
            assert!(o.status.success(), "{preset} {monitor}: {}", stderr(&o));
        }
        let o = cbs(&[
            "train-experts",
            "--splits",
            &p("splits-acceleration/splits.toml"),
            "--config",
            c,
            "--out",
            &p("experts"),
        ]);
        assert!(o.status.success(), "{preset} train-experts: {}", stderr(&o));
        let o = cbs(&[
            "sample",
            "--experts",
            &p("experts"),
            "--num",
            "4",
            "--steps",
            "4",
            "--solver",
            "heun-euler-last",
            "--cfg-scale",
            "2",
            "--cfg-interval",
            "0.1,1.0",
            "--out",
            &p("samples"),
        ]);
        assert!(o.status.success(), "{preset} sample: {}", stderr(&o));
        let npz =
            candle_core::npy::NpzTensors::new(tmp.path().join("samples/samples.npz")).unwrap();
        let arr = npz.get("arr_0").unwrap().unwrap();
        assert_eq!(arr.dims(), &[4, 32, 32, 1], "{preset}");
    }
}

/// The toy pipeline end to end: an MLP trained on ring8 samples finds the oracle's
/// acceleration knots; uniform and CBS experts train and sample; samples are scored.
#[test]
fn toy_pipeline_trained_aux_finds_the_oracle_knots() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_string();
    let cfg = tmp.path().join("ring8.toml");
    let text = std::fs::read_to_string(format!("{WORKSPACE}/configs/toy/ring8-mlp.toml"))
        .unwrap()
        .replace("configs/toy/ring8.json", &ring8());
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let o = cbs(&["train-aux", "--config", cfg, "--out", &p("aux")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cbs(&[
        "estimate-splits",
        "--aux",
        &p("aux"),
        "--experts",
        "3",
        "--trajectories",
        "4096",
        "--out",
        &p("splits"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = cbs_run::SplitsFile::from_file(&tmp.path().join("splits/splits.toml")).unwrap();
    // Oracle acceleration knots, linear mode, N = 3 (gmm_ring8_expected.json).
    assert_knots_near(&got.knots, &RING8_ACCELERATION_3, 0.03);

    // Experts on those knots (short), expert-switching sampling, and the toy metrics.
    let o = cbs(&[
        "train-experts",
        "--splits",
        &p("splits/splits.toml"),
        "--config",
        cfg,
        "--steps",
        "300",
        "--out",
        &p("experts"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..3 {
        let c = cbs_train::TrainConfig::from_file(
            &tmp.path().join(format!("experts/expert-{i}/config.toml")),
        )
        .unwrap();
        let edges = got.edges();
        assert_eq!(
            c.train.t_range,
            [edges[i], edges[i + 1]],
            "expert {i} interval"
        );
    }
    // 300 steps is too short for the EMA (decay 0.999) to move: sample the raw weights.
    let o = cbs(&[
        "sample",
        "--experts",
        &p("experts"),
        "--weights",
        "model",
        "--num",
        "500",
        "--batch",
        "500",
        "--out",
        &p("s"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.path().join("s/scatter.png").exists());
    let o = cbs(&["eval-gmm", &p("s"), "--gmm", &ring8(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["samples"], 500);
    assert!(v["sliced_w2"].as_f64().unwrap() < 1.0, "{v}");
    // Experts of another split cannot be mixed into the same directory.
    let o = cbs(&[
        "train-experts",
        "--uniform",
        "3",
        "--config",
        cfg,
        "--out",
        &p("experts"),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already holds experts"),
        "{}",
        stderr(&o)
    );
}

/// Writes pytorch-fid-format statistics (mu [D], sigma [D, D], float64).
fn write_stats(path: &Path, mu: &[f64], sigma_diag: &[f64]) {
    let d = mu.len();
    let mut sigma = vec![0.0; d * d];
    for (i, v) in sigma_diag.iter().enumerate() {
        sigma[i * d + i] = *v;
    }
    let mu = Tensor::from_vec(mu.to_vec(), d, &Device::Cpu).unwrap();
    let sigma = Tensor::from_vec(sigma, (d, d), &Device::Cpu).unwrap();
    Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], path).unwrap();
}

fn cbs_without_weights(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args(args)
        .env_remove("CBS_INCEPTION")
        .output()
        .expect("run cbs")
}

#[test]
fn eval_fid_of_two_statistics_files_needs_no_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, r) = (tmp.path().join("s.npz"), tmp.path().join("r.npz"));
    // Diagonal covariances: FID = |Δμ|² + Σ (√a − √b)² = (1 + 4) + (1 + 1 + 0) = 7.
    write_stats(&s, &[0.0, 1.0, 2.0], &[1.0, 4.0, 9.0]);
    write_stats(&r, &[1.0, 1.0, 0.0], &[4.0, 1.0, 9.0]);
    let o = cbs_without_weights(&[
        "eval-fid",
        s.to_str().unwrap(),
        r.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((v["fid"].as_f64().unwrap() - 7.0).abs() < 1e-9, "{v}");
    for key in [
        "sfid",
        "inception_score",
        "precision",
        "recall",
        "kid",
        "num_samples",
        "num_reference",
    ] {
        assert!(
            v.get(key).is_some_and(|x| x.is_null()),
            "{key} should be null: {v}"
        );
    }
    assert_eq!(v["feature_dim"], 3);
    // Plain text.
    let o = cbs_without_weights(&["eval-fid", s.to_str().unwrap(), r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FID        7.0000"));
    // --save-stats without a reference rewrites the statistics of SAMPLES.
    let out = tmp.path().join("copy.npz");
    let o = cbs_without_weights(&[
        "eval-fid",
        s.to_str().unwrap(),
        "--save-stats",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cbs_without_weights(&[
        "eval-fid",
        out.to_str().unwrap(),
        s.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["fid"].as_f64().unwrap().abs() < 1e-12, "{v}");
    // Mismatched dimensions are refused.
    let r2 = tmp.path().join("r2.npz");
    write_stats(&r2, &[0.0, 0.0], &[1.0, 1.0]);
    let o = cbs_without_weights(&["eval-fid", s.to_str().unwrap(), r2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("dimensions differ"), "{}", stderr(&o));
}

#[test]
fn eval_fid_on_images_without_weights_says_which_file_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("samples.npz");
    let t = Tensor::zeros((4, 8, 8, 3), candle_core::DType::U8, &Device::Cpu).unwrap();
    Tensor::write_npz(&[("arr_0", &t)], &imgs).unwrap();
    let r = tmp.path().join("r.npz");
    write_stats(&r, &[0.0; 4], &[1.0; 4]);
    let o = cbs_without_weights(&["eval-fid", imgs.to_str().unwrap(), r.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("pt_inception-2015-12-05-6726825d.pth")
            && e.contains("--inception")
            && e.contains("CBS_INCEPTION"),
        "{e}"
    );
    // A weights path that does not exist is named.
    let o = cbs_without_weights(&[
        "eval-fid",
        imgs.to_str().unwrap(),
        r.to_str().unwrap(),
        "--inception",
        "/nonexistent/weights.pth",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/weights.pth"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_fid_end_to_end_with_random_inception_weights() {
    // Not the trained network: random weights in pytorch-fid's layout, saved as safetensors,
    // exercise reading, batching, extraction and every metric through the binary.
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("inception.safetensors");
    let weights = cbs_eval::inception::random_weights(3).unwrap();
    candle_core::safetensors::save(&weights, &w).unwrap();
    // Samples: an ADM .npz (grayscale, 10 images: the IS needs one per split); reference: a
    // directory of 4 PNGs (P/R needs more than k = 3). Few images: the forward passes dominate.
    let (n, nr) = (10, 4);
    let px: Vec<u8> = (0..n * 16 * 16).map(|i| ((i * 37) % 251) as u8).collect();
    let s = tmp.path().join("s.npz");
    let t = Tensor::from_vec(px, (n, 16, 16, 1), &Device::Cpu).unwrap();
    Tensor::write_npz(&[("arr_0", &t)], &s).unwrap();
    let rdir = tmp.path().join("ref");
    std::fs::create_dir(&rdir).unwrap();
    for i in 0..nr {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, (i * 20) as u8])
        });
        img.save(rdir.join(format!("{i:03}.png"))).unwrap();
    }
    let stats = tmp.path().join("s_stats.npz");
    let o = cbs_without_weights(&[
        "eval-fid",
        s.to_str().unwrap(),
        rdir.to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--batch",
        "5",
        "--kid-subset-size",
        "6",
        "--kid-subsets",
        "4",
        "--save-stats",
        stats.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["fid", "sfid", "precision", "recall", "kid", "kid_std"] {
        assert!(v[key].as_f64().is_some_and(f64::is_finite), "{key}: {v}");
    }
    assert!(v["inception_score"]["mean"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(
        (v["num_samples"].as_u64(), v["num_reference"].as_u64()),
        (Some(10), Some(4))
    );
    assert_eq!(v["feature_dim"], 2048);
    // The saved statistics reproduce the FID against the same reference.
    let o = Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args([
            "eval-fid",
            stats.to_str().unwrap(),
            rdir.to_str().unwrap(),
            "--json",
        ])
        .env("CBS_INCEPTION", &w)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (f1, f2) = (v["fid"].as_f64().unwrap(), v2["fid"].as_f64().unwrap());
    assert!((f1 - f2).abs() <= 1e-9 * f1.abs().max(1.0), "{f1} vs {f2}");
    assert_eq!(v2["sfid"], v["sfid"]);
    assert!(v2["precision"].is_null());
}

/// A Fashion-MNIST-shaped directory (train and test) of four textures, one per class:
/// horizontal stripes, vertical stripes, checkerboard, flat grey, each with pixel noise.
fn texture_fashion(dir: &Path, n_train: u32, n_test: u32) {
    let mut s = 99u64;
    let mut noise = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 59) as u8 // 0..32
    };
    let mut make = |n: u32| {
        let mut img = Vec::new();
        for i in 0..n {
            for y in 0..28u32 {
                for x in 0..28u32 {
                    let level = |on: bool| if on { 200 } else { 30 };
                    let base = match i % 4 {
                        0 => level(y % 4 < 2),
                        1 => level(x % 4 < 2),
                        2 => level((x / 2 + y / 2) % 2 == 0),
                        _ => 120,
                    };
                    img.push(base + noise());
                }
            }
        }
        let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        (img, labels)
    };
    let (img, lab) = make(n_train);
    write_idx_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &[n_train, 28, 28],
        &img,
    );
    write_idx_gz(&dir.join("train-labels-idx1-ubyte.gz"), &[n_train], &lab);
    let (img, lab) = make(n_test);
    write_idx_gz(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &[n_test, 28, 28],
        &img,
    );
    write_idx_gz(&dir.join("t10k-labels-idx1-ubyte.gz"), &[n_test], &lab);
}

#[test]
fn train_classifier_then_eval_fid_in_its_feature_space() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fashion");
    std::fs::create_dir(&data).unwrap();
    texture_fashion(&data, 256, 64);
    let cfg = tmp.path().join("clf.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndir = \"{}\"\n[classifier]\nwidths = [8, 16]\nfeature_dim = 16\n\
             steps = 300\nbatch_size = 16\nlr = 3e-3\nreal_sample = 64\n",
            data.display()
        ),
    )
    .unwrap();
    let run = tmp.path().join("clf");
    let (run_s, cfg_s) = (run.to_str().unwrap(), cfg.to_str().unwrap());
    let o = cbs(&["train-classifier", "--config", cfg_s, "--out", run_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "test accuracy {acc} on four textures");
    // Training again into the same directory refuses to overwrite it.
    let o = cbs(&["train-classifier", "--config", cfg_s, "--out", run_s]);
    assert!(
        !o.status.success() && stderr(&o).contains("already holds"),
        "{}",
        stderr(&o)
    );

    let reference = run.join("reference.npz");
    let features = format!("classifier:{run_s}");
    let eval = |samples: &Path| {
        let o = cbs_without_weights(&[
            "eval-fid",
            samples.to_str().unwrap(),
            reference.to_str().unwrap(),
            "--features",
            &features,
            "--kid-subset-size",
            "16",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // The reference against itself: FID 0, and the report says which space it is.
    let same = eval(&reference);
    assert!(same["fid"].as_f64().unwrap().abs() < 1e-3, "{same}");
    assert!(
        same["features"]
            .as_str()
            .unwrap()
            .contains("NOT comparable"),
        "{same}"
    );
    assert_eq!(same["feature_dim"], 16);
    assert!(same["sfid"].is_null(), "no spatial features: {same}");
    assert!(
        same["inception_score"]["mean"].as_f64().unwrap() > 3.0,
        "{same}"
    );
    // Only one class of the reference: far from it, with low recall.
    let npz = candle_core::npy::NpzTensors::new(&reference).unwrap();
    let all = npz.get("arr_0").unwrap().unwrap();
    let idx: Vec<u32> = (0..64).filter(|i| i % 4 == 0).collect();
    let one = all
        .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    let one_path = tmp.path().join("one.npz");
    Tensor::write_npz(&[("arr_0", &one)], &one_path).unwrap();
    let far = eval(&one_path);
    let fid = far["fid"].as_f64().unwrap();
    assert!(
        fid > 1.0 && fid > 1e3 * same["fid"].as_f64().unwrap().abs(),
        "{far}"
    );
    assert!(far["recall"].as_f64().unwrap() < 0.5, "{far}");
    // Real training images of the same kind: close to the reference, far closer than one class.
    let real = eval(&run.join("train-sample.npz"));
    assert_eq!(real["num_samples"], 64);
    assert!(real["fid"].as_f64().unwrap() < 0.2 * fid, "{real} vs {far}");

    // Errors: not a classifier run; a malformed --features value.
    let o = cbs_without_weights(&[
        "eval-fid",
        reference.to_str().unwrap(),
        reference.to_str().unwrap(),
        "--features",
        &format!("classifier:{}", data.display()),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a `cbs train-classifier` run directory"),
        "{}",
        stderr(&o)
    );
    let o = cbs(&["eval-fid", run_s, run_s, "--features", "vgg"]);
    assert!(stderr(&o).contains("classifier:RUN_DIR"), "{}", stderr(&o));
}

#[test]
fn bench_prints_the_scriptable_line() {
    for what in ["train", "sample"] {
        let o = cbs(&[
            "bench",
            what,
            "--model",
            "sit-nano-4",
            "--image-size",
            "8",
            "--in-channels",
            "1",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--cfg-scale",
            "1.5",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let ms: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("median_step_ms="))
            .expect("median_step_ms line")
            .parse()
            .unwrap();
        assert!(ms > 0.0, "{out}");
        // The header names the model's size as `cbs inspect` counts it (bench's 10 classes).
        let inspect = cbs(&[
            "inspect",
            "--model",
            "sit-nano-4",
            "--image-size",
            "8",
            "--in-channels",
            "1",
            "--num-classes",
            "10",
            "--json",
        ]);
        let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let params = json["parameters"].as_u64().expect("parameters");
        assert!(
            out.contains(&format!(" params={params} ")),
            "{params}: {out}"
        );
    }
    // Half precision runs (bf16 products on the CPU too) and reports the model's FLOP rate.
    let o = cbs(&[
        "bench",
        "train",
        "--model",
        "sit-nano-4",
        "--image-size",
        "8",
        "--in-channels",
        "1",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--precision",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(" precision=bf16 "), "{out}");
    assert!(out.contains("model_tflops_per_s="), "{out}");
    let o = cbs(&[
        "bench",
        "train",
        "--model",
        "sit-nano-4",
        "--precision",
        "fp8",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("fp8"), "{}", stderr(&o));
    // The train step prints its phase split.
    let o = cbs(&[
        "bench",
        "train",
        "--model",
        "sit-nano-4",
        "--image-size",
        "8",
        "--in-channels",
        "1",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("phase ms (mean): forward"));
    // One product: GFLOP/s from the median time (2·M·K·N / ms / 1e6).
    for t in [&[][..], &["--lhs-transposed"][..]] {
        let mut args = vec!["bench", "matmul", "--shape", "64,32,48", "--steps", "3"];
        args.extend_from_slice(t);
        let o = cbs(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let field = |k: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {out}"))
                .parse()
                .unwrap()
        };
        let (gf, ms) = (field("gflops="), field("median_ms="));
        let want = 2.0 * 64.0 * 32.0 * 48.0 / ms / 1e6;
        assert!((gf - want).abs() <= 0.051 + 1e-3 * want, "{out}");
    }
    let o = cbs(&["bench", "matmul", "--shape", "64,32"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("M,K,N"), "{}", stderr(&o));
}

#[test]
fn device_check_on_the_cpu_passes_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("check.json");
    let o = cbs(&[
        "device-check",
        "--device",
        "cpu",
        "--models",
        "sit-nano-4,mlp-64",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let checks = r["checks"].as_array().unwrap();
    // 13 ops, 4 more attention shapes (the CUDA kernel's head widths) and 2 training steps, in
    // f32 and bf16.
    assert_eq!(checks.len(), 2 * (13 + 4 + 2));
    assert_eq!(r["failed"], 0);
    for c in checks {
        let tol = c["tolerance"].as_f64().unwrap();
        let (f, b) = (
            c["forward"].as_f64().unwrap(),
            c["backward"].as_f64().unwrap(),
        );
        assert!(f <= tol && b <= tol, "{c}");
        // The device really was compared (an identical run would hide a skipped path).
        assert!(b > 0.0, "{c}");
    }
    // A check that cannot run is a failure, named, with a non-zero exit.
    let o = cbs(&["device-check", "--device", "cpu", "--models", "sit-nope-4"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL train_step sit-nope-4"), "{out}");
}

/// SIGINT during training: the step in flight finishes, its checkpoint is written, the process
/// says how to resume and exits with 130; `--resume` then completes the run.
#[test]
fn sigint_checkpoints_and_exits_130_then_resume_completes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args(["train-aux", "--config", cfg.to_str().unwrap()])
        .args(["--out", run.to_str().unwrap(), "--steps", "100000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has logged a step, then interrupt.
    let metrics = run.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 2 {
        assert!(t0.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted at step") && err.contains("--resume"),
        "{err}"
    );
    let ck = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let stopped: u64 = ck.trim().trim_start_matches("step-").parse().unwrap();
    assert!(stopped >= 2, "{ck}");
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no half-written checkpoint left");
    let steps = (stopped + 2).to_string();
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        &steps,
        "--resume",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Text inputs that never end or are not files: a clear error at once, never unbounded memory
/// or a hang.
#[test]
fn endless_or_non_file_text_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for args in [
        vec!["train-aux", "--config", "/dev/zero", "--out", out],
        vec!["estimate-splits", "--oracle-gmm", "/dev/zero", "--out", out],
    ] {
        let o = cbs(&args);
        assert!(!o.status.success(), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("/dev/zero: larger than"), "{args:?}: {e}");
    }
    let o = cbs(&[
        "train-aux",
        "--config",
        dir.path().to_str().unwrap(),
        "--out",
        out,
    ]);
    assert!(
        stderr(&o).contains("is a directory, not a file"),
        "{}",
        stderr(&o)
    );
}

/// `--out` naming an existing file: the error says so (not "File exists (os error 17)").
#[test]
fn out_naming_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("a-file exists and is not a directory"), "{e}");
    assert!(!e.contains("os error 17"), "{e}");
}

/// Crash consistency: a run SIGKILLed at pseudo-random moments (inside checkpoint writes too)
/// and resumed each time ends with exactly the weights, EMA and optimizer state of a run that
/// was never interrupted.
#[test]
fn killed_at_random_moments_and_resumed_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let cfg = cfg.to_str().unwrap();
    let steps = "200";
    let whole = dir.path().join("whole");
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg,
        "--out",
        whole.to_str().unwrap(),
        "--steps",
        steps,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let run = dir.path().join("killed");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut kills, mut mid_run) = (0, 0);
    let spawn = |run: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbs"));
        cmd.args(["train-aux", "--config", cfg, "--out", run.to_str().unwrap()])
            .args(["--steps", steps])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if run.join("checkpoints/latest").is_file() {
            cmd.arg("--resume");
        }
        cmd.spawn().unwrap()
    };
    // Eight runs killed at pseudo-random moments, then one left to finish.
    for i in 0..8 {
        let before = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap_or_default();
        let mut child = spawn(&run);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Every other run waits for its first new checkpoint before the random delay, so that
        // kills land between checkpoints however slow a loaded machine starts the process.
        if i % 2 == 1 {
            let start = std::time::Instant::now();
            while child.try_wait().unwrap().is_none()
                && start.elapsed() < std::time::Duration::from_secs(120)
                && std::fs::read_to_string(run.join("checkpoints/latest")).unwrap_or_default()
                    == before
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10 + (seed >> 33) % 400));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            let latest =
                std::fs::read_to_string(run.join("checkpoints/latest")).unwrap_or_default();
            if !latest.is_empty() && latest.trim() != "step-00000200" {
                mid_run += 1;
            }
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || out.status.code().is_none(),
            "a run failed on its own (not killed): {err}"
        );
    }
    assert!(
        mid_run > 0,
        "no run was killed between checkpoints ({kills} kills): the test proved nothing"
    );
    let out = spawn(&run).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = |r: &Path| {
        let name = std::fs::read_to_string(r.join("checkpoints/latest")).unwrap();
        r.join("checkpoints").join(name.trim())
    };
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = std::fs::read(last(&whole).join(f)).unwrap();
        let b = std::fs::read(last(&run).join(f)).unwrap();
        assert!(a == b, "{f} differs after {kills} kills");
    }
}

#[test]
fn forward_writes_the_output_and_the_velocity_and_checks_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = trained_fake_run(dir.path(), &[]);
    let dev = candle_core::Device::Cpu;
    let x = candle_core::Tensor::randn(0f32, 1.0, (2, 1, 32, 32), &dev).unwrap();
    let t = candle_core::Tensor::new(&[0.25f32, 0.75], &dev).unwrap();
    let y = candle_core::Tensor::new(&[3i64, 10], &dev).unwrap();
    let inputs = dir.path().join("in.safetensors");
    let write = |path: &Path, items: &[(&str, &candle_core::Tensor)]| {
        let map: std::collections::HashMap<String, candle_core::Tensor> = items
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    };
    write(&inputs, &[("x", &x), ("t", &t), ("y", &y)]);
    let out = dir.path().join("out.safetensors");
    let args = |inputs: &Path| {
        vec![
            "forward".to_string(),
            "--checkpoint".into(),
            run.display().to_string(),
            "--inputs".into(),
            inputs.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run_forward = |inputs: &Path| {
        let a = args(inputs);
        cbs(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run_forward(&inputs);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &dev).unwrap();
    // sit-nano-4 learns sigma: the raw output has twice the channels, the velocity its first
    // half.
    assert_eq!(got["output"].dims(), &[2, 2, 32, 32]);
    assert_eq!(got["velocity"].dims(), &[2, 1, 32, 32]);
    let first = got["output"].narrow(1, 0, 1).unwrap();
    let diff = (first - &got["velocity"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    // Bad inputs: a clear error naming the file and the tensor.
    let bad = dir.path().join("bad.safetensors");
    for (items, want) in [
        (vec![("t", &t)], "no tensor `x`"),
        (vec![("x", &t), ("t", &t)], "`x` is"),
        (vec![("x", &x), ("t", &x)], "`t` is"),
        (vec![("x", &x), ("t", &t), ("y", &t)], "`y` is"),
    ] {
        write(&bad, &items);
        let o = run_forward(&bad);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("bad.safetensors") && e.contains(want), "{e}");
    }
    let big = candle_core::Tensor::new(&[3i64, 11], &dev).unwrap();
    write(&bad, &[("x", &x), ("t", &t), ("y", &big)]);
    let e = stderr(&run_forward(&bad));
    assert!(e.contains("label 11"), "{e}");
}

#[test]
fn sample_with_dopri5_reports_its_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = trained_fake_run(dir.path(), &[]);
    let out = dir.path().join("samples");
    let o = cbs(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--num",
        "4",
        "--solver",
        "dopri5",
        "--rtol",
        "1e-2",
        "--atol",
        "1e-4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("dopri5 (atol 0.0001, rtol 0.01)") && e.contains("velocity evaluations"),
        "{e}"
    );
    assert!(out.join("samples.npz").is_file());
    let o = cbs(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--rtol",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected a positive number"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn resuming_a_finished_run_says_so_and_trains_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = trained_fake_run(tmp.path(), &[]);
    let o = cbs(&["train-aux", "--out", run.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("already complete at step 4"), "{e}");
    assert!(!e.contains("NaN"), "{e}");
}

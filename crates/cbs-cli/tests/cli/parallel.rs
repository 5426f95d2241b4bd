//! Parallel processes: `train-experts --devices` trains every expert in its own process and
//! gives what training them one after the other gives; `cbs launch` runs a data-parallel group
//! (TCP on the CPU) that trains what one process trains.

use super::{cbs, fake_setup, stderr};

fn metric(dir: &std::path::Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn losses(dir: &std::path::Path) -> Vec<f64> {
    metric(dir, "loss")
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * x.abs(), "{what}: {x} vs {y}");
    }
}

#[test]
fn a_launched_data_parallel_group_trains_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let cfg = cfg.to_str().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let aux = |out: &str, steps: &str| {
        vec![
            "train-aux".to_string(),
            "--config".into(),
            cfg.into(),
            "--steps".into(),
            steps.into(),
            "--out".into(),
            p(out),
        ]
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cbs(&args)
    };
    let launch = |n: &str, cmd: Vec<String>| {
        let mut v: Vec<String> = vec!["launch".into(), "--gpus".into(), n.into(), "--".into()];
        v.extend(cmd);
        v
    };
    let o = run(&aux("single", "6"));
    assert!(o.status.success(), "{}", stderr(&o));
    // Two processes × half the batch, stopped after 4 steps and resumed to 6.
    let o = run(&launch("2", aux("dp", "4")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("data parallel: 2 ranks"),
        "{}",
        stderr(&o)
    );
    let mut resume = aux("dp", "6");
    resume.push("--resume".into());
    let o = run(&launch("2", resume));
    assert!(o.status.success(), "{}", stderr(&o));
    let (single, dp) = (dir.path().join("single"), dir.path().join("dp"));
    assert_close(&losses(&single), &losses(&dp), 1e-5, "loss");
    assert_close(
        &metric(&single, "grad_norm"),
        &metric(&dp, "grad_norm"),
        1e-4,
        "gradient norm",
    );
    // Only rank 0 wrote: one metrics line per step.
    assert_eq!(losses(&dp).len(), 6);

    // Experts, each trained by the group in turn.
    let o = run(&launch(
        "2",
        vec![
            "train-experts".into(),
            "--uniform".into(),
            "2".into(),
            "--config".into(),
            cfg.into(),
            "--steps".into(),
            "3".into(),
            "--out".into(),
            p("experts"),
        ],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..2 {
        assert_eq!(
            losses(&dir.path().join(format!("experts/expert-{i}"))).len(),
            3
        );
    }

    // A rank that fails stops the group, and the launcher says which.
    let o = run(&launch(
        "2",
        vec![
            "train-aux".into(),
            "--config".into(),
            p("missing.toml"),
            "--out".into(),
            p("x"),
        ],
    ));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("failed") && e.contains("rank"), "{e}");
    assert!(e.contains("missing.toml"), "{e}");

    // A global batch the group cannot split evenly is refused on every rank.
    let o = run(&launch("3", aux("odd", "2")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("divisible by the number of data-parallel ranks"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn experts_in_parallel_processes_train_as_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let cfg = cfg.to_str().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let common = [
        "train-experts",
        "--uniform",
        "3",
        "--config",
        cfg,
        "--steps",
        "4",
    ];
    let o = cbs(&[&common[..], &["--out", &p("seq")]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cbs(&[&common[..], &["--out", &p("par"), "--devices", "cpu,cpu"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("[expert 2]") && e.contains("all 3 experts trained"),
        "{e}"
    );
    for i in 0..3 {
        let (a, b) = (
            losses(&dir.path().join(format!("seq/expert-{i}"))),
            losses(&dir.path().join(format!("par/expert-{i}"))),
        );
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs(),
                "expert {i}: loss {x} vs {y}"
            );
        }
    }
    // Each expert data-parallel on two processes, two experts at a time.
    let o = cbs(&[
        &common[..],
        &[
            "--out",
            &p("dp"),
            "--devices",
            "cpu,cpu,cpu,cpu",
            "--gpus-per-expert",
            "2",
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 per expert"), "{}", stderr(&o));
    for i in 0..3 {
        assert_close(
            &losses(&dir.path().join(format!("seq/expert-{i}"))),
            &losses(&dir.path().join(format!("dp/expert-{i}"))),
            1e-5,
            &format!("expert {i}"),
        );
    }
    let o = cbs(&[
        &common[..],
        &[
            "--out",
            &p("bad"),
            "--devices",
            "cpu,cpu,cpu",
            "--gpus-per-expert",
            "2",
        ],
    ]
    .concat());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected a divisor of the 3 device(s)"),
        "{}",
        stderr(&o)
    );
    // A device this binary cannot open is refused before anything starts.
    if !cfg!(feature = "cuda") {
        let o = cbs(&[&common[..], &["--out", &p("gpu"), "--gpus", "2"]].concat());
        assert!(!o.status.success());
        assert!(stderr(&o).contains("built without CUDA"), "{}", stderr(&o));
        assert!(!dir.path().join("gpu/expert-0").exists());
    }
}

#[test]
fn a_signal_to_the_launcher_stops_every_rank_at_one_step_with_a_checkpoint() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let out = dir.path().join("dp");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args([
            "launch",
            "--gpus",
            "2",
            "--",
            "train-aux",
            "--steps",
            "100000",
            "--config",
        ])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let steps = || {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while steps() < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("stopped by a signal"), "{e}");
    // Rank 0 wrote the step every rank stopped at; the run continues from it.
    let ck = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter_map(|d| {
            let n = d.unwrap().file_name().into_string().unwrap();
            n.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
        })
        .max()
        .unwrap();
    assert!((3..100000).contains(&ck), "{ck}");
    assert_eq!(steps() as u64, ck);
    let more = (ck + 2).to_string();
    let (c, o2) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let o = cbs(&[
        "launch",
        "--gpus",
        "2",
        "--",
        "train-aux",
        "--config",
        c,
        "--out",
        o2,
        "--steps",
        &more,
        "--resume",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps() as u64, ck + 2);
}

#[test]
fn two_launchers_as_two_nodes_form_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_setup(dir.path());
    let cfg = cfg.to_str().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let o = cbs(&[
        "train-aux",
        "--config",
        cfg,
        "--steps",
        "4",
        "--out",
        &p("single"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let node = |rank: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cbs"))
            .args([
                "launch",
                "--gpus",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                rank,
            ])
            .args(["--master-addr", "127.0.0.1", "--master-port", &port, "--"])
            .args([
                "train-aux",
                "--config",
                cfg,
                "--steps",
                "4",
                "--out",
                &p("nodes"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (node("0"), node("1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(stderr(&b).contains("ranks 1..1 of 2"), "{}", stderr(&b));
    assert_close(
        &losses(&dir.path().join("single")),
        &losses(&dir.path().join("nodes")),
        1e-5,
        "loss",
    );
    // Several nodes need an agreed port.
    let o = cbs(&["launch", "--gpus", "1", "--nnodes", "2", "--", "train-aux"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--master-port is needed"),
        "{}",
        stderr(&o)
    );
}

//! Expert parallelism: `train-experts --devices` trains every expert in its own process and
//! gives what training them one after the other gives.

use super::{cbs, fake_setup, stderr};

fn losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
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
    // A device this binary cannot open is refused before anything starts.
    if !cfg!(feature = "cuda") {
        let o = cbs(&[&common[..], &["--out", &p("gpu"), "--gpus", "2"]].concat());
        assert!(!o.status.success());
        assert!(stderr(&o).contains("built without CUDA"), "{}", stderr(&o));
        assert!(!dir.path().join("gpu/expert-0").exists());
    }
}

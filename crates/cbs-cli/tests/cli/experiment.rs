//! `cbs experiment` end to end on a tiny grid: it runs, a rerun skips everything, a killed run
//! continues to the same numbers, and a changed configuration is refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{cbs, fake_fashion, stderr, write_idx_gz};

/// Test-split files beside the generated training images (the per-time error and the
/// classifier's reference read them): 20 images of horizontal bars.
fn fake_test_split(dir: &Path) {
    let n = 20u32;
    let mut img = Vec::new();
    for i in 0..n {
        for y in 0..28u32 {
            for _x in 0..28 {
                img.push(if y / 3 == i % 10 { 255 } else { 0 });
            }
        }
    }
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx_gz(&dir.join("t10k-images-idx3-ubyte.gz"), &[n, 28, 28], &img);
    write_idx_gz(&dir.join("t10k-labels-idx1-ubyte.gz"), &[n], &labels);
}

/// The data, the model and classifier configs and the experiment file; returns the latter.
fn setup(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("fashion");
    std::fs::create_dir_all(&data).unwrap();
    fake_fashion(&data);
    fake_test_split(&data);
    let d = data.display();
    std::fs::write(
        dir.join("model.toml"),
        format!(
            "[model]\npreset = \"sit-nano-4\"\n[data]\ndir = \"{d}\"\nhflip = true\n[train]\n\
             steps = 6\nbatch_size = 4\nlr = 2e-3\nema_decay = 0.5\ncheckpoint_every = 2\n\
             log_every = 1\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("classifier.toml"),
        format!(
            "[data]\ndir = \"{d}\"\n[classifier]\nwidths = [4, 8]\nfeature_dim = 8\nsteps = 4\n\
             batch_size = 8\nseed = 0\nreal_sample = 10\n"
        ),
    )
    .unwrap();
    let exp = dir.join("exp.toml");
    std::fs::write(
        &exp,
        "seeds = [0]\nexperts = 2\n\
         [train]\nconfig = \"model.toml\"\nsteps = 6\n\
         [aux.default]\nconfig = \"model.toml\"\nsteps = 4\n\
         [splits]\ntrajectories = 4\nbatch = 4\ngrid = 8\nbootstrap = 5\n\
         [sample]\nnum = 8\nsteps = 2\ncfg_scales = [1.0, 2.0]\nbatch = 4\n\
         [metrics]\nclassifier = \"classifier.toml\"\nbootstrap = 10\nper_t_images = 6\n\
         per_t_times = 3\n\
         [[arm]]\nname = \"monolithic\"\nkind = \"monolithic\"\n\
         [[arm]]\nname = \"uniform\"\nkind = \"uniform\"\n\
         [[arm]]\nname = \"cbs\"\nkind = \"cbs\"\n",
    )
    .unwrap();
    exp
}

fn run(exp: &Path, out: &Path) -> std::process::Output {
    cbs(&[
        "experiment",
        "--config",
        exp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_tiny_grid_runs_resumes_after_a_kill_and_skips_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let exp = setup(dir.path());

    // Uninterrupted.
    let a = dir.path().join("a");
    let o = run(&exp, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    let tsv = read(&a.join("results.tsv"));
    let lines: Vec<&str> = tsv.lines().collect();
    // Header + 3 arms × 1 seed × 2 scales, every row as wide as the header.
    assert_eq!(lines.len(), 7, "{tsv}");
    let width = lines[0].split('\t').count();
    assert!(
        lines.iter().all(|l| l.split('\t').count() == width),
        "{tsv}"
    );
    for arm in ["monolithic", "uniform", "cbs"] {
        assert!(
            tsv.contains(&format!("0\t{arm}\t")),
            "no row of {arm}:\n{tsv}"
        );
    }
    let summary = read(&a.join("summary.md"));
    assert!(summary.contains("| cbs − uniform |"), "{summary}");
    assert!(summary.contains("| cbs − monolithic |"), "{summary}");
    for f in [
        "fid-cfg1.png",
        "fid-cfg2.png",
        "per-t-error.png",
        "paired.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    // The uniform arm trained on [0, 0.5] and [0.5, 1]; the CBS arm on estimated knots.
    let uniform_row = lines.iter().find(|l| l.contains("\tuniform\t")).unwrap();
    assert!(uniform_row.contains("\t0.500000\t"), "{uniform_row}");

    // A rerun finds everything finished: no stage runs, the table is unchanged.
    let o = run(&exp, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("\n$ cbs "),
        "a stage ran again:\n{}",
        stderr(&o)
    );
    assert_eq!(read(&a.join("results.tsv")), tsv);

    // Killed in the middle of a split arm's training, then continued: the same numbers.
    let b = dir.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cbs"))
        .args(["experiment", "--config", exp.to_str().unwrap(), "--out"])
        .arg(&b)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = b.join("seed-0/uniform/experts/expert-0/checkpoints");
    let start = Instant::now();
    while !marker.exists() && start.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !b.join("results.tsv").exists(),
        "the run finished before it was killed"
    );
    let o = run(&exp, &b);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read(&b.join("results.tsv")),
        tsv,
        "the resumed experiment differs"
    );

    // An edited model config under a running experiment is refused, naming the file.
    let model = dir.path().join("model.toml");
    let original = read(&model);
    std::fs::write(&model, original.replace("lr = 2e-3", "lr = 3e-3")).unwrap();
    let o = run(&exp, &a);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("configs/train.toml differs"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&model, original).unwrap();

    // Another configuration in the same directory is refused, naming the file.
    std::fs::write(&exp, read(&exp).replace("num = 8", "num = 9")).unwrap();
    let o = run(&exp, &a);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("experiment.toml records another configuration"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_experiment_files_are_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let exp = setup(dir.path());
    let text = read(&exp);
    for (from, to, expect) in [
        (
            "seeds = [0]",
            "seeds = [0]\ncolour = 1",
            "unknown field `colour`",
        ),
        (
            "name = \"cbs\"\nkind = \"cbs\"",
            "name = \"cbs\"\nkind = \"cbs\"\naux = \"big\"",
            "auxiliary model `big` is not declared",
        ),
        (
            "name = \"uniform\"",
            "name = \"monolithic\"",
            "arm `monolithic` is declared twice",
        ),
        (
            "kind = \"monolithic\"",
            "kind = \"monolithic\"\nmonitor = \"dirichlet\"",
            "a monolithic arm takes no",
        ),
        ("seeds = [0]", "seeds = []", "seeds: give at least one seed"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let o = run(&bad, &dir.path().join("out-bad"));
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("bad.toml") && e.contains(expect),
            "{expect}:\n{e}"
        );
    }
}

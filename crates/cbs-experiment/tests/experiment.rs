//! The experiment file, the statistics over seeds and the tables.

use std::path::Path;

use cbs_experiment::config::{shift_knots, ArmKind, ExperimentConfig};
use cbs_experiment::results::{results_tsv, summary_markdown, ArmResult, Estimate, TSV_HEADER};
use cbs_experiment::stats::{summarize, t_975};

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/experiments")
        .join(name)
}

#[test]
fn the_shipped_experiments_parse_and_name_existing_configs() {
    for name in [
        "sit-fashion.toml",
        "jit-fashion.toml",
        "unet-fashion.toml",
        "sit-fashion-all-arms.toml",
    ] {
        let cfg = ExperimentConfig::from_file(&shipped(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.seeds.len() >= 3, "{name}");
        assert!(
            cfg.train.config.is_file(),
            "{name}: {}",
            cfg.train.config.display()
        );
        assert!(cfg.metrics.classifier.is_file(), "{name}");
        for a in cfg.aux.values() {
            assert!(a.config.is_file(), "{name}: {}", a.config.display());
        }
        let kinds: Vec<ArmKind> = cfg.arms.iter().map(|a| a.kind).collect();
        for k in [ArmKind::Monolithic, ArmKind::Uniform, ArmKind::Cbs] {
            assert!(kinds.contains(&k), "{name} lacks a {k:?} arm");
        }
        assert!(
            cfg.sample.num >= 2000,
            "{name}: fewer than 2000 samples per arm"
        );
    }
    let all = ExperimentConfig::from_file(&shipped("sit-fashion-all-arms.toml")).unwrap();
    assert_eq!(all.comparisons().len(), 9);
    let sit = ExperimentConfig::from_file(&shipped("sit-fashion.toml")).unwrap();
    // Default comparisons: each CBS arm against each non-CBS arm.
    assert_eq!(
        sit.comparisons(),
        [
            ["cbs-acceleration", "monolithic"],
            ["cbs-acceleration", "uniform"],
            ["cbs-dirichlet", "monolithic"],
            ["cbs-dirichlet", "uniform"],
        ]
        .map(|[a, b]| [a.to_string(), b.to_string()])
    );
}

fn minimal(extra_arm: &str) -> String {
    format!(
        "seeds = [0, 1]\n[train]\nconfig = \"m.toml\"\nsteps = 5\n[aux.default]\nconfig = \
         \"m.toml\"\n[sample]\nnum = 10\nsteps = 2\n[metrics]\nclassifier = \"c.toml\"\n\
         [[arm]]\nname = \"mono\"\nkind = \"monolithic\"\n{extra_arm}"
    )
}

fn parse(text: &str) -> Result<ExperimentConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.toml");
    std::fs::write(&p, text).unwrap();
    ExperimentConfig::from_file(&p).map_err(|e| e.to_string())
}

#[test]
fn bad_files_name_what_is_wrong() {
    let ok = parse(&minimal(
        "[[arm]]\nname = \"c\"\nkind = \"cbs\"\nknot_shift = 0.1\n",
    ))
    .unwrap();
    assert_eq!(ok.arms[1].knot_shift, 0.1);
    assert!(ok.train.config.is_absolute() && ok.train.config.ends_with("m.toml"));
    for (arm, expect) in [
        (
            "[[arm]]\nname = \"u\"\nkind = \"uniform\"\nexperts = 1\n",
            "at least 2 experts",
        ),
        (
            "[[arm]]\nname = \"u\"\nkind = \"uniform\"\nmonitor = \"dirichlet\"\n",
            "cbs arms only",
        ),
        (
            "[[arm]]\nname = \"c\"\nkind = \"cbs\"\nknot_shift = 0.7\n",
            "knot_shift = 0.7",
        ),
        ("[[arm]]\nname = \"a/b\"\nkind = \"uniform\"\n", "arm `a/b`"),
        (
            "[[arm]]\nname = \"c\"\nkind = \"cbs\"\nsteps = 0\n",
            "steps must be at least 1",
        ),
        (
            "[[arm]]\nname = \"c\"\nkind = \"split\"\n",
            "unknown variant `split`",
        ),
        (
            "[[arm]]\nname = \"c\"\nkind = \"cbs\"\nshift = 1\n",
            "unknown field `shift`",
        ),
    ] {
        let e = parse(&minimal(arm)).unwrap_err();
        assert!(e.contains("e.toml") && e.contains(expect), "{expect}: {e}");
    }
    let e = parse(&minimal("").replace("seeds = [0, 1]", "seeds = [0, 0]")).unwrap_err();
    assert!(e.contains("seeds: 0 appears twice"), "{e}");
    let e = parse(&format!("compare = [[\"mono\", \"x\"]]\n{}", minimal(""))).unwrap_err();
    assert!(e.contains("compare: no arm named `x`"), "{e}");
}

#[test]
fn knots_shift_inside_the_unit_interval_only() {
    assert_eq!(
        shift_knots(&[0.3, 0.6], 0.05).unwrap(),
        vec![0.35, 0.6 + 0.05]
    );
    assert!(shift_knots(&[0.3, 0.97], 0.05)
        .unwrap_err()
        .contains("outside (0, 1)"));
    assert!(shift_knots(&[0.02], -0.05).is_err());
}

#[test]
fn seed_summaries_use_the_student_t_quantile() {
    assert_eq!(t_975(2), 4.303);
    assert_eq!(t_975(1000), 1.96);
    let s = summarize(&[1.0, 2.0, 3.0]);
    assert_eq!((s.n, s.mean, s.std), (3, 2.0, 1.0));
    let half = 4.303 / 3f64.sqrt();
    assert!((s.lo - (2.0 - half)).abs() < 1e-12 && (s.hi - (2.0 + half)).abs() < 1e-12);
    let one = summarize(&[5.0]);
    assert!(one.mean == 5.0 && one.std.is_nan() && one.lo.is_nan());
}

fn row(arm: &str, kind: ArmKind, seed: u64, fid: f64) -> ArmResult {
    let e = |v: f64| Estimate {
        value: v,
        lo: v - 1.0,
        hi: v + 1.0,
    };
    ArmResult {
        arm: arm.into(),
        kind,
        seed,
        cfg_scale: 1.0,
        experts: 3,
        steps: 10,
        monitor: None,
        aux: None,
        knot_shift: 0.0,
        knots: vec![0.4, 0.8],
        fid: e(fid),
        inception_score: None,
        precision: e(0.5),
        recall: e(0.5),
        num_samples: 10,
        sample_steps: 2,
        solver: "heun".into(),
        per_t_mean: 1.0,
        segment_errors: vec![Some(1.0), Some(2.0), None],
        per_t_max_segment: 2.0,
    }
}

#[test]
fn the_table_has_one_row_per_result_and_the_summary_every_arm() {
    let cfg = parse(&minimal("[[arm]]\nname = \"c\"\nkind = \"cbs\"\n")).unwrap();
    let rows = vec![
        row("mono", ArmKind::Monolithic, 0, 10.0),
        row("mono", ArmKind::Monolithic, 1, 12.0),
        row("c", ArmKind::Cbs, 0, 8.0),
        row("c", ArmKind::Cbs, 1, 9.0),
    ];
    let tsv = results_tsv(&rows);
    let width = TSV_HEADER.split('\t').count();
    assert_eq!(tsv.lines().count(), 5);
    assert!(tsv.lines().all(|l| l.split('\t').count() == width), "{tsv}");
    assert!(tsv.contains("\t0.400000,0.800000\t"), "{tsv}");
    // A segment without a time of the grid: NaN in the table, null in JSON, read back as None.
    assert!(tsv.contains("\t1.000000,2.000000,NaN\t"), "{tsv}");
    let json = serde_json::to_string(&rows[0]).unwrap();
    assert!(json.contains("\"segment_errors\":[1.0,2.0,null]"), "{json}");
    let back: ArmResult = serde_json::from_str(&json).unwrap();
    assert_eq!(back.segment_errors, vec![Some(1.0), Some(2.0), None]);
    let md = summary_markdown(&cfg, &rows, &[]);
    // mono: FIDs 10 and 12 → mean 11, std √2.
    assert!(md.contains("| mono | 2 | 11.00 ± 1.41"), "{md}");
    assert!(md.contains("| c | 2 | 8.50 ± 0.71"), "{md}");
}

use cbs_run::experts::{
    expert_config, expert_dir, expert_interval, expert_seed, init_dir, read_splits, splits_path,
};
use cbs_run::{RunError, SplitsFile, TrainConfig};

fn base() -> TrainConfig {
    let text = "[model]\npreset = \"mlp-64\"\n[data]\nsource = \"gmm\"\ngmm = \"g.json\"\n\
                [train]\nseed = 41\nsteps = 7\n";
    TrainConfig::from_toml(text, std::path::Path::new("base.toml")).unwrap()
}

fn splits(knots: &[f64]) -> SplitsFile {
    let mut s = SplitsFile::uniform(knots.len() + 1);
    s.knots = knots.to_vec();
    s
}

#[test]
fn expert_i_gets_segment_i_and_seed_base_plus_i() {
    let s = splits(&[0.25, 0.5, 0.9]);
    let b = base();
    let want = [[0.0, 0.25], [0.25, 0.5], [0.5, 0.9], [0.9, 1.0]];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(expert_interval(&s, i), *w);
        let cfg = expert_config(&b, &s, i);
        assert_eq!(cfg.train.t_range, *w);
        assert_eq!(cfg.train.seed, 41 + i as u64);
        // Everything else is the base configuration.
        let mut same = cfg.clone();
        same.train.t_range = b.train.t_range;
        same.train.seed = b.train.seed;
        assert_eq!(same, b);
    }
    assert_eq!(expert_seed(u64::MAX, 1), 0, "seeds wrap");
}

#[test]
fn layout_is_splits_toml_and_expert_dirs() {
    let root = std::path::Path::new("/runs/experts");
    assert_eq!(splits_path(root), root.join("splits.toml"));
    assert_eq!(expert_dir(root, 3), root.join("expert-3"));
}

#[test]
fn init_dir_stores_the_splits_once_and_refuses_other_knots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("experts");
    let s = splits(&[0.3, 0.6]);
    init_dir(&root, &s).unwrap();
    assert_eq!(read_splits(&root).unwrap(), s);
    // Same knots: accepted again (another --expert of the same split).
    init_dir(&root, &s).unwrap();
    let err = init_dir(&root, &splits(&[0.4, 0.6])).unwrap_err();
    assert!(matches!(err, RunError::ExpertsMismatch { .. }), "{err}");
    assert!(err.to_string().contains("already holds experts"), "{err}");
    assert_eq!(
        read_splits(&root).unwrap(),
        s,
        "the stored splits are untouched"
    );
}

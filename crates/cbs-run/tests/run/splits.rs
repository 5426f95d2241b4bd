use cbs_run::splits::{monitor_csv, write_monitor_csv};
use cbs_run::{KnotIntervalEntry, SplitsFile};

#[test]
fn splits_file_round_trips_through_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("splits.toml");
    let mut s = SplitsFile::uniform(3);
    s.knots = vec![0.476441, 0.792813];
    s.intervals = vec![KnotIntervalEntry {
        knot: 0.476441,
        lo: 0.45,
        hi: 0.5,
        confidence: 0.9,
    }];
    s.write(&p).unwrap();
    assert_eq!(SplitsFile::from_file(&p).unwrap(), s);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left");
}

#[test]
fn invalid_splits_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("splits.toml");
    let mut s = SplitsFile::uniform(3);
    s.knots = vec![0.8, 0.2];
    s.write(&p).unwrap();
    let err = SplitsFile::from_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("splits.toml") && err.contains("increasing"),
        "{err}"
    );
}

#[test]
fn monitor_csv_has_an_empty_mass_on_the_last_row() {
    let csv = monitor_csv(&[0.0, 0.5, 1.0], &[1.0, 3.0], &[0.0, 1.0, 4.0]);
    assert_eq!(csv, "t,m,cumulative\n0,1,0\n0.5,3,1\n1,,4\n");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("monitor.csv");
    write_monitor_csv(&p, &[0.0, 1.0], &[2.0], &[0.0, 2.0]).unwrap();
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        "t,m,cumulative\n0,2,0\n1,,2\n"
    );
}

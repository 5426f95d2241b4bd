//! CI check of the fuzz harness: every target runs a short seeded campaign with zero failures,
//! and the harness provably detects a panic (in-process), an allocation over the cap and a
//! hang (through the binary, since both end the process by design).

use std::path::Path;
use std::process::Command;

use cbs_data::MemoryLimit;
use cbs_fuzz::alloc::{self, CountingAlloc};
use cbs_fuzz::gen::Input;
use cbs_fuzz::{harness, Options, Outcome, Target, TargetSpec};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Inputs per target in CI (the whole file stays well under a minute on 2 cores).
const CI_INPUTS: u64 = 300;

fn opts(out: &Path, inputs: u64) -> Options {
    Options {
        inputs,
        seed: 20_240_518,
        out: out.to_path_buf(),
        ..Options::default()
    }
}

#[test]
fn every_target_survives_a_short_campaign() {
    assert!(
        alloc::installed(),
        "the counting allocator must be the global allocator"
    );
    let out = tempfile::tempdir().unwrap();
    let mut summary = Vec::new();
    for t in Target::all() {
        let r = harness::run(&t.spec(), &opts(out.path(), CI_INPUTS), &mut |_| {});
        assert_eq!(r.inputs, CI_INPUTS);
        assert_eq!(r.ok + r.errors + r.failures.len() as u64, r.inputs);
        assert!(
            r.failures.is_empty(),
            "{}: {} failure(s), first: {:?}",
            r.target,
            r.failures.len(),
            r.failures[0]
        );
        // Valid inputs load and mutated ones are mostly refused: both paths are exercised.
        assert!(
            r.ok > 0 && r.errors > 0,
            "{}: {} ok, {} errors",
            r.target,
            r.ok,
            r.errors
        );
        summary.push(format!("{} {}/{}/{}", r.target, r.inputs, r.ok, r.errors));
    }
    eprintln!("{}", summary.join("\n"));
}

#[test]
fn inputs_are_reproducible() {
    let scratch = tempfile::tempdir().unwrap();
    for t in Target::all() {
        let spec = t.spec();
        for i in [0, 7, 123] {
            let a = harness::input_for(&spec, 9, i, 0.05, scratch.path());
            let b = harness::input_for(&spec, 9, i, 0.05, scratch.path());
            assert_eq!(a, b, "{} input {i}", spec.name);
        }
    }
}

fn panics_on_odd_lengths(p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    let n = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
    if !n.is_multiple_of(2) {
        panic!("deliberate reader bug on a {n}-byte file");
    }
    Err("clean error".into())
}

fn tiny(rng: &mut rand_chacha::ChaCha8Rng, _scratch: &Path) -> Input {
    use rand::Rng;
    let n = rng.random_range(1..64);
    Input::file("input.bin", vec![b'x'; n])
}

#[test]
fn a_panicking_reader_is_reported_and_saved() {
    let out = tempfile::tempdir().unwrap();
    let spec = TargetSpec {
        name: "test-panic",
        generate: tiny,
        read: panics_on_odd_lengths,
        text: false,
    };
    let r = harness::run(&spec, &opts(out.path(), 60), &mut |_| {});
    assert!(!r.failures.is_empty() && r.errors > 0, "{r:?}");
    let f = &r.failures[0];
    assert!(f.message.contains("deliberate reader bug"), "{}", f.message);
    let saved = f.saved.as_ref().expect("the failing input is saved");
    let note = std::fs::read_to_string(saved.join("failure.txt")).unwrap();
    assert!(note.contains("--seed 20240518") && note.contains(&format!("--start {}", f.index)));
    // The saved copy replays to the same panic.
    let input = saved.join("input").join("input.bin");
    assert!(matches!(
        harness::replay(&spec, &input, MemoryLimit::UNLIMITED),
        Outcome::Panic(_)
    ));
}

/// Runs the `cbs-fuzz` binary on a self-test target; returns (status, stderr).
fn run_selftest(target: &str, out: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_cbs-fuzz"))
        .args([
            "--target",
            target,
            "--inputs",
            "3",
            "--seed",
            "5",
            "--hang-secs",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_binary_detects_panics_allocations_over_the_cap_and_hangs() {
    let out = tempfile::tempdir().unwrap();
    for (target, status, needle) in [
        ("selftest-panic", 1, "selftest: a reader bug"),
        ("selftest-alloc", alloc::EXIT_ALLOC, "above the cap"),
        ("selftest-hang", harness::EXIT_HANG, "no progress"),
    ] {
        let (code, stderr) = run_selftest(target, out.path());
        assert_eq!(code, Some(status), "{target}: {stderr}");
        assert!(stderr.contains(needle), "{target}: {stderr}");
        assert!(
            stderr.contains("--seed 5 --start 0 --inputs 1"),
            "{target}: {stderr}"
        );
        let note = out
            .path()
            .join(target)
            .join("seed5-input0")
            .join("failure.txt");
        assert!(note.is_file(), "{target}: no {}", note.display());
    }
    // A real target with no failure exits 0.
    let o = Command::new(env!("CARGO_BIN_EXE_cbs-fuzz"))
        .args(["--target", "splits", "--inputs", "20"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("splits"));
}

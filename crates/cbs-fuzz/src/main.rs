//! `cbs-fuzz --target <name|all> --inputs N --seed S [--out DIR]`: fuzz the readers, print
//! per-target counts, exit non-zero on any failure (see `docs/fuzzing.md`).
//!
//! Exit status: 0 no failure; 1 a reader panicked (inputs saved under `--out`); 2 usage; 3 an
//! allocation over the cap and 4 a hang (both stop the run at once, after saving the input).

use std::path::PathBuf;
use std::process::ExitCode;

use cbs_data::MemoryLimit;
use cbs_fuzz::alloc::{self, CountingAlloc};
use cbs_fuzz::{harness, Options, Outcome, Target};
use clap::Parser;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(
    name = "cbs-fuzz",
    about = "Fuzz the file readers of cbs (in-process, stable Rust)"
)]
struct Args {
    /// A target, or `all` (repeatable).
    #[arg(long, required = true, value_name = "NAME|all", value_parser = parse_target)]
    target: Vec<Choice>,
    /// Inputs per target.
    #[arg(long, default_value_t = 1000)]
    inputs: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Index of the first input (`--start I --inputs 1` reproduces input I).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Where failing inputs are saved.
    #[arg(long, default_value = "target/fuzz")]
    out: PathBuf,
    /// The memory limit given to the readers, MiB.
    #[arg(long, default_value_t = 256)]
    reader_limit_mib: u64,
    /// The most one allocation may take while a reader runs, MiB.
    #[arg(long, default_value_t = 1024)]
    alloc_cap_mib: u64,
    /// The most the process may hold while a reader runs, MiB.
    #[arg(long, default_value_t = 2048)]
    live_cap_mib: u64,
    /// Seconds without progress that count as a hang.
    #[arg(long, default_value_t = 20)]
    hang_secs: u64,
    /// Run the reader once on a saved input (a file, or a folder for folder targets).
    #[arg(long, value_name = "PATH")]
    replay: Option<PathBuf>,
    /// Print each input index before reading it.
    #[arg(long)]
    verbose: bool,
}

#[derive(Clone)]
enum Choice {
    All,
    One(Target),
}

fn parse_target(s: &str) -> Result<Choice, String> {
    use clap::ValueEnum;
    if s == "all" {
        return Ok(Choice::All);
    }
    Target::from_str(s, false).map(Choice::One).map_err(|_| {
        let names: Vec<&str> = Target::all().iter().map(|t| t.name()).collect();
        format!(
            "unknown target {s:?}; expected all or one of {}",
            names.join(", ")
        )
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    if !alloc::installed() {
        eprintln!("cbs-fuzz: the counting allocator is not installed");
        return ExitCode::from(2);
    }
    alloc::set_caps(a.alloc_cap_mib << 20, a.live_cap_mib << 20);
    let mut targets = Vec::new();
    for c in &a.target {
        match c {
            Choice::All => targets.extend(Target::all()),
            Choice::One(t) => targets.push(*t),
        }
    }
    targets.dedup();
    let opts = Options {
        inputs: a.inputs,
        seed: a.seed,
        start: a.start,
        out: a.out.clone(),
        reader_limit: MemoryLimit::bytes(a.reader_limit_mib << 20),
        hang_secs: a.hang_secs,
        verbose: a.verbose,
        ..Options::default()
    };
    if let Some(path) = &a.replay {
        let [t] = targets[..] else {
            eprintln!("cbs-fuzz: --replay takes exactly one --target");
            return ExitCode::from(2);
        };
        let outcome = harness::replay(&t.spec(), path, opts.reader_limit);
        println!("{}: {outcome:?}", t.name());
        return if matches!(outcome, Outcome::Panic(_)) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "target", "inputs", "ok", "errors", "guarded", "failures", "seconds", "peak MiB"
    );
    let mut failed = false;
    for t in targets {
        let report = harness::run(&t.spec(), &opts, &mut |r| {
            if r.inputs.is_multiple_of(100_000) {
                eprintln!("  {}: {} inputs, {:.0} s", r.target, r.inputs, r.seconds);
            }
        });
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9.1} {:>9.1}",
            report.target,
            report.inputs,
            report.ok,
            report.errors,
            report.guarded_panics,
            report.failures.len(),
            report.seconds,
            report.peak_bytes as f64 / (1 << 20) as f64
        );
        for f in &report.failures {
            failed = true;
            eprintln!(
                "  FAILURE input {}: {}\n    saved: {}\n    reproduce: cbs-fuzz --target {} --seed {} \
                 --start {} --inputs 1",
                f.index,
                f.message.lines().next().unwrap_or(""),
                f.saved.as_ref().map_or("(not saved)".into(), |p| p.display().to_string()),
                report.target,
                opts.seed,
                f.index
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

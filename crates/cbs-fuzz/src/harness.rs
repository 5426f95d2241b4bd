//! The fuzz loop: generate, mutate, write, read, classify, save what fails.
//!
//! Input `i` of a target depends only on `(seed, target, i)` (ChaCha8 on stream `i`), so any
//! input reproduces from the command line alone (`--seed S --start I --inputs 1`), and a saved
//! copy replays with `--replay`. Each outcome is one of:
//!
//! - ok: the reader loaded the file;
//! - clean error: the reader returned an error (what malformed input must give);
//! - failure: a panic that escaped the reader (`catch_unwind`; the panic hook records the
//!   message instead of printing it). Panics the reader catches itself (the image decoder's
//!   guard) are counted as "guarded", not failures.
//!
//! Two failures cannot be caught in-process on stable Rust, so they end the run after saving
//! the input: an allocation over the cap ([`crate::alloc`], exit status 3) and a hang (a
//! watchdog thread: no progress for `hang_secs`, exit status 4). An abort or a stack overflow
//! kills the process, which fails the run too (the input is then reproduced from the seed and
//! the last index printed with `--verbose`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cbs_data::MemoryLimit;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::alloc;
use crate::gen::Input;
use crate::mutate::mutate;
use crate::target::TargetSpec;

/// Exit status of a run stopped by the watchdog.
pub const EXIT_HANG: i32 = 4;

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct Options {
    /// Inputs per target.
    pub inputs: u64,
    pub seed: u64,
    /// Index of the first input (to reproduce input `i`: `start = i, inputs = 1`).
    pub start: u64,
    /// Where failing inputs are saved (`<out>/<target>/seed<S>-input<I>/`).
    pub out: PathBuf,
    /// The memory limit handed to the readers.
    pub reader_limit: MemoryLimit,
    /// Seconds without progress before the watchdog declares a hang.
    pub hang_secs: u64,
    /// Share of inputs left valid (no mutation): valid files must load.
    pub valid_share: f64,
    /// Print every input index before running it (find the input that aborted the process).
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            inputs: 1000,
            seed: 0,
            start: 0,
            out: PathBuf::from("target/fuzz"),
            reader_limit: MemoryLimit::bytes(256 << 20),
            hang_secs: 20,
            valid_share: 0.05,
            verbose: false,
        }
    }
}

/// One failing input.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: u64,
    pub message: String,
    /// The saved copy (`None` if saving failed).
    pub saved: Option<PathBuf>,
}

/// What one target's run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub target: String,
    pub inputs: u64,
    pub ok: u64,
    pub errors: u64,
    pub guarded_panics: u64,
    pub failures: Vec<Failure>,
    pub seconds: f64,
    /// Largest live heap seen during the run, in bytes.
    pub peak_bytes: u64,
}

/// The input being read, kept where the allocator's and the watchdog's fatal path can save it.
struct Staged {
    target: &'static str,
    seed: u64,
    index: u64,
    out: PathBuf,
    input: Input,
}

static CURRENT: Mutex<Option<Staged>> = Mutex::new(None);
/// Serialises runs (the hooks and the staged input are process-wide).
static RUN_LOCK: Mutex<()> = Mutex::new(());
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CAPTURE: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static HANG_SECS: AtomicU64 = AtomicU64::new(20);

/// Installs the panic hook, the allocator's fatal hook and the watchdog (once per process).
fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURE.load(Ordering::SeqCst) {
                let mut p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
                if p.len() < 16 {
                    let msg = info.payload_as_str().unwrap_or("(no message)");
                    let at = info
                        .location()
                        .map_or(String::new(), |l| format!(" (at {l})"));
                    p.push(format!("{msg}{at}"));
                }
            } else {
                previous(info);
            }
        }));
        alloc::set_fatal_hook(|what| fatal(&what));
        std::thread::spawn(watchdog);
    });
}

fn watchdog() {
    let mut last = (PROGRESS.load(Ordering::SeqCst), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = PROGRESS.load(Ordering::SeqCst);
        if now != last.0 || !RUNNING.load(Ordering::SeqCst) {
            last = (now, Instant::now());
            continue;
        }
        let secs = HANG_SECS.load(Ordering::SeqCst);
        if last.1.elapsed() >= Duration::from_secs(secs) {
            fatal(&format!("hang: the reader made no progress for {secs} s"));
            std::process::exit(EXIT_HANG);
        }
    }
}

/// Saves the staged input and says how to reproduce it (the caller then exits).
fn fatal(what: &str) {
    let staged = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    match staged.as_ref() {
        Some(s) => {
            let saved = save(&s.out, s.target, s.seed, s.index, &s.input, what);
            eprintln!(
                "cbs-fuzz: FAILURE in target {} (seed {}, input {}): {what}\n  saved: {}\n  {}",
                s.target,
                s.seed,
                s.index,
                saved.map_or("(could not save)".into(), |p| p.display().to_string()),
                reproduce(s.target, s.seed, s.index)
            );
        }
        None => eprintln!("cbs-fuzz: FAILURE outside a target run: {what}"),
    }
}

fn reproduce(target: &str, seed: u64, index: u64) -> String {
    format!("reproduce: cbs-fuzz --target {target} --seed {seed} --start {index} --inputs 1")
}

/// Writes `<out>/<target>/seed<S>-input<I>/{input/…, failure.txt}`.
fn save(
    out: &Path,
    target: &str,
    seed: u64,
    index: u64,
    input: &Input,
    what: &str,
) -> Option<PathBuf> {
    let dir = out.join(target).join(format!("seed{seed}-input{index}"));
    let path = input.write_to(&dir.join("input")).ok()?;
    let note = format!(
        "target: {target}\nseed: {seed}\ninput: {index}\nfailure: {what}\n{}\nreplay: cbs-fuzz \
         --target {target} --replay {}\n",
        reproduce(target, seed, index),
        path.display()
    );
    std::fs::write(dir.join("failure.txt"), note).ok()?;
    Some(dir)
}

/// Input `index` of `spec` for `seed`: a valid file, mutated unless it falls in the valid
/// share. Deterministic in its arguments.
pub fn input_for(
    spec: &TargetSpec,
    seed: u64,
    index: u64,
    valid_share: f64,
    scratch: &Path,
) -> Input {
    let key = spec.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ key);
    rng.set_stream(index);
    let mut input = (spec.generate)(&mut rng, scratch);
    if rng.random_bool(valid_share) || input.files.is_empty() {
        return input;
    }
    let donor = (spec.generate)(&mut rng, scratch);
    let file = rng.random_range(0..input.files.len());
    let from: &[u8] = match donor.files.len() {
        0 => &[],
        n => &donor.files[rng.random_range(0..n)].1,
    };
    mutate(&mut rng, &mut input.files[file].1, from, spec.text);
    input
}

/// What one reader call gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error(String),
    /// A panic caught inside the reader (recorded by the hook, not a failure).
    Guarded(String),
    /// A panic that escaped the reader.
    Panic(String),
}

/// Runs `spec`'s reader on `path` with the allocator armed and panics captured.
pub fn read_once(spec: &TargetSpec, path: &Path, limit: MemoryLimit) -> Outcome {
    install();
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    CAPTURE.store(true, Ordering::SeqCst);
    PROGRESS.fetch_add(1, Ordering::SeqCst);
    RUNNING.store(true, Ordering::SeqCst);
    alloc::arm(true);
    let r = catch_unwind(AssertUnwindSafe(|| (spec.read)(path, limit)));
    alloc::arm(false);
    RUNNING.store(false, Ordering::SeqCst);
    CAPTURE.store(false, Ordering::SeqCst);
    let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
    let first = || {
        panics
            .first()
            .cloned()
            .unwrap_or_else(|| "panic (no message)".into())
    };
    match r {
        Err(_) => Outcome::Panic(first()),
        Ok(_) if !panics.is_empty() => Outcome::Guarded(first()),
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Error(e),
    }
}

/// Fuzzes one target (module docs); `progress` is called every 1000 inputs.
pub fn run(spec: &TargetSpec, opts: &Options, progress: &mut dyn FnMut(&Report)) -> Report {
    let _serial = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install();
    HANG_SECS.store(opts.hang_secs.max(1), Ordering::SeqCst);
    alloc::reset_peak();
    let work = tempfile::tempdir().expect("a temporary folder for the inputs");
    let scratch = work.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("the scratch folder");
    let started = Instant::now();
    let mut report = Report {
        target: spec.name.to_string(),
        ..Report::default()
    };
    for index in opts.start..opts.start.saturating_add(opts.inputs) {
        if opts.verbose {
            eprintln!("{} input {index}", spec.name);
        }
        let input = input_for(spec, opts.seed, index, opts.valid_share, &scratch);
        let path = input
            .write_to(&work.path().join("input"))
            .expect("writing the input to the temporary folder");
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Staged {
            target: spec.name,
            seed: opts.seed,
            index,
            out: opts.out.clone(),
            input,
        });
        let outcome = read_once(spec, &path, opts.reader_limit);
        let staged = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
        report.inputs += 1;
        match outcome {
            Outcome::Ok => report.ok += 1,
            Outcome::Error(_) => report.errors += 1,
            Outcome::Guarded(_) => {
                report.errors += 1;
                report.guarded_panics += 1;
            }
            Outcome::Panic(message) => {
                let saved = staged
                    .and_then(|s| save(&opts.out, spec.name, opts.seed, index, &s.input, &message));
                report.failures.push(Failure {
                    index,
                    message,
                    saved,
                });
            }
        }
        if report.inputs.is_multiple_of(1000) {
            report.seconds = started.elapsed().as_secs_f64();
            progress(&report);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.peak_bytes = alloc::peak();
    report
}

/// Runs `spec`'s reader once on a saved input (a file or a folder).
pub fn replay(spec: &TargetSpec, path: &Path, limit: MemoryLimit) -> Outcome {
    let _serial = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    read_once(spec, path, limit)
}

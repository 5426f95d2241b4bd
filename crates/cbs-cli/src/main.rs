//! `cbs`: train flow-matching image models as time-specialised experts whose boundaries come
//! from Complexity-Balanced Splitting. This binary only parses arguments and draws progress;
//! the work lives in the library crates.

mod bench;
mod cli;
mod commands;
mod device;
mod device_check;
mod estimate;
mod eval_fid;
mod eval_gmm;
mod experiment;
mod experts;
mod forward;
mod launch;
mod plot;
mod progress;
mod report;
mod signals;
mod vae;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tune_allocator();
    restore_sigpipe();
    let args = cli::Cli::parse();
    init_tracing(args.verbose);
    let verbose = args.verbose > 0;
    match run(args.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once; candle's backtraces only with -v.
            eprintln!("error: {}", report::render(&e, verbose));
            // Interrupted training exits as an interrupted process does.
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<cbs_train::TrainError>(),
                    Some(cbs_train::TrainError::Interrupted { .. })
                )
            });
            if interrupted {
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Dispatch: each subcommand's module parses nothing further and calls the libraries.
fn run(command: cli::Command) -> anyhow::Result<()> {
    use cli::Command;
    match command {
        Command::TrainAux(a) => commands::train_aux(a),
        Command::Sample(a) => commands::sample(a),
        Command::Forward(a) => forward::forward(a),
        Command::EncodeLatents(a) => vae::encode_latents(a),
        Command::Decode(a) => vae::decode(a),
        Command::Launch(a) => launch::launch(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::DeviceCheck(a) => device_check::device_check(a),
        Command::EvalGmm(a) => eval_gmm::eval_gmm(a),
        Command::LossFloor(a) => eval_gmm::loss_floor(a),
        Command::Plot(a) => eval_gmm::plot(a),
        Command::Experiment(a) => experiment::experiment(a),
        Command::EstimateSplits(a) => estimate::estimate_splits(a),
        Command::TrainExperts(a) => experts::train_experts(a),
        Command::EvalFid(a) => eval_fid::eval_fid(a),
        Command::TrainClassifier(a) => eval_fid::train_classifier(a),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CBS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Keep freed memory in the process instead of returning it to the kernel.
///
/// candle allocates a fresh buffer for every intermediate tensor; with glibc's defaults each
/// large one is an `mmap` that is page-faulted in and unmapped again. Raising the mmap and trim
/// thresholds removes that kernel time (about a third of a CPU training step, measured with
/// `cbs train-aux` on sit-mini-4).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        // 32 MiB is the largest threshold glibc accepts (a larger value is refused and the
        // default 128 KiB stays, with its dynamic adjustment switched off by the calls below).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// `cbs inspect --json | head` should end quietly, as other Unix tools do, instead of panicking
/// on a closed pipe (Rust ignores SIGPIPE by default).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

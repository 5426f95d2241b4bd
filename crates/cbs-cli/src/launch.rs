//! Data parallelism from the command line: the `--rank`/`RANK`… options every training command
//! takes ([`DistArgs`]), and `cbs launch`, which starts one process per GPU of this node with
//! those variables set, as `torchrun --no-python` does.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use cbs_train::dist::{Backend, ProcessGroup};
use cbs_train::Dist;
use clap::Args;

/// This process's place in a data-parallel group. Launchers set the environment variables;
/// without them a command trains alone.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Data parallelism (set by torchrun, cbs launch or SLURM scripts)")]
pub struct DistArgs {
    /// This process's rank, 0 ≤ RANK < WORLD_SIZE; rank 0 writes the run.
    #[arg(long, env = "RANK", default_value_t = 0)]
    pub rank: usize,
    /// The number of processes training the model together; the global batch
    /// (train.batch_size) is split evenly among them.
    #[arg(long, env = "WORLD_SIZE", default_value_t = 1)]
    pub world_size: usize,
    /// The rank on this node: `--device cuda` means cuda:LOCAL_RANK.
    #[arg(long, env = "LOCAL_RANK")]
    pub local_rank: Option<usize>,
    /// Rank 0's host (name or address), where the others connect.
    #[arg(long, env = "MASTER_ADDR", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// The port rank 0 listens on.
    #[arg(long, env = "MASTER_PORT", default_value_t = 29500)]
    pub master_port: u16,
    /// `auto`: NCCL on CUDA devices, TCP on the CPU.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub dist_backend: Backend,
    /// Seconds a rank waits for the others (at start and in every collective) before it fails
    /// naming the missing rank.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub dist_timeout: u64,
}

impl DistArgs {
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Whether this process reports progress (rank 0 only).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn group(&self) -> ProcessGroup {
        ProcessGroup {
            rank: self.rank,
            world_size: self.world_size,
            local_rank: self.local_rank.unwrap_or(0),
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            timeout: Duration::from_secs(self.dist_timeout),
        }
    }

    /// Joins the group (a world of one needs nothing).
    pub fn connect(&self, device: &Device) -> Result<Dist> {
        if self.is_distributed() && self.is_main() {
            eprintln!(
                "data parallel: {} ranks, rank 0 at {}:{}",
                self.world_size, self.master_addr, self.master_port
            );
        }
        let c = cbs_train::dist::connect(&self.group(), self.dist_backend, device)
            .with_context(|| format!("joining the data-parallel group as rank {}", self.rank))?;
        Ok(Dist(c))
    }
}

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Processes on this node: one per GPU (each gets LOCAL_RANK = its GPU; with
    /// `--device cuda` the command uses cuda:LOCAL_RANK). On the CPU, processes sharing the
    /// cores.
    #[arg(long, alias = "nproc-per-node", value_name = "N")]
    pub gpus: usize,
    /// Nodes in the group (start `cbs launch` once per node with its --node-rank).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index, 0 ≤ NODE_RANK < NNODES; node 0 hosts rank 0.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Node 0's host name or address (needed with several nodes).
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rank 0's port (default: a free port on one node; needed with several nodes).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// The cbs command each process runs, after `--`, e.g.
    /// `cbs launch --gpus 4 -- train-aux --config c.toml --out runs/aux --device cuda`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Starts `cmd` with its standard error read line by line and echoed as `[prefix] line`.
pub fn spawn_prefixed(
    cmd: &mut Command,
    prefix: String,
) -> Result<(Child, std::thread::JoinHandle<()>)> {
    cmd.stdout(Stdio::inherit()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {prefix}"))?;
    let err = child.stderr.take().expect("piped");
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            eprintln!("[{prefix}] {line}");
        }
    });
    Ok((child, echo))
}

/// A port nobody listens on now (the ranks start within moments).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub fn launch(a: LaunchArgs) -> Result<()> {
    if a.gpus == 0 {
        bail!("--gpus 0: give at least one process");
    }
    if a.nnodes == 0 || a.node_rank >= a.nnodes {
        bail!(
            "--node-rank {} with --nnodes {}: expected 0 ≤ node rank < nodes",
            a.node_rank,
            a.nnodes
        );
    }
    let port = match (a.master_port, a.nnodes) {
        (Some(p), _) => p,
        (None, 1) => free_port()?,
        (None, _) => bail!("--master-port is needed with several nodes (the same on every node)"),
    };
    let mut command: Vec<String> = a.command.clone();
    if command
        .first()
        .is_some_and(|c| c == "cbs" || c.ends_with("/cbs"))
    {
        command.remove(0);
    }
    if command.first().is_some_and(|c| c == "launch") {
        bail!("cbs launch -- launch …: give the training command after `--`");
    }
    let world = a.gpus * a.nnodes;
    let exe: PathBuf = std::env::current_exe().context("locating the cbs binary")?;
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get());
    eprintln!(
        "launching {} process(es) on this node (ranks {}..{} of {world}), rank 0 at {}:{port}: \
         cbs {}",
        a.gpus,
        a.node_rank * a.gpus,
        (a.node_rank + 1) * a.gpus - 1,
        a.master_addr,
        command.join(" ")
    );
    let signals = forward::install();
    let mut running = Vec::new();
    for local in 0..a.gpus {
        let rank = a.node_rank * a.gpus + local;
        let mut cmd = Command::new(&exe);
        // Their own process group: a terminal's Ctrl-C reaches the launcher only, which passes
        // each signal on once (two would make a rank quit without its checkpoint).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(&command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", a.gpus.to_string())
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", (threads / a.gpus).max(1).to_string());
        }
        if rank == 0 {
            // Rank 0 keeps the terminal: its progress bar and messages, unprefixed.
            let child = cmd.spawn().context("starting rank 0")?;
            running.push((rank, child, None));
        } else {
            let (child, echo) = spawn_prefixed(&mut cmd, format!("rank {rank}"))?;
            running.push((rank, child, Some(echo)));
        }
    }
    // Wait for all; the first failure stops the others (they could only wait for it).
    let mut failure: Option<String> = None;
    let mut forwarded = 0;
    while !running.is_empty() {
        std::thread::sleep(Duration::from_millis(50));
        let received = signals.load(std::sync::atomic::Ordering::SeqCst);
        if received > forwarded {
            forwarded = received;
            for (_, c, _) in &running {
                forward::terminate(c);
            }
        }
        let mut k = 0;
        while k < running.len() {
            if let Some(status) = running[k].1.try_wait()? {
                let (rank, _, echo) = running.remove(k);
                if let Some(e) = echo {
                    let _ = e.join();
                }
                if !status.success() && failure.is_none() && forwarded == 0 {
                    failure = Some(format!("rank {rank} failed ({status})"));
                    for (_, c, _) in running.iter_mut() {
                        let _ = c.kill();
                    }
                }
            } else {
                k += 1;
            }
        }
    }
    if forwarded > 0 {
        bail!(
            "stopped by a signal: every rank stopped after the same step and rank 0 wrote its \
             checkpoint; rerun with --resume to continue"
        );
    }
    if let Some(f) = failure {
        bail!(
            "{f}; the other ranks were stopped. The run keeps its last checkpoint: rerun with \
             --resume to continue"
        );
    }
    Ok(())
}

/// Signals to the launcher, passed on to the ranks.
mod forward {
    use std::process::Child;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RECEIVED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_signal(_: libc::c_int) {
        RECEIVED.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts SIGINT and SIGTERM instead of dying: the launcher's loop passes each on.
    pub fn install() -> &'static AtomicUsize {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: a handler that only touches an atomic.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        &RECEIVED
    }

    /// SIGTERM to a rank: the first stops it after the step all ranks agree on, with a
    /// checkpoint; a second ends it at once.
    pub fn terminate(child: &Child) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

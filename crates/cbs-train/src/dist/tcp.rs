//! [`TcpGroup`]: one process per rank, joined over TCP in a star around rank 0. Each collective
//! sends every rank's values to rank 0, which combines them in rank order (the same bits as
//! [`super::ThreadGroup`]) and sends the result back. Data parallelism for CPUs, where there is
//! no NCCL, and the rendezvous that hands NCCL its communicator id on GPUs.
//!
//! Rank 0 listens on `MASTER_PORT` (all interfaces); the others connect to
//! `MASTER_ADDR:MASTER_PORT`, retrying until the timeout, and introduce themselves (magic, rank,
//! world size). A frame is a little-endian `u64` length and that many bytes; a receiver knows the
//! length to expect (its own contribution's), so a peer announcing another length is an error
//! naming it, never an allocation of what it announced.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{from_host, sum_in_rank_order, to_host, Collective, Contributions, ProcessGroup};
use crate::{Result, TrainError};

const MAGIC: &[u8; 8] = b"cbs-dp01";

/// One rank of a multi-process group over TCP (see the module documentation).
pub struct TcpGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Mutex<Links>,
}

enum Links {
    /// Rank 0: rank r's connection at index r − 1.
    Hub(Vec<TcpStream>),
    /// Any other rank: its connection to rank 0.
    Leaf(TcpStream),
}

fn group_err(value: String, expected: impl Into<String>) -> TrainError {
    TrainError::Invalid {
        field: "data-parallel group",
        value,
        expected: expected.into(),
    }
}

impl TcpGroup {
    /// Joins the group: rank 0 waits for every other rank, the others connect to it; at most
    /// `pg.timeout` in all.
    pub fn connect(pg: &ProcessGroup) -> Result<Self> {
        pg.validate()?;
        let deadline = Instant::now() + pg.timeout;
        let links = if pg.rank == 0 {
            Links::Hub(accept_all(pg, deadline)?)
        } else {
            Links::Leaf(join(pg, deadline)?)
        };
        let group = Self {
            rank: pg.rank,
            world: pg.world_size,
            timeout: pg.timeout,
            links: Mutex::new(links),
        };
        // Every rank leaves the rendezvous knowing all have arrived.
        group.exchange(vec![vec![0.0]], &|all| all[0].clone())?;
        Ok(group)
    }

    /// Rank 0's `bytes` on every rank (the same length on every rank).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mine = vec![bytes.iter().map(|&b| f64::from(b)).collect()];
        let got = self.exchange(mine, &|all| all[0].clone())?;
        Ok(got[0].iter().map(|&v| v as u8).collect())
    }

    fn io_error(&self, peer: usize, e: io::Error) -> TrainError {
        let what = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "rank {peer} did not reach the collective within {:?} (rank {} waited)",
                self.timeout, self.rank
            ),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => {
                format!("rank {peer} closed its connection to rank {}", self.rank)
            }
            _ => format!("rank {}'s connection to rank {peer} failed: {e}", self.rank),
        };
        group_err(
            what,
            "every rank alive and in the same collective (another rank stopped or failed: see \
             its error)",
        )
    }

    /// Sends this rank's values to rank 0 and returns `combine(all ranks' values)`.
    fn exchange(
        &self,
        mine: Vec<Vec<f64>>,
        combine: &dyn Fn(&Contributions) -> Vec<Vec<f64>>,
    ) -> Result<Vec<Vec<f64>>> {
        let sizes: Vec<usize> = mine.iter().map(Vec::len).collect();
        let len = sizes.iter().sum::<usize>() * 8;
        let mut links = self.links.lock().expect("collective state poisoned");
        match &mut *links {
            Links::Hub(streams) => {
                let mut all = Vec::with_capacity(self.world);
                all.push(mine);
                for (i, s) in streams.iter_mut().enumerate() {
                    let peer = i + 1;
                    let bytes = read_frame(s, len).map_err(|e| self.frame_error(peer, len, e))?;
                    all.push(decode(&bytes, &sizes));
                }
                let out = combine(&all);
                let bytes = encode(&out);
                for (i, s) in streams.iter_mut().enumerate() {
                    write_frame(s, &bytes).map_err(|e| self.io_error(i + 1, e))?;
                }
                Ok(out)
            }
            Links::Leaf(s) => {
                write_frame(s, &encode(&mine)).map_err(|e| self.io_error(0, e))?;
                let bytes = read_frame(s, len).map_err(|e| self.frame_error(0, len, e))?;
                Ok(decode(&bytes, &sizes))
            }
        }
    }

    fn frame_error(&self, peer: usize, len: usize, e: FrameError) -> TrainError {
        match e {
            FrameError::Io(e) => self.io_error(peer, e),
            FrameError::Length(got) => group_err(
                format!(
                    "rank {peer} sent {got} bytes where rank {} has {len}",
                    self.rank
                ),
                "the same model and configuration on every rank",
            ),
        }
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let sum = self.exchange(to_host(tensors)?, &sum_in_rank_order)?;
        from_host(&sum, tensors)
    }
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        let got = self.exchange(to_host(tensors)?, &|all| all[root].clone())?;
        from_host(&got, tensors)
    }
}

enum FrameError {
    Io(io::Error),
    Length(u64),
}

fn encode(values: &[Vec<f64>]) -> Vec<u8> {
    values
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn decode(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<f64>> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let v = bytes[at..at + 8 * n]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            at += 8 * n;
            v
        })
        .collect()
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)?;
    s.flush()
}

fn read_frame(s: &mut TcpStream, expected: usize) -> std::result::Result<Vec<u8>, FrameError> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head).map_err(FrameError::Io)?;
    let len = u64::from_le_bytes(head);
    if len != expected as u64 {
        return Err(FrameError::Length(len));
    }
    let mut bytes = vec![0u8; expected];
    s.read_exact(&mut bytes).map_err(FrameError::Io)?;
    Ok(bytes)
}

fn configure(s: &TcpStream, timeout: Duration) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

/// Rank 0: accepts one connection from every other rank.
fn accept_all(pg: &ProcessGroup, deadline: Instant) -> Result<Vec<TcpStream>> {
    let port = pg.master_port;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        group_err(
            format!("rank 0 could not listen on port {port}: {e}"),
            "a free MASTER_PORT on rank 0's node (another group or an earlier run may hold it)",
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| group_err(e.to_string(), "a socket"))?;
    let mut slots: Vec<Option<TcpStream>> = (1..pg.world_size).map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((s, from)) => {
                if let Some(rank) = introduce(&s, from, pg)? {
                    if slots[rank - 1].is_some() {
                        return Err(group_err(
                            format!("two processes connected as rank {rank}"),
                            "a distinct RANK per process",
                        ));
                    }
                    slots[rank - 1] = Some(s);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..pg.world_size)
                        .filter(|r| slots[r - 1].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(group_err(
                        format!(
                            "ranks {} did not connect to rank 0 on port {port} within {:?}",
                            missing.join(", "),
                            pg.timeout
                        ),
                        "every rank started with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(group_err(format!("accept on port {port}: {e}"), "a socket")),
        }
    }
    Ok(slots.into_iter().map(|s| s.expect("all filled")).collect())
}

/// Reads a connecting rank's introduction: its rank, or `None` for a connection that is not a
/// cbs rank (ignored).
fn introduce(s: &TcpStream, from: SocketAddr, pg: &ProcessGroup) -> Result<Option<usize>> {
    let mut s = s;
    if configure(s, pg.timeout.min(Duration::from_secs(10))).is_err() {
        return Ok(None);
    }
    let mut hello = [0u8; 16];
    if s.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
        tracing::warn!(%from, "ignored a connection that is not a cbs rank");
        return Ok(None);
    }
    let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
    let world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
    if world != pg.world_size || rank == 0 || rank >= world {
        return Err(group_err(
            format!("a process at {from} joined as rank {rank} of {world}"),
            format!("ranks 1..{} of WORLD_SIZE {}", pg.world_size, pg.world_size),
        ));
    }
    configure(s, pg.timeout).map_err(|e| group_err(e.to_string(), "a socket"))?;
    Ok(Some(rank))
}

/// Any rank but 0: connects to rank 0 (retrying until it listens) and introduces itself.
fn join(pg: &ProcessGroup, deadline: Instant) -> Result<TcpStream> {
    let target = format!("{}:{}", pg.master_addr, pg.master_port);
    let unreachable = |why: String| {
        group_err(
            format!("rank {} could not reach rank 0 at {target}: {why}", pg.rank),
            "rank 0 running, and the same MASTER_ADDR and MASTER_PORT on every rank",
        )
    };
    let mut last = String::from("no attempt");
    loop {
        let addrs: Vec<SocketAddr> = target
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve the address ({e})")))?
            .collect();
        for addr in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(
                addr,
                left.clamp(Duration::from_millis(1), Duration::from_secs(2)),
            ) {
                Ok(mut s) => {
                    configure(&s, pg.timeout).map_err(|e| unreachable(e.to_string()))?;
                    let mut hello = MAGIC.to_vec();
                    hello.extend((pg.rank as u32).to_le_bytes());
                    hello.extend((pg.world_size as u32).to_le_bytes());
                    s.write_all(&hello)
                        .map_err(|e| unreachable(e.to_string()))?;
                    return Ok(s);
                }
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(unreachable(format!("{last} (for {:?})", pg.timeout)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

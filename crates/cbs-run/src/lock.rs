//! One writer per run directory: an advisory lock on `RUN/.lock`, held for as long as the
//! [`RunLock`] lives.
//!
//! The lock is the operating system's (`flock`), so it disappears with the process that held it:
//! a run whose trainer was killed is taken over by the next one without any clean-up. The file
//! holds the holder's pid, for the message a second writer gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{io_err, Result, RunError};

/// The lock file in a run directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a run directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the run directory's lock, creating the directory and the lock file if needed.
    /// Fails at once, naming the holder's pid, when another process holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        cbs_core::atomic::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The pid is only for the message: a short, possibly half-written read is fine.
                let _ = (&file).take(32).read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(RunError::Locked {
                    dir: run_dir.to_path_buf(),
                    holder: who,
                });
            }
            // A file system without locks (some network mounts) must not make runs impossible:
            // the run proceeds unguarded, as it did before locks existed.
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                return Ok(Self { _file: file, path });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        file.flush().map_err(io_err(&path))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

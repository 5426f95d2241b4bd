//! Crash-safe writes: temporary file in the target's directory → fsync → rename → fsync the
//! directory.
//!
//! A reader (or a process restarted after a crash) sees either the previous content of the
//! target or the complete new content. The temporary file is `<name>.tmp` next to the target,
//! so at most one writer may write a given path at a time; a crash can leave that file behind
//! and the next write of the same path replaces it.
//!
//! - [`write_bytes`] / [`write_text`]: small files held in memory (configs, `latest`, TOML,
//!   CSV, JSON).
//! - [`write_with`]: a writer closure on a buffered file (streamed output).
//! - [`write_with_path`]: a closure given the temporary *path*, for encoders that only write
//!   to a path (candle's `write_npz` and safetensors `save`, `image`'s `save_with_format`).
//! - [`commit_dir`]: make a fully written temporary directory visible under its final name
//!   (checkpoints).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A failed crash-safe write: which path, which stage, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {action}: {source}", path.display())]
pub struct AtomicError {
    /// The file or directory the caller asked to write.
    pub path: PathBuf,
    /// The stage that failed (`writing`, `syncing`, `renaming`, …).
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl AtomicError {
    fn new(
        path: &Path,
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            action,
            source: source.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, AtomicError>;

/// The temporary path a write of `path` goes through: `<name>.tmp` in the same directory (a
/// rename is atomic only within one filesystem).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Write `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_bytes(path, text.as_bytes())
}

/// Stream the content into a buffered temporary file, then commit it to `path`. If `write`
/// fails, the temporary file is removed and `path` keeps its previous content.
pub fn write_with<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), E>,
) -> Result<()>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    write_with_path(path, |tmp| -> std::result::Result<(), AtomicError> {
        let file = File::create(tmp).map_err(|e| AtomicError::new(path, "creating", e))?;
        let mut w = BufWriter::new(file);
        write(&mut w).map_err(|e| AtomicError::new(path, "writing", e))?;
        w.flush()
            .map_err(|e| AtomicError::new(path, "writing", e))?;
        Ok(())
    })
}

/// Let `write` create the temporary file at the path it is given (any encoder that writes to
/// a path), then fsync it and rename it over `path`. If `write` fails, the temporary file is
/// removed and `path` keeps its previous content.
pub fn write_with_path<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<()>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        let source: Box<dyn std::error::Error + Send + Sync> = e.into();
        // A nested `write_with` already names the target and its stage.
        return Err(match source.downcast::<AtomicError>() {
            Ok(inner) => *inner,
            Err(source) => AtomicError::new(path, "writing", source),
        });
    }
    let committed = File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| AtomicError::new(path, "syncing the temporary file", e))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| AtomicError::new(path, "renaming", e))
        });
    if let Err(e) = committed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

/// Make the complete directory `tmp_dir` visible as `final_dir`: fsync it, replace any
/// existing `final_dir`, rename, fsync the parent. Files inside should have been written with
/// this module's functions (each is then already on disk).
pub fn commit_dir(tmp_dir: &Path, final_dir: &Path) -> Result<()> {
    sync_dir(tmp_dir);
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir)
            .map_err(|e| AtomicError::new(final_dir, "removing the previous directory", e))?;
    }
    std::fs::rename(tmp_dir, final_dir).map_err(|e| AtomicError::new(final_dir, "renaming", e))?;
    sync_parent(final_dir);
    Ok(())
}

fn sync_parent(path: &Path) {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// fsync a directory so that a rename inside it is durable. Best effort: some filesystems
/// refuse to open or sync directories, and the rename itself has already happened.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `std::fs::create_dir_all`, with the error naming the culprit when a file sits where a
/// directory is wanted (std says only "File exists").
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| {
        match path.ancestors().find(|p| p.exists() && !p.is_dir()) {
            Some(p) => std::io::Error::new(
                e.kind(),
                format!(
                    "{} exists and is not a directory; expected a directory there (or nothing)",
                    p.display()
                ),
            ),
            None => e,
        }
    })
}

//! The one way to read a small text input (a config, a mixture, a splits file, a run's state):
//! only a regular file, at most [`TEXT_LIMIT`] bytes, UTF-8. A path naming `/dev/zero`, a FIFO,
//! a directory or a huge file gets an error saying so, instead of filling memory, blocking, or
//! reporting "not found".

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest text input read (16 MiB: the biggest config or mixture is a few kB).
pub const TEXT_LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{}: is {kind}, not a file; expected a text file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{}: larger than {limit} bytes; expected a small text file", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `path` as UTF-8 text of at most [`TEXT_LIMIT`] bytes.
pub fn read_text(path: &Path) -> Result<String, TextError> {
    read_text_capped(path, TEXT_LIMIT)
}

/// [`read_text`] with another size limit.
pub fn read_text_capped(path: &Path, limit: u64) -> Result<String, TextError> {
    let io = |source| TextError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The type first: opening a FIFO would block, and a directory "reads" as an OS error.
    let kind = std::fs::metadata(path).map_err(io)?.file_type();
    let not_a_file = |kind| TextError::NotAFile {
        path: path.to_path_buf(),
        kind,
    };
    if kind.is_dir() {
        return Err(not_a_file("a directory"));
    }
    if !kind.is_file() && !is_char_device(&kind) {
        return Err(not_a_file("a FIFO, socket or block device"));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    // Character devices (/dev/zero) report no size: the cap is enforced while reading.
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(TextError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|_| TextError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

#[cfg(unix)]
fn is_char_device(kind: &std::fs::FileType) -> bool {
    std::os::unix::fs::FileTypeExt::is_char_device(kind)
}

#[cfg(not(unix))]
fn is_char_device(_: &std::fs::FileType) -> bool {
    false
}

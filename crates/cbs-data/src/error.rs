//! Typed errors for the data crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory that should exist does not.
    #[error("{}: not found; {hint}", path.display())]
    Missing { path: PathBuf, hint: String },

    /// The file exists but its contents are not what we expect.
    #[error("{}: malformed data file: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    /// A folder's contents do not form a data set (no images, an empty class folder, mixed
    /// layouts).
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },

    /// The OS refused to open or read the file.
    // The source is not repeated in the message so that error-chain printers
    // (anyhow's `{:#}`) do not show it twice.
    #[error("{}: I/O error", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// What the file declares (an array, a payload, a data set) is larger than the memory
    /// limit; found before anything of that size was allocated or inflated.
    #[error("{}: {}", path.display(), too_large_reason(what, *declared, limit))]
    TooLarge {
        path: PathBuf,
        /// The array or part of the file (`array arr_0 (uint8 [1099511627776])`).
        what: String,
        declared: u64,
        limit: crate::MemoryLimit,
    },

    /// A caller-supplied argument is out of range.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl DataError {
    /// The message without the leading path, for callers whose own error names the file
    /// (I/O errors include their source).
    pub fn reason(&self) -> String {
        match self {
            DataError::Missing { hint, .. } => format!("not found; {hint}"),
            DataError::Malformed { reason, .. } => format!("malformed data file: {reason}"),
            DataError::Layout { reason, .. } => reason.clone(),
            DataError::Io { source, .. } => format!("I/O error: {source}"),
            DataError::TooLarge {
                what,
                declared,
                limit,
                ..
            } => too_large_reason(what, *declared, limit),
            DataError::Invalid { .. } => self.to_string(),
        }
    }
}

fn too_large_reason(what: &str, declared: u64, limit: &crate::MemoryLimit) -> String {
    format!(
        "{what} declares {}, more than the memory limit of {limit}; if the file is right and \
         the machine has the memory, raise `{}` (a number of GiB; default: half the physical \
         memory)",
        crate::limit::human(declared),
        crate::MemoryLimit::CONFIG_KEY
    )
}

/// Why `path` cannot be read as a file although something is there: a directory, a FIFO or
/// device, or a link that cannot be followed. `None` when it is a regular file or absent (the
/// caller's "not found" then is the truth).
pub(crate) fn not_a_file(path: &std::path::Path) -> Option<DataError> {
    let reason = match (std::fs::symlink_metadata(path), std::fs::metadata(path)) {
        (Err(_), _) => return None,
        (Ok(_), Err(_)) => {
            "is a symbolic link that cannot be followed (a loop, or its target is \
                            missing)"
        }
        (Ok(_), Ok(m)) if m.is_dir() => "is a directory, not a file",
        (Ok(_), Ok(m)) if !m.is_file() => "is not a regular file (a FIFO, socket or device)",
        _ => return None,
    };
    Some(DataError::Layout {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, DataError>;

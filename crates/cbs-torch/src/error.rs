//! The one error type of the crate: every variant names the file.

use std::path::PathBuf;

use crate::limits::Limit;

/// Why a PyTorch file could not be read. The message names the file, the place in it, and what
/// was expected, once.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PyTorch file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// The pickle is malformed (truncated, an unknown opcode, an operand of the wrong kind).
    #[error("{}: malformed pickle{}: {message}", path.display(), at(*offset))]
    Pickle {
        path: PathBuf,
        offset: Option<u64>,
        message: String,
    },
    /// The pickle names a global outside the allowlist: it asks to run code.
    #[error(
        "{}: refused to load: the pickle{} refers to `{global}`, which is not one of the \
         tensor-rebuild functions and plain data types this reader accepts (pickle code is \
         never executed); save a plain state_dict (`torch.save(model.state_dict(), path)`)",
        path.display(),
        at(*offset)
    )]
    Refused {
        path: PathBuf,
        offset: Option<u64>,
        global: String,
    },
    /// A size, depth or count past one of the reader's [`crate::Limits`].
    #[error("{}: {what} {value} exceeds the limit {limit}{}", path.display(), at(*offset))]
    Limit {
        path: PathBuf,
        offset: Option<u64>,
        what: Limit,
        value: u64,
        limit: u64,
    },
    /// A tensor whose rebuild arguments or storage are inconsistent.
    #[error("{}: tensor `{name}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{}: no tensor named `{name}`{hint}", path.display())]
    Missing {
        path: PathBuf,
        name: String,
        hint: String,
    },
}

fn at(offset: Option<u64>) -> String {
    offset.map(|o| format!(" at byte {o}")).unwrap_or_default()
}

pub type Result<T> = std::result::Result<T, TorchError>;

//! Errors of metric computation, feature extraction and input reading.

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file the data crate's readers refused (its message names the file).
    /// A PyTorch weights file the bounded reader refused (its message names the file).
    #[error("{source}; {hint}")]
    Weights {
        source: cbs_torch::TorchError,
        hint: String,
    },
    #[error(transparent)]
    Data(#[from] cbs_data::DataError),
}

pub type Result<T> = std::result::Result<T, EvalError>;

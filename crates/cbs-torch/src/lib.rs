//! PyTorch files (`torch.save`, `.pt` / `.pth` / `.bin`), read without executing them.
//!
//! [`TorchFile::open`] reads both layouts (the zip archive of PyTorch ≥ 1.6 and the legacy
//! stream) through one pickle machine ([`pickle`](crate::pickle)) that builds data and calls
//! nothing: globals are resolved against an allowlist (the tensor-rebuild functions, the storage
//! classes, `collections.OrderedDict`, and inert data such as `argparse.Namespace`) and any other
//! global is refused with the name it asked for. The machine is iterative, shares memoised
//! objects instead of copying them, and bounds pickle size, object count, memo size and nesting
//! depth ([`Limits`]); every tensor's offset, size and stride are checked against its storage's
//! declared size and against the bytes the file holds before any tensor data is read.
//!
//! Tensors are named by their path through nested dicts, joined with dots: a training
//! checkpoint `{"model": state_dict, "ema": state_dict, "args": Namespace}` yields
//! `model.blocks.0.attn.qkv.weight`, `ema.…`; [`TorchFile::load_all`] with a prefix returns one
//! state_dict with the prefix removed. [`write`] writes both layouts (test and fuzzing inputs).

mod error;
mod file;
mod globals;
mod limits;
mod pickle;
mod walk;
pub mod write;

pub use error::{Result, TorchError};
pub use file::{Format, Loaded, TensorInfo, TorchFile};
pub use globals::StorageType;
pub use limits::{Limit, Limits};

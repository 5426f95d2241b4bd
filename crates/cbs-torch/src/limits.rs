//! Bounds on everything a file can make the reader allocate or traverse.
//!
//! A pickle is a program: a few hundred bytes can ask for a memo entry to be copied
//! exponentially often, a container nested a million deep, or a tensor of 2^62 elements. The
//! reader never copies memo entries (objects live once in an arena and are referred to by
//! index), never recurses, and checks each of these counts against a limit before it allocates.

/// What a [`crate::TorchError::Limit`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Bytes of one pickle stream.
    PickleBytes,
    /// Objects plus container elements built by one pickle.
    Cells,
    /// Memo entries of one pickle.
    Memo,
    /// Nesting depth of containers (and of MARKs while unpickling).
    Depth,
    /// Bytes of one tensor or of one storage read from the file.
    TensorBytes,
    /// Bytes of all tensor names together.
    NameBytes,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::PickleBytes => "pickle size (bytes)",
            Limit::Cells => "number of pickled objects and container elements",
            Limit::Memo => "number of memo entries",
            Limit::Depth => "nesting depth",
            Limit::TensorBytes => "tensor/storage size (bytes)",
            Limit::NameBytes => "total length of tensor names (bytes)",
        })
    }
}

/// The reader's bounds. The defaults are far above any real checkpoint (a SiT-XL/2 training
/// checkpoint with optimizer state pickles to well under a megabyte and a few thousand memo
/// entries) and far below what would exhaust a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one pickle stream (`data.pkl`, or each of a legacy file's pickles).
    pub max_pickle_bytes: u64,
    /// Objects plus container elements one pickle may build; also bounds the traversal that
    /// names the tensors (a shared sub-tree is counted each time it is reached).
    pub max_cells: u64,
    /// Memo entries of one pickle.
    pub max_memo: u64,
    /// Container nesting depth, and open MARKs while unpickling.
    pub max_depth: u64,
    /// Bytes of one tensor (after gathering its strides) and of one storage read from disk.
    pub max_tensor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pickle_bytes: 256 << 20,
            max_cells: 1 << 24,
            max_memo: 1 << 20,
            max_depth: 256,
            max_tensor_bytes: 64 << 30,
        }
    }
}

/// Tensor names together may not exceed this many bytes (a shared sub-tree with long keys,
/// reached many times, would otherwise multiply them).
pub(crate) const MAX_NAME_BYTES: u64 = 256 << 20;

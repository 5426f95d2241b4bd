//! The globals a pickle may name: the tensor-rebuild functions, the storage types, and a few
//! plain-data classes that real checkpoints contain. Anything else is refused when the pickle
//! names it, before any argument is looked at.

use candle_core::DType;

/// The element type of a storage, from its pickled class (`torch.FloatStorage`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    C64,
    C128,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            "ComplexFloatStorage" => Self::C64,
            "ComplexDoubleStorage" => Self::C128,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::I8 | Self::U8 | Self::Bool => 1,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 | Self::C64 => 8,
            Self::C128 => 16,
        }
    }

    /// The candle dtype holding these elements bit for bit; `None` where candle has none.
    pub fn dtype(self) -> Option<DType> {
        Some(match self {
            Self::F64 => DType::F64,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 => DType::I16,
            Self::U8 => DType::U8,
            Self::I8 | Self::Bool | Self::C64 | Self::C128 => return None,
        })
    }

    /// PyTorch's name of the element type.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
            Self::C64 => "complex64",
            Self::C128 => "complex128",
        }
    }
}

/// An accepted global. Only [`Global::RebuildTensor`] and [`Global::RebuildParameter`] make
/// tensors; the data classes become inert records; `_codecs.encode` turns a latin-1 string into
/// bytes (how protocol 2 pickles `bytes`). Nothing is ever called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    /// `torch._utils._rebuild_tensor` / `_rebuild_tensor_v2`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter` / `_rebuild_parameter_with_state`: the tensor itself.
    RebuildParameter,
    /// `collections.OrderedDict`: a dict.
    OrderedDict,
    /// `torch.<X>Storage`: only as the type inside a storage's persistent id.
    Storage(StorageType),
    /// `torch.Size`: a tuple.
    Size,
    /// `_codecs.encode`.
    Encode,
    /// Plain data kept as an inert record and never named as a tensor: `argparse.Namespace`
    /// (training scripts save their arguments), `torch.device`, the `torch.<dtype>` objects.
    Data,
}

impl Global {
    pub(crate) fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => Self::RebuildTensor,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Self::RebuildParameter
            }
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch", "Size") => Self::Size,
            ("_codecs", "encode") => Self::Encode,
            ("argparse", "Namespace") | ("torch", "device") => Self::Data,
            (
                "torch",
                "float64" | "float32" | "float16" | "bfloat16" | "int64" | "int32" | "int16"
                | "int8" | "uint8" | "bool",
            ) => Self::Data,
            ("torch", class) => Self::Storage(StorageType::from_class(class)?),
            _ => return None,
        })
    }
}

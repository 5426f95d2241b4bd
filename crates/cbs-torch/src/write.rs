//! Writes files in `torch.save`'s two layouts from candle tensors: the same pickle opcodes
//! PyTorch emits for a (nested) state_dict (protocol 2, `_rebuild_tensor_v2`, persistent
//! storage ids, `collections.OrderedDict`), one storage per tensor. Used to generate test and
//! fuzzing inputs without PyTorch; [`zip_with_pickle`] and [`legacy_with_pickle`] wrap
//! arbitrary (hostile) pickle bytes in either container.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::file::Format;

/// A value to pickle.
pub enum Value {
    Tensor(Tensor),
    /// A `collections.OrderedDict` (what `state_dict()` returns).
    OrderedDict(Vec<(String, Value)>),
    /// A plain dict.
    Dict(Vec<(String, Value)>),
    List(Vec<Value>),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    /// An `argparse.Namespace` with these attributes (how training scripts save their args).
    Namespace(Vec<(String, Value)>),
}

/// Pickle opcodes used below.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const SETITEMS: u8 = b'u';
    pub const APPENDS: u8 = b'e';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const NEWOBJ: u8 = 0x81;
    pub const BINPERSID: u8 = b'Q';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BINPUT: u8 = b'q';
}

/// Pickle writer state: the bytes so far and the storages (key = index) to store.
struct Pickler {
    out: Vec<u8>,
    storages: Vec<(String, Vec<u8>, &'static str, usize)>,
    legacy: bool,
    memo: u8,
}

fn storage_class(dtype: DType) -> std::io::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::U8 => "ByteStorage",
        other => {
            return Err(std::io::Error::other(format!(
                "no torch storage type for {other:?}"
            )))
        }
    })
}

fn tensor_bytes(t: &Tensor) -> std::io::Result<Vec<u8>> {
    let err = |e: candle_core::Error| std::io::Error::other(e.to_string());
    let t = t.flatten_all().map_err(err)?;
    Ok(match t.dtype() {
        DType::F32 => le(t.to_vec1::<f32>().map_err(err)?, f32::to_le_bytes),
        DType::F64 => le(t.to_vec1::<f64>().map_err(err)?, f64::to_le_bytes),
        DType::F16 => le(t.to_vec1::<half::f16>().map_err(err)?, |v| v.to_le_bytes()),
        DType::BF16 => le(t.to_vec1::<half::bf16>().map_err(err)?, |v| v.to_le_bytes()),
        DType::I64 => le(t.to_vec1::<i64>().map_err(err)?, i64::to_le_bytes),
        DType::I32 => le(t.to_vec1::<i32>().map_err(err)?, i32::to_le_bytes),
        DType::I16 => le(t.to_vec1::<i16>().map_err(err)?, i16::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>().map_err(err)?,
        other => {
            return Err(std::io::Error::other(format!(
                "cannot write {other:?} tensors"
            )))
        }
    })
}

fn le<T, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

impl Pickler {
    fn byte(&mut self, b: u8) {
        self.out.push(b);
    }

    fn put(&mut self) {
        // PyTorch memoises most objects; a wrapping u8 key is enough to exercise the memo.
        self.out.extend_from_slice(&[op::BINPUT, self.memo]);
        self.memo = self.memo.wrapping_add(1);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.byte(op::GLOBAL);
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self.put();
    }

    fn str(&mut self, s: &str) {
        self.byte(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self.put();
    }

    fn int(&mut self, v: i64) {
        if let Ok(v) = i32::try_from(v) {
            self.byte(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[op::LONG1, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn ints(&mut self, v: &[usize]) {
        self.byte(op::MARK);
        for &x in v {
            self.int(x as i64);
        }
        self.byte(op::TUPLE);
        self.put();
    }

    fn items(&mut self, items: &[(String, Value)]) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.byte(op::MARK);
        for (k, v) in items {
            self.str(k);
            self.value(v)?;
        }
        self.byte(op::SETITEMS);
        Ok(())
    }

    fn tensor(&mut self, t: &Tensor) -> std::io::Result<()> {
        let class = storage_class(t.dtype())?;
        let key = self.storages.len().to_string();
        let numel = t.elem_count();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.byte(op::MARK);
        self.byte(op::MARK);
        self.str("storage");
        self.global("torch", class);
        self.str(&key);
        self.str("cpu");
        self.int(numel as i64);
        if self.legacy {
            self.byte(op::NONE);
        }
        self.byte(op::TUPLE);
        self.put();
        self.byte(op::BINPERSID);
        self.int(0);
        self.ints(t.dims());
        let mut stride = vec![1usize; t.rank()];
        for d in (0..t.rank().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.dims()[d + 1];
        }
        self.ints(&stride);
        self.byte(op::NEWFALSE);
        self.global("collections", "OrderedDict");
        self.byte(op::EMPTY_TUPLE);
        self.byte(op::REDUCE);
        self.put();
        self.byte(op::TUPLE);
        self.put();
        self.byte(op::REDUCE);
        self.put();
        self.storages.push((key, tensor_bytes(t)?, class, numel));
        Ok(())
    }

    fn value(&mut self, v: &Value) -> std::io::Result<()> {
        match v {
            Value::Tensor(t) => self.tensor(t)?,
            Value::OrderedDict(items) => {
                self.global("collections", "OrderedDict");
                self.byte(op::EMPTY_TUPLE);
                self.byte(op::REDUCE);
                self.put();
                self.items(items)?;
            }
            Value::Dict(items) => {
                self.byte(op::EMPTY_DICT);
                self.put();
                self.items(items)?;
            }
            Value::List(items) => {
                self.byte(op::EMPTY_LIST);
                self.put();
                if !items.is_empty() {
                    self.byte(op::MARK);
                    for x in items {
                        self.value(x)?;
                    }
                    self.byte(op::APPENDS);
                }
            }
            Value::Namespace(items) => {
                self.global("argparse", "Namespace");
                self.byte(op::EMPTY_TUPLE);
                self.byte(op::NEWOBJ);
                self.put();
                self.byte(op::EMPTY_DICT);
                self.put();
                self.items(items)?;
                self.byte(op::BUILD);
            }
            Value::Int(i) => self.int(*i),
            Value::Float(f) => {
                self.byte(op::BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Bool(b) => self.byte(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            Value::None => self.byte(op::NONE),
        }
        Ok(())
    }
}

/// A storage to write: key, bytes, element count.
type Stored = (String, Vec<u8>, usize);

/// One pickle of `value` (protocol 2) and its storages.
fn pickle(value: &Value, legacy: bool) -> std::io::Result<(Vec<u8>, Vec<Stored>)> {
    let mut p = Pickler {
        out: vec![op::PROTO, 2],
        storages: vec![],
        legacy,
        memo: 0,
    };
    p.value(value)?;
    p.byte(op::STOP);
    let storages = p
        .storages
        .into_iter()
        .map(|(k, b, _, n)| (k, b, n))
        .collect();
    Ok((p.out, storages))
}

/// Writes `value` as `torch.save` would, in the given layout.
pub fn save(path: &Path, value: &Value, format: Format) -> std::io::Result<()> {
    let legacy = format == Format::Legacy;
    let (pkl, storages) = pickle(value, legacy)?;
    match format {
        Format::Zip => {
            let storages: Vec<(String, Vec<u8>)> =
                storages.into_iter().map(|(k, b, _)| (k, b)).collect();
            zip_with_pickle(path, &pkl, &storages)
        }
        Format::Legacy => {
            let keys: Vec<String> = storages.iter().map(|(k, _, _)| k.clone()).collect();
            let data: Vec<(Vec<u8>, u64)> = storages
                .into_iter()
                .map(|(_, b, n)| (b, n as u64))
                .collect();
            legacy_with_pickle(path, &pkl, &keys, &data)
        }
    }
}

/// A zip archive as `torch.save` writes it (`archive/data.pkl`, `archive/byteorder`,
/// `archive/data/<key>`, `archive/version`, entries stored) around any pickle bytes.
pub fn zip_with_pickle(
    path: &Path,
    pkl: &[u8],
    storages: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut z = ZipWriter::new(std::io::BufWriter::new(file));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let zerr = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    z.start_file("archive/data.pkl", opts).map_err(zerr)?;
    z.write_all(pkl)?;
    z.start_file("archive/byteorder", opts).map_err(zerr)?;
    z.write_all(b"little")?;
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opts)
            .map_err(zerr)?;
        z.write_all(bytes)?;
    }
    z.start_file("archive/version", opts).map_err(zerr)?;
    z.write_all(b"3\n")?;
    z.finish().map_err(zerr)?.flush()
}

/// A legacy stream around any object pickle: magic, protocol version, system info, the object,
/// the key list, then each storage as `(element count, bytes)`.
pub fn legacy_with_pickle(
    path: &Path,
    object_pickle: &[u8],
    keys: &[String],
    storages: &[(Vec<u8>, u64)],
) -> std::io::Result<()> {
    let mut out = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
    ];
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    let info = Value::Dict(vec![
        ("protocol_version".into(), Value::Int(1001)),
        ("little_endian".into(), Value::Bool(true)),
        (
            "type_sizes".into(),
            Value::Dict(vec![
                ("short".into(), Value::Int(2)),
                ("int".into(), Value::Int(4)),
                ("long".into(), Value::Int(4)),
            ]),
        ),
    ]);
    out.extend(pickle(&info, true)?.0);
    out.extend_from_slice(object_pickle);
    let key_list = Value::List(keys.iter().map(|k| Value::Str(k.clone())).collect());
    out.extend(pickle(&key_list, true)?.0);
    for (bytes, numel) in storages {
        out.extend_from_slice(&(*numel as i64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out)
}

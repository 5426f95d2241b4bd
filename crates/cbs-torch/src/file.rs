//! The two containers of `torch.save`: the zip archive (PyTorch ≥ 1.6: `<dir>/data.pkl` plus
//! one entry `<dir>/data/<key>` per storage) and the legacy stream (a magic-number pickle, the
//! protocol version 1001, a system-info pickle, the object, a pickled list of storage keys, then
//! each storage as an i64 element count followed by its bytes).
//!
//! Opening a file unpickles it and checks every tensor against its storage's declared size and
//! against the storage actually present in the file; tensor data is read only when a tensor is
//! loaded, one storage at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TorchError};
use crate::globals::StorageType;
use crate::limits::{Limit, Limits};
use crate::pickle::{self, Fault, Node, TensorRef};
use crate::walk;

/// `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`: the first bytes of a legacy file.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Which of the two layouts a file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

/// Tensors read by [`TorchFile::load_all`] (name, tensor), and the names skipped because
/// candle has no dtype for their elements.
pub type Loaded = (Vec<(String, Tensor)>, Vec<String>);

/// One tensor of a file: its dotted name, element type and shape.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    name: String,
    tensor: TensorRef,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    pub fn storage_type(&self) -> StorageType {
        self.tensor.storage.ty
    }

    /// The candle dtype; `None` for element types candle lacks (int8, bool, complex).
    pub fn dtype(&self) -> Option<DType> {
        self.tensor.storage.ty.dtype()
    }
}

enum Container {
    Zip {
        archive: Mutex<zip::ZipArchive<BufReader<File>>>,
        /// `<dir>/`, the archive's one top-level directory.
        prefix: String,
    },
    Legacy {
        /// Storage key → (offset of its data in the file, element count).
        storages: HashMap<String, (u64, u64)>,
    },
}

/// An opened PyTorch file: the names, types and shapes of its tensors, checked; data on demand.
pub struct TorchFile {
    path: PathBuf,
    format: Format,
    container: Container,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    limits: Limits,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TorchError + '_ {
    move |source| TorchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> TorchError {
    TorchError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn fault(path: &Path, f: Fault) -> TorchError {
    let path = path.to_path_buf();
    match f {
        Fault::Malformed { offset, message } => TorchError::Pickle {
            path,
            offset: Some(offset),
            message,
        },
        Fault::Refused { offset, global } => TorchError::Refused {
            path,
            offset: Some(offset),
            global,
        },
        Fault::Limit {
            offset,
            what,
            value,
            limit,
        } => TorchError::Limit {
            path,
            offset: Some(offset),
            what,
            value,
            limit,
        },
    }
}

fn overrun(path: &Path, (what, value, limit): walk::Overrun) -> TorchError {
    TorchError::Limit {
        path: path.to_path_buf(),
        offset: None,
        what,
        value,
        limit,
    }
}

impl TorchFile {
    /// Opens `path` under the default [`Limits`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Limits::default())
    }

    /// Opens `path`: the zip or the legacy layout, told apart by the first bytes.
    pub fn open_with(path: &Path, limits: Limits) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_file() {
            return Err(format_err(path, "not a regular file"));
        }
        let mut file = File::open(path).map_err(io(path))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut file, &mut head).map_err(io(path))?;
        file.rewind().map_err(io(path))?;
        let (format, container, tensors) = if head[..n] == *b"PK\x03\x04" {
            let (c, t) = open_zip(path, file, &limits)?;
            (Format::Zip, c, t)
        } else if n > 0 && head[0] == 0x80 {
            let (c, t) = open_legacy(path, file, meta.len(), &limits)?;
            (Format::Legacy, c, t)
        } else {
            return Err(format_err(
                path,
                "expected a zip archive (torch.save) or a legacy torch.save stream",
            ));
        };
        let tensors: Vec<TensorInfo> = tensors
            .into_iter()
            .map(|n| TensorInfo {
                name: n.name,
                tensor: n.tensor,
            })
            .collect();
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(TorchFile {
            path: path.to_path_buf(),
            format,
            container,
            tensors,
            index,
            limits,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Every tensor, in the order the file stores them.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The distinct first components of the tensor names (`model`, `ema`, `opt` of a training
    /// checkpoint), in file order; empty names (a bare tensor) are left out.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for t in &self.tensors {
            let head = t.name.split('.').next().unwrap_or_default();
            if !head.is_empty() && !out.iter().any(|g| g == head) {
                out.push(head.to_string());
            }
        }
        out
    }

    /// Reads one tensor (C-contiguous, on the CPU).
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let info = self.get(name).ok_or_else(|| TorchError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
            hint: String::new(),
        })?;
        self.load_info(info)
    }

    /// Every tensor whose name starts with `prefix.` (all of them for `None`), named without
    /// the prefix, skipping element types candle lacks (returned by name in the second list).
    pub fn load_all(&self, prefix: Option<&str>) -> Result<Loaded> {
        let (mut out, mut skipped) = (vec![], vec![]);
        for info in &self.tensors {
            let name = match prefix {
                None => info.name.as_str(),
                Some(p) => match info.name.strip_prefix(p).and_then(|r| r.strip_prefix('.')) {
                    Some(rest) => rest,
                    None => continue,
                },
            };
            if info.dtype().is_none() {
                skipped.push(info.name.clone());
                continue;
            }
            out.push((name.to_string(), self.load_info(info)?));
        }
        Ok((out, skipped))
    }

    fn tensor_err(&self, info: &TensorInfo, message: impl Into<String>) -> TorchError {
        TorchError::Tensor {
            path: self.path.clone(),
            name: info.name.clone(),
            message: message.into(),
        }
    }

    fn load_info(&self, info: &TensorInfo) -> Result<Tensor> {
        let t = &info.tensor;
        let Some(dtype) = t.storage.ty.dtype() else {
            return Err(self.tensor_err(
                info,
                format!(
                    "element type {} has no candle dtype",
                    t.storage.ty.torch_name()
                ),
            ));
        };
        let storage = self.read_storage(info)?;
        let data = gather(t, &storage);
        Tensor::from_raw_buffer(&data, dtype, &t.shape, &Device::Cpu)
            .map_err(|e| self.tensor_err(info, e.to_string()))
    }

    /// The bytes of a tensor's storage, exactly `numel × element size` of them.
    fn read_storage(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let s = &info.tensor.storage;
        // Checked when the tensor was rebuilt: fits the limit, so in u64 and usize.
        let nbytes = s.numel * s.ty.size();
        match &self.container {
            Container::Zip { archive, prefix } => {
                let mut archive = archive.lock().unwrap_or_else(|e| e.into_inner());
                let entry_name = format!("{prefix}data/{}", s.key);
                let entry = archive
                    .by_name(&entry_name)
                    .map_err(|e| self.tensor_err(info, format!("storage {entry_name}: {e}")))?;
                read_entry(entry, nbytes, &self.limits)
                    .map_err(|m| self.tensor_err(info, format!("storage {entry_name}: {m}")))
            }
            Container::Legacy { storages } => {
                let &(offset, _) = storages
                    .get(&s.key)
                    .ok_or_else(|| self.tensor_err(info, format!("storage {} missing", s.key)))?;
                let mut f = File::open(&self.path).map_err(io(&self.path))?;
                f.seek(SeekFrom::Start(offset)).map_err(io(&self.path))?;
                let mut buf = vec![0u8; nbytes as usize];
                f.read_exact(&mut buf).map_err(io(&self.path))?;
                Ok(buf)
            }
        }
    }
}

/// Reads a zip entry that must hold exactly `nbytes` bytes, inflating no further than that.
fn read_entry(
    entry: zip::read::ZipFile<'_, impl Read>,
    nbytes: u64,
    limits: &Limits,
) -> std::result::Result<Vec<u8>, String> {
    if entry.size() != nbytes {
        return Err(format!(
            "holds {} bytes, its tensors declare {nbytes}",
            entry.size()
        ));
    }
    // Deflate cannot expand more than 1032-fold: a larger declared size is a lie, and would
    // have us inflate far past what the file holds.
    if entry.compression() != zip::CompressionMethod::Stored
        && nbytes > entry.compressed_size().saturating_mul(1032)
    {
        return Err(format!(
            "declares {nbytes} bytes from {} compressed bytes, more than deflate can expand",
            entry.compressed_size()
        ));
    }
    if nbytes > limits.max_tensor_bytes {
        return Err(format!(
            "{nbytes} bytes exceed the limit {}",
            limits.max_tensor_bytes
        ));
    }
    let mut buf = Vec::with_capacity(nbytes.min(64 << 20) as usize);
    entry
        .take(nbytes)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 != nbytes {
        return Err(format!("truncated: {} of {nbytes} bytes", buf.len()));
    }
    Ok(buf)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies the (possibly strided) elements of `t` out of its storage, C-contiguously. The
/// extent was checked against the storage when the tensor was rebuilt.
fn gather(t: &TensorRef, storage: &[u8]) -> Vec<u8> {
    let esize = t.storage.ty.size() as usize;
    let numel: usize = t.shape.iter().product();
    let mut out = Vec::with_capacity(numel * esize);
    if numel == 0 {
        return out;
    }
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (&s, &st) in t.shape.iter().zip(&t.stride).rev() {
            ok &= s == 1 || st == expect;
            expect *= s;
        }
        ok
    };
    let offset = t.offset as usize;
    if contiguous {
        out.extend_from_slice(&storage[offset * esize..(offset + numel) * esize]);
        return out;
    }
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let off = offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[off * esize..(off + 1) * esize]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

type Opened = (Container, Vec<walk::Named>);

fn open_zip(path: &Path, file: File, limits: &Limits) -> Result<Opened> {
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format_err(path, format!("a damaged zip archive: {e}")))?;
    let pickles: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pkl_name = match pickles.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(format_err(
                path,
                "a zip archive without `<dir>/data.pkl` (not written by torch.save)",
            ))
        }
        _ => return Err(format_err(path, "a zip archive with several `data.pkl`")),
    };
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(entry) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        entry
            .take(16)
            .read_to_string(&mut order)
            .map_err(|e| format_err(path, format!("unreadable byteorder record: {e}")))?;
        if order.trim() != "little" {
            return Err(format_err(
                path,
                format!(
                    "byte order {:?}; only little-endian files are read",
                    order.trim()
                ),
            ));
        }
    }
    let data = {
        let entry = archive
            .by_name(&pkl_name)
            .map_err(|e| format_err(path, format!("{pkl_name}: {e}")))?;
        if entry.size() > limits.max_pickle_bytes {
            return Err(TorchError::Limit {
                path: path.to_path_buf(),
                offset: None,
                what: Limit::PickleBytes,
                value: entry.size(),
                limit: limits.max_pickle_bytes,
            });
        }
        let size = entry.size();
        let mut buf = Vec::with_capacity(size as usize);
        entry
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|e| format_err(path, format!("{pkl_name}: {e}")))?;
        buf
    };
    let (p, _) = pickle::unpickle(&data, 0, 0, limits).map_err(|f| fault(path, f))?;
    let named = walk::named_tensors(&p, limits).map_err(|o| overrun(path, o))?;
    // Every storage a tensor uses must be present with exactly its declared size.
    for n in &named {
        let s = &n.tensor.storage;
        let entry_name = format!("{prefix}data/{}", s.key);
        let size = archive
            .by_name(&entry_name)
            .map_err(|_| TorchError::Tensor {
                path: path.to_path_buf(),
                name: n.name.clone(),
                message: format!("its storage {entry_name} is missing from the archive"),
            })?
            .size();
        if size != s.numel * s.ty.size() {
            return Err(TorchError::Tensor {
                path: path.to_path_buf(),
                name: n.name.clone(),
                message: format!(
                    "its storage {entry_name} holds {size} bytes, the pickle declares {} \
                     elements of {} bytes",
                    s.numel,
                    s.ty.size()
                ),
            });
        }
    }
    Ok((
        Container::Zip {
            archive: Mutex::new(archive),
            prefix,
        },
        named,
    ))
}

fn open_legacy(path: &Path, mut file: File, len: u64, limits: &Limits) -> Result<Opened> {
    // The pickles come first; only this prefix of the file is read into memory.
    let head_len = len.min(limits.max_pickle_bytes);
    let mut head = vec![0u8; head_len as usize];
    file.read_exact(&mut head).map_err(io(path))?;
    if !head.starts_with(&LEGACY_MAGIC) {
        return Err(format_err(
            path,
            "a pickle that is not a torch.save stream (bad magic number)",
        ));
    }
    let next = |pos: usize| -> Result<(pickle::Pickle, usize)> {
        pickle::unpickle(&head, pos, 0, limits).map_err(|f| {
            // A pickle cut at the prefix's end is a limit, not a malformed file.
            match f {
                Fault::Malformed { ref message, .. }
                    if message.starts_with("truncated") && head_len < len =>
                {
                    TorchError::Limit {
                        path: path.to_path_buf(),
                        offset: None,
                        what: Limit::PickleBytes,
                        value: len,
                        limit: limits.max_pickle_bytes,
                    }
                }
                f => fault(path, f),
            }
        })
    };
    let (version, pos) = next(LEGACY_MAGIC.len())?;
    if !matches!(
        version.node(version.root),
        Node::Int(LEGACY_PROTOCOL_VERSION)
    ) {
        return Err(format_err(path, "unsupported legacy protocol version"));
    }
    let (info, pos) = next(pos)?;
    if let Node::Dict(items) = info.node(info.root) {
        let big_endian = items.iter().any(|&(k, v)| {
            matches!(info.node(k), Node::Str(s) if s == "little_endian")
                && matches!(info.node(v), Node::Bool(false))
        });
        if big_endian {
            return Err(format_err(
                path,
                "a big-endian file; only little-endian files are read",
            ));
        }
    }
    let (object, pos) = next(pos)?;
    let named = walk::named_tensors(&object, limits).map_err(|o| overrun(path, o))?;
    let (keys, pos) = next(pos)?;
    let (Node::List(key_ids) | Node::Tuple(key_ids)) = keys.node(keys.root) else {
        return Err(format_err(path, "the storage key list is not a list"));
    };
    let mut types: HashMap<&str, (StorageType, u64)> = HashMap::new();
    for n in &named {
        let s = &n.tensor.storage;
        if let Some(&(ty, numel)) = types.get(s.key.as_str()) {
            if ty != s.ty || numel != s.numel {
                return Err(format_err(
                    path,
                    format!("storage {} is declared with two types or sizes", s.key),
                ));
            }
        }
        types.insert(&s.key, (s.ty, s.numel));
    }
    let mut storages = HashMap::new();
    let mut at = pos as u64;
    for &k in key_ids {
        let key = match keys.node(k) {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return Err(format_err(path, "a storage key that is not a string")),
        };
        let mut header = [0u8; 8];
        file.seek(SeekFrom::Start(at)).map_err(io(path))?;
        if read_up_to(&mut file, &mut header).map_err(io(path))? < 8 {
            return Err(format_err(
                path,
                format!("truncated file (storage {key} header)"),
            ));
        }
        let numel = i64::from_le_bytes(header);
        let numel = u64::try_from(numel)
            .map_err(|_| format_err(path, format!("storage {key}: element count {numel}")))?;
        // A storage no tensor uses has no known element type: it is skipped, with its size
        // bounded by the file (the walk ends at the first storage we cannot size).
        let Some(&(ty, declared)) = types.get(key.as_str()) else {
            return Err(format_err(
                path,
                format!("storage {key} is not used by any tensor (its element size is unknown)"),
            ));
        };
        if numel != declared {
            return Err(format_err(
                path,
                format!("storage {key} holds {numel} elements, its tensors declare {declared}"),
            ));
        }
        let data_at = at + 8;
        let end = numel
            .checked_mul(ty.size())
            .and_then(|b| b.checked_add(data_at))
            .filter(|&e| e <= len)
            .ok_or_else(|| format_err(path, format!("truncated file (storage {key})")))?;
        storages.insert(key, (data_at, numel));
        at = end;
    }
    for n in &named {
        if !storages.contains_key(&n.tensor.storage.key) {
            return Err(TorchError::Tensor {
                path: path.to_path_buf(),
                name: n.name.clone(),
                message: format!("storage {} is not in the file", n.tensor.storage.key),
            });
        }
    }
    Ok((Container::Legacy { storages }, named))
}

//! NumPy `.npz` archives (`np.savez`, `np.savez_compressed`) and image data sets stored in them.
//!
//! [`load_npz`] reads ADM's sample format: `arr_0` = uint8 `[N, H, W, C]` (C = 1 or 3; `[N, H,
//! W]` is read as one channel), plus optional integer labels of length N in `arr_1` (what
//! `np.savez(path, images, labels)` writes) or, failing that, `labels`.
//!
//! [`NpzArchive`] is the general reader: entries stored or deflated, zip64, every
//! `.npy` header version, little- and big-endian numbers. Each entry is checked against its
//! header (declared size), its CRC-32 and the file size before anything large is allocated, so
//! truncated or corrupt files give an error naming the file and the array. [`read_npy`] reads a
//! lone `.npy` file under the same checks.
//!
//! Every declared size (a zip entry's uncompressed size, an array's shape × dtype) is checked
//! against a [`MemoryLimit`] before anything is allocated or inflated, and inflation stops at
//! the declared size; the `*_limited` functions take the limit, the others use the machine
//! default.
//!
//! [`write_npz`] / [`write_npy`] are the one writer: `.npy` format 1.0 headers and stored
//! (uncompressed) zip entries, byte for byte what candle's `Tensor::write_npz` writes (and what
//! `np.load` reads).

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;
use flate2::Crc;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::limit::{read_declared, MemoryLimit};

/// Without an explicit class count, labels at or above this are taken for corruption rather
/// than a class embedding of that many rows.
pub const NPZ_MAX_IMPLICIT_CLASSES: usize = 1 << 20;

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// `.npy` headers are a few hundred bytes; this bounds what a corrupt length may allocate.
const MAX_HEADER: usize = 1 << 20;
/// Deflate expands at most 1032-fold.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Element type of an `.npy` array: kind (`b` bool, `i` signed, `u` unsigned, `f` float), size
/// in bytes, byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyDtype {
    pub kind: char,
    pub size: usize,
    pub big_endian: bool,
}

impl NpyDtype {
    /// NumPy's name (`uint8`, `int64`, `float32`, `bool`), `>`-prefixed when big-endian.
    pub fn name(&self) -> String {
        let base = match self.kind {
            'b' => "bool".to_string(),
            'i' => format!("int{}", self.size * 8),
            'u' => format!("uint{}", self.size * 8),
            'f' => format!("float{}", self.size * 8),
            k => format!("{k}{}", self.size),
        };
        if self.big_endian && self.size > 1 {
            format!(">{base}")
        } else {
            base
        }
    }

    /// `uint8`.
    pub const U8: NpyDtype = NpyDtype::little('u', 1);
    /// `float32`, little-endian.
    pub const F32: NpyDtype = NpyDtype::little('f', 4);
    /// `float64`, little-endian.
    pub const F64: NpyDtype = NpyDtype::little('f', 8);
    /// `int64`, little-endian (NumPy's default integer).
    pub const I64: NpyDtype = NpyDtype::little('i', 8);

    const fn little(kind: char, size: usize) -> Self {
        Self {
            kind,
            size,
            big_endian: false,
        }
    }

    /// Signed or unsigned integers of 1, 2, 4 or 8 bytes.
    pub fn is_integer(&self) -> bool {
        matches!(self.kind, 'i' | 'u') && matches!(self.size, 1 | 2 | 4 | 8)
    }

    /// float16, float32 or float64.
    pub fn is_float(&self) -> bool {
        self.kind == 'f' && matches!(self.size, 2 | 4 | 8)
    }

    /// The `descr` string written in a header: `<f4`, `>i8`, `|b1` (`<u1` for bytes, as candle
    /// writes it).
    fn descr(&self) -> String {
        if self.kind == 'b' {
            return "|b1".to_string();
        }
        let order = if self.big_endian { '>' } else { '<' };
        format!("{order}{}{}", self.kind, self.size)
    }
}

/// The header of one `.npy` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
}

impl NpyHeader {
    /// Bytes of data the header declares, `None` on overflow.
    pub fn data_len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size, |acc, &d| acc.checked_mul(d))
    }

    /// The `.npy` preamble and header of an array of this header (format 1.0, padded to 16
    /// bytes as NumPy and candle pad it); the raw data follows.
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let h = self;
        let mut shape: Vec<String> = h.shape.iter().map(|d| d.to_string()).collect();
        if !shape.is_empty() {
            shape.push(String::new());
        }
        let fortran = if h.fortran_order { "True" } else { "False" };
        let mut text = format!(
            "{{'descr': '{}', 'fortran_order': {fortran}, 'shape': ({}), }}",
            h.dtype.descr(),
            shape.join(",")
        );
        let pad = 16 - (NPY_MAGIC.len() + 5 + text.len()) % 16;
        text.extend(std::iter::repeat_n(' ', pad % 16));
        text.push('\n');
        let len = u16::try_from(text.len())
            .map_err(|_| std::io::Error::other("the .npy header exceeds 64 KiB"))?;
        w.write_all(NPY_MAGIC)?;
        w.write_all(&[1, 0])?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(text.as_bytes())?;
        Ok(())
    }
}

/// One array: its header and its raw data in the file's byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyArray {
    pub header: NpyHeader,
    pub data: Vec<u8>,
}

impl NpyArray {
    /// An array of `dtype` and `shape` over `data` (raw bytes in the dtype's byte order);
    /// `data` must hold exactly the bytes the shape declares.
    pub fn new(dtype: NpyDtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let header = NpyHeader {
            dtype,
            shape,
            fortran_order: false,
        };
        match header.data_len() {
            Some(len) if len == data.len() => Ok(Self { header, data }),
            len => Err(DataError::Invalid {
                field: "data",
                reason: format!(
                    "{} bytes for a {} array of shape {:?} ({} bytes)",
                    data.len(),
                    dtype.name(),
                    header.shape,
                    len.map_or("overflowing".to_string(), |l| l.to_string())
                ),
            }),
        }
    }

    /// uint8 `shape` over `data`.
    pub fn from_u8(shape: &[usize], data: Vec<u8>) -> Result<Self> {
        Self::new(NpyDtype::U8, shape.to_vec(), data)
    }

    /// float32 (little-endian) `shape` over `values`.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(NpyDtype::F32, shape.to_vec(), data)
    }

    /// float64 (little-endian) `shape` over `values`.
    pub fn from_f64(shape: &[usize], values: &[f64]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(NpyDtype::F64, shape.to_vec(), data)
    }

    /// The elements of a float16/32/64 array (either byte order) as `f64` (exact); `None`
    /// for other dtypes.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        let d = self.header.dtype;
        if !d.is_float() {
            return None;
        }
        let values = self.data.chunks_exact(d.size).map(|b| {
            let mut le = [0u8; 8];
            le[..d.size].copy_from_slice(b);
            if d.big_endian {
                le[..d.size].reverse();
            }
            match d.size {
                2 => f64::from(f16_to_f32(u16::from_le_bytes([le[0], le[1]]))),
                4 => f64::from(f32::from_le_bytes([le[0], le[1], le[2], le[3]])),
                _ => f64::from_le_bytes(le),
            }
        });
        Some(values.collect())
    }

    /// The elements of a float16/32/64 array as `f32` (float64 rounded as `as f32` does);
    /// `None` for other dtypes.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let d = self.header.dtype;
        if d.size == 4 && d.is_float() {
            let values = self.data.chunks_exact(4).map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if d.big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            });
            return Some(values.collect());
        }
        Some(self.to_f64()?.into_iter().map(|v| v as f32).collect())
    }

    /// The `.npy` file of this array: format 1.0, header padded to 16 bytes as candle pads it.
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.header.write_to(w)?;
        w.write_all(&self.data)
    }

    /// The elements of an integer array (any size, either byte order) widened to `i128`;
    /// `None` for other dtypes.
    pub fn to_i128(&self) -> Option<Vec<i128>> {
        let d = self.header.dtype;
        if !d.is_integer() {
            return None;
        }
        let values = self
            .data
            .chunks_exact(d.size)
            .map(|b| {
                let mut le = [0u8; 8];
                le[..d.size].copy_from_slice(b);
                if d.big_endian {
                    le[..d.size].reverse();
                }
                let raw = u64::from_le_bytes(le);
                if d.kind == 'i' {
                    // Sign-extend from `size` bytes.
                    let shift = 64 - 8 * d.size as u32;
                    i128::from(((raw << shift) as i64) >> shift)
                } else {
                    i128::from(raw)
                }
            })
            .collect();
        Some(values)
    }
}

/// An open `.npz` file.
pub struct NpzArchive {
    path: PathBuf,
    zip: ZipArchive<BufReader<File>>,
    file_len: u64,
    limit: MemoryLimit,
    /// Array names (entry names without `.npy`) with their entry index, in archive order.
    entries: Vec<(String, usize)>,
}

impl NpzArchive {
    /// Opens `path` under the machine's default [`MemoryLimit`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_limited(path, MemoryLimit::default())
    }

    /// Opens `path`; no array larger than `limit` will be read (or inflated).
    pub fn open_limited(path: &Path, limit: MemoryLimit) -> Result<Self> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_path_buf(),
                    hint: "expected an .npz archive (np.savez / np.savez_compressed)".to_string(),
                }
            } else {
                DataError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| DataError::Io {
                path: path.to_path_buf(),
                source: e,
            })?
            .len();
        let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("not a readable .npz (zip) archive, truncated or corrupt: {e}"),
        })?;
        let entries = (0..zip.len())
            .filter_map(|i| {
                let name = zip.name_for_index(i)?.ok()?;
                let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
                Some((name, i))
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            zip,
            file_len,
            limit,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Array names in archive order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    /// The header of array `name`, without reading its data.
    pub fn header(&mut self, name: &str) -> Result<NpyHeader> {
        self.with_entry(name, false, |h, _| Ok(h.clone()))
    }

    /// Reads array `name` whole.
    pub fn read(&mut self, name: &str) -> Result<NpyArray> {
        self.with_entry(name, true, |header, data| {
            let len = header.data_len().unwrap_or(0);
            // Short data is reported by the entry's length check after `f`.
            let buf = read_declared(data, len).map_err(|e| e.to_string())?;
            Ok(NpyArray {
                header: header.clone(),
                data: buf,
            })
        })
    }

    /// Opens entry `name`, parses and checks its header, then hands `f` the header and a reader
    /// positioned at the data. The header must declare exactly the entry's size, and that size
    /// must fit the memory limit, before `f` runs. With `verify`, the rest of the entry is then read to its end and
    /// the data length, CRC-32 and absence of trailing bytes are checked (so `f` must consume
    /// exactly the declared data). `f`'s `Err(String)` becomes a `Malformed` naming the array.
    fn with_entry<T>(
        &mut self,
        name: &str,
        verify: bool,
        f: impl FnOnce(&NpyHeader, &mut dyn Read) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let path = self.path.clone();
        let bad = |reason: String| DataError::Malformed {
            path: path.clone(),
            reason: format!("array {name}: {reason}"),
        };
        let Some(&(_, index)) = self.entries.iter().find(|(n, _)| n == name) else {
            return Err(DataError::Malformed {
                path: path.clone(),
                reason: format!("no array {name}; the archive holds {:?}", self.names()),
            });
        };
        let (file_len, mem) = (self.file_len, self.limit);
        let entry = self
            .zip
            .by_index_raw(index)
            .map_err(|e| bad(format!("cannot open the zip entry: {e}")))?;
        if entry.encrypted() {
            return Err(bad("the zip entry is encrypted".to_string()));
        }
        let method = entry.compression();
        let (size, compressed, crc) = (entry.size(), entry.compressed_size(), entry.crc32());
        let limit = if method == CompressionMethod::STORE {
            file_len
        } else {
            compressed.saturating_mul(MAX_DEFLATE_RATIO)
        };
        if size > limit || compressed > file_len {
            return Err(bad(format!(
                "the zip entry claims {size} bytes ({compressed} compressed), more than a \
                 {file_len}-byte file can hold (truncated or corrupt .npz)"
            )));
        }
        // Before inflating: the entry's own size, then (below) what its header declares.
        mem.check(&path, || format!("array {name} (zip entry)"), size)?;
        let inner: Box<dyn Read + '_> = if method == CompressionMethod::STORE {
            Box::new(entry)
        } else if method == CompressionMethod::DEFLATE {
            Box::new(DeflateDecoder::new(entry))
        } else {
            return Err(bad(format!(
                "unsupported zip compression {method:?}; write the file with np.savez or \
                 np.savez_compressed"
            )));
        };
        let mut reader = Checked {
            inner,
            crc: Crc::new(),
            amount: 0,
        };
        let (header, header_len) = read_header(&mut reader).map_err(bad)?;
        let data_len = header
            .data_len()
            .ok_or_else(|| bad(format!("shape {:?} overflows usize", header.shape)))?;
        mem.check(
            &path,
            || format!("array {name} ({} {:?})", header.dtype.name(), header.shape),
            data_len as u64,
        )?;
        let declared = (header_len as u64).saturating_add(data_len as u64);
        // Checked even for a header-only read, so callers may size buffers from the header.
        if declared != size {
            return Err(bad(format!(
                "the header declares {} {:?} ({data_len} bytes of data) but the zip entry \
                 holds {} bytes after the {header_len}-byte header (truncated or corrupt .npz)",
                header.dtype.name(),
                header.shape,
                size.saturating_sub(header_len as u64)
            )));
        }
        let out = f(&header, &mut reader).map_err(|e| bad(read_reason(e)))?;
        if verify {
            let mut rest = [0u8; 1];
            let extra =
                read_full(&mut reader, &mut rest).map_err(|e| bad(read_reason(e.to_string())))?;
            if extra > 0 {
                return Err(bad("trailing data after the declared array".to_string()));
            }
            if reader.amount != size {
                return Err(bad(format!(
                    "truncated: the zip entry holds {} of its {size} bytes",
                    reader.amount
                )));
            }
            if reader.crc.sum() != crc {
                return Err(bad("CRC-32 mismatch: the data is corrupt".to_string()));
            }
        }
        Ok(out)
    }
}

/// Counts the bytes read (as u64: entries may pass 4 GiB) and their CRC-32.
struct Checked<R> {
    inner: R,
    crc: Crc,
    amount: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.amount += n as u64;
        Ok(n)
    }
}

fn read_reason(e: String) -> String {
    if e.contains("failed to fill whole buffer") || e.contains("unexpected end of file") {
        format!("truncated ({e})")
    } else {
        e
    }
}

/// Reads the `.npy` preamble and header; returns it with its total length in bytes.
fn read_header(r: &mut impl Read) -> std::result::Result<(NpyHeader, usize), String> {
    let mut pre = [0u8; 8];
    let got = read_full(r, &mut pre).map_err(|e| e.to_string())?;
    if got < pre.len() {
        return Err(format!("truncated .npy preamble ({got} bytes)"));
    }
    if &pre[..6] != NPY_MAGIC {
        return Err("not an .npy array (bad magic)".to_string());
    }
    let (len_bytes, utf8) = match pre[6] {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        v => return Err(format!("unsupported .npy format version {v}.{}", pre[7])),
    };
    let mut lb = [0u8; 4];
    if read_full(r, &mut lb[..len_bytes]).map_err(|e| e.to_string())? < len_bytes {
        return Err("truncated .npy header length".to_string());
    }
    let hlen = u32::from_le_bytes(lb) as usize;
    if hlen > MAX_HEADER {
        return Err(format!("implausible .npy header length {hlen}"));
    }
    let mut text = vec![0u8; hlen];
    if read_full(r, &mut text).map_err(|e| e.to_string())? < hlen {
        return Err("truncated .npy header".to_string());
    }
    let text = if utf8 {
        String::from_utf8(text).map_err(|_| "the .npy header is not UTF-8".to_string())?
    } else {
        text.iter().map(|&b| char::from(b)).collect()
    };
    let header = parse_header(&text).map_err(|e| format!("bad .npy header {text:?}: {e}"))?;
    Ok((header, 8 + len_bytes + hlen))
}

/// Parses the Python dict literal of an `.npy` header.
fn parse_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = Lit {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => {
                if !p.at_quote() {
                    return Err("structured dtypes are not supported".to_string());
                }
                descr = Some(p.string()?);
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    let descr = descr.ok_or("no 'descr'")?;
    Ok(NpyHeader {
        dtype: parse_descr(&descr)?,
        shape: shape.ok_or("no 'shape'")?,
        fortran_order: fortran.ok_or("no 'fortran_order'")?,
    })
}

fn parse_descr(d: &str) -> std::result::Result<NpyDtype, String> {
    let unsupported = || format!("unsupported dtype {d:?}");
    let mut chars = d.chars();
    let (big_endian, rest) = match chars.next() {
        Some('>') => (true, chars.as_str()),
        Some('<') | Some('|') => (false, chars.as_str()),
        Some('=') => (cfg!(target_endian = "big"), chars.as_str()),
        _ => (false, d),
    };
    let (kind, size) = match rest {
        "?" => ('b', 1),
        _ => {
            let mut c = rest.chars();
            let kind = c.next().ok_or_else(unsupported)?;
            let size: usize = c.as_str().parse().map_err(|_| unsupported())?;
            (kind, size)
        }
    };
    let ok = match kind {
        'b' => size == 1,
        'i' | 'u' => matches!(size, 1 | 2 | 4 | 8),
        'f' => matches!(size, 2 | 4 | 8),
        _ => false,
    };
    if !ok {
        return Err(unsupported());
    }
    Ok(NpyDtype {
        kind,
        size,
        big_endian,
    })
}

/// A cursor over a Python literal.
struct Lit<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lit<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", char::from(c), self.i))
        }
    }

    fn at_quote(&mut self) -> bool {
        self.ws();
        matches!(self.s.get(self.i), Some(b'\'') | Some(b'"'))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        if !self.at_quote() {
            return Err(format!("expected a string at byte {}", self.i));
        }
        let q = self.s[self.i];
        let start = self.i + 1;
        let end = self.s[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("unterminated string")?;
        self.i = start + end + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + end]).into_owned())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.ws();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            self.ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let d = digits
                .parse()
                .map_err(|_| format!("expected a dimension at byte {start}"))?;
            dims.push(d);
            // Python 2 wrote long integers as `3L`.
            if self.s.get(self.i) == Some(&b'L') {
                self.i += 1;
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// IEEE half precision → single (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac · 2^-24, exact in f32.
        (0, f) => {
            let v = f as f32 * (-24f32).exp2();
            return if sign == 0 { v } else { -v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7fc0_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Reads a lone `.npy` file (any header version, the dtypes of [`NpzArchive`]). The header's
/// declared data size must be exactly what the file holds after it, which is checked before
/// the data is allocated, as is the machine's default [`MemoryLimit`]; errors name the file and
/// what was expected.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    read_npy_limited(path, MemoryLimit::default())
}

/// [`read_npy`] under an explicit memory limit.
pub fn read_npy_limited(path: &Path, limit: MemoryLimit) -> Result<NpyArray> {
    let bad = |reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: "expected an .npy array (np.save)".to_string(),
            }
        } else {
            io_err(path, e)
        }
    })?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut reader = BufReader::new(file);
    let (header, header_len) = read_header(&mut reader).map_err(|e| bad(read_reason(e)))?;
    let data_len = header
        .data_len()
        .ok_or_else(|| bad(format!("shape {:?} overflows usize", header.shape)))?;
    let held = file_len.saturating_sub(header_len as u64);
    if data_len as u64 != held {
        let what = if (data_len as u64) > held {
            "truncated or corrupt .npy"
        } else {
            "trailing data after the array"
        };
        return Err(bad(format!(
            "the header declares {} {:?} ({data_len} bytes of data) but the file holds {held} \
             bytes after the {header_len}-byte header ({what})",
            header.dtype.name(),
            header.shape,
        )));
    }
    // The size is what the file holds (checked above); the limit still applies to it.
    limit.check(
        path,
        || format!("the array ({} {:?})", header.dtype.name(), header.shape),
        data_len as u64,
    )?;
    // The file may have shrunk since its size was read: grow with what arrives.
    let data = read_declared(&mut reader, data_len).map_err(|e| bad(read_reason(e.to_string())))?;
    if data.len() < data_len {
        return Err(bad(format!(
            "truncated: {} of the {data_len} bytes of data",
            data.len()
        )));
    }
    Ok(NpyArray { header, data })
}

/// Writes `array` as an `.npy` file (format 1.0).
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<()> {
    let file = File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = BufWriter::new(file);
    array.write_to(&mut w).map_err(|e| io_err(path, e))?;
    w.flush().map_err(|e| io_err(path, e))
}

/// Writes named arrays as an `.npz` archive (`np.savez`'s layout: entries `<name>.npy`, stored
/// uncompressed, in the given order; zip64 only for entries past 4 GiB). Writes `path` in
/// place: callers that need atomicity write a temporary file and rename it.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let file = File::create(path).map_err(|e| io_err(path, e))?;
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) => io_err(path, e),
        e => DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("cannot write the .npz archive: {e}"),
        },
    };
    let mut zip = ZipWriter::new(BufWriter::new(file));
    for (name, array) in arrays {
        // A generous bound on the entry (header + data) for the zip64 decision.
        let large = array.data.len() as u64 + (1 << 16) >= u64::from(u32::MAX);
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(large);
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zip_err)?;
        array.write_to(&mut zip).map_err(|e| io_err(path, e))?;
    }
    let mut w = zip.finish().map_err(zip_err)?;
    w.flush().map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Like `read_exact`, but reports how much was read instead of failing on end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Loads ADM-format images (module documentation) into a data set.
///
/// `num_classes`: the class count when known (labels must be below it); otherwise the largest
/// label + 1 (labels must be below [`NPZ_MAX_IMPLICIT_CLASSES`]), or 1 without labels (every
/// image labelled 0). The images must fit the machine's default [`MemoryLimit`].
pub fn load_npz(path: &Path, num_classes: Option<usize>) -> Result<ImageDataset> {
    load_npz_limited(path, num_classes, MemoryLimit::default())
}

/// [`load_npz`] under an explicit memory limit.
pub fn load_npz_limited(
    path: &Path,
    num_classes: Option<usize>,
    limit: MemoryLimit,
) -> Result<ImageDataset> {
    if num_classes == Some(0) {
        return Err(DataError::Invalid {
            field: "num_classes",
            reason: "must be at least 1".to_string(),
        });
    }
    let mut npz = NpzArchive::open_limited(path, limit)?;
    let malformed = |reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    if !npz.has("arr_0") {
        return Err(malformed(format!(
            "no array arr_0 (expected arr_0 = uint8 images [N, H, W, C]); the archive holds {:?}",
            npz.names()
        )));
    }
    let h = npz.header("arr_0")?;
    let (n, height, width, channels) = match *h.shape.as_slice() {
        [n, hh, ww, c] => (n, hh, ww, c),
        [n, hh, ww] => (n, hh, ww, 1),
        ref dims => {
            return Err(malformed(format!(
                "array arr_0 has shape {dims:?} (rank {}); expected uint8 images [N, H, W, C]",
                dims.len()
            )))
        }
    };
    if h.dtype.kind != 'u' || h.dtype.size != 1 {
        return Err(malformed(format!(
            "array arr_0 is {} {:?}; expected uint8 images [N, H, W, C] with values 0..=255",
            h.dtype.name(),
            h.shape
        )));
    }
    if channels != 1 && channels != 3 {
        return Err(malformed(format!(
            "array arr_0 has shape {:?}: {channels} channels; expected [N, H, W, C] with C = 1 \
             or 3",
            h.shape
        )));
    }
    if n == 0 || height == 0 || width == 0 {
        return Err(malformed(format!(
            "array arr_0 has shape {:?}: no images",
            h.shape
        )));
    }
    if h.fortran_order {
        return Err(malformed(
            "array arr_0 is stored in Fortran order; save np.ascontiguousarray(images)".to_string(),
        ));
    }

    // Labels first: they are small, and a bad label file should not cost reading the images.
    let label_name = ["arr_1", "labels"].into_iter().find(|n| npz.has(n));
    let labels = match label_name {
        Some(name) => Some(read_labels(&mut npz, name, n, num_classes)?),
        None => None,
    };
    let num_classes = match (num_classes, &labels) {
        (Some(k), _) => k,
        (None, Some(l)) => l.iter().max().map_or(1, |&m| m as usize + 1),
        (None, None) => 1,
    };

    let stride = height * width * channels;
    let mut images = vec![0u8; h.data_len().unwrap_or(0)];
    npz.with_entry("arr_0", true, |_, r| {
        let mut buf = vec![0u8; stride];
        let plane = height * width;
        for dst in images.chunks_exact_mut(stride) {
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            // HWC → CHW.
            for (i, px) in buf.chunks_exact(channels).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    dst[c * plane + i] = v;
                }
            }
        }
        Ok(())
    })?;
    Ok(ImageDataset {
        images,
        labels: labels.unwrap_or_else(|| vec![0; n]),
        channels,
        height,
        width,
        num_classes,
    })
}

pub(crate) fn read_labels(
    npz: &mut NpzArchive,
    name: &str,
    n: usize,
    num_classes: Option<usize>,
) -> Result<Vec<u32>> {
    let path = npz.path().to_path_buf();
    let bad = |reason: String| DataError::Malformed {
        path: path.clone(),
        reason: format!("array {name} (labels): {reason}"),
    };
    let h = npz.header(name)?;
    if !h.dtype.is_integer() {
        return Err(bad(format!(
            "dtype {} is not an integer type; expected integer class labels",
            h.dtype.name()
        )));
    }
    if h.shape != [n] {
        return Err(bad(format!(
            "shape {:?}; expected [{n}], one label per image of arr_0",
            h.shape
        )));
    }
    let values = npz.read(name)?.to_i128().unwrap_or_default();
    // Labels are stored as u32.
    let limit = num_classes
        .unwrap_or(NPZ_MAX_IMPLICIT_CLASSES)
        .min(u32::MAX as usize + 1);
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v < 0 {
                Err(bad(format!("label {v} at index {i} is negative")))
            } else if v >= limit as i128 {
                Err(bad(match num_classes {
                    Some(k) if v < k as i128 => {
                        format!("label {v} at index {i} does not fit in u32")
                    }
                    Some(k) => format!("label {v} at index {i} is out of range for {k} classes"),
                    None => format!(
                        "label {v} at index {i} is too large (at most {} classes without an \
                         explicit class count)",
                        NPZ_MAX_IMPLICIT_CLASSES
                    ),
                }))
            } else {
                Ok(v as u32)
            }
        })
        .collect()
}

/// An `.npz` archive written array by array, each array's data appended in pieces: for
/// outputs too large to hold in memory (a data set's latents). Arrays are stored
/// uncompressed in the order they are begun, as [`write_npz`] stores them; an array must
/// receive exactly the bytes its header declares before the next begins. Writes `path` in
/// place: wrap it in [`cbs_core::atomic::write_with_path`] for a crash-safe file.
pub struct NpzStreamWriter {
    path: PathBuf,
    zip: ZipWriter<BufWriter<File>>,
    /// The open array: its name and the bytes it still expects.
    open: Option<(String, usize)>,
}

impl NpzStreamWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            zip: ZipWriter::new(BufWriter::new(file)),
            open: None,
        })
    }

    fn zip_err(&self, e: zip::result::ZipError) -> DataError {
        match e {
            zip::result::ZipError::Io(e) => io_err(&self.path, e),
            e => DataError::Malformed {
                path: self.path.clone(),
                reason: format!("cannot write the .npz archive: {e}"),
            },
        }
    }

    fn check_closed(&self) -> Result<()> {
        match &self.open {
            Some((name, left)) if *left > 0 => Err(DataError::Invalid {
                field: "npz stream",
                reason: format!("array `{name}` is still missing {left} bytes"),
            }),
            _ => Ok(()),
        }
    }

    /// Starts array `name` of `header`'s dtype and shape (the previous one must be complete).
    pub fn begin(&mut self, name: &str, header: &NpyHeader) -> Result<()> {
        self.check_closed()?;
        let len = header.data_len().ok_or_else(|| DataError::Invalid {
            field: "shape",
            reason: format!("array `{name}` of shape {:?} overflows", header.shape),
        })?;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(len as u64 + (1 << 16) >= u64::from(u32::MAX));
        self.zip
            .start_file(format!("{name}.npy"), options)
            .map_err(|e| self.zip_err(e))?;
        header
            .write_to(&mut self.zip)
            .map_err(|e| io_err(&self.path, e))?;
        self.open = Some((name.to_string(), len));
        Ok(())
    }

    /// Appends raw bytes (in the header's byte order) to the open array.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((name, left)) = &mut self.open else {
            return Err(DataError::Invalid {
                field: "npz stream",
                reason: "append before begin".into(),
            });
        };
        if bytes.len() > *left {
            return Err(DataError::Invalid {
                field: "npz stream",
                reason: format!(
                    "{} bytes appended to array `{name}`, which expects only {left} more",
                    bytes.len()
                ),
            });
        }
        *left -= bytes.len();
        self.zip.write_all(bytes).map_err(|e| io_err(&self.path, e))
    }

    /// Appends float32 values (little-endian) to the open array.
    pub fn append_f32(&mut self, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.append(&bytes)
    }

    /// A whole array at once.
    pub fn write_array(&mut self, name: &str, array: &NpyArray) -> Result<()> {
        self.begin(name, &array.header)?;
        self.append(&array.data)
    }

    /// Completes the archive (every array complete) and flushes it.
    pub fn finish(self) -> Result<()> {
        self.check_closed()?;
        let path = self.path.clone();
        let mut w = self.zip.finish().map_err(|e| match e {
            zip::result::ZipError::Io(e) => io_err(&path, e),
            e => DataError::Malformed {
                path: path.clone(),
                reason: format!("cannot write the .npz archive: {e}"),
            },
        })?;
        w.flush().map_err(|e| io_err(&path, e))
    }
}

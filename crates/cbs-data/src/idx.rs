//! Reader for the IDX format (MNIST family), plain or gzip-compressed.
//!
//! Layout, all big-endian: two zero bytes, a type code, the number of
//! dimensions, one `u32` per dimension, then the row-major payload.
//!
//! The payload size the dimensions declare is checked against the [`MemoryLimit`] before
//! anything is allocated or inflated, and inflation stops at that size: a gzip stream cannot be
//! sized without inflating it, so a small "bomb" would otherwise fill memory first.

use std::fs::File;
use std::io::{self, BufReader, Cursor, ErrorKind, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};
use crate::limit::{read_declared, MemoryLimit};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const TYPE_U8: u8 = 0x08;

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// Row-major payload; its length is the product of `dims`.
    pub data: Vec<u8>,
}

/// Reads an unsigned-byte (type `0x08`) IDX file.
///
/// Gzip is detected by its `1f 8b` magic rather than the extension, so a
/// decompressed file that kept its `.gz` name (or the reverse) still loads. The payload must
/// fit the machine's default [`MemoryLimit`].
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    read_idx_limited(path, MemoryLimit::default())
}

/// [`read_idx`] under an explicit memory limit on the declared payload.
pub fn read_idx_limited(path: &Path, limit: MemoryLimit) -> Result<IdxArray> {
    let mut file = File::open(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: "the file does not exist".to_string(),
            }
        } else {
            io_error(path, e)
        }
    })?;

    let mut prefix = Vec::with_capacity(2);
    (&mut file)
        .take(2)
        .read_to_end(&mut prefix)
        .map_err(|e| io_error(path, e))?;
    let gzip = prefix == GZIP_MAGIC;
    // The sniffed bytes are put back in front so the parser sees the whole file.
    let raw = Cursor::new(prefix).chain(BufReader::new(file));
    if gzip {
        parse(MultiGzDecoder::new(raw), path, true, limit)
    } else {
        parse(raw, path, false, limit)
    }
}

fn parse<R: Read>(mut reader: R, path: &Path, gzip: bool, limit: MemoryLimit) -> Result<IdxArray> {
    let malformed = |reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let read_err = |e: io::Error| read_error(path, gzip, e);

    let mut header = [0u8; 4];
    let got = read_full(&mut reader, &mut header).map_err(read_err)?;
    if got == 0 {
        return Err(malformed("empty file (no IDX header)".to_string()));
    }
    if got < header.len() {
        return Err(malformed(format!(
            "truncated header: expected 4 bytes, found {got}"
        )));
    }
    if header[0] != 0 || header[1] != 0 {
        return Err(malformed(format!(
            "bad magic: first two bytes are {:02x} {:02x}, expected 00 00",
            header[0], header[1]
        )));
    }
    if header[2] != TYPE_U8 {
        return Err(malformed(format!(
            "unsupported IDX element type 0x{:02x}; only unsigned byte (0x08) is supported",
            header[2]
        )));
    }
    let ndims = usize::from(header[3]);
    if ndims == 0 {
        return Err(malformed("IDX header declares zero dimensions".to_string()));
    }

    let mut dim_bytes = vec![0u8; ndims * 4];
    let got = read_full(&mut reader, &mut dim_bytes).map_err(read_err)?;
    if got < dim_bytes.len() {
        return Err(malformed(format!(
            "truncated header: expected {} bytes of dimensions, found {got}",
            dim_bytes.len()
        )));
    }
    let mut dims = Vec::with_capacity(ndims);
    for chunk in dim_bytes.chunks_exact(4) {
        let d = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let d = usize::try_from(d)
            .map_err(|_| malformed(format!("dimension {d} does not fit in usize")))?;
        dims.push(d);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(format!("dimensions {dims:?} overflow usize")))?;

    limit.check(
        path,
        || format!("the IDX payload of dimensions {dims:?}"),
        expected as u64,
    )?;
    let data = read_declared(&mut reader, expected).map_err(read_err)?;
    if data.len() < expected {
        return Err(malformed(format!(
            "truncated: expected {expected} bytes of data, found {}",
            data.len()
        )));
    }

    // Reading to EOF also makes the gzip decoder verify the trailing CRC, so
    // corruption that happens to inflate to the right length is still caught.
    let mut extra = [0u8; 1];
    if read_full(&mut reader, &mut extra).map_err(read_err)? > 0 {
        return Err(malformed(format!(
            "trailing data after the {expected}-byte payload declared by dimensions {dims:?}"
        )));
    }
    Ok(IdxArray { dims, data })
}

/// Like `read_exact`, but reports how much was read instead of failing on EOF,
/// so truncation messages can say how many bytes were found.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_error(path: &Path, source: io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// flate2 reports bad compressed data as these I/O kinds; those are content
/// problems, not OS failures, so they become `Malformed`.
fn read_error(path: &Path, gzip: bool, e: io::Error) -> DataError {
    let corrupt = matches!(
        e.kind(),
        ErrorKind::InvalidInput | ErrorKind::InvalidData | ErrorKind::UnexpectedEof
    );
    if gzip && corrupt {
        DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("gzip: {e}"),
        }
    } else {
        io_error(path, e)
    }
}

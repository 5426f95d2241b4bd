//! The memory limit of the data readers.
//!
//! Every reader takes the size a file *declares* (an `.npy` shape, IDX dimensions, a zip
//! entry's uncompressed size, CIFAR batch sizes, an image folder's `files × crop`) and checks it
//! against a [`MemoryLimit`] before allocating or inflating anything, so a 300-byte file that
//! claims a terabyte, or a small gzip / deflate "bomb", is a clean [`DataError::TooLarge`]
//! instead of an abort. The limit is a setting, not a cap on the formats: ImageNet-64's `.npz`
//! is 15 GB, so a machine that has the memory raises it (`data.max_memory_gib` in a run
//! config).
//!
//! In a config the limit is a number of GiB (`max_memory_gib = 24`, fractions allowed); the
//! default is half the machine's physical memory (`MemTotal` of `/proc/meminfo`), or 8 GiB
//! where that cannot be read.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{DataError, Result};

const GIB: u64 = 1 << 30;
/// Where physical memory cannot be read (not Linux, a sandbox hiding `/proc`).
const FALLBACK_BYTES: u64 = 8 * GIB;
/// Buffers whose size comes from a file grow from at most this much, so a truncated file that
/// declares a large (allowed) size does not cost that size up front.
const FIRST_CHUNK: usize = 64 << 20;

/// The most bytes one reader may allocate for what a file declares (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryLimit {
    pub bytes: u64,
}

impl MemoryLimit {
    /// The configuration key users are told to raise.
    pub const CONFIG_KEY: &'static str = "data.max_memory_gib";

    pub const fn bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    /// `gib` GiB (fractions allowed); `None` unless finite and positive.
    pub fn from_gib(gib: f64) -> Option<Self> {
        // 2^34 GiB = 16 EiB: anything larger saturates rather than wrapping.
        (gib.is_finite() && gib > 0.0).then(|| Self {
            bytes: (gib * GIB as f64).min(u64::MAX as f64).max(1.0) as u64,
        })
    }

    pub fn gib(self) -> f64 {
        self.bytes as f64 / GIB as f64
    }

    /// No limit at all (tests of the writers, callers that bound memory themselves).
    pub const UNLIMITED: MemoryLimit = MemoryLimit { bytes: u64::MAX };

    /// Half the machine's physical memory, or 8 GiB where it is unknown.
    pub fn machine_default() -> Self {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_mem_total(&s));
        Self {
            bytes: total.map_or(FALLBACK_BYTES, |t| (t / 2).max(1)),
        }
    }

    /// `Ok` when `declared` bytes of `what` in `path` fit; otherwise [`DataError::TooLarge`].
    pub fn check(self, path: &Path, what: impl FnOnce() -> String, declared: u64) -> Result<()> {
        if declared <= self.bytes {
            return Ok(());
        }
        Err(DataError::TooLarge {
            path: path.to_path_buf(),
            what: what(),
            declared,
            limit: self,
        })
    }
}

impl Default for MemoryLimit {
    fn default() -> Self {
        Self::machine_default()
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human(self.bytes))
    }
}

/// Bytes as `N bytes (X.Y GiB)` (or MiB / KiB), for messages.
pub(crate) fn human(bytes: u64) -> String {
    let (unit, name) = match bytes {
        b if b >= GIB => (GIB, "GiB"),
        b if b >= 1 << 20 => (1 << 20, "MiB"),
        _ => (1 << 10, "KiB"),
    };
    format!("{bytes} bytes ({:.1} {name})", bytes as f64 / unit as f64)
}

/// `MemTotal:  16318480 kB` → bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => value.checked_mul(1024),
        _ => None,
    }
}

/// A config stores the limit in GiB, the unit people size machines in.
impl Serialize for MemoryLimit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_f64(self.gib())
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // f64 also accepts TOML/JSON integers (`max_memory_gib = 24`).
        let gib = f64::deserialize(d)?;
        MemoryLimit::from_gib(gib).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid memory limit {gib}: expected a positive number of GiB"
            ))
        })
    }
}

/// Reads exactly `len` bytes (a size already checked against the limit) from `r`. The buffer
/// grows geometrically but never past `len`, so a short stream costs what it holds, and a
/// long one is never read past `len` (an inflater stops there). `Ok` holds fewer bytes when the
/// stream ends early; the caller reports the truncation.
pub(crate) fn read_declared<R: Read + ?Sized>(r: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len.min(FIRST_CHUNK));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let target = buf
                .capacity()
                .saturating_mul(2)
                .clamp(FIRST_CHUNK.min(len), len);
            buf.reserve_exact(target - buf.len());
        }
        // `read_to_end` only grows a full buffer, and `take` ends the read exactly when the
        // spare capacity is full, so the capacity stays what was reserved here.
        let room = (buf.capacity() - buf.len()).min(len - buf.len());
        let before = buf.len();
        Read::take(&mut *r, room as u64).read_to_end(&mut buf)?;
        if buf.len() - before < room {
            break; // end of the stream
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_kib() {
        let s = "MemTotal:       16318480 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(s), Some(16318480 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
        assert!(MemoryLimit::machine_default().bytes > 0);
    }

    #[test]
    fn gib_round_trips_and_rejects_non_positive() {
        assert_eq!(MemoryLimit::from_gib(2.0).unwrap().bytes, 2 << 30);
        assert_eq!(MemoryLimit::from_gib(0.5).unwrap().gib(), 0.5);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(MemoryLimit::from_gib(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn read_declared_stops_at_len_and_reports_short_streams() {
        let data = vec![7u8; 1000];
        assert_eq!(read_declared(&mut &data[..], 10).unwrap().len(), 10);
        assert_eq!(read_declared(&mut &data[..], 5000).unwrap().len(), 1000);
        assert!(read_declared(&mut &data[..], 0).unwrap().is_empty());
    }
}

//! Structure-aware generation of valid inputs, written with the project's own writers where it
//! has them (`write_npy` / `write_npz`, candle's safetensors `save`, `TrainConfig::to_toml`,
//! `SplitsFile::to_toml`), and with the `image` crate, flate2 and a small zip writer (stored
//! and deflated entries, as `np.savez_compressed` writes them) for the rest.
//!
//! An [`Input`] is one or more files (relative path → bytes): readers take paths, and some
//! take folders (CIFAR batches, image folders).

pub mod arrays;
pub mod images;
pub mod text;
pub mod torch;

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::{DeflateEncoder, GzEncoder};
use flate2::{Compression, Crc};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The files of one input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// Paths relative to the input's root (`input.npz`, `cat/0.png`), and their bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// Whether the reader takes the root folder (else the first file's path).
    pub folder: bool,
}

impl Input {
    /// One file named `name`.
    pub fn file(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            files: vec![(name.to_string(), bytes)],
            folder: false,
        }
    }

    /// Writes the files below `root` (created fresh) and returns the path the reader takes.
    pub fn write_to(&self, root: &Path) -> std::io::Result<PathBuf> {
        if root.exists() {
            std::fs::remove_dir_all(root)?;
        }
        std::fs::create_dir_all(root)?;
        for (name, bytes) in &self.files {
            let p = root.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, bytes)?;
        }
        Ok(match (&self.folder, self.files.first()) {
            (false, Some((name, _))) => root.join(name),
            _ => root.to_path_buf(),
        })
    }

    /// Reads back an input written by [`Input::write_to`] (or saved by the harness): a file,
    /// or every file below a folder.
    pub fn read_from(path: &Path) -> std::io::Result<Self> {
        if path.is_file() {
            let name = path
                .file_name()
                .map_or("input".into(), |n| n.to_string_lossy().into_owned());
            return Ok(Input::file(&name, std::fs::read(path)?));
        }
        let mut files = Vec::new();
        collect(path, path, &mut files)?;
        files.sort();
        Ok(Input {
            files,
            folder: true,
        })
    }

    pub fn total_len(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(&p)?));
        }
    }
    Ok(())
}

/// A small dimension, 0 now and then (empty arrays are valid and often mishandled).
pub fn dim(rng: &mut ChaCha8Rng, max: usize) -> usize {
    if rng.random_bool(0.05) {
        0
    } else {
        rng.random_range(1..=max)
    }
}

pub fn random_bytes(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// A zip archive (no zip64) of `(name, data, deflate)` entries, as NumPy writes `.npz` files.
pub fn zip(entries: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, deflate) in entries {
        let mut crc = Crc::new();
        crc.update(data);
        let body = if *deflate {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::fast());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        } else {
            data.clone()
        };
        let method: u16 = if *deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let fields = |v: &mut Vec<u8>| {
            v.extend(20u16.to_le_bytes()); // version needed
            v.extend(0u16.to_le_bytes()); // flags
            v.extend(method.to_le_bytes());
            v.extend(0u16.to_le_bytes()); // time
            v.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            v.extend(crc.sum().to_le_bytes());
            v.extend((body.len() as u32).to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
            v.extend(0u16.to_le_bytes()); // extra length
        };
        out.extend(0x04034b50u32.to_le_bytes());
        fields(&mut out);
        out.extend(name.as_bytes());
        out.extend(&body);
        central.extend(0x02014b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        fields(&mut central);
        central.extend([0; 6]); // comment length, disk, internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

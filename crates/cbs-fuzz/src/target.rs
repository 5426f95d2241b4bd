//! The fuzz targets: for each reader, how to generate a valid input and how to feed a file to
//! the project's public reader.
//!
//! Adding a target (the pickle readers of `cbs_torch`, for instance) takes a variant of
//! [`Target`], one arm in [`Target::spec`] naming a generator and a reader function, and those
//! two functions (a generator in `gen/`, a `fn(&Path, MemoryLimit) -> Result<(), String>`
//! here). `--target all` picks it up from [`Target::all`].

use std::path::Path;

use candle_core::Device;
use cbs_data::{FolderOptions, MemoryLimit, Split};
use clap::ValueEnum;
use rand_chacha::ChaCha8Rng;

use crate::gen::{self, Input};

/// What the harness needs of a target.
#[derive(Clone, Copy)]
pub struct TargetSpec {
    pub name: &'static str,
    /// A valid input (the `Path` is a scratch folder for writers that only write files).
    pub generate: fn(&mut ChaCha8Rng, &Path) -> Input,
    /// Runs the reader on the written input: `Ok` when it loads, `Err` for a clean error.
    pub read: fn(&Path, MemoryLimit) -> Result<(), String>,
    /// Text formats also get their numbers replaced by interesting ones.
    pub text: bool,
}

/// The readers under test (`cbs-fuzz --target <name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `cbs_data::read_npy` (`sample --noise`).
    Npy,
    /// `cbs_data::NpzArchive`, `load_npz`, `load_latents` (stored and deflated entries).
    Npz,
    /// Checkpoint weights: `cbs_models::weights::load_safetensors` (what
    /// `cbs_run::checkpoint::load_for_inference` reads), then the name/shape check.
    Safetensors,
    /// `cbs_data::read_idx` on a raw IDX file.
    Idx,
    /// `cbs_data::read_idx` on a gzipped IDX file.
    IdxGz,
    /// `cbs_data::load_cifar10` / `load_cifar100` (test split).
    Cifar,
    /// `cbs_data::load_image_folder` on PNG files.
    ImageFolderPng,
    /// `cbs_data::load_image_folder` on JPEG files.
    ImageFolderJpeg,
    /// `cbs_run::TrainConfig::from_file` (TOML run config).
    Config,
    /// `cbs_run::SplitsFile::from_file` (`splits.toml`).
    Splits,
    /// `cbs_split::GmmOracle::from_file` (mixture JSON).
    GmmJson,
    /// `cbs_torch::TorchFile` on the zip layout of `torch.save` (every tensor loaded).
    PickleZip,
    /// `cbs_torch::TorchFile` on the legacy (pre-1.6) layout.
    PickleLegacy,
    /// Self-test: a reader that panics (the harness must report it).
    #[value(hide = true)]
    SelftestPanic,
    /// Self-test: a reader that allocates past the cap (the run must stop and save it).
    #[value(hide = true)]
    SelftestAlloc,
    /// Self-test: a reader that never returns (the watchdog must save it).
    #[value(hide = true)]
    SelftestHang,
}

impl Target {
    /// Every real target (`--target all`), not the self-tests.
    pub fn all() -> Vec<Target> {
        Target::value_variants()
            .iter()
            .copied()
            .filter(|t| !t.is_selftest())
            .collect()
    }

    pub fn is_selftest(self) -> bool {
        matches!(
            self,
            Target::SelftestPanic | Target::SelftestAlloc | Target::SelftestHang
        )
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn spec(self) -> TargetSpec {
        let s = |name, generate, read, text| TargetSpec {
            name,
            generate,
            read,
            text,
        };
        match self {
            Target::Npy => s("npy", gen::arrays::npy, read_npy, true),
            Target::Npz => s("npz", gen::arrays::npz, read_npz, false),
            Target::Safetensors => s(
                "safetensors",
                gen::arrays::safetensors,
                read_safetensors,
                true,
            ),
            Target::Idx => s("idx", gen::arrays::idx, read_idx, false),
            Target::IdxGz => s("idx-gz", gen::arrays::idx_gz, read_idx, false),
            Target::Cifar => s("cifar", gen::arrays::cifar, read_cifar, false),
            Target::ImageFolderPng => s(
                "image-folder-png",
                gen::images::png_folder,
                read_folder,
                false,
            ),
            Target::ImageFolderJpeg => s(
                "image-folder-jpeg",
                gen::images::jpeg_folder,
                read_folder,
                false,
            ),
            Target::Config => s("config", gen::text::config, read_config, true),
            Target::Splits => s("splits", gen::text::splits, read_splits, true),
            Target::GmmJson => s("gmm-json", gen::text::gmm_json, read_gmm, true),
            Target::PickleZip => s("pickle-zip", gen::torch::zip, read_torch, false),
            Target::PickleLegacy => s("pickle-legacy", gen::torch::legacy, read_torch, false),
            Target::SelftestPanic => s("selftest-panic", tiny, selftest_panic, false),
            Target::SelftestAlloc => s("selftest-alloc", tiny, selftest_alloc, false),
            Target::SelftestHang => s("selftest-hang", tiny, selftest_hang, false),
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn read_npy(p: &Path, limit: MemoryLimit) -> Result<(), String> {
    let a = cbs_data::read_npy_limited(p, limit).map_err(err)?;
    // The conversions callers apply (noise → f32, labels → integers).
    let _ = (a.to_f32(), a.to_f64(), a.to_i128());
    Ok(())
}

fn read_npz(p: &Path, limit: MemoryLimit) -> Result<(), String> {
    // The data-set loaders too: a file is ADM images or latents, not both, so their errors
    // are expected; they run for their panics and allocations. The outcome is the generic
    // reader's.
    let _ = cbs_data::load_npz_limited(p, None, limit);
    let _ = cbs_data::load_latents_limited(p, None, cbs_data::SD_VAE_SCALE, limit);
    let mut npz = cbs_data::NpzArchive::open_limited(p, limit).map_err(err)?;
    for name in npz.names() {
        npz.header(&name).map_err(err)?;
        let a = npz.read(&name).map_err(err)?;
        std::hint::black_box(a.to_f64());
    }
    Ok(())
}

fn read_safetensors(p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    let tensors = cbs_models::weights::load_safetensors(p, &Device::Cpu).map_err(err)?;
    // What building a model from the file does next: every tensor read as f32.
    for t in cbs_models::weights::strip_wrapper_prefix(tensors).values() {
        let v = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        std::hint::black_box(v);
    }
    Ok(())
}

fn read_torch(p: &Path, limit: MemoryLimit) -> Result<(), String> {
    let limits = cbs_torch::Limits {
        max_tensor_bytes: limit.bytes,
        ..cbs_torch::Limits::default()
    };
    let f = cbs_torch::TorchFile::open_with(p, limits).map_err(err)?;
    let (tensors, _) = f.load_all(None).map_err(err)?;
    std::hint::black_box(tensors);
    Ok(())
}

fn read_idx(p: &Path, limit: MemoryLimit) -> Result<(), String> {
    cbs_data::read_idx_limited(p, limit).map(drop).map_err(err)
}

fn read_cifar(dir: &Path, limit: MemoryLimit) -> Result<(), String> {
    let r = if dir.join("test.bin").exists() {
        cbs_data::load_cifar100_limited(dir, Split::Test, limit)
    } else {
        cbs_data::load_cifar10_limited(dir, Split::Test, limit)
    };
    r.map(drop).map_err(err)
}

fn read_folder(dir: &Path, limit: MemoryLimit) -> Result<(), String> {
    // Both conversions (RGB and luma), on two threads as training decodes.
    for channels in [3, 1] {
        let opts = FolderOptions {
            image_size: 8,
            channels,
            threads: 2,
        };
        cbs_data::load_image_folder_limited(dir, &opts, limit).map_err(err)?;
    }
    Ok(())
}

fn read_config(p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    let cfg = cbs_run::TrainConfig::from_file(p).map_err(err)?;
    // What the trainer does with it next: the resolved copy is written back as TOML.
    let _ = cfg.to_toml();
    Ok(())
}

fn read_splits(p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    let s = cbs_run::SplitsFile::from_file(p).map_err(err)?;
    let _ = s.edges();
    Ok(())
}

fn read_gmm(p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    cbs_split::GmmOracle::from_file(p).map(drop).map_err(err)
}

fn tiny(_rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    Input::file("input.bin", b"selftest".to_vec())
}

fn selftest_panic(_p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    panic!("selftest: a reader bug");
}

fn selftest_alloc(_p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    let (single, _) = crate::alloc::caps();
    let v: Vec<u8> = Vec::with_capacity(single.saturating_add(1) as usize);
    std::hint::black_box(&v);
    Ok(())
}

fn selftest_hang(_p: &Path, _limit: MemoryLimit) -> Result<(), String> {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

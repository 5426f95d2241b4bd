//! Developer tool for `scripts/parity/inception_parity.py` (not part of `cbs`): writes the
//! deterministic random FID-Inception weights and test images, and the Rust Inception features of
//! images, so that the same network can be run in PyTorch (pytorch-fid) and compared.
//!
//! ```text
//! cargo run --release -p cbs-eval --example inception_dump -- weights OUT.safetensors [SEED]
//! cargo run --release -p cbs-eval --example inception_dump -- images OUT.npy N H W SEED
//! cargo run --release -p cbs-eval --example inception_dump -- features WEIGHTS IMAGES.npy PREFIX [BATCH]
//! ```
//!
//! `images` writes f32 `[N, 3, H, W]` in [0, 1] (smooth random blobs plus noise). `features`
//! loads WEIGHTS (`.safetensors`, zip or legacy `.pth`), runs pytorch-fid's preprocessing and the
//! network, and writes `PREFIX.pool.npy` `[N, 2048]`, `PREFIX.logits.npy` `[N, 1008]` (no fc
//! bias) and `PREFIX.spatial.npy` `[N, 2023]` (NHWC order).

use std::path::Path;

use candle_core::{Device, Tensor};
use cbs_eval::inception::{self, InceptionV3};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> BoxResult<T> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {what}"))?
        .parse::<T>()
        .map_err(|_| format!("bad {what}: {}", args[i]).into())
}

/// Small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn images(n: usize, h: usize, w: usize, seed: u64) -> BoxResult<Tensor> {
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x1234_5678);
    let mut v = Vec::with_capacity(n * 3 * h * w);
    for _ in 0..n {
        // A few Gaussian blobs per channel over a random background, plus pixel noise.
        for _ in 0..3 {
            let base = rng.next();
            let blobs: Vec<(f64, f64, f64, f64)> = (0..4)
                .map(|_| {
                    (
                        rng.next(),
                        rng.next(),
                        0.05 + 0.3 * rng.next(),
                        rng.next() - 0.5,
                    )
                })
                .collect();
            for y in 0..h {
                for x in 0..w {
                    let (fy, fx) = ((y as f64 + 0.5) / h as f64, (x as f64 + 0.5) / w as f64);
                    let mut a = base;
                    for &(cy, cx, r, amp) in &blobs {
                        let d2 = (fy - cy).powi(2) + (fx - cx).powi(2);
                        a += amp * (-d2 / (2.0 * r * r)).exp();
                    }
                    a += 0.1 * (rng.next() - 0.5);
                    v.push(a.clamp(0.0, 1.0) as f32);
                }
            }
        }
    }
    Ok(Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu)?)
}

fn features(weights: &Path, images: &Path, prefix: &str, batch: usize) -> BoxResult<()> {
    let dev = Device::Cpu;
    let model = InceptionV3::load(weights, &dev)?;
    let x = Tensor::read_npy(images)?;
    let n = x.dim(0)?;
    let (mut pool, mut logits, mut spatial) = (vec![], vec![], vec![]);
    let started = std::time::Instant::now();
    for start in (0..n).step_by(batch.max(1)) {
        let len = batch.max(1).min(n - start);
        let (p, l, s) = model.forward_images01(&x.narrow(0, start, len)?)?;
        pool.push(p);
        logits.push(l);
        spatial.push(s);
        eprintln!("features: {}/{n}", start + len);
    }
    let secs = started.elapsed().as_secs_f64();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "speed: cbs {:.3} images/s ({threads} threads, batch {batch}, resize included)",
        n as f64 / secs
    );
    Tensor::cat(&pool, 0)?.write_npy(format!("{prefix}.pool.npy"))?;
    Tensor::cat(&logits, 0)?.write_npy(format!("{prefix}.logits.npy"))?;
    Tensor::cat(&spatial, 0)?.write_npy(format!("{prefix}.spatial.npy"))?;
    Ok(())
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("weights") => {
            let out: String = arg(&args, 2, "OUT")?;
            let seed: u64 = if args.len() > 3 {
                arg(&args, 3, "SEED")?
            } else {
                0
            };
            let w = inception::random_weights(seed)?;
            candle_core::safetensors::save(&w, &out)?;
        }
        Some("images") => {
            let out: String = arg(&args, 2, "OUT")?;
            let (n, h, w, seed) = (
                arg(&args, 3, "N")?,
                arg(&args, 4, "H")?,
                arg(&args, 5, "W")?,
                arg(&args, 6, "SEED")?,
            );
            images(n, h, w, seed)?.write_npy(out)?;
        }
        Some("features") => {
            let weights: String = arg(&args, 2, "WEIGHTS")?;
            let imgs: String = arg(&args, 3, "IMAGES")?;
            let prefix: String = arg(&args, 4, "PREFIX")?;
            let batch: usize = if args.len() > 5 {
                arg(&args, 5, "BATCH")?
            } else {
                4
            };
            features(Path::new(&weights), Path::new(&imgs), &prefix, batch)?;
        }
        _ => {
            return Err(
                "usage: inception_dump weights OUT [SEED] | images OUT N H W SEED | \
                        features WEIGHTS IMAGES PREFIX [BATCH]"
                    .into(),
            )
        }
    }
    Ok(())
}

//! Integration tests for cbs-data: IDX parsing, Fashion-MNIST loading,
//! padding/flipping, subsetting and the resumable batch sampler; CIFAR, image folders and
//! `.npz` in the submodules.

#[path = "data/cifar.rs"]
mod cifar;
#[path = "data/folder.rs"]
mod folder;
#[path = "data/latents.rs"]
mod latents;
#[path = "data/npy.rs"]
mod npy;
#[path = "data/npz.rs"]
mod npz;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use cbs_data::{
    load_fashion_mnist, read_idx, BatchSampler, DataError, ImageDataset, Resize, Split,
    FASHION_MNIST_DEFAULT_DIR,
};
use flate2::write::GzEncoder;
use flate2::Compression;

fn idx_bytes(type_code: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Deterministic, position-dependent pixels so flips and padding are visible.
fn pixels(n: usize) -> Vec<u8> {
    (0..n * 28 * 28).map(|i| (i * 7 % 256) as u8).collect()
}

/// Writes a generated train split (gzip) into `dir`.
fn write_train(dir: &Path, images: &[u8], image_dims: &[u32], labels: &[u8], label_dims: &[u32]) {
    write(
        dir,
        "train-images-idx3-ubyte.gz",
        &gzip(&idx_bytes(8, image_dims, images)),
    );
    write(
        dir,
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_bytes(8, label_dims, labels)),
    );
}

/// Asserts a Malformed error naming `path` whose reason contains `needle`.
fn assert_malformed<T: std::fmt::Debug>(res: cbs_data::Result<T>, path: &Path, needle: &str) {
    match res {
        Err(e @ DataError::Malformed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        }
        other => panic!("expected Malformed({needle}), got {other:?}"),
    }
}

#[test]
fn idx_round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 11).collect();
    let raw = idx_bytes(8, &[2, 3, 4], &payload);
    // Names deliberately swap the extensions: detection must use the magic.
    for (name, bytes) in [("raw.gz", raw.clone()), ("packed.idx", gzip(&raw))] {
        let arr = read_idx(&write(dir.path(), name, &bytes)).unwrap();
        assert_eq!(arr.dims, vec![2, 3, 4], "{name}");
        assert_eq!(arr.data, payload, "{name}");
    }
}

#[test]
fn idx_truncated_and_oversized_payload() {
    let dir = tempfile::tempdir().unwrap();
    let short = write(dir.path(), "short", &idx_bytes(8, &[2, 5], &[1; 7]));
    assert_malformed(
        read_idx(&short),
        &short,
        "truncated: expected 10 bytes of data, found 7",
    );
    let short_gz = write(
        dir.path(),
        "short.gz",
        &gzip(&idx_bytes(8, &[2, 5], &[1; 7])),
    );
    assert_malformed(read_idx(&short_gz), &short_gz, "truncated");
    let long = write(dir.path(), "long", &idx_bytes(8, &[2, 5], &[1; 11]));
    assert_malformed(read_idx(&long), &long, "trailing data");
    let huge = write(dir.path(), "huge", &idx_bytes(8, &[u32::MAX; 4], &[]));
    assert_malformed(read_idx(&huge), &huge, "overflow");
}

#[test]
fn idx_bad_header_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad_magic = idx_bytes(8, &[3], &[1, 2, 3]);
    bad_magic[0] = 0x12;
    let p = write(dir.path(), "magic", &bad_magic);
    assert_malformed(read_idx(&p), &p, "bad magic");

    let p = write(dir.path(), "type", &idx_bytes(0x0D, &[3], &[0; 12]));
    assert_malformed(read_idx(&p), &p, "0x0d");

    let p = write(dir.path(), "nodims", &idx_bytes(8, &[], &[]));
    assert_malformed(read_idx(&p), &p, "zero dimensions");

    let p = write(dir.path(), "shortdims", &[0, 0, 8, 3, 0, 0, 0, 1]);
    assert_malformed(read_idx(&p), &p, "truncated header");

    let p = write(dir.path(), "zero", &[]);
    assert_malformed(read_idx(&p), &p, "empty file");

    let p = write(dir.path(), "zero_gz", &gzip(&[]));
    assert_malformed(read_idx(&p), &p, "empty file");

    let p = write(dir.path(), "three", &[0, 0, 8]);
    assert_malformed(read_idx(&p), &p, "truncated header");
}

#[test]
fn idx_corrupted_gzip_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut gz = gzip(&idx_bytes(8, &[64, 64], &payload));
    let mid = gz.len() / 2;
    for b in &mut gz[mid - 4..mid + 4] {
        *b ^= 0xA5;
    }
    let p = write(dir.path(), "corrupt.gz", &gz);
    assert_malformed(read_idx(&p), &p, "");

    // Cut-off gzip member (e.g. an interrupted download).
    let full = gzip(&idx_bytes(8, &[64, 64], &payload));
    let p = write(dir.path(), "cut.gz", &full[..full.len() / 2]);
    assert_malformed(read_idx(&p), &p, "gzip");
}

/// A small gzip file declaring gigabytes is refused from its header, before inflating.
#[test]
fn idx_declaring_more_than_the_limit_is_refused_before_inflating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb-idx3-ubyte.gz");
    // 70000 × 256 × 256 bytes ≈ 4.6 GB declared; only a few bytes of payload present.
    let mut raw = vec![0u8, 0, 0x08, 3];
    for d in [70000u32, 256, 256] {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(&[0u8; 64]);
    std::fs::write(&p, gzip(&raw)).unwrap();
    let t0 = std::time::Instant::now();
    let limit = cbs_data::MemoryLimit::bytes(4 << 30);
    let e = cbs_data::read_idx_limited(&p, limit)
        .unwrap_err()
        .to_string();
    assert!(e.contains("declares 4587520000 bytes"), "{e}");
    // Under a limit that admits it, the truncation is found without allocating 4.6 GB.
    let e = cbs_data::read_idx_limited(&p, cbs_data::MemoryLimit::UNLIMITED).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    println!("refused in {:?}", t0.elapsed());
}

#[test]
fn idx_missing_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope");
    assert!(matches!(read_idx(&p), Err(DataError::Missing { path, .. }) if path == p));
}

#[test]
fn missing_dataset_mentions_install_command_and_path() {
    let dir = tempfile::tempdir().unwrap();
    for p in [dir.path().join("absent"), dir.path().to_path_buf()] {
        let err = load_fashion_mnist(&p, Split::Train, Resize::Pad).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("apt-get install -y dataset-fashion-mnist"),
            "{msg}"
        );
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
}

/// Something that is there but is not a readable file is named for what it is, without the
/// install hint (installing the package would not help).
#[test]
fn a_directory_or_a_link_loop_where_a_file_belongs_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("train-images-idx3-ubyte.gz")).unwrap();
    let msg = load_fashion_mnist(d, Split::Train, Resize::Pad)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is a directory, not a file"), "{msg}");
    assert!(!msg.contains("apt-get"), "{msg}");
    std::fs::remove_dir(d.join("train-images-idx3-ubyte.gz")).unwrap();
    #[cfg(unix)]
    {
        let a = d.join("train-images-idx3-ubyte.gz");
        let b = d.join("loop-b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let msg = load_fashion_mnist(d, Split::Train, Resize::Pad)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot be followed"), "{msg}");
    }
}

#[test]
fn load_rejects_inconsistent_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("train-images-idx3-ubyte.gz");
    let lbl = d.join("train-labels-idx1-ubyte.gz");
    let load = || load_fashion_mnist(d, Split::Train, Resize::Pad);

    write_train(d, &pixels(3), &[3, 28, 28], &[1, 2], &[2]);
    assert_malformed(load(), &lbl, "2 labels but");

    write_train(d, &pixels(3), &[3, 28, 28], &[1, 10, 2], &[3]);
    assert_malformed(load(), &lbl, "label 10 at index 1");

    write_train(d, &pixels(3), &[3, 28 * 28], &[1, 2, 3], &[3]);
    assert_malformed(load(), &img, "[n, 28, 28]");

    write_train(d, &pixels(1)[..28 * 27], &[1, 28, 27], &[1], &[1]);
    assert_malformed(load(), &img, "[n, 28, 28]");

    write_train(d, &pixels(2), &[2, 28, 28], &[1, 2], &[2, 1]);
    assert_malformed(load(), &lbl, "labels must have dimensions [n]");

    write_train(d, &[], &[0, 28, 28], &[], &[0]);
    assert_malformed(load(), &img, "no images");
}

#[test]
fn pad_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    let orig = pixels(3);
    write_train(dir.path(), &orig, &[3, 28, 28], &[0, 9, 4], &[3]);
    // Plain (non-gz) test files must be found as a fallback.
    write(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &idx_bytes(8, &[3, 28, 28], &orig),
    );
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_bytes(8, &[3], &[0, 9, 4]),
    );

    let native = load_fashion_mnist(dir.path(), Split::Test, Resize::None).unwrap();
    assert_eq!((native.height, native.width, native.len()), (28, 28, 3));
    assert_eq!(native.images, orig);

    let ds = load_fashion_mnist(dir.path(), Split::Train, Resize::Pad).unwrap();
    assert_eq!((ds.channels, ds.height, ds.width), (1, 32, 32));
    assert_eq!((ds.len(), ds.image_len(), ds.num_classes), (3, 1024, 10));

    let (x, y) = ds.batch(&[1, 2], &[false, true]).unwrap();
    assert_eq!(y, vec![9, 4]);
    assert_eq!(x.len(), 2 * 1024);
    for (b, &src) in [1usize, 2].iter().enumerate() {
        let img = &x[b * 1024..(b + 1) * 1024];
        let flipped = b == 1;
        for r in 0..32 {
            for c in 0..32 {
                let v = img[r * 32 + c];
                if !(2..30).contains(&r) || !(2..30).contains(&c) {
                    assert_eq!(v, -1.0, "border at ({r},{c})");
                    continue;
                }
                let sc = if flipped { 31 - c } else { c };
                let p = orig[src * 784 + (r - 2) * 28 + (sc - 2)];
                assert_eq!(v, p as f32 / 127.5 - 1.0, "pixel ({r},{c})");
            }
        }
        // Flipping twice is the identity, flipping once is not (pixels vary).
        let (again, _) = ds.batch(&[src], &[!flipped]).unwrap();
        let row = |im: &[f32], r: usize| im[r * 32..(r + 1) * 32].to_vec();
        let mut rev = row(&again, 10);
        rev.reverse();
        assert_eq!(row(img, 10), rev);
        assert_ne!(row(img, 10), row(&again, 10));
    }
}

#[test]
fn batch_rejects_bad_arguments() {
    let ds = ImageDataset {
        images: vec![0, 255, 128, 7],
        labels: vec![3, 1],
        channels: 1,
        height: 1,
        width: 2,
        num_classes: 10,
    };
    let (x, y) = ds.batch(&[1, 0], &[true, false]).unwrap();
    assert_eq!(x, vec![7.0 / 127.5 - 1.0, 128.0 / 127.5 - 1.0, -1.0, 1.0]);
    assert_eq!(y, vec![1, 3]);
    assert!(matches!(
        ds.batch(&[2], &[false]),
        Err(DataError::Invalid {
            field: "indices",
            ..
        })
    ));
    assert!(matches!(
        ds.batch(&[0], &[]),
        Err(DataError::Invalid { field: "flips", .. })
    ));
    let broken = ImageDataset {
        images: vec![0; 3],
        ..ds.clone()
    };
    assert!(matches!(
        broken.batch(&[0], &[false]),
        Err(DataError::Invalid { .. })
    ));
    let absurd = ImageDataset {
        channels: usize::MAX,
        height: 2,
        ..ds
    };
    assert!(absurd.batch(&[0], &[false]).is_err());
}

fn toy(n: usize) -> ImageDataset {
    ImageDataset {
        images: (0..n * 4).map(|i| (i % 256) as u8).collect(),
        labels: (0..n as u32).collect(),
        channels: 1,
        height: 2,
        width: 2,
        num_classes: n,
    }
}

#[test]
fn subset_size_determinism_and_validation() {
    let ds = toy(1000);
    let a = ds.subset(0.25, 7).unwrap();
    assert_eq!(a.len(), 250);
    assert_eq!(a.images.len(), 250 * 4);
    // Images stay paired with their labels (label i owns bytes 4i..4i+4).
    for (k, &l) in a.labels.iter().enumerate() {
        let l = l as usize;
        assert_eq!(a.images[k * 4..k * 4 + 4], ds.images[l * 4..l * 4 + 4]);
    }
    assert_eq!(a.labels, ds.subset(0.25, 7).unwrap().labels);
    assert_ne!(a.labels, ds.subset(0.25, 8).unwrap().labels);
    assert_eq!(ds.subset(1e-9, 1).unwrap().len(), 1);
    let all = ds.subset(1.0, 3).unwrap();
    assert_eq!(
        (all.labels, all.images),
        (ds.labels.clone(), ds.images.clone())
    );
    for bad in [0.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                ds.subset(bad, 0),
                Err(DataError::Invalid {
                    field: "data_fraction",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

#[test]
fn sampler_covers_each_epoch_exactly_once() {
    let (n, b) = (120, 8);
    let mut s = BatchSampler::new(n, b, 42).unwrap();
    let steps = (n / b) as u64;
    let mut epochs = Vec::new();
    for e in 0..3u64 {
        let mut seen: Vec<usize> = (0..steps).flat_map(|k| s.indices(e * steps + k)).collect();
        let order = seen.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "epoch {e}");
        epochs.push(order);
    }
    assert_ne!(epochs[0], epochs[1], "epochs must be reshuffled");
    assert_ne!(epochs[0], (0..n).collect::<Vec<_>>(), "must be shuffled");
}

#[test]
fn sampler_resume_matches_uninterrupted_run() {
    let mut run = BatchSampler::new(1000, 64, 9).unwrap();
    let full: Vec<Vec<usize>> = (0..100).map(|s| run.indices(s)).collect();
    for step in [0u64, 15, 16, 57, 99] {
        let mut fresh = BatchSampler::new(1000, 64, 9).unwrap();
        assert_eq!(fresh.indices(step), full[step as usize], "step {step}");
    }
    // Out-of-order queries must not be corrupted by the epoch cache.
    assert_eq!(run.indices(3), full[3]);
    let mut other_seed = BatchSampler::new(1000, 64, 10).unwrap();
    assert_ne!(other_seed.indices(0), full[0]);
    // Very large steps must neither overflow nor be slow.
    let far = run.indices(u64::MAX);
    assert_eq!(far.len(), 64);
    assert!(far.iter().all(|&i| i < 1000));
}

#[test]
fn sampler_wraps_across_epochs() {
    let (n, b) = (10, 4);
    let mut s = BatchSampler::new(n, b, 5).unwrap();
    let stream: Vec<usize> = (0..5).flat_map(|k| s.indices(k)).collect();
    assert_eq!(stream.len(), 20);
    // Positions 0..10 and 10..20 are two complete epochs: nothing dropped.
    for epoch in stream.chunks(n) {
        let set: HashSet<_> = epoch.iter().copied().collect();
        assert_eq!(set.len(), n);
    }
    assert_ne!(stream[..n], stream[n..]);
    // A batch larger than the dataset spans several epochs.
    let mut big = BatchSampler::new(3, 7, 1).unwrap();
    let first = big.indices(0);
    let mut e0 = first[..3].to_vec();
    e0.sort_unstable();
    assert_eq!(e0, vec![0, 1, 2]);
    // Epoch 2 starts at position 6 of step 0 and continues into step 1.
    let mut e2 = vec![first[6]];
    e2.extend_from_slice(&big.indices(1)[..2]);
    e2.sort_unstable();
    assert_eq!(e2, vec![0, 1, 2]);
}

#[test]
fn sampler_rejects_zero_sizes() {
    assert!(matches!(
        BatchSampler::new(0, 4, 0),
        Err(DataError::Invalid { .. })
    ));
    assert!(matches!(
        BatchSampler::new(4, 0, 0),
        Err(DataError::Invalid { .. })
    ));
}

#[test]
fn real_fashion_mnist() {
    let dir = Path::new(FASHION_MNIST_DEFAULT_DIR);
    if !dir.is_dir() {
        eprintln!("skipping: {FASHION_MNIST_DEFAULT_DIR} not present");
        return;
    }
    let train = load_fashion_mnist(dir, Split::Train, Resize::Pad).unwrap();
    assert_eq!((train.len(), train.height, train.width), (60000, 32, 32));
    let mut hist = [0usize; 10];
    for &l in &train.labels {
        hist[l as usize] += 1;
    }
    assert_eq!(hist, [6000; 10]);
    assert_eq!(train.labels[0], 9, "first train image is an Ankle boot");

    let test = load_fashion_mnist(dir, Split::Test, Resize::Pad).unwrap();
    assert_eq!(test.len(), 10000);

    let idx: Vec<usize> = (0..256).collect();
    let (x, _) = train.batch(&idx, &vec![true; 256]).unwrap();
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(x.iter().any(|&v| v > 0.5), "images should not be blank");
}

#[test]
fn gzip_idx_is_not_inflated_past_the_limit() {
    use cbs_data::{read_idx_limited, MemoryLimit};
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB of zeros gzip to a few kB: a small "bomb" under a 1 MiB limit.
    let payload = vec![0u8; 8 << 20];
    let p = write(
        dir.path(),
        "bomb.gz",
        &gzip(&idx_bytes(8, &[2048, 64, 64], &payload)),
    );
    assert!(std::fs::metadata(&p).unwrap().len() < 64 << 10);
    let small = MemoryLimit::bytes(1 << 20);
    match read_idx_limited(&p, small) {
        Err(e @ DataError::TooLarge { .. }) => {
            let msg = e.to_string();
            for needle in [
                &p.display().to_string()[..],
                "[2048, 64, 64]",
                "8388608 bytes",
                "1048576 bytes",
                "data.max_memory_gib",
            ] {
                assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
            }
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        read_idx_limited(&p, MemoryLimit::bytes(9 << 20))
            .unwrap()
            .data
            .len(),
        8 << 20
    );
    // Dimensions declaring 16 bytes over the same 8 MiB stream: inflation stops at 16 (+1)
    // bytes and the rest is reported, whatever the limit.
    let p = write(
        dir.path(),
        "lying.gz",
        &gzip(&idx_bytes(8, &[16], &payload)),
    );
    assert_malformed(
        read_idx_limited(&p, MemoryLimit::UNLIMITED),
        &p,
        "trailing data",
    );
    // Raw (uncompressed) files are checked the same way.
    let p = write(dir.path(), "raw", &idx_bytes(8, &[65535, 65535], &[]));
    assert!(matches!(
        read_idx_limited(&p, small),
        Err(DataError::TooLarge { .. })
    ));
    assert_malformed(
        read_idx_limited(&p, MemoryLimit::UNLIMITED),
        &p,
        "truncated",
    );
}

//! CIFAR-10 / CIFAR-100 binary batches, on generated files.

use std::path::Path;

use cbs_data::{load_cifar10, load_cifar100, DataError, Split, CIFAR10_CLASSES};

use super::{assert_malformed, write};

/// Pixels of record `i`: position-dependent, different in every plane.
fn record_pixels(i: usize) -> Vec<u8> {
    (0..3072).map(|p| ((p * 3 + i * 17) % 251) as u8).collect()
}

fn cifar10_bytes(labels: &[u8], first: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, &l) in labels.iter().enumerate() {
        out.push(l);
        out.extend(record_pixels(first + k));
    }
    out
}

/// Five train batches of `per_batch` records (labels cycling 0..10) and a 2-record test batch.
fn write_cifar10(dir: &Path, per_batch: usize) {
    for b in 0..5 {
        let first = b * per_batch;
        let labels: Vec<u8> = (first..first + per_batch).map(|i| (i % 10) as u8).collect();
        write(
            dir,
            &format!("data_batch_{}.bin", b + 1),
            &cifar10_bytes(&labels, first),
        );
    }
    write(dir, "test_batch.bin", &cifar10_bytes(&[9, 0], 100));
}

#[test]
fn cifar10_loads_every_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 3);
    let ds = load_cifar10(dir.path(), Split::Train).unwrap();
    assert_eq!(
        (ds.len(), ds.channels, ds.height, ds.width),
        (15, 3, 32, 32)
    );
    assert_eq!(ds.num_classes, 10);
    assert_eq!(
        ds.labels,
        (0..15u32).map(|i| i % 10).collect::<Vec<_>>(),
        "batches 1..5 in order"
    );
    // Records are already planar R, G, B: stored as they are (NCHW).
    for i in [0, 7, 14] {
        assert_eq!(ds.images[i * 3072..(i + 1) * 3072], record_pixels(i)[..]);
    }
    let test = load_cifar10(dir.path(), Split::Test).unwrap();
    assert_eq!(test.labels, vec![9, 0]);
    assert_eq!(test.images[..3072], record_pixels(100)[..]);

    // Batching follows the Fashion loader's convention: x / 127.5 - 1, NCHW.
    let (x, y) = ds.batch(&[1], &[false]).unwrap();
    assert_eq!(y, vec![1]);
    assert_eq!(x.len(), 3072);
    let px = record_pixels(1);
    assert_eq!(
        x[1024 + 5],
        px[1024 + 5] as f32 / 127.5 - 1.0,
        "green plane"
    );
    assert_eq!(CIFAR10_CLASSES[9], "truck");
}

#[test]
fn cifar_accepts_the_extracted_archive_folder() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&nested).unwrap();
    write_cifar10(&nested, 1);
    assert_eq!(load_cifar10(dir.path(), Split::Train).unwrap().len(), 5);

    let nested = dir.path().join("cifar-100-binary");
    std::fs::create_dir(&nested).unwrap();
    write(
        &nested,
        "test.bin",
        &[[4, 42].as_slice(), &[0; 3072]].concat(),
    );
    let ds = load_cifar100(dir.path(), Split::Test).unwrap();
    assert_eq!((ds.len(), ds.labels[0]), (1, 42));
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for (i, (coarse, fine)) in [(19u8, 99u8), (0, 0), (7, 55)].into_iter().enumerate() {
        bytes.extend([coarse, fine]);
        bytes.extend(record_pixels(i));
    }
    write(dir.path(), "train.bin", &bytes);
    let ds = load_cifar100(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.labels, vec![99, 0, 55]);
    assert_eq!((ds.num_classes, ds.channels, ds.height), (100, 3, 32));
    assert_eq!(ds.images[2 * 3072..], record_pixels(2)[..]);
    // Only the requested split's files are needed.
    let err = load_cifar100(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(&err, DataError::Missing { path, .. } if path.ends_with("test.bin")));
}

#[test]
fn cifar_missing_files_name_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("nope");
    let msg = load_cifar10(&absent, Split::Train).unwrap_err().to_string();
    assert!(msg.contains(&absent.display().to_string()), "{msg}");
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("data_batch_5.bin"),
        "{msg}"
    );
    assert!(msg.contains("data.dir"), "{msg}");

    write_cifar10(dir.path(), 1);
    std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
    let err = load_cifar10(dir.path(), Split::Train).unwrap_err();
    let DataError::Missing { path, .. } = &err else {
        panic!("expected Missing, got {err:?}");
    };
    assert!(path.ends_with("data_batch_3.bin"), "{err}");

    // The python version of CIFAR-10 is pointed out.
    let py = tempfile::tempdir().unwrap();
    write(py.path(), "data_batch_1", b"pickle");
    let msg = load_cifar10(py.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("python version"), "{msg}");

    let msg = load_cifar100(&absent, Split::Test).unwrap_err().to_string();
    assert!(
        msg.contains("test.bin") && msg.contains("CIFAR-100"),
        "{msg}"
    );
}

#[test]
fn cifar_truncated_empty_and_bad_labels_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_cifar10(d, 2);

    let full = cifar10_bytes(&[1, 2], 0);
    let p = write(d, "data_batch_2.bin", &full[..full.len() - 100]);
    assert_malformed(
        load_cifar10(d, Split::Train),
        &p,
        &format!(
            "size {} bytes is not a multiple of the 3073-byte",
            full.len() - 100
        ),
    );

    let p = write(d, "data_batch_2.bin", &[]);
    assert_malformed(load_cifar10(d, Split::Train), &p, "empty file");

    let p = write(d, "data_batch_2.bin", &cifar10_bytes(&[1, 10], 0));
    assert_malformed(
        load_cifar10(d, Split::Train),
        &p,
        "record 1: label 10 is out of range for 10 classes",
    );

    // A CIFAR-10 batch read as CIFAR-100 has the wrong record size.
    let p = write(d, "train.bin", &cifar10_bytes(&[1, 2], 0));
    assert_malformed(load_cifar100(d, Split::Train), &p, "3074-byte");

    let mut bad = vec![3, 100];
    bad.extend([0; 3072]);
    let p = write(d, "train.bin", &bad);
    assert_malformed(
        load_cifar100(d, Split::Train),
        &p,
        "record 0: fine label 100 is out of range for 100 classes",
    );
    bad[0] = 20;
    bad[1] = 5;
    let p = write(d, "train.bin", &bad);
    assert_malformed(load_cifar100(d, Split::Train), &p, "coarse label 20");
}

//! `.npz` archives: real NumPy output, hand-built archives (stored and deflated), and every
//! malformed case the loader must report.

use std::io::Write;

use cbs_data::{load_npz, DataError, NpzArchive, NPZ_MAX_IMPLICIT_CLASSES};
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

use super::{assert_malformed, write};

/// An `.npy` (format 1.0) holding `data` with the given descr and shape.
fn npy(descr: &str, shape: &[usize], fortran: bool, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let fortran = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A minimal zip archive (no zip64), entries stored or deflated.
fn zip(entries: &[(&str, Vec<u8>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, deflate) in entries {
        let mut crc = Crc::new();
        crc.update(data);
        let body = if *deflate {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
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

/// `n` images `h×w×c`, pixel value = its flat NHWC index mod 251.
fn nhwc(n: usize, h: usize, w: usize, c: usize) -> Vec<u8> {
    (0..n * h * w * c).map(|i| (i % 251) as u8).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn images_entry(n: usize, h: usize, w: usize, c: usize) -> (&'static str, Vec<u8>, bool) {
    (
        "arr_0.npy",
        npy("|u1", &[n, h, w, c], false, &nhwc(n, h, w, c)),
        false,
    )
}

/// Checks the NHWC → NCHW transpose of [`nhwc`] pixels.
fn assert_chw(ds: &cbs_data::ImageDataset) {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let src = nhwc(ds.len(), h, w, c);
    for n in 0..ds.len() {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let got = ds.images[((n * c + ch) * h + y) * w + x];
                    assert_eq!(
                        got,
                        src[((n * h + y) * w + x) * c + ch],
                        "({n},{ch},{y},{x})"
                    );
                }
            }
        }
    }
}

include!("npz_fixtures.rs");

#[test]
fn numpy_savez_and_savez_compressed_load() {
    let dir = tempfile::tempdir().unwrap();
    // np.savez(f, imgs, np.array([3, 1])) with imgs = arange(36).reshape(2, 2, 3, 3) * 7.
    let p = write(dir.path(), "savez.npz", NUMPY_SAVEZ);
    let ds = load_npz(&p, None).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (2, 3, 2, 3));
    assert_eq!((ds.labels.clone(), ds.num_classes), (vec![3, 1], 4));
    // NHWC → NCHW: image 0, channel 1, row 1, column 2 is NHWC index (1·3 + 2)·3 + 1 = 16,
    // NCHW index (1·2 + 1)·3 + 2 = 11.
    assert_eq!(ds.images[11], 16 * 7);
    let (x, _) = ds.batch(&[1], &[false]).unwrap();
    assert_eq!(x[0], (18.0 * 7.0) / 127.5 - 1.0);

    // np.savez_compressed(f, arr_0=imgs, labels=np.array([5, 0], dtype='>i4')): deflated
    // entries, big-endian labels under `labels`.
    let p = write(dir.path(), "compressed.npz", NUMPY_SAVEZ_COMPRESSED);
    let dz = load_npz(&p, Some(10)).unwrap();
    assert_eq!(dz.images, ds.images);
    assert_eq!((dz.labels, dz.num_classes), (vec![5, 0], 10));

    let mut npz = NpzArchive::open(&p).unwrap();
    assert_eq!(npz.names(), ["arr_0", "labels"]);
    let labels = npz.read("labels").unwrap();
    assert_eq!(labels.header.dtype.name(), ">int32");
    assert_eq!(labels.to_i128().unwrap(), [5, 0]);
}

#[test]
fn hand_built_archives_stored_deflated_gray_and_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write(
        d,
        "gray.npz",
        &zip(&[
            (
                "arr_0.npy",
                npy("|u1", &[3, 4, 5, 1], false, &nhwc(3, 4, 5, 1)),
                true,
            ),
            (
                "arr_1.npy",
                npy("<u2", &[3], false, &[2, 0, 0, 0, 1, 0]),
                true,
            ),
        ]),
    );
    let ds = load_npz(&p, None).unwrap();
    assert_eq!((ds.channels, ds.height, ds.width), (1, 4, 5));
    assert_eq!((ds.labels.clone(), ds.num_classes), (vec![2, 0, 1], 3));
    assert_chw(&ds);

    // Rank 3 is grayscale too; without labels everything is class 0 of 1 (or of num_classes).
    let p = write(
        d,
        "rank3.npz",
        &zip(&[(
            "arr_0.npy",
            npy("|u1", &[2, 3, 3], false, &nhwc(2, 3, 3, 1)),
            false,
        )]),
    );
    let ds = load_npz(&p, None).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.num_classes), (2, 1, 1));
    assert_eq!(ds.labels, [0, 0]);
    assert_eq!(load_npz(&p, Some(7)).unwrap().num_classes, 7);

    let p = write(d, "rgb.npz", &zip(&[images_entry(4, 2, 3, 3)]));
    assert_chw(&load_npz(&p, None).unwrap());
}

#[test]
fn npz_errors_name_the_file_and_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = |descr: &str, shape: &[usize], data: &[u8]| {
        ("arr_1.npy", npy(descr, shape, false, data), false)
    };

    let absent = d.join("absent.npz");
    assert!(matches!(
        load_npz(&absent, None),
        Err(DataError::Missing { .. })
    ));

    let p = write(d, "garbage.npz", b"this is not a zip archive at all");
    assert_malformed(load_npz(&p, None), &p, "not a readable .npz");

    let good = zip(&[
        images_entry(2, 4, 4, 3),
        labels("<i8", &[2], &i64s(&[1, 2])),
    ]);
    let p = write(d, "cut.npz", &good[..good.len() / 2]);
    assert_malformed(load_npz(&p, None), &p, "truncated or corrupt");

    let p = write(
        d,
        "noarr0.npz",
        &zip(&[(
            "images.npy",
            npy("|u1", &[1, 2, 2, 3], false, &[0; 12]),
            false,
        )]),
    );
    assert_malformed(load_npz(&p, None), &p, "no array arr_0");
    assert_malformed(load_npz(&p, None), &p, "images");

    let p = write(
        d,
        "float.npz",
        &zip(&[(
            "arr_0.npy",
            npy("<f4", &[1, 2, 2, 3], false, &[0; 48]),
            false,
        )]),
    );
    assert_malformed(load_npz(&p, None), &p, "array arr_0 is float32");

    let p = write(
        d,
        "rank2.npz",
        &zip(&[("arr_0.npy", npy("|u1", &[4, 6], false, &[0; 24]), false)]),
    );
    assert_malformed(load_npz(&p, None), &p, "(rank 2)");

    let p = write(d, "rgba.npz", &zip(&[images_entry(1, 2, 2, 4)]));
    assert_malformed(load_npz(&p, None), &p, "4 channels");

    let p = write(
        d,
        "fortran.npz",
        &zip(&[(
            "arr_0.npy",
            npy("|u1", &[1, 2, 2, 3], true, &[0; 12]),
            false,
        )]),
    );
    assert_malformed(load_npz(&p, None), &p, "Fortran order");

    let p = write(
        d,
        "len.npz",
        &zip(&[
            images_entry(2, 2, 2, 3),
            labels("<i8", &[3], &i64s(&[0, 1, 2])),
        ]),
    );
    assert_malformed(
        load_npz(&p, None),
        &p,
        "array arr_1 (labels): shape [3]; expected [2]",
    );

    let p = write(
        d,
        "neg.npz",
        &zip(&[
            images_entry(2, 2, 2, 3),
            labels("<i8", &[2], &i64s(&[0, -3])),
        ]),
    );
    assert_malformed(load_npz(&p, None), &p, "label -3 at index 1 is negative");

    let p = write(
        d,
        "big.npz",
        &zip(&[
            images_entry(2, 2, 2, 3),
            labels("<i8", &[2], &i64s(&[10, 1])),
        ]),
    );
    assert_malformed(
        load_npz(&p, Some(10)),
        &p,
        "label 10 at index 0 is out of range for 10 classes",
    );
    assert_eq!(load_npz(&p, None).unwrap().num_classes, 11);
    let huge = NPZ_MAX_IMPLICIT_CLASSES as i64;
    let p = write(
        d,
        "huge.npz",
        &zip(&[
            images_entry(2, 2, 2, 3),
            labels("<i8", &[2], &i64s(&[1, huge])),
        ]),
    );
    assert_malformed(load_npz(&p, None), &p, "is too large");

    let p = write(
        d,
        "flabels.npz",
        &zip(&[images_entry(1, 2, 2, 3), labels("<f8", &[1], &[0; 8])]),
    );
    assert_malformed(load_npz(&p, None), &p, "not an integer type");

    // The header declares more data than the entry holds.
    let p = write(
        d,
        "short.npz",
        &zip(&[(
            "arr_0.npy",
            npy("|u1", &[2, 4, 4, 3], false, &[0; 90]),
            false,
        )]),
    );
    assert_malformed(
        load_npz(&p, None),
        &p,
        "array arr_0: the header declares uint8",
    );

    // A flipped data byte: the CRC catches it, stored or deflated.
    for deflate in [false, true] {
        let mut entry = images_entry(2, 8, 8, 3);
        entry.2 = deflate;
        let mut bytes = zip(&[entry]);
        let at = if deflate { 150 } else { 400 };
        bytes[at] ^= 0x5a;
        let p = write(d, &format!("flip{deflate}.npz"), &bytes);
        let err = load_npz(&p, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::Malformed { .. }), "{msg}");
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("arr_0"),
            "{msg}"
        );
    }

    let p = write(
        d,
        "badheader.npz",
        &zip(&[(
            "arr_0.npy",
            b"\x93NUMPY\x01\x00\x05\x00{'de".to_vec(),
            false,
        )]),
    );
    assert_malformed(load_npz(&p, None), &p, "array arr_0");
    let p = write(d, "zero.npz", &zip(&[images_entry(0, 2, 2, 3)]));
    assert_malformed(load_npz(&p, None), &p, "no images");
    assert!(matches!(
        load_npz(&p, Some(0)),
        Err(DataError::Invalid {
            field: "num_classes",
            ..
        })
    ));
}

/// Asserts a `TooLarge` error naming `path`, `what` and the limit, and saying how to raise it.
fn assert_too_large<T: std::fmt::Debug>(
    res: cbs_data::Result<T>,
    path: &std::path::Path,
    what: &str,
) {
    match res {
        Err(e @ DataError::TooLarge { .. }) => {
            let msg = e.to_string();
            for needle in [
                &path.display().to_string()[..],
                what,
                "memory limit",
                "data.max_memory_gib",
            ] {
                assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
            }
        }
        other => panic!("expected TooLarge({what}), got {other:?}"),
    }
}

#[test]
fn npz_declaring_2_pow_40_elements_is_a_clean_error() {
    use cbs_data::{load_npz_limited, MemoryLimit};
    let dir = tempfile::tempdir().unwrap();
    // A 300-byte archive whose header declares 2^40 uint8 images of 1×1×1 and holds none:
    // the loader used to allocate 1 TiB from the header and abort.
    let entry = npy("|u1", &[1 << 40, 1, 1, 1], false, &[]);
    let p = write(dir.path(), "huge.npz", &zip(&[("arr_0.npy", entry, false)]));
    let limit = MemoryLimit::bytes(1 << 30);
    assert_too_large(
        load_npz_limited(&p, None, limit),
        &p,
        "array arr_0 (uint8 [1099511627776, 1, 1, 1])",
    );
    let msg = load_npz_limited(&p, None, limit).unwrap_err().to_string();
    assert!(
        msg.contains("1099511627776 bytes") && msg.contains("1073741824 bytes"),
        "{msg}"
    );
    // Without a limit the header is still checked against the entry before allocating.
    assert_malformed(
        load_npz_limited(&p, None, MemoryLimit::UNLIMITED),
        &p,
        "truncated or corrupt",
    );
    // The machine default (half the physical memory) is below a terabyte here.
    assert!(matches!(
        load_npz(&p, None),
        Err(DataError::TooLarge { .. })
    ));
}

#[test]
fn deflated_npz_is_not_inflated_past_the_limit() {
    use cbs_data::{load_npz_limited, MemoryLimit};
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB of zeros deflate to a few kB.
    let n = 1024;
    let entry = npy("|u1", &[n, 64, 64, 1], false, &vec![0; n * 64 * 64]);
    let p = write(dir.path(), "bomb.npz", &zip(&[("arr_0.npy", entry, true)]));
    assert!(std::fs::metadata(&p).unwrap().len() < 64 << 10);
    let small = MemoryLimit::bytes(1 << 20);
    assert_too_large(load_npz_limited(&p, None, small), &p, "array arr_0");
    let mut npz = NpzArchive::open_limited(&p, small).unwrap();
    assert_too_large(npz.read("arr_0"), &p, "array arr_0");
    // Under a limit that fits, the same file loads.
    let ds = load_npz_limited(&p, None, MemoryLimit::bytes(8 << 20)).unwrap();
    assert_eq!(ds.len(), n);

    // A header declaring 16 bytes over a 4 MiB deflate stream: refused before inflating.
    let mut lying = npy("|u1", &[16], false, &[]);
    lying.extend(vec![0u8; 4 << 20]);
    let p = write(dir.path(), "lying.npz", &zip(&[("arr_0.npy", lying, true)]));
    let mut npz = NpzArchive::open_limited(&p, MemoryLimit::UNLIMITED).unwrap();
    assert_malformed(npz.read("arr_0"), &p, "array arr_0");
    let mut npz = NpzArchive::open_limited(&p, small).unwrap();
    assert_too_large(npz.read("arr_0"), &p, "array arr_0 (zip entry)");
}

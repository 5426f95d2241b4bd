//! Lone `.npy` files and the `.npz` / `.npy` writer: round trips, byte equality with candle's
//! writer, and malformed headers that must give errors (not panics or aborts).

use candle_core::{DType, Device, Tensor};
use cbs_data::{read_npy, write_npy, write_npz, DataError, NpyArray, NpyDtype, NpzArchive};

use super::{assert_malformed, write};

/// An `.npy` (format 1.0) with the given header dictionary and data.
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    let h = format!("{header}{}\n", " ".repeat(pad));
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn npz_writer_round_trips_and_matches_candle_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 3 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let points: Vec<f32> = (0..10).map(|i| i as f32 * 0.37 - 1.5).collect();
    let sigma: Vec<f64> = (0..9).map(|i| (i as f64).sqrt() - 0.25).collect();
    let a = NpyArray::from_u8(&[2, 3, 4, 3], pixels.clone()).unwrap();
    let b = NpyArray::from_f32(&[5, 2], &points).unwrap();
    let c = NpyArray::from_f64(&[3, 3], &sigma).unwrap();
    let scalar = NpyArray::from_f64(&[], &[2.5]).unwrap();
    let p = dir.path().join("ours.npz");
    write_npz(
        &p,
        &[("arr_0", &a), ("x", &b), ("sigma", &c), ("s", &scalar)],
    )
    .unwrap();

    let mut npz = NpzArchive::open(&p).unwrap();
    assert_eq!(npz.names(), ["arr_0", "x", "sigma", "s"]);
    assert_eq!(npz.read("arr_0").unwrap(), a);
    let x = npz.read("x").unwrap();
    assert_eq!(x.header.dtype, NpyDtype::F32);
    assert_eq!(x.to_f32().unwrap(), points);
    assert_eq!(
        x.to_f64().unwrap(),
        points.iter().map(|&v| v as f64).collect::<Vec<_>>()
    );
    let s = npz.read("sigma").unwrap();
    assert_eq!(
        (s.header.shape.as_slice(), s.to_f64().unwrap()),
        (&[3, 3][..], sigma.clone())
    );
    assert_eq!(
        s.to_f32().unwrap(),
        sigma.iter().map(|&v| v as f32).collect::<Vec<_>>()
    );
    assert_eq!(npz.read("s").unwrap().header.shape, Vec::<usize>::new());
    assert!(npz.read("arr_0").unwrap().to_f64().is_none());

    // The same arrays through candle's writer give the same bytes (the files `cbs sample` and
    // `cbs eval-fid --save-stats` wrote before this writer existed), and candle reads ours.
    let cpu = Device::Cpu;
    let ta = Tensor::from_vec(pixels, (2, 3, 4, 3), &cpu).unwrap();
    let tb = Tensor::from_vec(points, (5, 2), &cpu).unwrap();
    let tc = Tensor::from_vec(sigma, (3, 3), &cpu).unwrap();
    let ts = Tensor::new(2.5f64, &cpu).unwrap();
    let q = dir.path().join("candle.npz");
    Tensor::write_npz(
        &[("arr_0", &ta), ("x", &tb), ("sigma", &tc), ("s", &ts)],
        &q,
    )
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    let back = Tensor::read_npz(&p).unwrap();
    assert_eq!(back[2].1.dtype(), DType::F64);
    assert_eq!(back[2].1.dims(), &[3, 3]);

    // .npy likewise.
    let p1 = dir.path().join("ours.npy");
    let q1 = dir.path().join("candle.npy");
    write_npy(&p1, &b).unwrap();
    tb.write_npy(&q1).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&q1).unwrap());
    assert_eq!(read_npy(&p1).unwrap(), b);
}

#[test]
fn npy_reader_reads_numpy_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Big-endian float64 and float16 (1, -2, 0.5, a subnormal, -0, inf) as NumPy writes them.
    let be: Vec<u8> = [1.5f64, -3.25]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let p = write(
        d,
        "be.npy",
        &npy(
            "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
            &be,
        ),
    );
    let a = read_npy(&p).unwrap();
    assert_eq!(a.header.dtype.name(), ">float64");
    assert_eq!(a.to_f64().unwrap(), [1.5, -3.25]);
    let halves: [u16; 6] = [0x3c00, 0xc000, 0x3800, 0x0001, 0x8000, 0x7c00];
    let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let p = write(
        d,
        "half.npy",
        &npy(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (6,), }",
            &bytes,
        ),
    );
    let v = read_npy(&p).unwrap().to_f32().unwrap();
    assert_eq!(&v[..3], &[1.0, -2.0, 0.5]);
    assert_eq!(v[3], 2f32.powi(-24));
    assert!(v[4] == 0.0 && v[4].is_sign_negative());
    assert_eq!(v[5], f32::INFINITY);
    // Integers are not floats.
    let p = write(
        d,
        "int.npy",
        &npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
            &[7, 0, 0, 0],
        ),
    );
    let a = read_npy(&p).unwrap();
    assert!(a.to_f32().is_none() && a.to_f64().is_none());
    assert_eq!(a.to_i128().unwrap(), [7]);
}

#[test]
fn npy_huge_or_truncated_shapes_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f4 =
        |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // 2^62 elements: overflows the byte count (candle's reader panicked here).
    let p = write(d, "e62.npy", &npy(&f4("(4611686018427387904,)"), &[0; 16]));
    assert_malformed(read_npy(&p), &p, "overflows");
    // 2^33 elements: representable, but far more than the file holds (candle tried to
    // allocate 32 GiB and aborted).
    let p = write(d, "e33.npy", &npy(&f4("(8589934592,)"), &[0; 16]));
    assert_malformed(read_npy(&p), &p, "truncated or corrupt .npy");
    assert_malformed(read_npy(&p), &p, "[8589934592]");
    // An element count that overflows usize.
    let p = write(
        d,
        "overflow.npy",
        &npy(&f4("(18446744073709551615, 2)"), &[0; 8]),
    );
    assert_malformed(read_npy(&p), &p, "overflows");
    // Truncated data and trailing bytes.
    let p = write(d, "short.npy", &npy(&f4("(2, 3)"), &[0; 20]));
    assert_malformed(read_npy(&p), &p, "holds 20 bytes");
    let p = write(d, "long.npy", &npy(&f4("(1,)"), &[0; 8]));
    assert_malformed(read_npy(&p), &p, "trailing data");
    // A cut header, a header length past the limit, bad magic, an unsupported dtype.
    let full = npy(&f4("(1,)"), &[0; 4]);
    let p = write(d, "cut.npy", &full[..30]);
    assert_malformed(read_npy(&p), &p, "truncated");
    let mut big = b"\x93NUMPY\x02\x00".to_vec();
    big.extend(u32::MAX.to_le_bytes());
    let p = write(d, "hlen.npy", &big);
    assert_malformed(read_npy(&p), &p, "header length");
    let p = write(d, "magic.npy", b"PK\x03\x04 not an npy file");
    assert_malformed(read_npy(&p), &p, "bad magic");
    let p = write(
        d,
        "complex.npy",
        &npy(
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        ),
    );
    assert_malformed(read_npy(&p), &p, "unsupported dtype");
    assert!(matches!(
        read_npy(&d.join("absent.npy")),
        Err(DataError::Missing { .. })
    ));
}

#[test]
fn npz_dtype_mismatch_and_truncated_entry_name_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = NpyArray::from_f32(&[2], &[0.0, 1.0]).unwrap();
    let images = NpyArray::from_u8(&[2, 2, 2, 3], vec![9; 24]).unwrap();
    let p = d.join("floatlabels.npz");
    write_npz(&p, &[("arr_0", &images), ("arr_1", &labels)]).unwrap();
    // Labels must be integers: the error names the file, the array, the found and the
    // expected dtype.
    let e = cbs_data::load_npz(&p, None).unwrap_err();
    assert_malformed::<()>(
        Err(e),
        &p,
        "array arr_1 (labels): dtype float32 is not an integer",
    );
    // Cut inside the data of the entry: the zip directory is gone, so the archive itself
    // is reported; cut only the data of a stored entry (same directory) to reach the entry.
    let bytes = std::fs::read(&p).unwrap();
    let cut = write(d, "cut.npz", &bytes[..bytes.len() - 40]);
    assert!(matches!(
        NpzArchive::open(&cut).map(|_| ()),
        Err(DataError::Malformed { .. })
    ));
    let mut corrupt = bytes.clone();
    // Flip a pixel of arr_0 (its data ends the first entry): the CRC catches it.
    let at = bytes.windows(3).position(|w| w == [9, 9, 9]).unwrap();
    corrupt[at] = 8;
    let p2 = write(d, "crc.npz", &corrupt);
    let mut npz = NpzArchive::open(&p2).unwrap();
    assert_malformed(npz.read("arr_0"), &p2, "array arr_0: CRC-32 mismatch");
    // Writer inputs whose length does not match the shape are refused.
    assert!(matches!(
        NpyArray::from_u8(&[2, 2], vec![0; 3]),
        Err(DataError::Invalid { .. })
    ));
    assert!(NpyArray::from_f32(&[usize::MAX, 2], &[]).is_err());
}

//! Precomputed latents: float32 `[N, C, H, W]` + labels, scaled and flipped when batched.

use candle_core::{Device, Tensor};
use cbs_data::{load_latents, DataError, Dataset, SD_VAE_SCALE};

fn write(path: &std::path::Path, arrays: &[(&str, Tensor)]) {
    let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(n, t)| (*n, t)).collect();
    Tensor::write_npz(&refs, path).unwrap();
}

#[test]
fn latents_load_scale_flip_and_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lat.npz");
    let (n, c, h, w) = (5usize, 2usize, 2usize, 3usize);
    let vals: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 - 10.0).collect();
    let lat = Tensor::from_vec(vals.clone(), (n, c, h, w), &Device::Cpu).unwrap();
    let labels = Tensor::new(&[3i64, 0, 7, 7, 1], &Device::Cpu).unwrap();
    write(&p, &[("latents", lat), ("labels", labels)]);
    let d = load_latents(&p, None, SD_VAE_SCALE).unwrap();
    assert_eq!(d.sample_shape(), vec![2, 2, 3]);
    assert_eq!(Dataset::len(&d), 5);
    assert_eq!(d.num_classes(), 8);
    let (x, y) = d.batch(&[2, 0], &[false, true]).unwrap();
    assert_eq!(y, vec![7, 3]);
    let s = SD_VAE_SCALE as f32;
    // Sample 2, unflipped, scaled.
    let want2: Vec<f32> = vals[24..36].iter().map(|v| v * s).collect();
    assert_eq!(&x[..12], want2.as_slice());
    // Sample 0 flipped along W: each row of 3 reversed.
    let want0: Vec<f32> = vals[..12]
        .chunks(3)
        .flat_map(|r| r.iter().rev().map(|v| v * s).collect::<Vec<_>>())
        .collect();
    assert_eq!(&x[12..], want0.as_slice());
    let sub = d.subset(0.4, 1).unwrap();
    assert_eq!(Dataset::len(&sub), 2);
    assert_eq!(sub.values.len(), 2 * 12);
}

/// A file name, its arrays, and a fragment the error must contain.
type ErrorCase<'a> = (&'a str, Vec<(&'a str, Tensor)>, &'a str);

#[test]
fn latent_errors_name_the_array_and_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<ErrorCase> = vec![
        (
            "images.npz",
            vec![(
                "arr_0",
                Tensor::zeros((2, 4, 4, 3), candle_core::DType::U8, &Device::Cpu).unwrap(),
            )],
            "expected float32 latents [N, C, H, W]",
        ),
        (
            "rank.npz",
            vec![(
                "latents",
                Tensor::zeros((2, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )],
            "shape [2, 16]",
        ),
        (
            "none.npz",
            vec![(
                "mu",
                Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
            )],
            "no array `latents` or `arr_0`",
        ),
        (
            "labels.npz",
            vec![
                (
                    "latents",
                    Tensor::zeros((2, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
                ),
                ("labels", Tensor::new(&[0i64, 1, 2], &Device::Cpu).unwrap()),
            ],
            "labels",
        ),
    ];
    for (name, arrays, want) in cases {
        let p = tmp.path().join(name);
        write(&p, &arrays);
        let e = load_latents(&p, None, SD_VAE_SCALE).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want) && msg.contains(name), "{name}: {msg}");
    }
    let nan = tmp.path().join("nan.npz");
    let t = Tensor::new(&[[[[1.0f32, f32::NAN]]]], &Device::Cpu).unwrap();
    write(&nan, &[("latents", t)]);
    let msg = load_latents(&nan, None, 1.0).unwrap_err().to_string();
    assert!(msg.contains("non-finite"), "{msg}");
    let e = load_latents(&nan, None, 0.0).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Invalid {
                field: "latent_scale",
                ..
            }
        ),
        "{e}"
    );
}

/// A file written batch by batch with the flipped images' latents: flipped samples come from
/// `latents_flip` (not a mirrored latent), subsets keep both, and the stream writer refuses
/// an incomplete or overfull array.
#[test]
fn latent_writer_with_flipped_copies() {
    use cbs_data::{LatentWriter, NpyHeader, NpzStreamWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lat.npz");
    let (n, shape) = (5usize, [2usize, 2, 3]);
    let per = 12;
    let plain: Vec<f32> = (0..n * per).map(|i| i as f32).collect();
    let flipped: Vec<f32> = (0..n * per).map(|i| -(i as f32) - 0.5).collect();
    let mut w = LatentWriter::create(&path, n, shape).unwrap();
    for (flip, values) in [(false, &plain), (true, &flipped)] {
        w.begin(flip).unwrap();
        for chunk in values.chunks(2 * per) {
            w.append(chunk).unwrap();
        }
    }
    w.finish(&[0, 1, 2, 1, 0]).unwrap();
    let data = load_latents(&path, None, 2.0).unwrap();
    assert_eq!(data.num_classes, 3);
    let (x, y) = data.batch(&[3, 1], &[true, false]).unwrap();
    let want: Vec<f32> = flipped[3 * per..4 * per]
        .iter()
        .chain(&plain[per..2 * per])
        .map(|v| 2.0 * v)
        .collect();
    assert_eq!(x, want);
    assert_eq!(y, vec![1, 1]);
    let sub = data.subset(0.6, 3).unwrap();
    assert_eq!(sub.flipped.as_ref().map(Vec::len), Some(3 * per));

    // A non-finite value, an overfull or an incomplete array.
    let mut w = LatentWriter::create(&dir.path().join("b.npz"), 1, shape).unwrap();
    w.begin(false).unwrap();
    assert!(w.append(&[f32::NAN; 12]).is_err());
    let mut s = NpzStreamWriter::create(&dir.path().join("c.npz")).unwrap();
    let h = NpyHeader {
        dtype: cbs_data::NpyDtype::F32,
        shape: vec![2],
        fortran_order: false,
    };
    s.begin("a", &h).unwrap();
    assert!(s.append(&[0u8; 12]).is_err());
    s.append(&[0u8; 4]).unwrap();
    assert!(s.finish().is_err(), "an incomplete array must not finish");
}

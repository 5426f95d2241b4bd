//! Valid binary array files: `.npy`, `.npz` (stored or deflated; generic, ADM images, latents),
//! safetensors checkpoints, IDX (raw and gzip) and CIFAR binary batches.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cbs_data::{write_npy, write_npz, NpyArray, NpyDtype};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{dim, gzip, random_bytes, zip, Input};

/// Every dtype the `.npy` reader accepts, in both byte orders.
fn dtype(rng: &mut ChaCha8Rng) -> NpyDtype {
    let (kind, sizes): (char, &[usize]) = match rng.random_range(0..4) {
        0 => ('u', &[1, 2, 4, 8]),
        1 => ('i', &[1, 2, 4, 8]),
        2 => ('f', &[2, 4, 8]),
        _ => ('b', &[1]),
    };
    NpyDtype {
        kind,
        size: sizes[rng.random_range(0..sizes.len())],
        big_endian: rng.random_bool(0.2),
    }
}

/// A random array: rank 0–4, small dimensions, random contents.
fn array(rng: &mut ChaCha8Rng) -> NpyArray {
    let dt = dtype(rng);
    let rank = rng.random_range(0..=4);
    let shape: Vec<usize> = (0..rank).map(|_| dim(rng, 6)).collect();
    let len = shape.iter().product::<usize>() * dt.size;
    let data = if dt.kind == 'b' {
        (0..len).map(|_| rng.random_range(0..2)).collect()
    } else {
        random_bytes(rng, len)
    };
    NpyArray::new(dt, shape, data).expect("the data matches the shape")
}

/// `.npy` bytes through the project's writer.
fn npy_bytes(scratch: &Path, a: &NpyArray) -> Vec<u8> {
    let p = scratch.join("gen.npy");
    write_npy(&p, a).expect("writing to the scratch folder");
    std::fs::read(&p).expect("reading back the scratch file")
}

pub fn npy(rng: &mut ChaCha8Rng, scratch: &Path) -> Input {
    Input::file("input.npy", npy_bytes(scratch, &array(rng)))
}

/// What an `.npz` of the project holds: ADM images, latents, or arbitrary arrays.
fn npz_arrays(rng: &mut ChaCha8Rng) -> Vec<(String, NpyArray)> {
    let n = dim(rng, 4);
    let labels = |rng: &mut ChaCha8Rng| {
        let v: Vec<u8> = (0..n)
            .flat_map(|_| rng.random_range(0i64..10).to_le_bytes())
            .collect();
        NpyArray::new(
            NpyDtype {
                kind: 'i',
                size: 8,
                big_endian: false,
            },
            vec![n],
            v,
        )
        .expect("n labels")
    };
    match rng.random_range(0..3) {
        0 => {
            let (h, w) = (dim(rng, 8), dim(rng, 8));
            let c = [1, 3][rng.random_range(0..2)];
            let images = NpyArray::from_u8(&[n, h, w, c], random_bytes(rng, n * h * w * c));
            let mut v = vec![("arr_0".to_string(), images.expect("shape"))];
            if rng.random_bool(0.7) {
                let name = ["arr_1", "labels"][rng.random_range(0..2)];
                v.push((name.to_string(), labels(rng)));
            }
            v
        }
        1 => {
            let shape = [n, dim(rng, 4), dim(rng, 4), dim(rng, 4)];
            let values: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-4.0..4.0))
                .collect();
            let name = ["latents", "arr_0"][rng.random_range(0..2)];
            let mut v = vec![(
                name.to_string(),
                NpyArray::from_f32(&shape, &values).expect("shape"),
            )];
            if rng.random_bool(0.7) {
                v.push(("labels".to_string(), labels(rng)));
            }
            // The flipped images' latents of `cbs encode-latents --flip`: usually the same
            // shape, sometimes not (the reader must refuse a mismatch).
            if rng.random_bool(0.5) {
                let mut flip_shape = shape;
                if rng.random_bool(0.2) {
                    flip_shape[3] = dim(rng, 4);
                }
                let flipped: Vec<f32> = (0..flip_shape.iter().product::<usize>())
                    .map(|_| rng.random_range(-4.0..4.0))
                    .collect();
                v.push((
                    "latents_flip".to_string(),
                    NpyArray::from_f32(&flip_shape, &flipped).expect("shape"),
                ));
            }
            v
        }
        _ => (0..rng.random_range(1..=3))
            .map(|i| (format!("arr_{i}"), array(rng)))
            .collect(),
    }
}

pub fn npz(rng: &mut ChaCha8Rng, scratch: &Path) -> Input {
    let arrays = npz_arrays(rng);
    let bytes = if rng.random_bool(0.6) {
        let p = scratch.join("gen.npz");
        let named: Vec<(&str, &NpyArray)> = arrays.iter().map(|(n, a)| (n.as_str(), a)).collect();
        write_npz(&p, &named).expect("writing to the scratch folder");
        std::fs::read(&p).expect("reading back the scratch file")
    } else {
        // np.savez_compressed's layout: every entry deflated (some stored, to mix).
        let entries: Vec<(String, Vec<u8>, bool)> = arrays
            .iter()
            .map(|(n, a)| {
                (
                    format!("{n}.npy"),
                    npy_bytes(scratch, a),
                    rng.random_bool(0.8),
                )
            })
            .collect();
        zip(&entries)
    };
    Input::file("input.npz", bytes)
}

/// A checkpoint-like safetensors file (reference key names, the dtypes candle writes).
pub fn safetensors(rng: &mut ChaCha8Rng, scratch: &Path) -> Input {
    const NAMES: &[&str] = &[
        "pos_embed",
        "x_embedder.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.bias",
        "final_layer.linear.weight",
        "exp_avg.blocks.0.attn.qkv.weight",
    ];
    const DTYPES: &[DType] = &[
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::U8,
        DType::U32,
        DType::I64,
    ];
    let prefix = if rng.random_bool(0.2) { "net." } else { "" };
    let mut map = HashMap::new();
    for _ in 0..rng.random_range(0..=4) {
        let name = format!("{prefix}{}", NAMES[rng.random_range(0..NAMES.len())]);
        let shape: Vec<usize> = (0..rng.random_range(0..=3)).map(|_| dim(rng, 5)).collect();
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..8.0)).collect();
        let dtype = DTYPES[rng.random_range(0..DTYPES.len())];
        let t = Tensor::from_vec(values, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("a small CPU tensor");
        map.insert(name, t);
    }
    let p = scratch.join("gen.safetensors");
    candle_core::safetensors::save(&map, &p).expect("writing to the scratch folder");
    Input::file(
        "model.safetensors",
        std::fs::read(&p).expect("reading back the scratch file"),
    )
}

/// An unsigned-byte IDX file (Fashion-MNIST's layout: images `[n, 28, 28]` now and then).
fn idx_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let dims: Vec<u32> = if rng.random_bool(0.3) {
        vec![dim(rng, 3) as u32, 28, 28]
    } else {
        (0..rng.random_range(1..=3))
            .map(|_| dim(rng, 8) as u32)
            .collect()
    };
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in &dims {
        out.extend(d.to_be_bytes());
    }
    let n = dims.iter().map(|&d| d as usize).product();
    out.extend(random_bytes(rng, n));
    out
}

pub fn idx(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    Input::file("train-images-idx3-ubyte", idx_bytes(rng))
}

pub fn idx_gz(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    Input::file("train-images-idx3-ubyte.gz", gzip(&idx_bytes(rng)))
}

/// A CIFAR-10 `test_batch.bin` or CIFAR-100 `test.bin` of a few records.
pub fn cifar(rng: &mut ChaCha8Rng, _scratch: &Path) -> Input {
    let hundred = rng.random_bool(0.5);
    let mut bytes = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        if hundred {
            bytes.push(rng.random_range(0..20));
            bytes.push(rng.random_range(0..100));
        } else {
            bytes.push(rng.random_range(0..10));
        }
        bytes.extend(random_bytes(rng, 3 * 32 * 32));
    }
    let name = if hundred {
        "test.bin"
    } else {
        "test_batch.bin"
    };
    Input {
        files: vec![(name.to_string(), bytes)],
        folder: true,
    }
}

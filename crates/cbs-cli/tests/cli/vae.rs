//! The latent-space pipeline end to end with the tiny SD-VAE fixture of `cbs-models`
//! (random weights, checked against diffusers there): encode-latents → train-aux on the
//! latents → sample --vae → decode, and forward --vae.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cbs_data::{NpyArray, NpyDtype, NpzArchive};
use cbs_models::vae::AutoencoderKl;
use cbs_models::Kernels;

use super::{cbs, stderr};

fn vae_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cbs-models/tests/fixtures/vae-tiny/vae")
}

/// 12 labelled 16×16 RGB images (smooth patterns, one per class in turn) as an ADM `.npz`,
/// and a data config reading them.
fn image_data(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (n, s) = (12usize, 16usize);
    let mut px = Vec::with_capacity(n * s * s * 3);
    for i in 0..n {
        for y in 0..s {
            for x in 0..s {
                for c in 0..3 {
                    px.push(((i * 37 + x * 13 * (c + 1) + y * 7) % 256) as u8);
                }
            }
        }
    }
    let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i % 3).to_le_bytes()).collect();
    let npz = dir.join("images.npz");
    cbs_data::write_npz(
        &npz,
        &[
            (
                "arr_0",
                &NpyArray::from_u8(&[n, s, s, 3], px.clone()).unwrap(),
            ),
            (
                "arr_1",
                &NpyArray::new(NpyDtype::I64, vec![n], labels).unwrap(),
            ),
        ],
    )
    .unwrap();
    let cfg = dir.join("data.toml");
    let text = format!("[data]\nsource = \"npz\"\npath = \"{}\"\n", npz.display());
    std::fs::write(&cfg, text).unwrap();
    (cfg, px)
}

fn array(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut a = NpzArchive::open(path).unwrap();
    let arr = a.read(name).unwrap();
    (arr.header.shape.clone(), arr.to_f32().unwrap_or_default())
}

/// Image `i` (NHWC uint8) as the VAE's input `[1, 3, 16, 16]` in [−1, 1], mirrored on request.
fn image(px: &[u8], i: usize, mirror: bool) -> Tensor {
    let s = 16;
    let mut v = vec![0f32; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let sx = if mirror { s - 1 - x } else { x };
            for c in 0..3 {
                let p = px[((i * s + y) * s + sx) * 3 + c];
                v[(c * s + y) * s + x] = f32::from(p) / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_vec(v, (1, 3, s, s), &Device::Cpu).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn encode_train_sample_decode_in_latent_space() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (data_cfg, px) = image_data(d);
    let vae = vae_dir();
    let lat = d.join("latents.npz");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let encode = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "encode-latents".to_string(),
            "--vae".into(),
            s(&vae),
            "--config".into(),
            s(&data_cfg),
            "--out".into(),
            s(out),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cbs(&args)
    };
    let o = encode(&lat, &["--flip", "--batch", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, z) = array(&lat, "latents");
    assert_eq!(shape, [12, 4, 8, 8]);
    let (fshape, zf) = array(&lat, "latents_flip");
    assert_eq!(fshape, [12, 4, 8, 8]);
    let mut a = NpzArchive::open(&lat).unwrap();
    let labels = a.read("labels").unwrap().to_i128().unwrap();
    assert_eq!(labels, (0..12).map(|i| i % 3).collect::<Vec<i128>>());

    // The stored latents are the posterior means of the images and of their mirror images.
    let model = AutoencoderKl::load(&vae, &Device::Cpu, Kernels::Fused).unwrap();
    for (i, mirror, stored) in [(0, false, &z), (7, false, &z), (7, true, &zf)] {
        let m = model.encode(&image(&px, i, mirror)).unwrap().mean;
        let m: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            max_diff(&m, &stored[i * 256..(i + 1) * 256]) < 1e-5,
            "{i} {mirror}"
        );
    }
    // Not a mirrored latent: the flipped image was encoded.
    let mirrored: Vec<f32> = (0..256).map(|k| z[k - k % 8 + 7 - k % 8]).collect();
    assert!(max_diff(&mirrored, &zf[..256]) > 1e-3);

    // An existing output needs --force; seeded posterior draws do not depend on the batch.
    let o = encode(&lat, &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let (s1, s2) = (d.join("s1.npz"), d.join("s2.npz"));
    for (p, b) in [(&s1, "3"), (&s2, "12")] {
        let o = encode(p, &["--posterior", "sample", "--seed", "4", "--batch", b]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (v1, v2) = (array(&s1, "latents").1, array(&s2, "latents").1);
    assert!(max_diff(&v1, &v2) < 1e-5);
    assert!(max_diff(&v1, &z) > 1e-2, "a sample is not the mean");

    // Train a tiny SiT on the latents, then sample and decode.
    let cfg = d.join("latent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npreset = \"sit-nano-4\"\n[data]\nsource = \"latents\"\npath = \"{}\"\n\
             [train]\nsteps = 2\nbatch_size = 4\nlr = 1e-3\ncheckpoint_every = 2\nlog_every = 1\n",
            lat.display()
        ),
    )
    .unwrap();
    let run = d.join("run");
    let o = cbs(&["train-aux", "--config", &s(&cfg), "--out", &s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("samples");
    let common = [
        "--checkpoint",
        &s(&run),
        "--num",
        "5",
        "--steps",
        "2",
        "--batch",
        "2",
    ];
    let mut args = vec!["sample", "--vae", vae.to_str().unwrap(), "--out"];
    let out_s = s(&out);
    args.push(&out_s);
    args.extend_from_slice(&common);
    let o = cbs(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("grid.png").is_file());
    let mut a = NpzArchive::open(&out.join("samples.npz")).unwrap();
    let images = a.read("arr_0").unwrap();
    assert_eq!(images.header.shape, [5, 16, 16, 3]);
    assert_eq!(array(&out.join("latents.npz"), "latents").0, [5, 4, 8, 8]);

    // `cbs decode` of the written latents gives the same images.
    let dec = d.join("decoded");
    let o = cbs(&[
        "decode",
        "--vae",
        &s(&vae),
        "--latents",
        &s(&out.join("latents.npz")),
        "--out",
        &s(&dec),
        "--batch",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut a = NpzArchive::open(&dec.join("samples.npz")).unwrap();
    let again = a.read("arr_0").unwrap();
    let differing = images
        .data
        .iter()
        .zip(&again.data)
        .filter(|(x, y)| x.abs_diff(**y) > 1)
        .count();
    assert_eq!(differing, 0);
    assert!(dec.join("labels.txt").is_file());

    // Without --vae: latents only, and a hint.
    let raw = d.join("raw");
    let mut args = vec!["sample", "--out"];
    let raw_s = s(&raw);
    args.push(&raw_s);
    args.extend_from_slice(&common);
    let o = cbs(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cbs decode"), "{}", stderr(&o));
    assert!(raw.join("latents.npz").is_file() && !raw.join("grid.png").exists());

    // Images are not latents: --vae on an image model is refused (wrong channel count).
    let o = cbs(&[
        "encode-latents",
        "--vae",
        &s(&vae),
        "--config",
        &s(&cfg),
        "--out",
        &s(&d.join("x.npz")),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("3-channel"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn forward_vae_matches_the_reference_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let io = vae_dir().join("../io.safetensors");
    let out = tmp.path().join("out.safetensors");
    let o = cbs(&[
        "forward",
        "--vae",
        vae_dir().to_str().unwrap(),
        "--inputs",
        io.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = candle_core::safetensors::load(&io, &Device::Cpu).unwrap();
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for name in ["mean", "logvar", "decoded"] {
        let a: Vec<f32> = got[name].flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = want[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(max_diff(&a, &b) < 1e-4, "{name}");
    }
    // A directory without a VAE is named.
    let o = cbs(&[
        "forward",
        "--vae",
        tmp.path().to_str().unwrap(),
        "--inputs",
        io.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("config.json"),
        "{}",
        stderr(&o)
    );
}

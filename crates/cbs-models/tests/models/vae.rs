//! The SD VAE against diffusers: a golden fixture written by `scripts/parity/vae_parity.py
//! --config tiny --fixture` (random weights, the reference outputs computed by diffusers in
//! float64), loaded through the real directory loader, plus the loader's key layouts and
//! errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cbs_models::vae::{AutoencoderKl, VaeConfig};
use cbs_models::{Kernels, ModelError};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae-tiny")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("io.safetensors"), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    let d = d.max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d / m.to_scalar::<f32>().unwrap() as f64
}

/// Encoder means and log-variances and decoder outputs within 1e-4 of diffusers (float64
/// reference), under both kernel policies.
#[test]
fn vae_matches_diffusers_golden_fixture() {
    let io = io();
    for k in [Kernels::Fused, Kernels::Composed] {
        let vae = AutoencoderKl::load(&fixture().join("vae"), &Device::Cpu, k).unwrap();
        let post = vae.encode(&io["x"]).unwrap();
        let (em, el) = (
            rel_err(&post.mean, &io["mean"]),
            rel_err(&post.logvar, &io["logvar"]),
        );
        let dec = vae.decode(&io["z"]).unwrap();
        let ed = rel_err(&dec, &io["decoded"]);
        eprintln!("{k:?}: mean {em:.2e}, logvar {el:.2e}, decoded {ed:.2e}");
        assert!(em < 1e-4 && el < 1e-4 && ed < 1e-4, "{k:?}: {em} {el} {ed}");
        // A wrong layer would be far off, not near: the check can fail.
        let other = vae.decode(&(&io["z"] * 1.01).unwrap()).unwrap();
        assert!(rel_err(&other, &io["decoded"]) > 1e-3);
    }
}

/// Copies the fixture's model directory with its weights transformed by `f`.
fn variant(dir: &Path, f: impl Fn(String, Tensor) -> (String, Tensor)) -> PathBuf {
    let src = fixture().join("vae");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let w = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let w: HashMap<String, Tensor> = w.into_iter().map(|(k, t)| f(k, t)).collect();
    candle_core::safetensors::save(&w, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// The published sd-vae-ft-mse file names the attention `query`/`key`/`value`/`proj_attn`;
/// original-LDM conversions store those projections as 1×1 convolutions. Both load to the
/// same network.
#[test]
fn vae_reads_legacy_attention_layouts() {
    let io = io();
    let tmp = tempfile::tempdir().unwrap();
    let dir = variant(tmp.path(), |k, t| {
        let k = k
            .replace("attentions.0.to_q.", "attentions.0.query.")
            .replace("attentions.0.to_k.", "attentions.0.key.")
            .replace("attentions.0.to_v.", "attentions.0.value.")
            .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
        let t = if k.contains("attentions.0.") && t.rank() == 2 {
            t.unsqueeze(2).unwrap().unsqueeze(3).unwrap()
        } else {
            t
        };
        (k, t)
    });
    let vae = AutoencoderKl::load(&dir, &Device::Cpu, Kernels::Fused).unwrap();
    let dec = vae.decode(&io["z"]).unwrap();
    assert!(rel_err(&dec, &io["decoded"]) < 1e-4);
    // A pipeline directory: the model in its vae/ subfolder.
    let vae = AutoencoderKl::load(&fixture(), &Device::Cpu, Kernels::Fused).unwrap();
    assert!(rel_err(&vae.decode(&io["z"]).unwrap(), &io["decoded"]) < 1e-4);
}

fn load_err(dir: &Path) -> String {
    match AutoencoderKl::load(dir, &Device::Cpu, Kernels::Fused) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A missing or extra tensor, a wrong shape, an unknown config field or an unsupported
/// variant is an error naming the file and what is wrong.
#[test]
fn vae_loader_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        d
    };
    let d = variant(&sub("missing"), |k, t| {
        if k == "decoder.conv_out.bias" {
            ("renamed.bias".into(), t)
        } else {
            (k, t)
        }
    });
    let e = load_err(&d);
    assert!(
        e.contains("decoder.conv_out.bias") && e.contains("missing"),
        "{e}"
    );

    let d = variant(&sub("shape"), |k, t| {
        if k == "encoder.conv_in.bias" {
            (k, t.narrow(0, 0, 8).unwrap())
        } else {
            (k, t)
        }
    });
    let e = load_err(&d);
    assert!(
        e.contains("encoder.conv_in.bias") && e.contains("[8]"),
        "{e}"
    );

    let d = sub("config");
    let cfg = std::fs::read_to_string(fixture().join("vae/config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replacen('{', "{\"use_fancy_norm\": true,", 1),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("use_fancy_norm"),
        "{e}"
    );
    std::fs::write(d.join("config.json"), cfg.replace("\"silu\"", "\"gelu\"")).unwrap();
    assert!(load_err(&d).contains("act_fn"));

    let e = load_err(&sub("empty"));
    assert!(e.contains("config.json"), "{e}");
    let d = sub("noweights");
    std::fs::copy(fixture().join("vae/config.json"), d.join("config.json")).unwrap();
    assert!(load_err(&d).contains("diffusion_pytorch_model.safetensors"));
}

/// The SD VAE's published size, and input checks instead of shape panics deep inside.
#[test]
fn vae_sd_config_and_input_checks() {
    let n: usize = AutoencoderKl::parameter_shapes(&VaeConfig::sd())
        .unwrap()
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    assert_eq!(n, 83_653_863);
    assert_eq!(VaeConfig::sd().downscale(), 8);
    let vae = AutoencoderKl::load(&fixture().join("vae"), &Device::Cpu, Kernels::Fused).unwrap();
    let bad = Tensor::zeros((1, 3, 15, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    match vae.encode(&bad) {
        Err(ModelError::Invalid(m)) => assert!(m.contains("multiples of 2"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let bad = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode(&bad).is_err());
}

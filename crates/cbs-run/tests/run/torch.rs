//! PyTorch checkpoints in the layouts of the reference training scripts load for inference
//! and compute what the same weights compute when built directly.

use candle_core::{DType, Device, Tensor};
use cbs_models::{Architecture, Kernels, ModelSpec, Precision, Trainable};
use cbs_run::torch_checkpoint::{is_torch_file, load_any};
use cbs_run::WeightsKind;
use cbs_torch::write::{save, Value};
use cbs_torch::Format;

fn spec() -> ModelSpec {
    let mut s = ModelSpec::new("sit-nano-4");
    s.image_size = Some(8);
    s.in_channels = Some(2);
    s.num_classes = Some(5);
    s
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let v: Vec<f32> = (0..3 * 2 * 8 * 8)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    (
        Tensor::from_vec(v, (3, 2, 8, 8), &Device::Cpu).unwrap(),
        Tensor::new(&[0.1f32, 0.5, 0.9], &Device::Cpu).unwrap(),
        // 5 is the null class.
        Tensor::new(&[0u32, 4, 5], &Device::Cpu).unwrap(),
    )
}

/// Two differently seeded networks: (state_dict values, velocity on [`inputs`]).
fn nets() -> Vec<(Vec<(String, Value)>, Tensor)> {
    let arch = spec().resolve(&[2, 8, 8], 5).unwrap();
    let (x, t, y) = inputs();
    [1u64, 2]
        .iter()
        .map(|&seed| {
            let tr = Trainable::new(&arch, Kernels::Fused, seed, DType::F32, &Device::Cpu).unwrap();
            // The adaLN and final layers start at zero: perturb every variable so the output
            // depends on all of them.
            for (i, (_, v)) in tr.named_vars().iter().enumerate() {
                let noise = (Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap()
                    * (1.0 + i as f64 * 1e-3))
                    .unwrap();
                v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
            }
            let mut sd: Vec<(String, Value)> = tr
                .named_vars()
                .into_iter()
                .map(|(n, v)| (n, Value::Tensor(v.as_tensor().copy().unwrap())))
                .collect();
            for (n, b) in tr.model.buffers() {
                sd.push((n, Value::Tensor(b)));
            }
            (sd, tr.model.forward(&x, &t, &y).unwrap())
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn reference_layouts_load_with_the_right_entry() {
    let mut nets = nets();
    let (ema, ema_v) = nets.pop().unwrap();
    let (model, model_v) = nets.pop().unwrap();
    assert!(
        max_diff(&ema_v, &model_v) > 1e-3,
        "the two weight sets must differ"
    );
    let dir = tempfile::tempdir().unwrap();
    let prefixed = |sd: &[(String, Value)]| -> Vec<(String, Value)> {
        sd.iter()
            .map(|(n, v)| match v {
                Value::Tensor(t) => (format!("net.{n}"), Value::Tensor(t.clone())),
                _ => unreachable!(),
            })
            .collect()
    };
    let clone = |sd: &[(String, Value)]| -> Vec<(String, Value)> {
        sd.iter()
            .map(|(n, v)| match v {
                Value::Tensor(t) => (n.clone(), Value::Tensor(t.clone())),
                _ => unreachable!(),
            })
            .collect()
    };
    // SiT/DiT train.py: model, ema, opt, args.
    let sit = Value::Dict(vec![
        ("model".into(), Value::OrderedDict(clone(&model))),
        ("ema".into(), Value::OrderedDict(clone(&ema))),
        (
            "opt".into(),
            Value::Dict(vec![("state".into(), Value::Dict(vec![]))]),
        ),
        (
            "args".into(),
            Value::Namespace(vec![("model".into(), Value::Str("SiT-S/2".into()))]),
        ),
    ]);
    // JiT misc.save_model: model, model_ema1, model_ema2, keys under `net.`.
    let jit = Value::Dict(vec![
        ("model".into(), Value::OrderedDict(prefixed(&model))),
        ("model_ema1".into(), Value::OrderedDict(prefixed(&ema))),
        ("model_ema2".into(), Value::OrderedDict(prefixed(&model))),
        ("epoch".into(), Value::Int(3)),
    ]);
    // torchcfm: net_model, ema_model.
    let cfm = Value::Dict(vec![
        ("net_model".into(), Value::OrderedDict(clone(&model))),
        ("ema_model".into(), Value::OrderedDict(clone(&ema))),
        ("step".into(), Value::Int(100)),
    ]);
    let released = Value::OrderedDict(clone(&ema));
    let (x, t, y) = inputs();
    let cases = [
        ("sit.pt", sit, Format::Zip, "ema", "model"),
        ("jit.pth", jit, Format::Zip, "model_ema1", "model"),
        ("cfm.pt", cfm, Format::Legacy, "ema_model", "net_model"),
        (
            "released.pt",
            released,
            Format::Zip,
            "state_dict",
            "state_dict",
        ),
    ];
    for (name, value, format, ema_entry, model_entry) in cases {
        let path = dir.path().join(name);
        save(&path, &value, format).unwrap();
        assert!(is_torch_file(&path));
        for (which, entry, want) in [
            (WeightsKind::Ema, ema_entry, &ema_v),
            (WeightsKind::Model, model_entry, &model_v),
        ] {
            // A bare state_dict has one set of weights: the EMA one here.
            let want = if entry == "state_dict" { &ema_v } else { want };
            let (loaded, got) =
                load_any(&path, which, Some(&spec()), Precision::F32, &Device::Cpu).unwrap();
            assert_eq!(got.as_deref(), Some(entry), "{name}");
            assert_eq!(loaded.architecture.sample_shape(), vec![2, 8, 8]);
            let v = loaded.model.forward(&x, &t, &y).unwrap();
            assert_eq!(max_diff(&v, want), 0.0, "{name} {entry}");
        }
    }
    let path = dir.path().join("sit.pt");
    let err = load_any(&path, WeightsKind::Ema, None, Precision::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("--model PRESET") && err.contains("sit.pt"),
        "{err}"
    );
    let mut wrong = spec();
    wrong.num_classes = Some(6);
    let err = load_any(
        &path,
        WeightsKind::Ema,
        Some(&wrong),
        Precision::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("shape") && err.contains("sit.pt"), "{err}");
}

/// A torchcfm class-conditional UNet (`label_emb` of `num_classes` rows, no null row) loads
/// with `--model unet-mini` as a UNet without a null class and computes what the same
/// weights compute when built directly.
#[test]
fn torchcfm_label_table_without_a_null_row_loads() {
    let mut s = ModelSpec::new("unet-mini");
    s.image_size = Some(8);
    s.in_channels = Some(3);
    s.num_classes = Some(4);
    let arch = s.resolve(&[3, 8, 8], 4).unwrap();
    let Architecture::Unet(mut cfg) = arch.clone() else {
        panic!("unet-mini is a UNet")
    };
    assert!(cfg.null_class().is_some(), "the preset adds a null row");
    cfg.class_dropout_prob = 0.0;
    let no_null = Architecture::Unet(cfg);
    let tr = Trainable::new(&no_null, Kernels::Fused, 3, DType::F32, &Device::Cpu).unwrap();
    for (_, v) in tr.named_vars() {
        let noise = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
    let sd: Vec<(String, Value)> = tr
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, Value::Tensor(v.as_tensor().copy().unwrap())))
        .collect();
    let rows = sd
        .iter()
        .find_map(|(n, v)| match v {
            Value::Tensor(t) if n == "label_emb.weight" => Some(t.dim(0).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(rows, 4);
    let clone = || -> Vec<(String, Value)> {
        sd.iter()
            .map(|(n, v)| match v {
                Value::Tensor(t) => (n.clone(), Value::Tensor(t.clone())),
                _ => unreachable!(),
            })
            .collect()
    };
    let file = Value::Dict(vec![
        ("net_model".into(), Value::OrderedDict(clone())),
        ("ema_model".into(), Value::OrderedDict(clone())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfm_cond.pt");
    save(&path, &file, Format::Zip).unwrap();
    let (loaded, entry) = load_any(
        &path,
        WeightsKind::Ema,
        Some(&s),
        Precision::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(entry.as_deref(), Some("ema_model"));
    assert_eq!(loaded.architecture.null_class(), None);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.2f32, 0.7], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
    let want = tr.model.forward(&x, &t, &y).unwrap();
    let got = loaded.model.forward(&x, &t, &y).unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);

    // Multi-GPU training (DataParallel / DDP) saves every key under `module.`.
    let ddp: Vec<(String, Value)> = clone()
        .into_iter()
        .map(|(n, v)| (format!("module.{n}"), v))
        .collect();
    let file = Value::Dict(vec![("ema_model".into(), Value::OrderedDict(ddp))]);
    let path = dir.path().join("cfm_ddp.pt");
    save(&path, &file, Format::Zip).unwrap();
    let (loaded, _) = load_any(
        &path,
        WeightsKind::Ema,
        Some(&s),
        Precision::F32,
        &Device::Cpu,
    )
    .unwrap();
    let got = loaded.model.forward(&x, &t, &y).unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);
}

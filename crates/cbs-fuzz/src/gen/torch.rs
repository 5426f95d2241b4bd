//! PyTorch files in both `torch.save` layouts, written by `cbs_torch::write`: a training
//! checkpoint's shape (`model` / `ema` state_dicts, an `args` namespace, lists, scalars) with
//! tensors of every dtype the writer knows.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use cbs_torch::write::{save, Value};
use cbs_torch::Format;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Input;

const DTYPES: &[DType] = &[
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I64,
    DType::U8,
];

fn tensor(rng: &mut ChaCha8Rng) -> Value {
    let shape: Vec<usize> = (0..rng.random_range(0..=3))
        .map(|_| rng.random_range(0..=4))
        .collect();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
    let dtype = DTYPES[rng.random_range(0..DTYPES.len())];
    let t = Tensor::from_vec(v, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("a small tensor");
    Value::Tensor(t)
}

fn state_dict(rng: &mut ChaCha8Rng) -> Value {
    const NAMES: &[&str] = &[
        "x_embedder.proj.weight",
        "blocks.0.attn.qkv.weight",
        "pos_embed",
    ];
    Value::OrderedDict(
        (0..rng.random_range(0..=3))
            .map(|i| (format!("{}.{i}", NAMES[i % NAMES.len()]), tensor(rng)))
            .collect(),
    )
}

fn checkpoint(rng: &mut ChaCha8Rng) -> Value {
    if rng.random_bool(0.3) {
        return state_dict(rng);
    }
    Value::Dict(vec![
        ("model".into(), state_dict(rng)),
        ("ema".into(), state_dict(rng)),
        (
            "args".into(),
            Value::Namespace(vec![
                ("model".into(), Value::Str("SiT-XL/2".into())),
                ("lr".into(), Value::Float(1e-4)),
                ("flip".into(), Value::Bool(true)),
            ]),
        ),
        (
            "steps".into(),
            Value::List(vec![Value::Int(rng.random_range(0..1 << 40)), Value::None]),
        ),
    ])
}

fn file(rng: &mut ChaCha8Rng, scratch: &Path, format: Format) -> Input {
    let p = scratch.join("gen.pt");
    save(&p, &checkpoint(rng), format).expect("writing to the scratch folder");
    Input::file(
        "checkpoint.pt",
        std::fs::read(&p).expect("reading back the scratch file"),
    )
}

pub fn zip(rng: &mut ChaCha8Rng, scratch: &Path) -> Input {
    file(rng, scratch, Format::Zip)
}

pub fn legacy(rng: &mut ChaCha8Rng, scratch: &Path) -> Input {
    file(rng, scratch, Format::Legacy)
}

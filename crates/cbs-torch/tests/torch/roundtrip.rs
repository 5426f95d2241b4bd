//! Files written in both layouts read back bit for bit, with names, groups and prefixes.

use candle_core::{DType, Device, Tensor};
use cbs_torch::write::{save, Value};
use cbs_torch::{Format, TorchFile};

fn tensor(n: usize, shape: &[usize], dtype: DType) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn checkpoint() -> (Value, Vec<(String, Tensor)>) {
    let w = tensor(12, &[3, 4], DType::F32);
    let b = tensor(4, &[4], DType::BF16);
    let h = tensor(6, &[2, 1, 3], DType::F16);
    let c = Tensor::new(&[7i64, -3], &Device::Cpu).unwrap();
    let state = |scale: f64| {
        Value::OrderedDict(vec![
            ("blocks.0.w".into(), Value::Tensor((&w * scale).unwrap())),
            ("blocks.0.b".into(), Value::Tensor(b.clone())),
            ("norm.h".into(), Value::Tensor(h.clone())),
            ("count".into(), Value::Tensor(c.clone())),
        ])
    };
    let value = Value::Dict(vec![
        ("model".into(), state(1.0)),
        ("ema".into(), state(2.0)),
        (
            "args".into(),
            Value::Namespace(vec![
                ("model".into(), Value::Str("SiT-XL/2".into())),
                ("lr".into(), Value::Float(1e-4)),
                ("epochs".into(), Value::Int(1400)),
                ("flip".into(), Value::Bool(true)),
            ]),
        ),
        (
            "steps".into(),
            Value::List(vec![Value::Int(1), Value::None]),
        ),
    ]);
    let expect = vec![
        ("blocks.0.w".to_string(), (&w * 2.0).unwrap()),
        ("blocks.0.b".to_string(), b),
        ("norm.h".to_string(), h),
        ("count".to_string(), c),
    ];
    (value, expect)
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.dims() == b.dims()
        && a.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            == b.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
}

#[test]
fn both_layouts_read_back_every_tensor_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Zip, Format::Legacy] {
        let (value, expect) = checkpoint();
        let path = dir.path().join(format!("ckpt-{format:?}.pt"));
        save(&path, &value, format).unwrap();
        let f = TorchFile::open(&path).unwrap();
        assert_eq!(f.format(), format);
        assert_eq!(f.groups(), vec!["model", "ema"], "{format:?}");
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert_eq!(names[0], "model.blocks.0.w");
        assert_eq!(f.get("ema.norm.h").unwrap().shape(), &[2, 1, 3]);
        assert_eq!(f.get("ema.blocks.0.b").unwrap().dtype(), Some(DType::BF16));
        let (ema, skipped) = f.load_all(Some("ema")).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(ema.len(), expect.len());
        for ((name, t), (ename, et)) in ema.iter().zip(&expect) {
            assert_eq!(name, ename);
            assert!(same(t, et), "{format:?} {name}");
        }
        // The prefix must match a whole component.
        assert!(f.load_all(Some("em")).unwrap().0.is_empty());
        let err = f.load("ema.nope").unwrap_err().to_string();
        assert!(
            err.contains("ema.nope") && err.contains(path.to_str().unwrap()),
            "{err}"
        );
    }
}

#[test]
fn a_bare_state_dict_and_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = tensor(6, &[2, 3], DType::F32);
    let value = Value::OrderedDict(vec![("w".into(), Value::Tensor(w.clone()))]);
    for format in [Format::Zip, Format::Legacy] {
        let path = dir.path().join("sd.pt");
        save(&path, &value, format).unwrap();
        let f = TorchFile::open(&path).unwrap();
        assert!(same(&f.load("w").unwrap(), &w));
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 3, bytes.len() / 2, 20, 3, 0] {
            let short = dir.path().join("short.pt");
            std::fs::write(&short, &bytes[..cut]).unwrap();
            let err = match TorchFile::open(&short) {
                Ok(f) => f.load("w").map(|_| ()).unwrap_err(),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(msg.contains("short.pt"), "{format:?} cut {cut}: {msg}");
        }
    }
}

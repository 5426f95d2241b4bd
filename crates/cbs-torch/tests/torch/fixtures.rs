//! Files written by the real `torch.save` (scripts/parity/torch_fixtures.py, committed under
//! tests/fixtures) read to the values `torch.load` gives, tensor by tensor.

use std::path::PathBuf;

use candle_core::DType;
use cbs_torch::{Format, TorchFile};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn torch_save_files_match_torch_load() {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let expected: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(expected.len(), 4);
    for (file, tensors) in &expected {
        let f = TorchFile::open(&fixtures().join(file)).unwrap();
        let want = if file.contains("legacy") {
            Format::Legacy
        } else {
            Format::Zip
        };
        assert_eq!(f.format(), want, "{file}");
        let tensors = tensors.as_object().unwrap();
        let mut names: Vec<&str> = f.tensors().iter().map(|t| t.name()).collect();
        names.sort();
        let mut expect_names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        expect_names.sort();
        assert_eq!(names, expect_names, "{file}");
        for (name, e) in tensors {
            let info = f.get(name).unwrap();
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(info.shape(), shape.as_slice(), "{file} {name}");
            let values: Vec<f64> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            if e["dtype"] == "bool" {
                assert_eq!(info.storage_type().torch_name(), "bool");
                assert!(info.dtype().is_none());
                let err = f.load(name).unwrap_err().to_string();
                assert!(err.contains("bool has no candle dtype"), "{err}");
                continue;
            }
            let t = f.load(name).unwrap();
            assert_eq!(dtype_name(t.dtype()), e["dtype"], "{file} {name}");
            let got = t
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            // serde_json's float parser may miss the last bit of f64; the values are f32 or
            // coarser, so 1e-15 relative is still exact for them.
            assert_eq!(got.len(), values.len(), "{file} {name}");
            for (g, v) in got.iter().zip(&values) {
                assert!(
                    (g - v).abs() <= 1e-15 * v.abs().max(1.0),
                    "{file} {name}: {g} vs {v}"
                );
            }
        }
    }
}

#[test]
fn a_training_checkpoint_splits_into_its_groups() {
    let f = TorchFile::open(&fixtures().join("checkpoint.pt")).unwrap();
    // `args` (an argparse.Namespace) and `epoch` hold no tensors.
    assert_eq!(f.groups(), vec!["model", "ema", "opt"]);
    let (ema, skipped) = f.load_all(Some("ema")).unwrap();
    assert!(skipped.is_empty());
    let mut names: Vec<&str> = ema.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "counter",
            "norm.bias",
            "norm.weight",
            "proj.bias",
            "proj.weight"
        ]
    );
}

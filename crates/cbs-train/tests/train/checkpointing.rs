//! Activation checkpointing: the same step as the plain backward, and a clear refusal where
//! it does not apply.

use candle_core::{DType, Device, Tensor};
use cbs_models::ModelSpec;
use cbs_train::step::{Batch, StepOutcome, Stepper};
use cbs_train::TrainSection;

fn batch(b: usize, side: usize, seed: u64) -> Batch {
    let dev = Device::Cpu;
    let n = b * side * side;
    let f = |k: u64| -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2654435761 + k * 97 + seed) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 1, side, side), &dev).unwrap()
    };
    Batch {
        x0: f(1),
        x1: f(2),
        t: Tensor::from_vec(
            (0..b).map(|i| 0.1 + 0.8 * i as f32 / b as f32).collect(),
            b,
            &dev,
        )
        .unwrap(),
        y: Tensor::from_vec((0..b as u32).map(|i| i % 3).collect(), b, &dev).unwrap(),
        dropout_seed: 0,
        w: None,
    }
}

fn norm(t: &Tensor) -> f64 {
    let sq = t
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    sq.to_scalar::<f64>().unwrap().sqrt()
}

/// One step with and without checkpointing from the same weights: the same loss, gradient
/// norm and updated weights, up to rounding.
#[test]
fn recomputing_blocks_gives_the_gradients_of_the_plain_backward() {
    for preset in ["sit-nano-4", "jit-nano-4"] {
        let arch = ModelSpec::new(preset).resolve(&[1, 16, 16], 3).unwrap();
        let mut tc = TrainSection {
            lr: 1e-3,
            seed: 3,
            ..Default::default()
        };
        let mut plain = Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
        tc.activation_checkpointing = true;
        let mut ck = Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
        for s in 0..3 {
            let b = batch(6, 16, s);
            let (
                StepOutcome::Updated {
                    loss: l1,
                    grad_norm: g1,
                    ..
                },
                StepOutcome::Updated {
                    loss: l2,
                    grad_norm: g2,
                    ..
                },
            ) = (plain.step(&b, 1e-3).unwrap(), ck.step(&b, 1e-3).unwrap())
            else {
                panic!("{preset}: non-finite step");
            };
            assert!(
                (l1 - l2).abs() <= 1e-6 * l1.abs(),
                "{preset} step {s}: loss {l1} vs {l2}"
            );
            assert!(
                (g1 - g2).abs() <= 1e-5 * g1.abs(),
                "{preset} step {s}: ‖g‖ {g1} vs {g2}"
            );
        }
        for ((name, a), (_, b)) in plain.vars.iter().zip(&ck.vars) {
            let d = norm(&(a.as_tensor() - b.as_tensor()).unwrap());
            let n = norm(a.as_tensor());
            assert!(
                d <= 1e-4 * (n + 1.0),
                "{preset}: {name} differs by {d} (norm {n})"
            );
        }
    }
}

#[test]
fn checkpointing_a_unet_is_refused_with_the_field() {
    let arch = ModelSpec::new("unet-mini")
        .resolve(&[1, 16, 16], 3)
        .unwrap();
    let tc = TrainSection {
        activation_checkpointing: true,
        ..Default::default()
    };
    let mut st = Stepper::new(&arch, &tc, &Device::Cpu).unwrap();
    let e = st.step(&batch(2, 16, 0), 1e-3).unwrap_err().to_string();
    assert!(e.contains("train.activation_checkpointing"), "{e}");
}

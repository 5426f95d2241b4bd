//! `cbs device-check`: every op and one training step of every backbone on a device, against
//! the CPU.
//!
//! The reference is the composed ops on the CPU in f64; the device runs the run-time path a
//! training run takes there (`Kernels::Fused`: hand-written kernels where the device has them,
//! composed ops elsewhere) in f32 and in bf16. Each op's forward and the
//! gradient of every input (through `Σ out·c` with a fixed random cotangent `c`) are compared
//! by normwise relative error `‖a − b‖ / ‖b‖`. On `--device cpu` the same logic compares the
//! CPU kernels with the f64 reference, so the check itself is tested before any GPU time.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Linear;
use cbs_core::rng::{self, Purpose};
use cbs_flow::interpolant::{interpolate, velocity_mse};
use cbs_models::jit::rope::Rope;
use cbs_models::{nn, Kernels, ModelSpec, Trainable};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

use crate::cli::DeviceCheckArgs;

/// Relative error allowed in f32 (forward and gradients).
pub const F32_TOL: f64 = 1e-4;
/// Relative error allowed in half precision: a few units of bf16's rounding (2⁻⁸ ≈ 3.9e-3)
/// accumulated over an op or a network.
pub const HALF_TOL: f64 = 5e-2;

#[derive(Serialize)]
struct Check {
    kind: &'static str,
    name: String,
    dtype: String,
    /// Normwise relative error of the output (the loss, for training steps).
    forward: f64,
    /// Largest normwise relative error over the input gradients (every parameter's gradient,
    /// for training steps).
    backward: f64,
    /// The input or parameter with the largest gradient error.
    worst: String,
    tolerance: f64,
    pass: bool,
    /// Set when the device could not run the check at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Set when the check does not apply to this device (counted as passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    device: &'a str,
    checks: Vec<Check>,
    passed: usize,
    failed: usize,
}

pub fn device_check(a: DeviceCheckArgs) -> Result<()> {
    let dev = a.device.open()?;
    let mut checks = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 {
            F32_TOL
        } else {
            HALF_TOL
        };
        for op in OPS {
            checks.push(run_check("op", op.name, dtype, tol, || {
                check_op(op, &dev, dtype)
            }));
        }
        for preset in &a.models {
            let mut c = run_check("train_step", preset, dtype, tol, || {
                check_step(preset, &dev, dtype)
            });
            if dev.is_cpu() && dtype == DType::BF16 && preset.starts_with("unet-") {
                // candle's CPU backend has no bf16 convolution (f16 has, but without loss
                // scaling its gradients underflow at these sizes): nothing to check here.
                c.skipped = Some("no bf16 convolution on the CPU".into());
                c.pass = true;
                c.error = None;
            }
            checks.push(c);
        }
    }
    for c in &checks {
        let status = if c.pass { "ok  " } else { "FAIL" };
        match (&c.skipped, &c.error) {
            (Some(why), _) => println!("skip {:<10} {:<22} {:<4} {why}", c.kind, c.name, c.dtype),
            (_, Some(e)) => println!(
                "{status} {:<10} {:<22} {:<4} error: {e}",
                c.kind, c.name, c.dtype
            ),
            _ => println!(
                "{status} {:<10} {:<22} {:<4} forward {:.2e}  backward {:.2e} ({})  tol {:.0e}",
                c.kind, c.name, c.dtype, c.forward, c.backward, c.worst, c.tolerance
            ),
        }
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    let report = Report {
        device: &a.device.device,
        passed: checks.len() - failed,
        failed,
        checks,
    };
    if let Some(out) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        cbs_core::atomic::write_text(out, &(text + "\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!("device-check: {} passed, {} failed", report.passed, failed);
    if failed > 0 {
        anyhow::bail!("{failed} device check(s) failed");
    }
    Ok(())
}

fn run_check(
    kind: &'static str,
    name: &str,
    dtype: DType,
    tolerance: f64,
    f: impl FnOnce() -> Result<(f64, f64, String)>,
) -> Check {
    let (forward, backward, worst, error) = match f() {
        Ok((fw, bw, worst)) => (fw, bw, worst, None),
        Err(e) => (f64::NAN, f64::NAN, String::new(), Some(format!("{e:#}"))),
    };
    Check {
        kind,
        name: name.to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        forward,
        backward,
        worst,
        tolerance,
        pass: error.is_none() && forward <= tolerance && backward <= tolerance,
        error,
        skipped: None,
    }
}

/// `‖a − b‖ / ‖b‖` in f64 (`‖a‖` when `b` is zero).
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm > 0.0 { diff / norm } else { diff })
}

/// One op under test: input shapes and the forward through `cbs_models::nn`.
struct OpCase {
    name: &'static str,
    inputs: &'static [&'static [usize]],
    forward: fn(Kernels, &[Tensor]) -> candle_core::Result<Tensor>,
}

const B: usize = 2;
const N: usize = 16;
const C: usize = 64;
const HEADS: usize = 4;
const GRID: usize = 4; // N = GRID²

const OPS: &[OpCase] = &[
    OpCase {
        name: "gelu_tanh",
        inputs: &[&[B, N, C]],
        forward: |k, x| nn::gelu_tanh(k, &x[0]),
    },
    OpCase {
        name: "silu",
        inputs: &[&[B, N, C]],
        forward: |k, x| nn::silu(k, &x[0]),
    },
    OpCase {
        name: "softmax_last",
        inputs: &[&[B, N, C]],
        forward: |k, x| nn::softmax_last(k, &x[0]),
    },
    OpCase {
        name: "layer_norm",
        inputs: &[&[B, N, C]],
        forward: |k, x| nn::layer_norm_no_affine(k, &x[0], 1e-6),
    },
    OpCase {
        name: "layer_norm_modulate",
        inputs: &[&[B, N, C], &[B, C], &[B, C]],
        forward: |k, x| nn::layer_norm_modulate(k, &x[0], &x[1], &x[2], 1e-6),
    },
    OpCase {
        name: "gated_residual",
        inputs: &[&[B, N, C], &[B, C], &[B, N, C]],
        forward: |k, x| nn::gated_residual(k, &x[0], &x[1], &x[2]),
    },
    OpCase {
        name: "rms_norm_modulate",
        inputs: &[&[B, N, C], &[C], &[B, C], &[B, C]],
        forward: |k, x| nn::rms_norm_modulate(k, &x[0], &x[1], &x[2], &x[3], 1e-6),
    },
    OpCase {
        name: "qk_norm_rope",
        inputs: &[&[B, N, 3 * C], &[C / HEADS], &[C / HEADS]],
        forward: |k, x| {
            let rope = Rope::new(C / HEADS, GRID, 0, x[0].dtype(), x[0].device())?;
            nn::qk_norm_rope(k, &x[0], &x[1], &x[2], &rope, HEADS, 1e-6)
        },
    },
    OpCase {
        name: "swiglu",
        inputs: &[&[B, N, 2 * C]],
        forward: |k, x| nn::swiglu(k, &x[0]),
    },
    OpCase {
        name: "group_norm_silu",
        inputs: &[&[B, C, GRID, GRID], &[C], &[C]],
        forward: |k, x| nn::group_norm(k, &x[0], &x[1], &x[2], 8, 1e-5, true),
    },
    OpCase {
        name: "mse",
        inputs: &[&[B, N, C], &[B, N, C]],
        forward: |k, x| nn::mse(k, &x[0], &x[1]),
    },
    OpCase {
        name: "linear",
        inputs: &[&[B, N, C], &[2 * C, C], &[2 * C]],
        forward: |k, x| nn::linear(k, &Linear::new(x[1].clone(), Some(x[2].clone())), &x[0]),
    },
    OpCase {
        name: "attention",
        inputs: &[&[B, N, 3 * C]],
        forward: |k, x| attention(k, &x[0], HEADS),
    },
    // The CUDA attention kernels' head widths (SiT-XL's 72 included) and token counts that
    // are not multiples of their tiles (32 for f32, 64 for bf16), one of them over several tiles.
    OpCase {
        name: "attention_d32_n130",
        inputs: &[&[1, 130, 3 * 2 * 32]],
        forward: |k, x| attention(k, &x[0], 2),
    },
    OpCase {
        name: "attention_d64_n70",
        inputs: &[&[2, 70, 3 * 2 * 64]],
        forward: |k, x| attention(k, &x[0], 2),
    },
    OpCase {
        name: "attention_d72_n50",
        inputs: &[&[2, 50, 3 * 2 * 72]],
        forward: |k, x| attention(k, &x[0], 2),
    },
    OpCase {
        name: "attention_d128_n33",
        inputs: &[&[1, 33, 3 * 2 * 128]],
        forward: |k, x| attention(k, &x[0], 2),
    },
];

/// Attention over `qkv` `[B, N, 3C]` with `heads` heads and scale `1/√d`, as the models run it
/// (`nn::attention`), except that where [`Kernels::fuses_attention`] holds (on CUDA: the
/// memory-efficient kernels) the hand-written op is called directly, so that the check covers
/// it whatever `nn`'s dispatch.
fn attention(k: Kernels, qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let d = qkv.dim(2)? / 3 / heads;
    let scale = 1.0 / (d as f64).sqrt();
    if k.fuses_attention(qkv, heads) {
        cbs_kernels::attention(qkv, heads, scale)
    } else {
        nn::attention(k, qkv, heads, scale)
    }
}

/// Seeded standard-normal values (the device and the reference see the same numbers).
fn normal(shape: &[usize], stream: u64) -> Result<Tensor> {
    let mut r = rng::stream(stream, Purpose::TrainStep, 0);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Output and input gradients of `op` on `dev` in `dtype` under `k`.
fn op_run(
    op: &OpCase,
    base: &[Tensor],
    cot: &Tensor,
    k: Kernels,
    dev: &Device,
    dtype: DType,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = base
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = (op.forward)(k, &xs)?;
    // The scalar reduces in f32 at least, as losses do.
    let acc = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let c = cot.to_dtype(acc)?.to_device(dev)?;
    let loss = (out.to_dtype(acc)? * c)?.sum_all()?;
    let grads = loss.backward()?;
    let g = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            grads
                .get(v)
                .cloned()
                .with_context(|| format!("{}: no gradient for input {i}", op.name))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((out, g))
}

fn check_op(op: &OpCase, dev: &Device, dtype: DType) -> Result<(f64, f64, String)> {
    let base = op
        .inputs
        .iter()
        .enumerate()
        .map(|(i, s)| normal(s, 100 + i as u64))
        .collect::<Result<Vec<_>>>()?;
    let cot = cotangent(op, &base)?;
    let (ref_out, ref_g) = op_run(op, &base, &cot, Kernels::Composed, &Device::Cpu, DType::F64)?;
    let (out, g) = op_run(op, &base, &cot, Kernels::Fused, dev, dtype)?;
    let forward = rel_err(&out, &ref_out)?;
    let mut backward = 0.0f64;
    let mut worst = String::new();
    for (i, (a, b)) in g.iter().zip(&ref_g).enumerate() {
        let e = rel_err(a, b)?;
        if e >= backward {
            backward = e;
            worst = format!("input {i}");
        }
    }
    Ok((forward, backward, worst))
}

/// A fixed random cotangent shaped like the op's output.
fn cotangent(op: &OpCase, base: &[Tensor]) -> Result<Tensor> {
    let out = (op.forward)(Kernels::Composed, base)?;
    normal(out.dims(), 999)
}

/// Loss and every parameter gradient of one training step of `preset` (random weights, a
/// fixed random batch), device vs the CPU reference in f64.
fn check_step(preset: &str, dev: &Device, dtype: DType) -> Result<(f64, f64, String)> {
    let sample: Vec<usize> = if preset.starts_with("mlp-") {
        vec![2]
    } else {
        vec![3, 16, 16]
    };
    let arch = ModelSpec::new(preset).resolve(&sample, 10)?;
    let b = 4;
    let shape: Vec<usize> = std::iter::once(b).chain(sample).collect();
    let x0 = normal(&shape, 1)?;
    let x1 = normal(&shape, 2)?;
    let t = ((normal(&[b], 3)?.tanh()? + 1.0)? * 0.45)?; // in (0, 0.9): JiT divides by 1 − t
    let y = Tensor::from_vec((0..b as u32).collect::<Vec<_>>(), b, &Device::Cpu)?;
    let run = |k: Kernels, dev: &Device, dtype: DType| -> Result<(f64, Vec<(String, Tensor)>)> {
        // f32 master weights on the device (as training keeps them); f64 for the reference.
        let var_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let net = Trainable::new(&arch, k, 0, var_dtype, dev)?;
        cbs_models::common::init::init_all_random(&net.named_vars(), 0, 0.02)?;
        let io = |t: &Tensor| t.to_dtype(var_dtype)?.to_device(dev);
        let (x0, x1, t, y) = (io(&x0)?, io(&x1)?, io(&t)?, y.to_device(dev)?);
        let cast;
        let model = if dtype == var_dtype {
            &net.model
        } else {
            cast = net.cast_model(dtype)?;
            &cast
        };
        let xt = interpolate(&x0, &x1, &t)?;
        let pred = model.forward_train(&xt, &t, &y, 0)?;
        let target = net.arch.training_target(&x0, &x1, &xt, &t)?;
        let loss = velocity_mse(&pred, &target, k)?;
        let grads = loss.backward()?;
        let named = net
            .named_vars()
            .into_iter()
            .map(|(name, v)| {
                let g = grads
                    .get(&v)
                    .cloned()
                    .with_context(|| format!("no gradient for `{name}`"))?;
                Ok((name, g))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, named))
    };
    let (ref_loss, ref_g) = run(Kernels::Composed, &Device::Cpu, DType::F64)?;
    let (loss, g) = run(Kernels::Fused, dev, dtype)?;
    let forward = (loss - ref_loss).abs() / ref_loss.abs().max(f64::MIN_POSITIVE);
    // A gradient far below the typical parameter's (cancellation: a bias feeding a
    // normalisation, a branch the init leaves nearly idle) is compared on that typical scale.
    let norms = ref_g
        .iter()
        .map(|(_, t)| Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()))
        .collect::<Result<Vec<f64>>>()?;
    let rms = (norms.iter().map(|n| n * n).sum::<f64>() / norms.len().max(1) as f64).sqrt();
    let floor = 0.1 * rms;
    let mut backward = 0.0f64;
    let mut worst = String::new();
    for (((name, a), (_, r)), norm) in g.iter().zip(&ref_g).zip(&norms) {
        let e = rel_err(a, r)? * norm / norm.max(floor);
        if e >= backward {
            backward = e;
            worst = name.clone();
        }
    }
    Ok((forward, backward, worst))
}

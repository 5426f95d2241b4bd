//! The fused kernels (SiT: LayerNorm + adaLN modulation, gated residual, SiLU, bias addition
//! and linear layer, attention, block halves, MSE; JiT: RMSNorm + modulation, qk-norm + RoPE,
//! SwiGLU; UNet: GroupNorm (+ SiLU), the convolution; the f32 `exp` behind GELU, SiLU and
//! softmax) against their composed (autograd) versions and finite differences, and whole SiT,
//! JiT and UNet steps (forward, MSE loss, backward) with the fused kernels against the same
//! steps composed.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::Linear;
use cbs_kernels as fused;
use cbs_models::jit::rope::Rope;
use cbs_models::jit::JitConfig;
use cbs_models::nn::{self, composed, Kernels};
use cbs_models::{Architecture, Model, SitConfig, Trainable};

use super::common::{uniform as rand, vals};

/// An op over several inputs; `&[Tensor]` are the raw inputs (views are taken inside, so
/// non-contiguous layouts get their gradients through candle's view ops).
type OpN = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

struct Case {
    name: &'static str,
    fused: OpN,
    composed: OpN,
    shapes: Vec<Vec<usize>>,
}

const EPS: f64 = 1e-6;
const B: usize = 3;
const N: usize = 5;
const C: usize = 17;

/// `[B, 2C]` → its two halves (strided `[B, C]` views, as `nn::chunk_last` gives them).
fn halves(t: &Tensor) -> (Tensor, Tensor) {
    let c = t.dim(1).unwrap() / 2;
    (t.narrow(1, 0, c).unwrap(), t.narrow(1, c, c).unwrap())
}

/// candle's convolution plus a broadcast bias (the composed version of `fused::conv2d`).
fn candle_conv(x: &[Tensor], stride: usize, padding: usize) -> Result<Tensor> {
    let o = x[2].dim(0)?;
    x[0].conv2d(&x[1], padding, stride, 1, 1)?
        .broadcast_add(&x[2].reshape((1, o, 1, 1))?)
}

/// JiT's qk-norm + RoPE on `x[0]` (`[B, N, 3·H·d]`, N = `cls` + `grid`²) with the q/k norm
/// weights `x[1]`, `x[2]`: the fused kernel, or the composed ops.
fn qk_rope(x: &[Tensor], heads: usize, grid: usize, cls: usize, composed: bool) -> Result<Tensor> {
    let d = x[1].dim(0)?;
    let rope = Rope::new(d, grid, cls, x[0].dtype(), &Device::Cpu)?;
    if composed {
        composed::qk_norm_rope(&x[0], &x[1], &x[2], &rope, heads, EPS)
    } else {
        let w = Tensor::stack(&[&x[1], &x[2]], 0)?;
        fused::qk_norm_rope(&x[0], &w, rope.table(), heads, EPS)
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv2d 3×3, stride 1, padding 1",
            fused: Box::new(|x| fused::conv2d(&x[0], &x[1], &x[2], 1, 1)),
            composed: Box::new(|x| candle_conv(x, 1, 1)),
            shapes: vec![vec![B, 4, 7, 6], vec![5, 4, 3, 3], vec![5]],
        },
        Case {
            // 10 images: five kernel-gradient groups of two; odd sides at stride 2.
            name: "conv2d 3×3, stride 2, padding 1, several image groups",
            fused: Box::new(|x| fused::conv2d(&x[0], &x[1], &x[2], 2, 1)),
            composed: Box::new(|x| candle_conv(x, 2, 1)),
            shapes: vec![vec![10, 3, 7, 5], vec![4, 3, 3, 3], vec![4]],
        },
        Case {
            // One image (fewer than threads: products spread instead); 2×3 kernel, no padding.
            name: "conv2d 2×3, stride 1, no padding, one image",
            fused: Box::new(|x| fused::conv2d(&x[0], &x[1], &x[2], 1, 0)),
            composed: Box::new(|x| candle_conv(x, 1, 0)),
            shapes: vec![vec![1, 2, 5, 6], vec![3, 2, 2, 3], vec![3]],
        },
        Case {
            // Padding wider than the input along one axis: some kernel offsets see no input
            // at all. (Stride 2 here trips candle's own conv2d backward, the reference.)
            name: "conv2d 3×3, stride 1, padding 2, a one-pixel-high input",
            fused: Box::new(|x| fused::conv2d(&x[0], &x[1], &x[2], 1, 2)),
            composed: Box::new(|x| candle_conv(x, 1, 2)),
            shapes: vec![vec![2, 2, 1, 4], vec![3, 2, 3, 3], vec![3]],
        },
        Case {
            name: "silu",
            fused: Box::new(|x| fused::silu(&x[0])),
            composed: Box::new(|x| composed::silu(&x[0])),
            shapes: vec![vec![B, N, C]],
        },
        Case {
            name: "silu (transposed view)",
            fused: Box::new(|x| fused::silu(&x[0].t()?)),
            composed: Box::new(|x| composed::silu(&x[0].t()?)),
            shapes: vec![vec![B, N, C]],
        },
        Case {
            name: "layer_norm_modulate",
            fused: Box::new(|x| fused::layer_norm_modulate(&x[0], &x[1], &x[2], EPS)),
            composed: Box::new(|x| composed::layer_norm_modulate(&x[0], &x[1], &x[2], EPS)),
            shapes: vec![vec![B, N, C], vec![B, C], vec![B, C]],
        },
        Case {
            // x transposed from [B, C, N]; shift and scale strided halves of one [B, 2C].
            name: "layer_norm_modulate (views)",
            fused: Box::new(|x| {
                let (sh, sc) = halves(&x[1]);
                fused::layer_norm_modulate(&x[0].transpose(1, 2)?, &sh, &sc, 1e-5)
            }),
            composed: Box::new(|x| {
                let (sh, sc) = halves(&x[1]);
                composed::layer_norm_modulate(&x[0].transpose(1, 2)?, &sh, &sc, 1e-5)
            }),
            shapes: vec![vec![B, C, N], vec![B, 2 * C]],
        },
        Case {
            name: "gated_residual",
            fused: Box::new(|x| fused::gated_residual(&x[0], &x[1], &x[2])),
            composed: Box::new(|x| composed::gated_residual(&x[0], &x[1], &x[2])),
            shapes: vec![vec![B, N, C], vec![B, C], vec![B, N, C]],
        },
        Case {
            name: "gated_residual (views)",
            fused: Box::new(|x| {
                let (g, _) = halves(&x[1]);
                fused::gated_residual(&x[0], &g, &x[2].transpose(1, 2)?)
            }),
            composed: Box::new(|x| {
                let (g, _) = halves(&x[1]);
                composed::gated_residual(&x[0], &g, &x[2].transpose(1, 2)?)
            }),
            shapes: vec![vec![B, N, C], vec![B, 2 * C], vec![B, C, N]],
        },
        Case {
            name: "bias_add",
            fused: Box::new(|x| fused::bias_add(&x[0], &x[1])),
            composed: Box::new(|x| composed::bias_add(&x[0], &x[1])),
            shapes: vec![vec![B, N, C], vec![C]],
        },
        Case {
            // Enough rows for the parallel column sum (2^14 elements and more).
            name: "bias_add (large, transposed)",
            fused: Box::new(|x| fused::bias_add(&x[0].t()?, &x[1])),
            composed: Box::new(|x| composed::bias_add(&x[0].t()?, &x[1])),
            shapes: vec![vec![C, 1100], vec![C]],
        },
        Case {
            name: "linear (3-D input)",
            fused: Box::new(|x| {
                nn::linear(
                    Kernels::Fused,
                    &Linear::new(x[1].clone(), Some(x[2].clone())),
                    &x[0],
                )
            }),
            composed: Box::new(|x| {
                composed::linear(&Linear::new(x[1].clone(), Some(x[2].clone())), &x[0])
            }),
            shapes: vec![vec![B, N, C], vec![7, C], vec![7]],
        },
        Case {
            // Transposed input; more rows than 2^14 elements for the parallel bias paths.
            name: "linear (large, transposed input)",
            fused: Box::new(|x| fused::linear(&x[0].transpose(1, 2)?, &x[1], &x[2])),
            composed: Box::new(|x| {
                composed::linear(&Linear::new(x[1].clone(), Some(x[2].clone())), &x[0].t()?)
            }),
            shapes: vec![vec![2, C, 700], vec![15, C], vec![15]],
        },
        Case {
            name: "linear (2-D input)",
            fused: Box::new(|x| {
                nn::linear(
                    Kernels::Fused,
                    &Linear::new(x[1].clone(), Some(x[2].clone())),
                    &x[0],
                )
            }),
            composed: Box::new(|x| {
                composed::linear(&Linear::new(x[1].clone(), Some(x[2].clone())), &x[0])
            }),
            shapes: vec![vec![N, C], vec![7, C], vec![7]],
        },
        Case {
            // 2 heads of 4 channels, 6 tokens.
            name: "attention",
            fused: Box::new(|x| fused::attention(&x[0], 2, 0.7)),
            composed: Box::new(|x| composed::attention(&x[0], 2, 0.7)),
            shapes: vec![vec![B, 6, 3 * 2 * 4]],
        },
        Case {
            // Fewer images than threads: images in turn, each product spread over threads.
            name: "attention (one image)",
            fused: Box::new(|x| fused::attention(&x[0], 3, 0.5)),
            composed: Box::new(|x| composed::attention(&x[0], 3, 0.5)),
            shapes: vec![vec![1, 40, 3 * 3 * 8]],
        },
        Case {
            // Large enough for the parallel paths; a transposed (non-contiguous) input.
            name: "attention (large, transposed)",
            fused: Box::new(|x| fused::attention(&x[0].transpose(1, 2)?, 3, 0.35)),
            composed: Box::new(|x| composed::attention(&x[0].transpose(1, 2)?, 3, 0.35)),
            shapes: vec![vec![4, 3 * 3 * 8, 64]],
        },
        Case {
            // A whole adaLN attention half as one node: x, the [B, 6C] adaLN output (chunks
            // 0..3 used), qkv and proj weights and biases; 2 heads of 4 channels.
            name: "attention half",
            fused: Box::new(|x| {
                let (q, p) = ((&x[2], &x[3]), (&x[4], &x[5]));
                fused::attention_half(&x[0], &x[1], 0, q, p, 2, 0.5, EPS)
            }),
            composed: Box::new(|x| {
                let m = nn::chunk_last(&x[1], 6)?;
                let h = composed::layer_norm_modulate(&x[0], &m[0], &m[1], EPS)?;
                let qkv = composed::linear(&Linear::new(x[2].clone(), Some(x[3].clone())), &h)?;
                let a = composed::attention(&qkv, 2, 0.5)?;
                let y = composed::linear(&Linear::new(x[4].clone(), Some(x[5].clone())), &a)?;
                composed::gated_residual(&x[0], &m[2], &y)
            }),
            shapes: vec![
                vec![B, 6, 8],
                vec![B, 48],
                vec![24, 8],
                vec![24],
                vec![8, 8],
                vec![8],
            ],
        },
        Case {
            // The MLP half (chunks 3..6), hidden width 12. The reference's GELU is the fused
            // one (itself checked against candle's above): candle's f64 GELU backward is off by
            // ~1e-7 relative at the pre-activations this case reaches, which would hide
            // nothing but fail the 1e-12 comparison.
            name: "mlp half",
            fused: Box::new(|x| {
                fused::mlp_half(&x[0], &x[1], 3, (&x[2], &x[3]), (&x[4], &x[5]), EPS)
            }),
            composed: Box::new(|x| {
                let m = nn::chunk_last(&x[1], 6)?;
                let h = composed::layer_norm_modulate(&x[0], &m[3], &m[4], EPS)?;
                let u = composed::linear(&Linear::new(x[2].clone(), Some(x[3].clone())), &h)?;
                let z = fused::gelu_tanh(&u)?;
                let y = composed::linear(&Linear::new(x[4].clone(), Some(x[5].clone())), &z)?;
                composed::gated_residual(&x[0], &m[5], &y)
            }),
            shapes: vec![
                vec![B, 6, 8],
                vec![B, 48],
                vec![12, 8],
                vec![12],
                vec![8, 12],
                vec![8],
            ],
        },
        Case {
            // JiT's norm: learned weight, modulation; shift and scale strided halves.
            name: "rms_norm_modulate",
            fused: Box::new(|x| {
                let (sh, sc) = halves(&x[2]);
                nn::rms_norm_modulate(Kernels::Fused, &x[0], &x[1], &sh, &sc, EPS)
            }),
            composed: Box::new(|x| {
                let (sh, sc) = halves(&x[2]);
                composed::rms_norm_modulate(&x[0], &x[1], &sh, &sc, EPS)
            }),
            shapes: vec![vec![B, N, C], vec![C], vec![B, 2 * C]],
        },
        Case {
            name: "rms_norm_modulate (large, transposed)",
            fused: Box::new(|x| {
                nn::rms_norm_modulate(
                    Kernels::Fused,
                    &x[0].transpose(1, 2)?,
                    &x[1],
                    &x[2],
                    &x[3],
                    1e-5,
                )
            }),
            composed: Box::new(|x| {
                composed::rms_norm_modulate(&x[0].transpose(1, 2)?, &x[1], &x[2], &x[3], 1e-5)
            }),
            shapes: vec![vec![6, C, 200], vec![C], vec![6, C], vec![6, C]],
        },
        Case {
            // 2 heads of 4 channels; 1 unrotated class token + a 2×2 grid.
            name: "qk_norm_rope",
            fused: Box::new(|x| qk_rope(x, 2, 2, 1, false)),
            composed: Box::new(|x| qk_rope(x, 2, 2, 1, true)),
            shapes: vec![vec![B, 5, 3 * 2 * 4], vec![4], vec![4]],
        },
        Case {
            // Enough samples for the parallel paths; a transposed input.
            name: "qk_norm_rope (large, transposed)",
            fused: Box::new(|x| {
                qk_rope(
                    &[x[0].transpose(1, 2)?, x[1].clone(), x[2].clone()],
                    4,
                    4,
                    2,
                    false,
                )
            }),
            composed: Box::new(|x| {
                qk_rope(
                    &[x[0].transpose(1, 2)?, x[1].clone(), x[2].clone()],
                    4,
                    4,
                    2,
                    true,
                )
            }),
            shapes: vec![vec![12, 3 * 4 * 8, 18], vec![8], vec![8]],
        },
        Case {
            name: "group_norm + silu",
            fused: Box::new(|x| nn::group_norm(Kernels::Fused, &x[0], &x[1], &x[2], 4, 1e-5, true)),
            composed: Box::new(|x| composed::group_norm(&x[0], &x[1], &x[2], 4, 1e-5, true)),
            shapes: vec![vec![B, 8, 3, 5], vec![8], vec![8]],
        },
        Case {
            // `[B, C, T]` (the attention blocks' norm), no activation; a transposed input.
            name: "group_norm (3-D, transposed)",
            fused: Box::new(|x| {
                nn::group_norm(
                    Kernels::Fused,
                    &x[0].transpose(1, 2)?,
                    &x[1],
                    &x[2],
                    2,
                    EPS,
                    false,
                )
            }),
            composed: Box::new(|x| {
                composed::group_norm(&x[0].transpose(1, 2)?, &x[1], &x[2], 2, EPS, false)
            }),
            shapes: vec![vec![B, 7, 6], vec![6], vec![6]],
        },
        Case {
            // Enough samples for the parallel path; 32 groups of 2 channels.
            name: "group_norm + silu (large)",
            fused: Box::new(|x| fused::group_norm(&x[0], &x[1], &x[2], 32, 1e-5, true)),
            composed: Box::new(|x| composed::group_norm(&x[0], &x[1], &x[2], 32, 1e-5, true)),
            shapes: vec![vec![6, 64, 8, 9], vec![64], vec![64]],
        },
        Case {
            name: "swiglu",
            fused: Box::new(|x| nn::swiglu(Kernels::Fused, &x[0])),
            composed: Box::new(|x| composed::swiglu(&x[0])),
            shapes: vec![vec![B, N, 2 * 7]],
        },
        Case {
            // Several rows per task, several tasks.
            name: "swiglu (large)",
            fused: Box::new(|x| fused::swiglu(&x[0])),
            composed: Box::new(|x| composed::swiglu(&x[0])),
            shapes: vec![vec![3, 40, 2 * 150]],
        },
        Case {
            name: "mse",
            fused: Box::new(|x| fused::mse(&x[0], &x[1])),
            composed: Box::new(|x| composed::mse(&x[0], &x[1])),
            shapes: vec![vec![B, N, C], vec![B, N, C]],
        },
        Case {
            // The prediction narrowed as SiT does with learn_sigma.
            name: "mse (narrowed)",
            fused: Box::new(|x| fused::mse(&x[0].narrow(1, 0, N)?, &x[1])),
            composed: Box::new(|x| composed::mse(&x[0].narrow(1, 0, N)?, &x[1])),
            shapes: vec![vec![B, 2 * N, C], vec![B, N, C]],
        },
    ]
}

/// Largest difference relative to the largest magnitude of the reference.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn inputs(case: &Case, seed: u64, dtype: DType) -> Vec<Tensor> {
    case.shapes
        .iter()
        .enumerate()
        .map(|(i, s)| rand(s, seed + i as u64, 2.0).to_dtype(dtype).unwrap())
        .collect()
}

/// Weights for the scalar objective `Σ op(x)·r` (shape of the op's output).
fn weights(op: &OpN, xs: &[Tensor], seed: u64) -> Tensor {
    let out = op(xs).unwrap();
    rand(out.dims(), seed, 1.0).to_dtype(out.dtype()).unwrap()
}

/// Output values and the gradients of `Σ op(x)·r` with respect to every input.
fn value_and_grads(op: &OpN, xs: &[Tensor], r: &Tensor) -> (Vec<f64>, Vec<Vec<f64>>) {
    let vars: Vec<Var> = xs.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts).unwrap();
    let grads = y.mul(r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars
        .iter()
        .map(|v| {
            vals(
                grads
                    .get(v.as_tensor())
                    .expect("a gradient for every input"),
            )
        })
        .collect();
    (vals(&y), g)
}

fn compare(case: &Case, dtype: DType, tol: f64) {
    let xs = inputs(case, 10, dtype);
    let r = weights(&case.composed, &xs, 99);
    let (yf, gf) = value_and_grads(&case.fused, &xs, &r);
    let (yc, gc) = value_and_grads(&case.composed, &xs, &r);
    let d = rel_diff(&yf, &yc);
    assert!(d < tol, "{} {dtype:?}: forward differs by {d:e}", case.name);
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let d = rel_diff(a, b);
        assert!(
            d < tol,
            "{} {dtype:?}: gradient of input {i} differs by {d:e}",
            case.name
        );
        assert!(
            b.iter().any(|v| v.abs() > 1e-3),
            "{}: gradient {i} is ~0",
            case.name
        );
    }
}

#[test]
fn fused_ops_match_the_composed_versions_f64() {
    for case in cases() {
        compare(&case, DType::F64, 1e-12);
    }
}

#[test]
fn fused_ops_match_the_composed_versions_f32() {
    for case in cases() {
        compare(&case, DType::F32, 1e-5);
    }
}

#[test]
fn fused_ops_gradients_match_finite_differences_f64() {
    let h = 1e-5;
    for case in cases() {
        let xs = inputs(&case, 20, DType::F64);
        let r = weights(&case.fused, &xs, 77);
        let (y, grads) = value_and_grads(&case.fused, &xs, &r);
        // Rounding noise of the objective Σ y·r, divided by the step.
        let terms: f64 = y.iter().zip(vals(&r)).map(|(y, r)| (y * r).abs()).sum();
        let noise = 20.0 * f64::EPSILON * terms / h;
        for (k, g) in grads.iter().enumerate() {
            let base = vals(&xs[k]);
            let obj = |v: &[f64]| {
                let mut ys = xs.clone();
                ys[k] = Tensor::from_vec(v.to_vec(), xs[k].shape(), &Device::Cpu).unwrap();
                (case.fused)(&ys)
                    .unwrap()
                    .mul(&r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            // Every third entry, at most ~300 per input (spread over all of it).
            for i in (0..base.len()).step_by((base.len() / 300).max(3)) {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[i] += h;
                m[i] -= h;
                let fd = (obj(&p) - obj(&m)) / (2.0 * h);
                let err = (fd - g[i]).abs();
                assert!(
                    err < 1e-6 * fd.abs().max(g[i].abs()) + noise,
                    "{} input {k}[{i}]: fused backward {} vs finite difference {fd}",
                    case.name,
                    g[i]
                );
            }
        }
    }
}

/// The f32 kernels (GELU, SiLU, softmax) use a call-free `exp`: within 2e-7 of the exact
/// one, and the f32 GELU and SiLU (values and derivatives) within a few f32 roundings of the
/// exact (f64) ones, relative to each value, tails included.
#[test]
fn f32_exp_gelu_and_silu_are_accurate() {
    let worst = (-873_000..=883_000)
        .map(|i| i as f32 * 1e-4)
        .map(|x| (fused::exp_f32(x) as f64 / (x as f64).exp() - 1.0).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-7, "exp_f32 off by {worst:e} (relative)");
    assert_eq!(fused::exp_f32(0.0), 1.0);
    assert_eq!(fused::exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(fused::exp_f32(-1000.0), 0.0);
    assert!(fused::exp_f32(f32::NAN).is_nan());

    let xs: Vec<f64> = (-60_000..=60_000).map(|i| i as f64 * 2.5e-4).collect();
    let x32 = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let x64 = x32.to_dtype(DType::F64).unwrap(); // the same points
    let r = rand(&[xs.len()], 3, 1.0).abs().unwrap() + 0.5;
    let r = r.unwrap();
    let ops: Vec<(&str, OpN)> = vec![
        ("gelu", Box::new(|x| fused::gelu_tanh(&x[0]))),
        ("silu", Box::new(|x| fused::silu(&x[0]))),
    ];
    let err = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-30))
            .fold(0.0, f64::max)
    };
    for (name, op) in &ops {
        let (y64, g64) = value_and_grads(op, std::slice::from_ref(&x64), &r);
        let (y32, g32) = value_and_grads(
            op,
            std::slice::from_ref(&x32),
            &r.to_dtype(DType::F32).unwrap(),
        );
        // Away from the zeros of the function (x = 0) and of the derivative (GELU' at x ≈ −0.75,
        // SiLU' at x ≈ −1.28), where a relative error means nothing.
        let keep_within = |v: &[f64], lim: f64| -> Vec<f64> {
            v.iter()
                .zip(&xs)
                .filter(|(_, x)| x.abs() <= lim)
                .filter(|(_, x)| x.abs() > 0.01 && (x.abs() - 0.75).abs() > 0.05)
                .filter(|(_, x)| (x.abs() - 1.28).abs() > 0.05)
                .map(|(v, _)| *v)
                .collect()
        };
        // GELU's f32 kernel computes in f32 (as PyTorch's does): the rounding of its
        // argument u = √(2/π)(x + c·x³) is amplified by |2u| in e^(−2u), so the far negative
        // tail (|x| > 3, values below 1e-4·|x|) is held to 3e-5, the typical range to 1e-6.
        let keep = |v: &[f64]| keep_within(v, f64::INFINITY);
        let typical = |v: &[f64]| keep_within(v, 3.0);
        let (far, near) = if *name == "gelu" {
            (3e-5, 1e-6)
        } else {
            (1e-6, 1e-6)
        };
        let e = err(&keep(&y32), &keep(&y64));
        assert!(e < far, "{name} f32 off by {e:e} (relative)");
        let e = err(&typical(&y32), &typical(&y64));
        assert!(e < near, "{name} f32 off by {e:e} (relative) for |x| ≤ 3");
        let e = err(&keep(&g32[0]), &keep(&g64[0]));
        assert!(e < 10.0 * far, "{name}' f32 off by {e:e} (relative)");
        let e = err(&typical(&g32[0]), &typical(&g64[0]));
        assert!(e < 1e-5, "{name}' f32 off by {e:e} (relative) for |x| ≤ 3");
    }
}

/// candle 0.11.1's CPU batched matrix product is wrong when the left operand is a transposed
/// view and the right one is broadcast over the batch, which is what `candle_nn::Linear` does
/// with a non-contiguous `[B, N, K]` input (off by O(1)); `composed::linear` copies such an input
/// first.
#[test]
fn composed_linear_is_right_on_a_transposed_input() {
    use candle_core::Module;
    let x = rand(&[2, 3, 5], 1, 1.0).transpose(1, 2).unwrap(); // [2, 5, 3], strided
    let lin = Linear::new(rand(&[4, 3], 2, 1.0), Some(rand(&[4], 3, 1.0)));
    let want = vals(&lin.forward(&x.contiguous().unwrap()).unwrap());
    let got = vals(&composed::linear(&lin, &x).unwrap());
    assert!(rel_diff(&got, &want) < 1e-14);
    let candle = vals(&lin.forward(&x).unwrap());
    println!(
        "candle_nn::Linear on the strided input: off by {:e}",
        rel_diff(&candle, &want)
    );
}

#[test]
fn fused_entry_points_reject_bad_shapes() {
    let x = rand(&[2, 3, 4], 1, 1.0);
    let v = rand(&[2, 4], 2, 1.0);
    let wrong = rand(&[2, 3], 3, 1.0);
    assert!(fused::layer_norm_modulate(&x, &v, &wrong, EPS).is_err());
    assert!(fused::gated_residual(&x, &wrong, &x).is_err());
    assert!(fused::gated_residual(&x, &v, &rand(&[2, 3, 5], 4, 1.0)).is_err());
    assert!(fused::mse(&x, &v).is_err());
    assert!(fused::bias_add(&x, &wrong).is_err());
    assert!(fused::attention(&rand(&[2, 3, 12], 5, 1.0), 5, 1.0).is_err());
    let w = rand(&[5, 4], 6, 1.0);
    assert!(fused::linear(&x, &w, &rand(&[4], 7, 1.0)).is_err());
    assert!(fused::linear(&x, &w.t().unwrap(), &rand(&[5], 7, 1.0)).is_err());
    assert!(fused::rms_norm_modulate(&x, &v, &wrong, EPS).is_err());
    assert!(fused::swiglu(&rand(&[2, 3, 5], 8, 1.0)).is_err()); // odd last dimension
                                                                // qk-norm + RoPE: 2 heads of 2 channels over 3 tokens; wrong weights, table, head count.
    let qkv = rand(&[2, 3, 12], 9, 1.0);
    let table = rand(&[2, 3, 2], 10, 1.0);
    let w2 = rand(&[2, 2], 11, 1.0);
    assert!(fused::qk_norm_rope(&qkv, &w2, &table, 2, EPS).is_ok());
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(fused::qk_norm_rope(
        &qkv,
        &rand(&[2, 3], 12, 1.0),
        &table,
        2,
        EPS
    ))
    .contains("[2, 2] (q_norm, k_norm) weights"));
    assert!(err(fused::qk_norm_rope(
        &qkv,
        &w2,
        &rand(&[2, 4, 2], 13, 1.0),
        2,
        EPS
    ))
    .contains("table for 3 tokens"));
    assert!(err(fused::qk_norm_rope(&qkv, &w2, &table, 4, EPS)).contains("even width"));
    // Mixed dtypes are refused by the kernel, and sent to the composed path by `nn`.
    let v32 = v.to_dtype(DType::F32).unwrap();
    assert!(fused::layer_norm_modulate(&x, &v32, &v, EPS).is_err());
    assert!(fused::rms_norm_modulate(&x, &v32, &v, EPS).is_err());
}

#[test]
fn velocity_mse_uses_the_fused_kernel_on_the_cpu() {
    // The trainer's loss: the same value and gradients as the composed MSE (f64), and in f32
    // bit-identical to the fused kernel (its f64 accumulation differs from candle's f32 sum).
    use cbs_flow::interpolant::{mse_composed, velocity_mse};
    use cbs_kernels::mse as mse_fused;
    let a = rand(&[4, 3, 8, 8], 5, 1.5);
    let b = rand(&[4, 3, 8, 8], 6, 1.5);
    let ops: Vec<(&str, OpN)> = vec![
        (
            "velocity_mse",
            Box::new(|x| velocity_mse(&x[0], &x[1], Kernels::Fused)),
        ),
        ("mse_composed", Box::new(|x| mse_composed(&x[0], &x[1]))),
    ];
    let r = Tensor::new(1.7f64, &Device::Cpu).unwrap();
    let (yv, gv) = value_and_grads(&ops[0].1, &[a.clone(), b.clone()], &r);
    let (yc, gc) = value_and_grads(&ops[1].1, &[a.clone(), b.clone()], &r);
    assert!(rel_diff(&yv, &yc) < 1e-13);
    for (x, y) in gv.iter().zip(&gc) {
        assert!(rel_diff(x, y) < 1e-13);
    }
    {
        let (a, b) = (
            a.to_dtype(DType::F32).unwrap(),
            b.to_dtype(DType::F32).unwrap(),
        );
        let v = velocity_mse(&a, &b, Kernels::Fused)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let f = mse_fused(&a, &b).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(v.to_bits(), f.to_bits());
    }
}

// ------------------------------------------------------------------------- whole SiT

/// Loss and gradients of one training objective of a 16×16×2, 3-class model (forward, MSE to
/// a fixed target, backward), by parameter name.
fn model_step(tr: &Trainable, kernels: Kernels, dtype: DType) -> (f64, Vec<(String, Vec<f64>)>) {
    // The same variables (a `VarBuilder` over the trained `VarMap` returns them), built on
    // the given op implementations.
    let vb = candle_nn::VarBuilder::from_varmap(&tr.varmap, dtype, &Device::Cpu);
    let model = Model::new(&tr.arch, kernels, vb).unwrap();
    let x = rand(&[3, 2, 16, 16], 31, 1.0).to_dtype(dtype).unwrap();
    let target = rand(&[3, 2, 16, 16], 32, 1.0).to_dtype(dtype).unwrap();
    let t = Tensor::new(&[0.1f64, 0.5, 0.93], &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = Tensor::new(&[0u32, 2, 3], &Device::Cpu).unwrap(); // 3 = the null class
    let pred = model.forward(&x, &t, &y).unwrap();
    let loss = nn::mse(kernels, &pred, &target).unwrap();
    let grads = loss.backward().unwrap();
    let g = tr
        .named_vars()
        .into_iter()
        .map(|(name, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, vals(g))
        })
        .collect();
    (vals(&loss)[0], g)
}

/// A `sit-tiny-4` at 16×16 (16 tokens, depth 6, 3 heads, learned sigma: the prediction is a
/// narrowed view) with every weight drawn from N(0, std²) (adaLN-Zero would start with zero
/// modulation and gates, leaving the fused ops nothing to differentiate). At std 0.2 the
/// network is chaotic (f32 rounding grows to 10% of a gradient); at 0.1 it is well conditioned.
fn random_sit(dtype: DType, std: f64, zero_fc1: bool) -> Trainable {
    let mut cfg = SitConfig::preset("sit-tiny-4").unwrap();
    cfg.input_size = 16;
    cfg.in_channels = 2;
    cfg.num_classes = 3;
    cfg.learn_sigma = true;
    cfg.validate().unwrap();
    let tr = Trainable::new(
        &Architecture::Sit(cfg),
        Kernels::Fused,
        5,
        dtype,
        &Device::Cpu,
    )
    .unwrap();
    let vars = tr.named_vars();
    cbs_models::common::init::init_all_random(&vars, 8, std).unwrap();
    if zero_fc1 {
        for (name, v) in &vars {
            if name.contains("mlp.fc1") {
                v.set(&v.as_tensor().zeros_like().unwrap()).unwrap();
            }
        }
    }
    tr
}

/// The same step with the fused kernels and with the composed ops: loss and every
/// gradient within `tol` (relative to the gradient tensor's largest entry).
fn fused_vs_composed(tr: &Trainable, dtype: DType, tol: f64) {
    let (lf, gf) = model_step(tr, Kernels::Fused, dtype);
    let (lc, gc) = model_step(tr, Kernels::Composed, dtype);
    let d = (lf - lc).abs() / lc.abs();
    assert!(d < tol, "{dtype:?}: loss {lf} (fused) vs {lc} (composed)");
    let mut any_difference = false;
    for ((name, a), (_, b)) in gf.iter().zip(&gc) {
        let d = rel_diff(a, b);
        assert!(d < tol, "{dtype:?}: gradient of {name} differs by {d:e}");
        // With fc1 zeroed, fc2 sees a zero input: its weight gradient is exactly 0.
        if !name.ends_with("mlp.fc2.weight") {
            assert!(b.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        }
        any_difference |= a != b;
    }
    // Two different computations (not the same path twice): rounding tells them apart.
    {
        assert!(
            any_difference,
            "{dtype:?}: fused and composed gradients are bit-identical"
        );
    }
}

/// A `jit-nano-4` at 16×16×2 (16 patch tokens, 4 class tokens from block 1, 2 heads) with
/// every weight random (norm weights included).
fn random_jit(dtype: DType) -> Trainable {
    let mut cfg = JitConfig::preset("jit-nano-4").unwrap();
    cfg.in_channels = 2;
    cfg.num_classes = 3;
    cfg.validate().unwrap();
    let tr = Trainable::new(
        &Architecture::Jit(cfg),
        Kernels::Fused,
        5,
        dtype,
        &Device::Cpu,
    )
    .unwrap();
    cbs_models::common::init::init_all_random(&tr.named_vars(), 9, 0.2).unwrap();
    tr
}

/// JiT's fused path (RMSNorm + modulation, qk-norm + RoPE, attention, SwiGLU, linear layers)
/// against the same step composed from candle ops: no GELU here, so f64 agrees to rounding.
#[test]
fn jit_step_fused_matches_composed() {
    fused_vs_composed(&random_jit(DType::F64), DType::F64, 1e-10);
    fused_vs_composed(&random_jit(DType::F32), DType::F32, 2e-5);
}

/// A small UNet (16 px, 2 levels of 64 and 128 channels, attention at 8 px, 3 classes) with
/// every weight random: GroupNorm (+ SiLU) fused, the convolutions fused. At least 2 channels
/// per group: with one, a GroupNorm removes any per-channel shift, so the gradients of the
/// biases just before it are exactly 0 and both paths return only rounding noise.
fn random_unet(dtype: DType, scale_shift: bool) -> Trainable {
    let mut cfg = cbs_models::unet::UnetConfig::mini();
    cfg.image_size = 16;
    cfg.in_channels = 2;
    cfg.model_channels = 64;
    cfg.num_res_blocks = 1;
    cfg.channel_mult = vec![1, 2];
    cfg.attention_resolutions = vec![8];
    cfg.num_head_channels = Some(32);
    cfg.num_classes = 3;
    cfg.dropout = 0.0;
    cfg.use_scale_shift_norm = scale_shift;
    cfg.validate().unwrap();
    let tr = Trainable::new(
        &Architecture::Unet(cfg),
        Kernels::Fused,
        5,
        dtype,
        &Device::Cpu,
    )
    .unwrap();
    cbs_models::common::init::init_all_random(&tr.named_vars(), 10, 0.1).unwrap();
    tr
}

/// The UNet's fused path (GroupNorm + SiLU, convolutions) against the same step composed from
/// candle ops, with and without the scale-shift norm.
#[test]
fn unet_step_fused_matches_composed() {
    for scale_shift in [false, true] {
        fused_vs_composed(&random_unet(DType::F64, scale_shift), DType::F64, 1e-10);
        fused_vs_composed(&random_unet(DType::F32, scale_shift), DType::F32, 1e-4);
    }
}

/// With every `mlp.fc1` zeroed, the GELUs run at 0, where candle's composed GELU backward
/// (six-digit constants elsewhere, ~1e-6 relative) is exact: the two paths must agree to
/// rounding.
#[test]
fn sit_step_fused_matches_composed_f64_exact() {
    fused_vs_composed(&random_sit(DType::F64, 0.1, true), DType::F64, 1e-10);
}

/// All weights random: candle's composed GELU backward is ~1e-6 off, the rest is exact.
#[test]
fn sit_step_fused_matches_composed_f64() {
    fused_vs_composed(&random_sit(DType::F64, 0.1, false), DType::F64, 1e-5);
}

/// f32 (both paths are within ~2e-6 of the f64 result here).
#[test]
fn sit_step_fused_matches_composed_f32() {
    fused_vs_composed(&random_sit(DType::F32, 0.1, false), DType::F32, 2e-5);
}

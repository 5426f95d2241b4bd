//! Integration tests of `cbs-models`: SiT gradients (finite differences), reference
//! initialisation, parity with an independent re-implementation, positional-embedding golden
//! values, parameter counts, weight files, configuration and the `VelocityField` impl.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use cbs_flow::VelocityField;
use cbs_models::common::pos_embed;
use cbs_models::{shapes, weights, Architecture, Kernels, ModelError, SitConfig, Trainable};

use common::{
    assert_every_param_has_gradient, fd_check_model, labels, max_abs_diff, randn, ts, vals,
    FdReport, Rtol,
};

#[path = "models/common.rs"]
mod common;
#[path = "models/fused.rs"]
mod fused_more;
#[path = "models/jit.rs"]
mod jit;
#[path = "models/precision.rs"]
mod precision;
#[path = "models/unet.rs"]
mod unet;
#[path = "models/vae.rs"]
mod vae;

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// A counting allocator: bytes allocated by the current thread while tracking is on.
// (Used to prove that shape inspection allocates no weights.)

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static TRACKED_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(bytes: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = TRACKED_BYTES.try_with(|b| b.set(b.get() + bytes));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` and return its result with the bytes this thread allocated meanwhile.
fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    TRACKED_BYTES.with(|b| b.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, TRACKED_BYTES.with(|b| b.get()))
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A preset with small geometry.
fn small(preset: &str, input: usize, channels: usize, classes: usize, sigma: bool) -> SitConfig {
    let mut c = SitConfig::preset(preset).expect("known preset");
    c.input_size = input;
    c.in_channels = channels;
    c.num_classes = classes;
    c.learn_sigma = sigma;
    c.validate().expect("valid config");
    c
}

fn max_abs(t: &Tensor) -> f64 {
    vals(t).iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Bit patterns of every variable (dtype-agnostic, via f64 which holds f32 exactly).
fn var_bits(vars: &[(String, Var)]) -> Vec<(String, Vec<u64>)> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                vals(v.as_tensor()).iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Finite-difference gradient check (f64).
//
// candle's GELU (tanh) backward uses six-digit constants (0.797885, 0.0356774, 0.398942, ...), so
// its derivative is off by up to ~1e-6 relative; every gradient that flows back through a GELU
// inherits that. The check therefore runs twice: with all weights random (tolerance 1e-8 where
// no GELU backward is involved, 1e-5 elsewhere), and with every `mlp.fc1` zeroed so that GELU
// is evaluated at 0, where candle's derivative (0.5) is exact: then every tensor (fc1 included)
// must match to 1e-6.

/// The check on a `sit-nano-2` (16 tokens, 2 heads, depth 2) with random weights, `mlp.fc1`
/// zeroed when `zero_fc1`; asserts that most checked gradients are non-zero and returns the
/// mismatches. `rtol(name)` is the relative tolerance.
fn fd_check(
    zero_fc1: bool,
    rtol: impl Fn(&str) -> f64,
) -> Result<FdReport, Box<dyn std::error::Error>> {
    let cfg = small("sit-nano-2", 8, 2, 3, true);
    let arch = Architecture::Sit(cfg.clone());
    let tr = Trainable::new(&arch, Kernels::Fused, 7, DType::F64, &Device::Cpu)?;
    let vars = tr.named_vars();
    cbs_models::common::init::init_all_random(&vars, 11, 0.3)?;
    if zero_fc1 {
        for (n, v) in &vars {
            if n.contains("mlp.fc1") {
                v.set(&v.as_tensor().zeros_like()?)?;
            }
        }
    }
    let rep = fd_check_model(
        &vars,
        |x, t, y| tr.model.forward(x, t, y),
        6,
        Rtol::PerTensor(&rtol),
    )?;
    assert!(
        rep.nonzero * 2 > rep.checked,
        "too few non-zero gradients checked ({}/{})",
        rep.nonzero,
        rep.checked
    );
    println!(
        "fd check: {} entries, rounding noise allowance {:e}, max rel err {:e} at {}",
        rep.checked, rep.noise, rep.worst.0, rep.worst.1
    );
    Ok(rep)
}

#[test]
fn finite_difference_gradients_f64() -> TestResult {
    // Tensors whose gradient never passes through a GELU backward: the final layer and the
    // last block's fc2 (depth 2).
    let exact =
        |name: &str| name.starts_with("final_layer.") || name.starts_with("blocks.1.mlp.fc2.");
    let rep = fd_check(false, |name| if exact(name) { 1e-8 } else { 1e-5 })?;
    rep.assert_no_mismatch();
    Ok(())
}

#[test]
fn finite_difference_gradients_f64_exact_gelu_point() -> TestResult {
    let rep = fd_check(true, |_| 1e-6)?;
    rep.assert_no_mismatch();
    Ok(())
}

/// Bounds the candle GELU-backward imprecision that the FD tolerances above allow for.
#[test]
fn candle_gelu_backward_error_is_small() -> TestResult {
    let xs: Vec<f64> = (0..=1200).map(|i| -6.0 + i as f64 * 0.01).collect();
    let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &Device::Cpu)?)?;
    let grads = x.as_tensor().gelu()?.sum_all()?.backward()?;
    let got = vals(grads.get(x.as_tensor()).expect("gelu gradient"));
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let mut worst = 0.0f64;
    for (&x, g) in xs.iter().zip(got) {
        let u = k * (x + 0.044715 * x.powi(3));
        let th = u.tanh();
        let exact =
            0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
        worst = worst.max((g - exact).abs());
    }
    println!("candle gelu backward: max abs error {worst:e}");
    assert!(worst < 1e-6, "candle gelu backward error {worst:e}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Every trainable parameter receives a non-zero gradient (f32).

#[test]
fn every_parameter_gets_a_gradient_f32() -> TestResult {
    let dev = Device::Cpu;
    let cfg = small("sit-nano-4", 8, 2, 3, true);
    let arch = Architecture::Sit(cfg);
    let tr = Trainable::new(&arch, Kernels::Fused, 3, DType::F32, &dev)?;
    let vars = tr.named_vars();
    cbs_models::common::init::init_all_random(&vars, 5, 0.3)?;
    let x = randn(&[2, 2, 8, 8], 1, DType::F32);
    let t = ts(&[0.2, 0.7], DType::F32);
    let y = labels(&[0, 3]);
    let r = randn(&[2, 2, 8, 8], 2, DType::F32);
    let loss = tr.model.forward(&x, &t, &y)?.mul(&r)?.sum_all()?;
    let grads = loss.backward()?;
    // x_embedder (2) + t-MLP (4) + table + 10 per block + final layer (4).
    assert_eq!(vars.len(), 2 + 4 + 1 + 10 * 2 + 4);
    assert_every_param_has_gradient(&vars, &grads);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Reference initialisation.

#[test]
fn reference_initialisation() -> TestResult {
    let dev = Device::Cpu;
    // 1000 classes so the label table has enough entries for a tight std estimate.
    let cfg = small("sit-nano-2", 8, 2, 1000, true);
    let arch = Architecture::Sit(cfg.clone());
    let tr = Trainable::new(&arch, Kernels::Fused, 42, DType::F32, &dev)?;
    let vars = tr.named_vars();
    let by_name: HashMap<String, Vec<f64>> = vars
        .iter()
        .map(|(n, v)| (n.clone(), vals(v.as_tensor())))
        .collect();
    let dims: HashMap<String, Vec<usize>> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();

    assert!(
        !by_name.contains_key("pos_embed"),
        "pos_embed must be a buffer"
    );
    assert!(tr.state_dict().iter().any(|(n, _)| n == "pos_embed"));

    let mut xavier_checked = 0;
    for (name, v) in &by_name {
        let zero = name.contains("adaLN_modulation")
            || name.starts_with("final_layer.linear")
            || name.ends_with(".bias");
        if zero {
            assert!(v.iter().all(|&x| x == 0.0), "`{name}` should be all zero");
            continue;
        }
        assert!(v.iter().any(|&x| x != 0.0), "`{name}` is all zero");
        if name.starts_with("y_embedder.") || name.starts_with("t_embedder.mlp.") {
            let (mean, std) = mean_std(v);
            let tol = 4.0 * 0.02 / (2.0 * v.len() as f64).sqrt(); // ≈ 4 sigma of the estimate
            assert!(
                (std - 0.02).abs() < tol,
                "`{name}` std {std} (want 0.02 ± {tol})"
            );
            assert!(
                mean.abs() < 4.0 * 0.02 / (v.len() as f64).sqrt(),
                "`{name}` mean {mean}"
            );
        } else {
            // xavier-uniform, conv weights viewed as [out, in·k·k].
            let d = &dims[name];
            let fan_out = d[0] as f64;
            let fan_in = d[1..].iter().product::<usize>() as f64;
            let bound = (6.0 / (fan_in + fan_out)).sqrt();
            let m = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                m <= bound * (1.0 + 1e-6),
                "`{name}` max {m} > bound {bound}"
            );
            assert!(m > 0.9 * bound, "`{name}` max {m} far below bound {bound}");
            let (_, std) = mean_std(v);
            let want = bound / 3f64.sqrt();
            assert!(
                (std / want - 1.0).abs() < 0.1,
                "`{name}` std {std}, want {want}"
            );
            xavier_checked += 1;
        }
    }
    // x_embedder + per block qkv, proj, fc1, fc2.
    assert_eq!(xavier_checked, 1 + 4 * cfg.depth);
    let qkv = &by_name["blocks.0.attn.qkv.weight"];
    let bound = (6.0f64 / (64.0 + 192.0)).sqrt();
    assert!(qkv.iter().all(|x| x.abs() <= bound));

    // Determinism.
    let same = Trainable::new(&arch, Kernels::Fused, 42, DType::F32, &dev)?;
    assert_eq!(
        var_bits(&vars),
        var_bits(&same.named_vars()),
        "same seed, different weights"
    );
    let other = Trainable::new(&arch, Kernels::Fused, 43, DType::F32, &dev)?;
    let (a, b) = (var_bits(&vars), var_bits(&other.named_vars()));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if by_name[name].iter().any(|&v| v != 0.0) {
            assert_ne!(x, y, "`{name}` identical for different seeds");
        }
    }

    // adaLN-Zero: the network outputs exactly zero at initialisation.
    let x = randn(&[3, 2, 8, 8], 1, DType::F32);
    let out = tr.model.forward(
        &x,
        &ts(&[0.0, 0.5, 1.0], DType::F32),
        &labels(&[0, 999, 1000]),
    )?;
    assert_eq!(out.dims(), &[3, 2, 8, 8]);
    assert!(
        vals(&out).iter().all(|&v| v == 0.0),
        "forward at init is not zero"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Parity with an independent re-implementation of the reference SiT forward.

/// Deliberate mistakes, to show that the parity test detects each of them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mutation {
    None,
    PosAxesSwapped,
    TimeSinCos,
    GeluErf,
    UnpatchifyQP,
    Eps1e5,
}

/// 2-D sin-cos table `[g·g, dim]` following the reference: token `n = row·g + col`, first half
/// of the channels from the column (the mesh is built w-first), second half from the row, each
/// half `[sin(pos·ω), cos(pos·ω)]` with `ω_k = 1 / 10000^(k / (dim/4))`. Rounded to f32 like
/// the reference's `torch.from_numpy(...).float()`.
fn ref_pos_embed(dim: usize, g: usize, m: Mutation) -> Vec<f64> {
    let q = dim / 4;
    let mut out = Vec::with_capacity(g * g * dim);
    for n in 0..g * g {
        let (row, col) = (n / g, n % g);
        let (a, b) = if m == Mutation::PosAxesSwapped {
            (row, col)
        } else {
            (col, row)
        };
        for pos in [a as f64, b as f64] {
            let args: Vec<f64> = (0..q)
                .map(|k| pos / 10000f64.powf(k as f64 / q as f64))
                .collect();
            out.extend(args.iter().map(|a| a.sin() as f32 as f64));
            out.extend(args.iter().map(|a| a.cos() as f32 as f64));
        }
    }
    out
}

fn ref_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    // x: [..., in] → [..., out], as a 2-D matmul.
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let out = w.dim(0).unwrap();
    let y = x
        .reshape((rows, k))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    let mut od = dims[..dims.len() - 1].to_vec();
    od.push(out);
    y.reshape(od).unwrap()
}

fn ref_layer_norm(x: &Tensor, eps: f64) -> Tensor {
    let n = x.dim(D::Minus1).unwrap() as f64;
    let mean = (x.sum_keepdim(D::Minus1).unwrap() / n).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = ((&xc * &xc).unwrap().sum_keepdim(D::Minus1).unwrap() / n).unwrap();
    xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
}

fn ref_silu(x: &Tensor) -> Tensor {
    // x / (1 + e^-x)
    (x / (x.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap()
}

fn ref_gelu(x: &Tensor, m: Mutation) -> Tensor {
    if m == Mutation::GeluErf {
        return x.gelu_erf().unwrap();
    }
    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    let x3 = (x * x).unwrap().mul(x).unwrap();
    let inner =
        ((x + (x3 * 0.044715).unwrap()).unwrap() * (2.0 / std::f64::consts::PI).sqrt()).unwrap();
    (((inner.tanh().unwrap() + 1.0).unwrap() * x).unwrap() * 0.5).unwrap()
}

fn ref_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    // x: [B, N, C], shift/scale: [B, C]
    x.broadcast_mul(&(scale.unsqueeze(1).unwrap() + 1.0).unwrap())
        .unwrap()
        .broadcast_add(&shift.unsqueeze(1).unwrap())
        .unwrap()
}

fn softmax_rows(s: &Tensor) -> Tensor {
    let m = s.max_keepdim(1).unwrap();
    let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
    let z = e.sum_keepdim(1).unwrap();
    e.broadcast_div(&z).unwrap()
}

fn ref_attention(x: &Tensor, w: &HashMap<String, Tensor>, pre: &str, heads: usize) -> Tensor {
    let (b, n, c) = x.dims3().unwrap();
    let d = c / heads;
    let qkv = ref_linear(
        x,
        &w[&format!("{pre}.qkv.weight")],
        &w[&format!("{pre}.qkv.bias")],
    );
    let mut per_batch = Vec::new();
    for bi in 0..b {
        let z = qkv.get(bi).unwrap(); // [N, 3C]: channels ordered (q|k|v, head, d)
        let mut outs = Vec::new();
        for hd in 0..heads {
            let q = z.narrow(1, hd * d, d).unwrap();
            let k = z.narrow(1, c + hd * d, d).unwrap();
            let v = z.narrow(1, 2 * c + hd * d, d).unwrap();
            let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let a = softmax_rows(&s);
            assert_eq!(a.dims(), &[n, n]);
            outs.push(a.matmul(&v).unwrap()); // [N, d]
        }
        per_batch.push(Tensor::cat(&outs, 1).unwrap()); // [N, C]
    }
    let o = Tensor::stack(&per_batch, 0).unwrap();
    ref_linear(
        &o,
        &w[&format!("{pre}.proj.weight")],
        &w[&format!("{pre}.proj.bias")],
    )
}

/// The SiT forward written from the reference description, with candle primitives.
fn ref_forward(
    cfg: &SitConfig,
    w: &HashMap<String, Tensor>,
    x: &Tensor,
    t: &[f64],
    y: &[u32],
    m: Mutation,
) -> Tensor {
    let dev = x.device();
    let dt = x.dtype();
    let (b, cin, hh, ww) = x.dims4().unwrap();
    let p = cfg.patch_size;
    let hid = cfg.hidden_size;
    let g = hh / p;
    assert_eq!(hh, ww);
    let eps = if m == Mutation::Eps1e5 { 1e-5 } else { 1e-6 };

    // Patch embedding: strided convolution, then [B, hidden, g, g] → [B, N, hidden].
    let conv = x
        .conv2d(&w["x_embedder.proj.weight"], 0, p, 1, 1)
        .unwrap()
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .broadcast_add(&w["x_embedder.proj.bias"])
        .unwrap();
    let pos = Tensor::from_vec(ref_pos_embed(hid, g, m), (1, g * g, hid), dev)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let mut h = conv.broadcast_add(&pos).unwrap();

    // Timestep features [cos, sin] (frequencies in float32, as the reference computes them).
    let half = 128;
    let mut feats = Vec::with_capacity(b * 256);
    for &tv in t {
        let args: Vec<f64> = (0..half)
            .map(|k| {
                let f = (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32 as f64;
                tv * f
            })
            .collect();
        let (first, second): (Vec<f64>, Vec<f64>) = if m == Mutation::TimeSinCos {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        };
        feats.extend(first);
        feats.extend(second);
    }
    let feats = Tensor::from_vec(feats, (b, 256), dev)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let te = ref_linear(
        &ref_silu(&ref_linear(
            &feats,
            &w["t_embedder.mlp.0.weight"],
            &w["t_embedder.mlp.0.bias"],
        )),
        &w["t_embedder.mlp.2.weight"],
        &w["t_embedder.mlp.2.bias"],
    );
    let table = &w["y_embedder.embedding_table.weight"];
    let ye = Tensor::stack(
        &y.iter()
            .map(|&l| table.get(l as usize).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let c = (te + ye).unwrap(); // [B, hidden]
    let sc = ref_silu(&c);

    for i in 0..cfg.depth {
        let pre = format!("blocks.{i}");
        let ada = ref_linear(
            &sc,
            &w[&format!("{pre}.adaLN_modulation.1.weight")],
            &w[&format!("{pre}.adaLN_modulation.1.bias")],
        );
        let ch = |k: usize| ada.narrow(1, k * hid, hid).unwrap();
        let (sh_a, sc_a, g_a, sh_m, sc_m, g_m) = (ch(0), ch(1), ch(2), ch(3), ch(4), ch(5));
        let a_in = ref_modulate(&ref_layer_norm(&h, eps), &sh_a, &sc_a);
        let a = ref_attention(&a_in, w, &format!("{pre}.attn"), cfg.num_heads);
        h = (&h + a.broadcast_mul(&g_a.unsqueeze(1).unwrap()).unwrap()).unwrap();
        let m_in = ref_modulate(&ref_layer_norm(&h, eps), &sh_m, &sc_m);
        let f = ref_gelu(
            &ref_linear(
                &m_in,
                &w[&format!("{pre}.mlp.fc1.weight")],
                &w[&format!("{pre}.mlp.fc1.bias")],
            ),
            m,
        );
        let f = ref_linear(
            &f,
            &w[&format!("{pre}.mlp.fc2.weight")],
            &w[&format!("{pre}.mlp.fc2.bias")],
        );
        h = (&h + f.broadcast_mul(&g_m.unsqueeze(1).unwrap()).unwrap()).unwrap();
    }
    let ada = ref_linear(
        &sc,
        &w["final_layer.adaLN_modulation.1.weight"],
        &w["final_layer.adaLN_modulation.1.bias"],
    );
    let (shift, scale) = (
        ada.narrow(1, 0, hid).unwrap(),
        ada.narrow(1, hid, hid).unwrap(),
    );
    let z = ref_linear(
        &ref_modulate(&ref_layer_norm(&h, eps), &shift, &scale),
        &w["final_layer.linear.weight"],
        &w["final_layer.linear.bias"],
    ); // [B, N, p·p·cout], last axis ordered (p, q, c)

    // Unpatchify (nhwpqc → nchpwq) by explicit indexing.
    let cout = if cfg.learn_sigma { 2 * cin } else { cin };
    let zv = vals(&z);
    let side = g * p;
    let mut img = vec![0f64; b * cout * side * side];
    for bi in 0..b {
        for gy in 0..g {
            for gx in 0..g {
                for pi in 0..p {
                    for qi in 0..p {
                        for ci in 0..cout {
                            let tok = gy * g + gx;
                            let (a, bb) = if m == Mutation::UnpatchifyQP {
                                (qi, pi)
                            } else {
                                (pi, qi)
                            };
                            let src = ((bi * g * g + tok) * p * p + a * p + bb) * cout + ci;
                            let dst = ((bi * cout + ci) * side + gy * p + pi) * side + gx * p + qi;
                            img[dst] = zv[src];
                        }
                    }
                }
            }
        }
    }
    let img = Tensor::from_vec(img, (b, cout, side, side), dev)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    if cfg.learn_sigma {
        img.narrow(1, 0, cin).unwrap() // the velocity is the first half
    } else {
        img
    }
}

fn parity_case(
    preset: &str,
    input: usize,
    cin: usize,
    classes: usize,
    sigma: bool,
    dtype: DType,
    tol: f64,
) -> TestResult {
    let cfg = small(preset, input, cin, classes, sigma);
    let arch = Architecture::Sit(cfg.clone());
    let tr = Trainable::new(&arch, Kernels::Fused, 1, dtype, &Device::Cpu)?;
    let vars = tr.named_vars();
    cbs_models::common::init::init_all_random(&vars, 2, 0.1)?;
    let w: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();

    let x = randn(&[3, cin, input, input], 3, dtype);
    let t = [0.0, 0.37, 1.0];
    let y = [0, classes as u32 - 1, classes as u32]; // last: the null class
    let out = tr.model.forward(&x, &ts(&t, dtype), &labels(&y))?;
    let reference = ref_forward(&cfg, &w, &x, &t, &y, Mutation::None);
    assert_eq!(out.dims(), &[3, cin, input, input]);
    let diff = max_abs_diff(&out, &reference);
    let scale = max_abs(&reference);
    println!("parity {preset} {dtype:?}: max |diff| {diff:e} (max |out| {scale:.3})");
    assert!(
        scale > 0.1,
        "output too small for a meaningful comparison: {scale}"
    );
    assert!(
        diff <= tol,
        "{preset} {dtype:?}: max |diff| {diff:e} > {tol:e}"
    );

    // The positional buffer equals the independent table.
    let g = cfg.grid_size();
    let pe = Tensor::from_vec(
        ref_pos_embed(cfg.hidden_size, g, Mutation::None),
        (1, g * g, cfg.hidden_size),
        &Device::Cpu,
    )?;
    assert_eq!(
        max_abs_diff(&tr.model.buffers()[0].1.to_dtype(DType::F64)?, &pe),
        0.0
    );

    // The comparison is sharp enough to catch each plausible mistake (LayerNorm eps 1e-5
    // instead of 1e-6 changes the f32 output by only ~2e-5, so it is left to the f64 cases).
    for m in [
        Mutation::PosAxesSwapped,
        Mutation::TimeSinCos,
        Mutation::GeluErf,
        Mutation::UnpatchifyQP,
        Mutation::Eps1e5,
    ] {
        if m == Mutation::Eps1e5 && dtype != DType::F64 {
            continue;
        }
        let wrong = ref_forward(&cfg, &w, &x, &t, &y, m);
        let d = max_abs_diff(&out, &wrong);
        assert!(d > 20.0 * tol, "mutation {m:?} not detected (diff {d:e})");
    }
    Ok(())
}

#[test]
fn forward_parity_with_independent_reference_f32() -> TestResult {
    parity_case("sit-mini-2", 8, 3, 5, true, DType::F32, 1e-5)
}

#[test]
fn forward_parity_with_independent_reference_f64() -> TestResult {
    parity_case("sit-nano-4", 16, 2, 3, false, DType::F64, 1e-10)?;
    parity_case("sit-mini-2", 8, 3, 5, true, DType::F64, 1e-10)
}

// ---------------------------------------------------------------------------------------------
// 5. Positional embedding golden values.

#[test]
fn pos_embed_golden_values() {
    // dim 8, grid 2: quarter = 2, ω = [1, 1/100].
    let (s1, c1) = (0.841_470_984_807_896_5, 0.540_302_305_868_139_8); // sin 1, cos 1
    let (s01, c01) = (0.009_999_833_334_166_664, 0.999_950_000_416_665_3); // sin .01, cos .01
    #[rustfmt::skip]
    let want: [[f64; 8]; 4] = [
        // token 0: row 0, col 0
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],
        // token 1: row 0, col 1 (first half encodes the column)
        [s1, s01, c1, c01, 0.0, 0.0, 1.0, 1.0],
        // token 2: row 1, col 0 (second half encodes the row)
        [0.0, 0.0, 1.0, 1.0, s1, s01, c1, c01],
        // token 3: row 1, col 1
        [s1, s01, c1, c01, s1, s01, c1, c01],
    ];
    let got = pos_embed::sincos_2d(8, 2);
    assert_eq!(got.len(), 32);
    for (n, row) in want.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            let g = got[n * 8 + k] as f64;
            assert!(
                (g - v).abs() < 1e-7,
                "token {n} channel {k}: got {g}, want {v}"
            );
        }
    }
    // A larger table against the independent implementation.
    let got = pos_embed::sincos_2d(64, 5);
    let want = ref_pos_embed(64, 5, Mutation::None);
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(*a as f64, *b);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Parameter counts and shapes.

/// Closed-form `state_dict` element count (pos_embed included).
fn closed_form_count(c: &SitConfig) -> usize {
    let h = c.hidden_size;
    let p = c.patch_size;
    let n = (c.input_size / p).pow(2);
    let mlp = (h as f64 * c.mlp_ratio) as usize;
    let cout = if c.learn_sigma { 2 } else { 1 } * c.in_channels;
    let rows = c.num_classes + usize::from(c.class_dropout_prob > 0.0);
    let patch = h * c.in_channels * p * p + h;
    let pos = n * h;
    let temb = (256 * h + h) + (h * h + h);
    let yemb = rows * h;
    let block =
        (h * 3 * h + 3 * h) + (h * h + h) + (h * mlp + mlp) + (mlp * h + h) + (h * 6 * h + 6 * h);
    let fin = (h * p * p * cout + p * p * cout) + (h * 2 * h + 2 * h);
    patch + pos + temb + yemb + c.depth * block + fin
}

#[test]
fn parameter_counts_and_shapes() -> TestResult {
    let xl = Architecture::Sit(SitConfig::preset("sit-xl-2")?);
    let start = Instant::now();
    let ((shapes_xl, count_xl), bytes) = count_allocations(|| {
        (
            shapes::parameter_shapes(&xl).unwrap(),
            shapes::parameter_count(&xl).unwrap(),
        )
    });
    let elapsed = start.elapsed();
    assert_eq!(count_xl, 675_129_632, "published SiT-XL/2 parameter count");
    // The weights would be 2.7 GB of f32; only the positional table (1.2 MB per call) is real.
    println!("shape inspection of sit-xl-2: {elapsed:?}, {bytes} bytes allocated");
    // The allocation bound is the check; the time is printed only (a loaded machine can be slow).
    assert!(bytes < 32 << 20, "shape inspection allocated {bytes} bytes");

    let get = |n: &str| {
        shapes_xl
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, d)| d.clone())
    };
    assert_eq!(
        get("blocks.27.adaLN_modulation.1.weight"),
        Some(vec![6912, 1152])
    );
    assert_eq!(get("final_layer.linear.weight"), Some(vec![32, 1152]));
    assert_eq!(
        get("final_layer.adaLN_modulation.1.weight"),
        Some(vec![2304, 1152])
    );
    assert_eq!(get("pos_embed"), Some(vec![1, 256, 1152]));
    assert_eq!(get("x_embedder.proj.weight"), Some(vec![1152, 4, 2, 2]));
    assert_eq!(
        get("y_embedder.embedding_table.weight"),
        Some(vec![1001, 1152])
    );
    assert_eq!(get("t_embedder.mlp.0.weight"), Some(vec![1152, 256]));
    assert_eq!(get("blocks.0.mlp.fc1.weight"), Some(vec![4608, 1152]));
    assert_eq!(get("blocks.28.attn.qkv.weight"), None);
    // 2 patch + pos + 4 t-MLP + table + 28 × 10 + 4 final.
    assert_eq!(shapes_xl.len(), 2 + 1 + 4 + 1 + 28 * 10 + 4);
    assert!(
        shapes_xl.windows(2).all(|w| w[0].0 < w[1].0),
        "names must be sorted and unique"
    );

    // The closed form agrees with the recorded shapes for every preset and a few variants.
    let names = SitConfig::preset_names();
    assert_eq!(names.len(), 21);
    for name in &names {
        let base = SitConfig::preset(name)?;
        let mut no_sigma = base.clone();
        no_sigma.learn_sigma = false;
        let mut no_null = base.clone();
        no_null.class_dropout_prob = 0.0;
        let mut geometry = base.clone();
        geometry.input_size = 64;
        geometry.in_channels = 3;
        geometry.num_classes = 10;
        for cfg in [base, no_sigma, no_null, geometry] {
            cfg.validate()?;
            let got = shapes::parameter_count(&Architecture::Sit(cfg.clone()))?;
            assert_eq!(got, closed_form_count(&cfg), "{name}: {cfg:?}");
        }
    }

    // The recorded shapes are exactly those of a built model's state_dict.
    let arch = Architecture::Sit(small("sit-nano-4", 8, 2, 3, true));
    let tr = Trainable::new(&arch, Kernels::Fused, 0, DType::F32, &Device::Cpu)?;
    let built: Vec<(String, Vec<usize>)> = tr
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    assert_eq!(shapes::parameter_shapes(&arch)?, built);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Weight files.

fn dims_of(tr: &Trainable) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = tr
        .named_vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .chain(
            tr.model
                .buffers()
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec())),
        )
        .collect();
    v.sort();
    v
}

fn load_err(path: &Path, tr: &Trainable) -> String {
    let before = var_bits(&tr.named_vars());
    let err = weights::load_into_vars(path, &tr.named_vars(), &tr.model.buffers())
        .expect_err("load should fail");
    assert!(matches!(err, ModelError::Weights { .. }), "{err:?}");
    assert_eq!(
        var_bits(&tr.named_vars()),
        before,
        "a failed load must leave the variables untouched"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn weight_files() -> TestResult {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    let nano = Architecture::Sit(small("sit-nano-4", 8, 2, 3, true));
    let a = Trainable::new(&nano, Kernels::Fused, 1, DType::F32, &dev)?;
    cbs_models::common::init::init_all_random(&a.named_vars(), 10, 0.3)?;
    let b = Trainable::new(&nano, Kernels::Fused, 2, DType::F32, &dev)?;
    assert_ne!(var_bits(&a.named_vars()), var_bits(&b.named_vars()));

    // Round trip.
    let path = dir.path().join("a.safetensors");
    weights::save_safetensors(&path, &a.state_dict())?;
    let listing: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listing,
        vec!["a.safetensors".to_string()],
        "temporary file left behind"
    );
    let file = weights::load_safetensors(&path, &dev)?;
    let mut keys: Vec<&String> = file.keys().collect();
    keys.sort();
    let sd = a.state_dict();
    assert_eq!(keys, sd.iter().map(|(n, _)| n).collect::<Vec<_>>());
    weights::load_into_vars(&path, &b.named_vars(), &b.model.buffers())?;
    assert_eq!(
        var_bits(&a.named_vars()),
        var_bits(&b.named_vars()),
        "not bit-exact"
    );
    let x = randn(&[2, 2, 8, 8], 4, DType::F32);
    let (t, y) = (ts(&[0.1, 0.9], DType::F32), labels(&[2, 3]));
    let (oa, ob) = (a.model.forward(&x, &t, &y)?, b.model.forward(&x, &t, &y)?);
    assert!(max_abs(&oa) > 0.0);
    assert_eq!(max_abs_diff(&oa, &ob), 0.0);

    // A wrapped checkpoint (every key prefixed `net.`, as JiT's Denoiser saves) loads too.
    let wrapped: Vec<(String, Tensor)> = a
        .state_dict()
        .into_iter()
        .map(|(k, v)| (format!("net.{k}"), v))
        .collect();
    let net_path = dir.path().join("net.safetensors");
    weights::save_safetensors(&net_path, &wrapped)?;
    let c = Trainable::new(&nano, Kernels::Fused, 3, DType::F32, &dev)?;
    weights::load_into_vars(&net_path, &c.named_vars(), &c.model.buffers())?;
    assert_eq!(var_bits(&a.named_vars()), var_bits(&c.named_vars()));

    // A checkpoint of another preset: the first mismatch in sorted order is named.
    let mini = Architecture::Sit(small("sit-mini-4", 8, 2, 3, true));
    let m = Trainable::new(&mini, Kernels::Fused, 3, DType::F32, &dev)?;
    let in_file: HashMap<String, Vec<usize>> = sd
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let first = dims_of(&m)
        .into_iter()
        .find(|(n, d)| in_file.get(n) != Some(d))
        .expect("presets differ")
        .0;
    let msg = load_err(&path, &m);
    assert!(
        msg.contains(&format!("`{first}`")),
        "expected `{first}` in: {msg}"
    );

    // Missing tensors: the first one in sorted order is named.
    let missing = dir.path().join("missing.safetensors");
    let mut sd_missing = sd.clone();
    sd_missing.retain(|(n, _)| n != "t_embedder.mlp.2.weight" && n != "blocks.1.mlp.fc2.bias");
    weights::save_safetensors(&missing, &sd_missing)?;
    let msg = load_err(&missing, &b);
    assert!(msg.contains("`blocks.1.mlp.fc2.bias`"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    assert!(!msg.contains("t_embedder.mlp.2.weight"), "{msg}");

    // The buffer must be present too.
    let no_pos = dir.path().join("no_pos.safetensors");
    let mut sd_no_pos = sd.clone();
    sd_no_pos.retain(|(n, _)| n != "pos_embed");
    weights::save_safetensors(&no_pos, &sd_no_pos)?;
    assert!(load_err(&no_pos, &b).contains("`pos_embed`"));

    // Extra tensors: the first one in sorted order is named.
    let extra = dir.path().join("extra.safetensors");
    let mut sd_extra = sd.clone();
    sd_extra.push(("zzz.extra".to_string(), Tensor::zeros(3, DType::F32, &dev)?));
    sd_extra.push(("aaa.extra".to_string(), Tensor::zeros(2, DType::F32, &dev)?));
    weights::save_safetensors(&extra, &sd_extra)?;
    let msg = load_err(&extra, &b);
    assert!(msg.contains("`aaa.extra`"), "{msg}");
    assert!(!msg.contains("zzz.extra"), "{msg}");

    // Not a safetensors file; no file at all.
    let bogus = dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"this is not a safetensors file")?;
    let msg = load_err(&bogus, &b);
    assert!(msg.contains("safetensors"), "{msg}");
    let absent = dir.path().join("absent.safetensors");
    let msg = load_err(&absent, &b);
    assert!(msg.contains("not found"), "{msg}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Configuration.

#[test]
fn config_presets_and_validation() -> TestResult {
    let err = SitConfig::preset("sit-foo-2").unwrap_err();
    assert!(matches!(err, ModelError::UnknownPreset { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("sit-foo-2"), "{msg}");
    for name in SitConfig::preset_names() {
        assert!(msg.contains(&name), "`{name}` not listed in: {msg}");
        SitConfig::preset(&name)?.validate()?;
    }
    for bad in [
        "sit-xl-3", "xl-2", "sit-xl", "sit-xl-", "sit--2", "SIT-XL-2", "",
    ] {
        assert!(SitConfig::preset(bad).is_err(), "`{bad}` accepted");
    }

    let xl = SitConfig::preset("sit-xl-2")?;
    assert_eq!(xl, SitConfig::xl_2());
    assert_eq!(
        (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size),
        (28, 1152, 16, 2)
    );
    assert_eq!(
        (xl.input_size, xl.in_channels, xl.num_classes),
        (32, 4, 1000)
    );
    assert!(xl.learn_sigma);
    assert_eq!(xl.class_dropout_prob, 0.1);
    let b = SitConfig::preset("sit-b-4")?;
    assert_eq!(
        (b.depth, b.hidden_size, b.num_heads, b.patch_size),
        (12, 768, 12, 4)
    );
    let l = SitConfig::preset("sit-l-8")?;
    assert_eq!(
        (l.depth, l.hidden_size, l.num_heads, l.patch_size),
        (24, 1024, 16, 8)
    );
    let s = SitConfig::preset("sit-s-2")?;
    assert_eq!((s.depth, s.hidden_size, s.num_heads), (12, 384, 6));

    let mut c = SitConfig::preset("sit-b-4")?;
    c.input_size = 30;
    let err = c.validate().unwrap_err();
    assert!(matches!(err, ModelError::Invalid(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("30") && msg.contains("patch"), "{msg}");
    let spec = cbs_models::ModelSpec::new("sit-b-4");
    assert!(spec.resolve(&[3, 30, 30], 10).is_err());
    let arch = spec.resolve(&[3, 32, 32], 10)?;
    assert_eq!(arch.sample_shape(), vec![3, 32, 32]);
    assert_eq!(arch.num_classes(), 10);

    let mut c = SitConfig::preset("sit-b-4")?;
    c.num_heads = 5;
    assert!(c.validate().is_err());
    let mut c = SitConfig::preset("sit-b-4")?;
    c.class_dropout_prob = 1.0;
    assert!(c.validate().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. The VelocityField impl.

#[test]
fn velocity_field_uses_the_null_class() -> TestResult {
    let dev = Device::Cpu;
    let cfg = small("sit-nano-4", 8, 2, 3, true);
    let arch = Architecture::Sit(cfg.clone());
    let tr = Trainable::new(&arch, Kernels::Fused, 1, DType::F32, &dev)?;
    cbs_models::common::init::init_all_random(&tr.named_vars(), 6, 0.3)?;
    let model = &tr.model;
    let x = randn(&[2, 2, 8, 8], 7, DType::F32);
    let t = ts(&[0.25, 0.75], DType::F32);

    assert_eq!(model.null_class(), Some(3));
    assert_eq!(arch.null_class(), Some(3));
    let uncond = model.velocity(&x, &t, None)?;
    let null = model.forward(&x, &t, &labels(&[3, 3]))?;
    assert_eq!(max_abs_diff(&uncond, &null), 0.0);
    let class0 = model.forward(&x, &t, &labels(&[0, 0]))?;
    assert!(
        max_abs_diff(&uncond, &class0) > 1e-3,
        "labels have no effect"
    );
    let y = labels(&[2, 1]);
    let cond = model.velocity(&x, &t, Some(&y))?;
    assert_eq!(max_abs_diff(&cond, &model.forward(&x, &t, &y)?), 0.0);
    // Through a reference, as samplers take it.
    let by_ref: &dyn VelocityField = &model;
    assert_eq!(max_abs_diff(&by_ref.velocity(&x, &t, None)?, &null), 0.0);

    // Without label dropout there is no null row: unconditional means class 0.
    let mut no_null = cfg;
    no_null.class_dropout_prob = 0.0;
    let arch = Architecture::Sit(no_null);
    let tr = Trainable::new(&arch, Kernels::Fused, 1, DType::F32, &dev)?;
    cbs_models::common::init::init_all_random(&tr.named_vars(), 6, 0.3)?;
    assert_eq!(tr.model.null_class(), None);
    let table = tr
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "y_embedder.embedding_table.weight")
        .unwrap()
        .1;
    assert_eq!(table.dims(), &[3, 64]);
    let uncond = tr.model.velocity(&x, &t, None)?;
    let class0 = tr.model.forward(&x, &t, &labels(&[0, 0]))?;
    assert_eq!(max_abs_diff(&uncond, &class0), 0.0);
    Ok(())
}

/// The fused CPU kernels against the composed (autograd) versions and finite differences.
mod fused_ops {
    use candle_core::{DType, Device, Tensor, Var};
    use cbs_kernels as fused;
    use cbs_models::nn::composed;

    use super::common::{uniform as rand, vals};

    type Op = fn(&Tensor) -> candle_core::Result<Tensor>;

    fn ops() -> Vec<(&'static str, Op, Op)> {
        vec![
            ("gelu", fused::gelu_tanh, composed::gelu_tanh),
            ("softmax", fused::softmax_last, composed::softmax_last),
            (
                "layer_norm",
                |x| fused::layer_norm_no_affine(x, 1e-6),
                |x| composed::layer_norm_no_affine(x, 1e-6),
            ),
        ]
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Gradient of Σ op(x)·r with respect to x.
    fn grad(op: Op, x: &Tensor, r: &Tensor) -> Vec<f64> {
        let v = Var::from_tensor(x).unwrap();
        let l = op(v.as_tensor())
            .unwrap()
            .mul(r)
            .unwrap()
            .sum_all()
            .unwrap();
        vals(l.backward().unwrap().get(&v).unwrap())
    }

    #[test]
    fn values_and_gradients_match_the_composed_versions() {
        let x = rand(&[3, 5, 17], 1, 3.0);
        let r = rand(&[3, 5, 17], 2, 1.0);
        for (name, f, c) in ops() {
            let d = max_diff(&vals(&f(&x).unwrap()), &vals(&c(&x).unwrap()));
            assert!(d < 1e-12, "{name}: forward differs by {d}");
            let d = max_diff(&grad(f, &x, &r), &grad(c, &x, &r));
            // candle's composed GELU backward uses six-digit constants (about 1e-6 off).
            let tol = if name == "gelu" { 1e-5 } else { 1e-11 };
            assert!(d < tol, "{name}: gradient differs by {d}");
            // f32 too, and non-contiguous input (a transposed view).
            let x32 = x.to_dtype(DType::F32).unwrap().transpose(1, 2).unwrap();
            let d = max_diff(&vals(&f(&x32).unwrap()), &vals(&c(&x32).unwrap()));
            assert!(d < 1e-5, "{name}: f32 forward differs by {d}");
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        let x = rand(&[2, 4, 9], 3, 2.0);
        let r = rand(&[2, 4, 9], 4, 1.0);
        let h = 1e-5;
        for (name, f, _) in ops() {
            let g = grad(f, &x, &r);
            let base = vals(&x);
            let obj = |v: &[f64]| {
                let t = Tensor::from_vec(v.to_vec(), x.shape(), &Device::Cpu).unwrap();
                f(&t)
                    .unwrap()
                    .mul(&r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for i in (0..base.len()).step_by(5) {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[i] += h;
                m[i] -= h;
                let fd = (obj(&p) - obj(&m)) / (2.0 * h);
                let rel = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-6);
                assert!(rel < 1e-6, "{name}[{i}]: autograd {} vs fd {fd}", g[i]);
            }
        }
    }
}

/// Forward FLOPs against the DiT paper's Table 4 (its "Gflops" count multiply-adds; ours count
/// 2 per multiply-add), for the SiT/DiT sizes at ImageNet-256 latents (4×32×32).
#[test]
fn forward_flops_match_the_published_dit_figures() -> TestResult {
    for (preset, gmacs) in [
        ("sit-s-2", 6.06),
        ("sit-b-2", 23.01),
        ("sit-l-2", 80.71),
        ("sit-xl-2", 118.64),
        ("sit-xl-4", 29.05),
        ("sit-xl-8", 7.39),
    ] {
        let arch = cbs_models::ModelSpec::new(preset).resolve(&[4, 32, 32], 1000)?;
        let flops = arch
            .backbone()
            .forward_flops()
            .expect("SiT counts its FLOPs");
        let rel = (flops / 2e9 - gmacs).abs() / gmacs;
        assert!(
            rel < 0.01,
            "{preset}: {:.2} GMACs, paper {gmacs}",
            flops / 2e9
        );
    }
    // JiT counts too; its in-context tokens make later blocks costlier.
    let jit = cbs_models::ModelSpec::new("jit-b-16").resolve(&[3, 256, 256], 1000)?;
    let f = jit
        .backbone()
        .forward_flops()
        .expect("JiT counts its FLOPs");
    assert!(f > 2.0 * 23.01e9 && f < 2.0 * 30e9, "jit-b-16: {f:e}");
    Ok(())
}

//! JiT tests: finite-difference gradients, every parameter trained, reference initialisation,
//! parity with an independent re-implementation (and the mutations it catches), parameter
//! names and counts, RoPE golden values and properties, the x̂ → v conversion, configuration.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use cbs_models::common::init::init_all_random;
use cbs_models::jit::rope::{rope_angles, rope_tables, rotate_half, Rope};
use cbs_models::jit::{init::init_jit, x_to_velocity, Jit, JitConfig, JIT_T_CLAMP};
use cbs_models::ModelError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::common::{
    assert_every_param_has_gradient, fd_check_model, labels, max_abs_diff, randn, sorted_vars, ts,
    vals, Recorder, Rtol,
};
use super::{max_abs, mean_std, var_bits};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A tiny JiT exercising every feature: 16 patch tokens, 2 heads of dim 8, 3 blocks with the
/// 2 class tokens prepended before block 1, a 6-wide bottleneck.
fn tiny() -> JitConfig {
    let c = JitConfig {
        kernels: cbs_models::Kernels::Fused,
        input_size: 8,
        patch_size: 2,
        in_channels: 2,
        hidden_size: 16,
        depth: 3,
        num_heads: 2,
        mlp_ratio: 4.0,
        bottleneck_dim: 6,
        in_context_len: 2,
        in_context_start: 1,
        num_classes: 3,
        class_dropout_prob: 0.1,
    };
    c.validate().expect("valid tiny config");
    c
}

/// A network on a fresh `VarMap` and its variables sorted by name.
fn build(cfg: &JitConfig, dtype: DType) -> (Jit, Vec<(String, Var)>) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let net = Jit::new(cfg, vb).expect("build jit");
    (net, sorted_vars(&varmap))
}

/// Random weights everywhere, norms around 1 (so that no branch is switched off).
fn randomise(vars: &[(String, Var)], seed: u64) {
    init_all_random(vars, seed, 0.3).unwrap();
    for (n, v) in vars {
        if n.ends_with("norm1.weight")
            || n.ends_with("norm2.weight")
            || n.ends_with("_norm.weight")
            || n.ends_with("norm_final.weight")
        {
            v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Finite-difference gradient check (f64): every parameter tensor and the inputs x and t.
// SwiGLU's SiLU, RMSNorm, RoPE and the (fused) softmax all have exact backward passes, so one
// tight tolerance applies everywhere.

#[test]
fn jit_finite_difference_gradients_f64() -> TestResult {
    let cfg = tiny();
    let (net, vars) = build(&cfg, DType::F64);
    randomise(&vars, 11);

    let rep = fd_check_model(
        &vars,
        |x, t, y| net.forward(x, t, y),
        5,
        Rtol::Uniform(1e-6),
    )?;
    let (checked, nonzero, noise, worst) = (rep.checked, rep.nonzero, rep.noise, &rep.worst);
    println!(
        "jit fd check: {checked} entries ({nonzero} non-zero), noise allowance {noise:e}, \
         max rel err {:e} at {}",
        worst.0, worst.1
    );
    assert!(
        nonzero * 10 > checked * 9,
        "too many zero gradients checked"
    );
    rep.assert_no_mismatch();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Every trainable parameter receives a non-zero gradient (reference init, then perturbed:
// adaLN-Zero's zero layers would otherwise block the gradient of everything before them).

#[test]
fn jit_every_parameter_gets_a_gradient_f32() -> TestResult {
    let mut cfg = JitConfig::nano_4();
    cfg.input_size = 8;
    cfg.in_channels = 2;
    cfg.num_classes = 3;
    cfg.validate()?;
    let (net, vars) = build(&cfg, DType::F32);
    init_jit(&vars, 3)?;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (_, v) in &vars {
        let noise = randn(v.dims(), rng.random(), DType::F32).affine(0.1, 0.0)?;
        v.set(&(v.as_tensor() + noise)?)?;
    }
    let x = randn(&[2, 2, 8, 8], 1, DType::F32);
    let loss = net
        .forward(&x, &ts(&[0.2, 0.7], DType::F32), &labels(&[0, 3]))?
        .mul(&randn(&[2, 2, 8, 8], 2, DType::F32))?
        .sum_all()?;
    let grads = loss.backward()?;
    // t-MLP (4) + table + x_embedder (3) + in_context_posemb + 14 per block + final (5).
    assert_eq!(vars.len(), 4 + 1 + 3 + 1 + 14 * cfg.depth + 5);
    assert_every_param_has_gradient(&vars, &grads);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Reference initialisation.

#[test]
fn jit_reference_initialisation() -> TestResult {
    let mut cfg = JitConfig::nano_4();
    cfg.num_classes = 1000; // a label table large enough for a tight std estimate
    let (net, vars) = build(&cfg, DType::F32);
    init_jit(&vars, 42)?;
    let mut xavier = 0;
    for (name, v) in &vars {
        let x = vals(v.as_tensor());
        if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("_norm.weight")
            || name.ends_with("norm_final.weight")
        {
            assert!(x.iter().all(|&a| a == 1.0), "`{name}` should be ones");
        } else if name.contains("adaLN_modulation")
            || name.starts_with("final_layer.linear")
            || name.ends_with(".bias")
        {
            assert!(x.iter().all(|&a| a == 0.0), "`{name}` should be zero");
        } else if name.starts_with("y_embedder.")
            || name.starts_with("t_embedder.")
            || name == "in_context_posemb"
        {
            let (mean, std) = mean_std(&x);
            let tol = 4.0 * 0.02 / (2.0 * x.len() as f64).sqrt();
            assert!((std - 0.02).abs() < tol, "`{name}` std {std}");
            assert!(
                mean.abs() < 4.0 * 0.02 / (x.len() as f64).sqrt(),
                "`{name}`"
            );
        } else {
            let d = v.dims();
            let bound = (6.0 / (d[0] as f64 + d[1..].iter().product::<usize>() as f64)).sqrt();
            let m = x.iter().fold(0.0f64, |m, a| m.max(a.abs()));
            assert!(
                m <= bound * (1.0 + 1e-6) && m > 0.8 * bound,
                "`{name}` max {m}"
            );
            xavier += 1;
        }
    }
    // proj1, proj2 + per block qkv, proj, w12, w3.
    assert_eq!(xavier, 2 + 4 * cfg.depth);

    // Seeded and deterministic.
    let (_, same) = build(&cfg, DType::F32);
    init_jit(&same, 42)?;
    assert_eq!(var_bits(&vars), var_bits(&same));
    let (_, other) = build(&cfg, DType::F32);
    init_jit(&other, 43)?;
    assert_ne!(var_bits(&vars), var_bits(&other));

    // adaLN-Zero: x̂ is exactly zero at initialisation.
    let out = net.forward(
        &randn(&[3, 1, 16, 16], 1, DType::F32),
        &ts(&[0.0, 0.5, 1.0], DType::F32),
        &labels(&[0, 999, 1000]),
    )?;
    assert_eq!(out.dims(), &[3, 1, 16, 16]);
    assert!(vals(&out).iter().all(|&v| v == 0.0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Parity with an independent re-implementation of the reference forward (f64), written
// from the reference's own formulation: strided convolutions for the patch embedding, the
// RoPE tables built as `repeat(…, r = 2)` + `broadcat`, rotate_half by an explicit signed
// permutation, attention head by head. Each mutation is a plausible mistake that must show.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mutation {
    None,
    /// Rows on the second half of the head channels, columns on the first.
    RopeAxesSwapped,
    /// rotate_half on (first half, second half) instead of consecutive pairs.
    RopeSplitHalves,
    /// The class tokens rotated as if they were patch tokens 0 … L−1.
    ClassTokensRotated,
    /// `silu(b)·a` instead of `silu(a)·b`.
    SwigluSwapped,
    /// Class tokens prepended one block late.
    InContextLate,
}

/// `[N, d]` cos and sin tables, following the reference construction.
fn ref_rope(d: usize, g: usize, cls: usize, m: Mutation) -> (Tensor, Tensor) {
    let dim = d / 2;
    let freqs: Vec<f64> = (0..dim / 2)
        .map(|k| 1.0 / 10000f64.powf((2 * k) as f64 / dim as f64))
        .collect();
    // per-axis table [g, dim]: each frequency repeated twice (interleaved).
    let axis = |p: usize| -> Vec<f64> { freqs.iter().flat_map(|f| [p as f64 * f; 2]).collect() };
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    let total = g * g + cls;
    for n in 0..total {
        let row: Vec<f64> = if n < cls {
            if m == Mutation::ClassTokensRotated {
                let (r, c) = (n / g, n % g);
                [axis(r), axis(c)].concat()
            } else {
                vec![0.0; d]
            }
        } else {
            let (r, c) = ((n - cls) / g, (n - cls) % g);
            if m == Mutation::RopeAxesSwapped {
                [axis(c), axis(r)].concat()
            } else {
                [axis(r), axis(c)].concat()
            }
        };
        cos.extend(row.iter().map(|a| a.cos()));
        sin.extend(row.iter().map(|a| a.sin()));
    }
    let t = |v: Vec<f64>| Tensor::from_vec(v, (total, d), &Device::Cpu).unwrap();
    (t(cos), t(sin))
}

/// The matrix `R` with `x·R = rotate_half(x)`.
fn ref_rotate_matrix(d: usize, m: Mutation) -> Tensor {
    let mut r = vec![0f64; d * d];
    for i in 0..d / 2 {
        if m == Mutation::RopeSplitHalves {
            let h = d / 2;
            r[(i + h) * d + i] = -1.0; // out[i] = −x[i + h]
            r[i * d + i + h] = 1.0; // out[i + h] = x[i]
        } else {
            r[(2 * i + 1) * d + 2 * i] = -1.0; // out[2i] = −x[2i + 1]
            r[(2 * i) * d + 2 * i + 1] = 1.0; // out[2i + 1] = x[2i]
        }
    }
    Tensor::from_vec(r, (d, d), &Device::Cpu).unwrap()
}

fn rl(x: &Tensor, w: &HashMap<String, Tensor>, pre: &str) -> Tensor {
    x.broadcast_matmul(&w[&format!("{pre}.weight")].t().unwrap())
        .unwrap()
        .broadcast_add(&w[&format!("{pre}.bias")])
        .unwrap()
}
fn rrms(x: &Tensor, w: &Tensor) -> Tensor {
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
}
fn rsilu(x: &Tensor) -> Tensor {
    (x / (x.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap()
}
fn rmod(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x.broadcast_mul(&(scale.unsqueeze(1).unwrap() + 1.0).unwrap())
        .unwrap()
        .broadcast_add(&shift.unsqueeze(1).unwrap())
        .unwrap()
}
fn chunks(x: &Tensor, k: usize) -> Vec<Tensor> {
    let c = x.dim(1).unwrap() / k;
    (0..k).map(|i| x.narrow(1, i * c, c).unwrap()).collect()
}

fn ref_forward(
    cfg: &JitConfig,
    w: &HashMap<String, Tensor>,
    x: &Tensor,
    t: &Tensor,
    y: &[u32],
    m: Mutation,
) -> Tensor {
    let (b, hsz, heads) = (x.dim(0).unwrap(), cfg.hidden_size, cfg.num_heads);
    let (p, g) = (cfg.patch_size, cfg.grid_size());
    let d = hsz / heads;
    // Time: [cos, sin] of t·exp(−ln(10⁴)·k/128).
    let tv = vals(t);
    let mut feats = Vec::new();
    for &tt in &tv {
        let args: Vec<f64> = (0..128)
            .map(|k| tt * (-(10000f64.ln()) * k as f64 / 128.0).exp())
            .collect();
        feats.extend(args.iter().map(|a| a.cos()));
        feats.extend(args.iter().map(|a| a.sin()));
    }
    let tf = Tensor::from_vec(feats, (b, 256), &Device::Cpu).unwrap();
    let t_emb = rl(
        &rsilu(&rl(&tf, w, "t_embedder.mlp.0")),
        w,
        "t_embedder.mlp.2",
    );
    let table = &w["y_embedder.embedding_table.weight"];
    let y_emb = Tensor::cat(
        &y.iter()
            .map(|&l| table.get(l as usize).unwrap().unsqueeze(0).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let c = (&t_emb + &y_emb).unwrap();
    // Patch embedding: strided conv, 1×1 conv, flatten(2).transpose(1, 2).
    let e = x
        .conv2d(&w["x_embedder.proj1.weight"], 0, p, 1, 1)
        .unwrap()
        .conv2d(&w["x_embedder.proj2.weight"], 0, 1, 1, 1)
        .unwrap()
        .broadcast_add(&w["x_embedder.proj2.bias"].reshape((1, hsz, 1, 1)).unwrap())
        .unwrap();
    let pos = Tensor::from_vec(
        cbs_models::common::pos_embed::sincos_2d(hsz, g),
        (1, g * g, hsz),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    let mut h = e
        .flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .broadcast_add(&pos)
        .unwrap();
    let start = cfg.in_context_start + usize::from(m == Mutation::InContextLate);
    let l = cfg.in_context_len;
    let rot = ref_rotate_matrix(d, m);
    for i in 0..cfg.depth {
        let pre = format!("blocks.{i}");
        if i == start {
            let tokens = y_emb
                .unsqueeze(1)
                .unwrap()
                .broadcast_add(&w["in_context_posemb"])
                .unwrap();
            h = Tensor::cat(&[&tokens, &h], 1).unwrap();
        }
        let n = h.dim(1).unwrap();
        let (cos, sin) = ref_rope(d, g, if i < start { 0 } else { l }, m);
        let rope = |q: &Tensor| {
            (q.broadcast_mul(&cos).unwrap()
                + q.broadcast_matmul(&rot)
                    .unwrap()
                    .broadcast_mul(&sin)
                    .unwrap())
            .unwrap()
        };
        let md = chunks(&rl(&rsilu(&c), w, &format!("{pre}.adaLN_modulation.1")), 6);
        // Attention, one head at a time.
        let a_in = rmod(
            &rrms(&h, &w[&format!("{pre}.norm1.weight")]),
            &md[0],
            &md[1],
        );
        let qkv = rl(&a_in, w, &format!("{pre}.attn.qkv")); // [B, N, 3C]
        let mut head_outs = Vec::new();
        for hd in 0..heads {
            let part = |j: usize| qkv.narrow(2, j * hsz + hd * d, d).unwrap();
            let q = rope(&rrms(&part(0), &w[&format!("{pre}.attn.q_norm.weight")]));
            let k = rope(&rrms(&part(1), &w[&format!("{pre}.attn.k_norm.weight")]));
            let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let s = s
                .broadcast_sub(&s.max_keepdim(D::Minus1).unwrap())
                .unwrap()
                .exp()
                .unwrap();
            let a = s.broadcast_div(&s.sum_keepdim(D::Minus1).unwrap()).unwrap();
            head_outs.push(a.matmul(&part(2).contiguous().unwrap()).unwrap());
        }
        let attn = rl(
            &Tensor::cat(&head_outs, 2).unwrap(),
            w,
            &format!("{pre}.attn.proj"),
        );
        h = (&h + attn.broadcast_mul(&md[2].unsqueeze(1).unwrap()).unwrap()).unwrap();
        // SwiGLU.
        let m_in = rmod(
            &rrms(&h, &w[&format!("{pre}.norm2.weight")]),
            &md[3],
            &md[4],
        );
        let x12 = rl(&m_in, w, &format!("{pre}.mlp.w12"));
        let hid = cfg.mlp_hidden();
        let (a, bb) = (
            x12.narrow(2, 0, hid).unwrap(),
            x12.narrow(2, hid, hid).unwrap(),
        );
        let gated = if m == Mutation::SwigluSwapped {
            (rsilu(&bb) * a).unwrap()
        } else {
            (rsilu(&a) * bb).unwrap()
        };
        let mlp = rl(&gated, w, &format!("{pre}.mlp.w3"));
        h = (&h + mlp.broadcast_mul(&md[5].unsqueeze(1).unwrap()).unwrap()).unwrap();
        assert_eq!(h.dim(1).unwrap(), n);
    }
    let h = h.narrow(1, l, g * g).unwrap();
    let mf = chunks(&rl(&rsilu(&c), w, "final_layer.adaLN_modulation.1"), 2);
    let o = rl(
        &rmod(
            &rrms(&h, &w["final_layer.norm_final.weight"]),
            &mf[0],
            &mf[1],
        ),
        w,
        "final_layer.linear",
    );
    // nhwpqc → nchpwq
    let ch = cfg.in_channels;
    o.reshape((b, g, g, p, p, ch))
        .unwrap()
        .permute((0, 5, 1, 3, 2, 4))
        .unwrap()
        .reshape((b, ch, g * p, g * p))
        .unwrap()
}

#[test]
fn jit_forward_parity_with_independent_reference_f64() -> TestResult {
    let cfg = tiny();
    let (net, vars) = build(&cfg, DType::F64);
    randomise(&vars, 5);
    let w: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let x = randn(&[3, 2, 8, 8], 1, DType::F64);
    let t = ts(&[0.05, 0.5, 0.97], DType::F64);
    let y = [0u32, 2, 3];
    let ours = net.forward(&x, &t, &labels(&y))?;
    let scale = max_abs(&ours);
    assert!(scale > 0.1, "output too small to compare: {scale}");
    let reference = ref_forward(&cfg, &w, &x, &t, &y, Mutation::None);
    // RoPE and pos_embed tables are f32 in both (rounded like the reference): ~1e-7 relative.
    let diff = max_abs_diff(&ours, &reference) / scale;
    println!("jit parity: max |Δ| / max |x̂| = {diff:e}");
    assert!(diff < 1e-5, "parity {diff:e}");
    for m in [
        Mutation::RopeAxesSwapped,
        Mutation::RopeSplitHalves,
        Mutation::ClassTokensRotated,
        Mutation::SwigluSwapped,
        Mutation::InContextLate,
    ] {
        let wrong = ref_forward(&cfg, &w, &x, &t, &y, m);
        let dm = max_abs_diff(&ours, &wrong) / scale;
        println!("  mutation {m:?}: {dm:e}");
        assert!(dm > 1e-3, "mutation {m:?} not detected ({dm:e})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Parameter names, shapes and counts, without allocating the weights.

/// `(name, dims)` of every `state_dict` tensor (variables and buffers), sorted by name.
fn recorded_shapes(cfg: &JitConfig) -> Vec<(String, Vec<usize>)> {
    let rec = Recorder::new();
    let vb = rec.var_builder(DType::F32, &Device::Cpu);
    let net = Jit::new(cfg, vb).expect("build with the recorder");
    let mut out = rec.shapes();
    out.extend(
        net.buffers()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec())),
    );
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn total(shapes: &[(String, Vec<usize>)]) -> usize {
    shapes
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum()
}

/// Closed-form count of the trainable parameters (pos_embed excluded), from the reference
/// constructor. For JiT-B/16 at 256 px, 3 channels, 1000 classes (h = 768, p = 16, N = 256,
/// m = int(3072·2/3) = 2048, bottleneck 128, 32 class tokens, 12 blocks):
/// - t_embedder: 256·768 + 768 + 768·768 + 768 = 787 968
/// - y_embedder: 1001·768 = 768 768
/// - x_embedder: 128·3·16·16 (proj1, no bias) + 768·128 + 768 (proj2) = 197 376
/// - in_context_posemb: 32·768 = 24 576
/// - block: norm1 768, q_norm 64, k_norm 64, qkv 768·2304 + 2304, proj 768·768 + 768,
///   norm2 768, w12 768·4096 + 4096, w3 2048·768 + 768, adaLN 768·4608 + 4608;
///   sum 10 631 040, × 12 = 127 572 480
/// - final_layer: norm_final 768 + linear 768·768 + 768 + adaLN 768·1536 + 1536 = 1 772 544
///
/// Total 131 123 712, what the reference's `sum(p.numel() for p in model.parameters() if
/// p.requires_grad)` counts (≈ 131M, as published; derived by hand here, not run);
/// the frozen pos_embed adds 256·768 = 196 608 to the state_dict (131 320 320).
fn closed_form_trainable(c: &JitConfig) -> usize {
    let h = c.hidden_size;
    let p = c.patch_size;
    let m = c.mlp_hidden();
    let d = c.head_dim();
    let out = p * p * c.in_channels;
    let temb = 256 * h + h + h * h + h;
    let yemb = (c.num_classes + 1) * h;
    let xemb = c.bottleneck_dim * c.in_channels * p * p + h * c.bottleneck_dim + h;
    let ctx = c.in_context_len * h;
    let block = h
        + 2 * d
        + (h * 3 * h + 3 * h)
        + (h * h + h)
        + h
        + (h * 2 * m + 2 * m)
        + (m * h + h)
        + (h * 6 * h + 6 * h);
    let fin = h + (h * out + out) + (h * 2 * h + 2 * h);
    temb + yemb + xemb + ctx + c.depth * block + fin
}

#[test]
fn jit_parameter_names_shapes_and_counts() -> TestResult {
    let b16 = JitConfig::preset("jit-b-16")?;
    assert_eq!(b16, JitConfig::b_16());
    let (shapes, bytes) = super::count_allocations(|| recorded_shapes(&b16));
    println!("jit-b-16 shape recording allocated {bytes} bytes");
    assert!(bytes < 8 << 20, "recording allocated {bytes} bytes");
    let get = |n: &str| shapes.iter().find(|(k, _)| k == n).map(|(_, d)| d.clone());
    let all = total(&shapes);
    let pos = 256 * 768;
    assert_eq!(all - pos, 131_123_712, "JiT-B/16 trainable parameters");
    assert_eq!(all, 131_320_320, "JiT-B/16 state_dict elements");
    assert_eq!(closed_form_trainable(&b16), 131_123_712);

    let expect: &[(&str, &[usize])] = &[
        ("pos_embed", &[1, 256, 768]),
        ("in_context_posemb", &[1, 32, 768]),
        ("x_embedder.proj1.weight", &[128, 3, 16, 16]),
        ("x_embedder.proj2.weight", &[768, 128, 1, 1]),
        ("x_embedder.proj2.bias", &[768]),
        ("t_embedder.mlp.0.weight", &[768, 256]),
        ("t_embedder.mlp.2.bias", &[768]),
        ("y_embedder.embedding_table.weight", &[1001, 768]),
        ("blocks.0.norm1.weight", &[768]),
        ("blocks.0.attn.q_norm.weight", &[64]),
        ("blocks.0.attn.k_norm.weight", &[64]),
        ("blocks.0.attn.qkv.weight", &[2304, 768]),
        ("blocks.0.attn.qkv.bias", &[2304]),
        ("blocks.0.attn.proj.weight", &[768, 768]),
        ("blocks.5.norm2.weight", &[768]),
        ("blocks.11.mlp.w12.weight", &[4096, 768]),
        ("blocks.11.mlp.w12.bias", &[4096]),
        ("blocks.11.mlp.w3.weight", &[768, 2048]),
        ("blocks.11.adaLN_modulation.1.weight", &[4608, 768]),
        ("final_layer.norm_final.weight", &[768]),
        ("final_layer.linear.weight", &[768, 768]),
        ("final_layer.adaLN_modulation.1.weight", &[1536, 768]),
    ];
    for (name, dims) in expect {
        assert_eq!(get(name).as_deref(), Some(*dims), "`{name}`");
    }
    assert_eq!(get("blocks.12.norm1.weight"), None);
    assert_eq!(get("x_embedder.proj1.bias"), None, "proj1 has no bias");
    // 4 t-MLP + table + 3 x_embedder + pos + ctx pos + 12 × 14 + 5 final.
    assert_eq!(shapes.len(), 4 + 1 + 3 + 1 + 1 + 12 * 14 + 5);
    assert!(shapes.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique");

    // Every preset at its default geometry, and overridden geometries, against the closed form.
    println!(
        "{:<12} {:>5} {:>3} {:>5} {:>14} {:>14}",
        "preset", "px", "ch", "cls", "trainable", "state_dict"
    );
    for name in JitConfig::preset_names() {
        let base = JitConfig::preset(&name)?;
        base.validate()?;
        let s = recorded_shapes(&base);
        let n_pos = base.num_patches() * base.hidden_size;
        println!(
            "{name:<12} {:>5} {:>3} {:>5} {:>14} {:>14}",
            base.input_size,
            base.in_channels,
            base.num_classes,
            total(&s) - n_pos,
            total(&s)
        );
        let mut geometry = base.clone();
        geometry.input_size = base.patch_size * 3;
        geometry.in_channels = 1;
        geometry.num_classes = 10;
        let mut no_ctx = base.clone();
        no_ctx.in_context_len = 0;
        for cfg in [base, geometry, no_ctx] {
            cfg.validate()?;
            let s = recorded_shapes(&cfg);
            let n_pos = cfg.num_patches() * cfg.hidden_size;
            assert_eq!(total(&s) - n_pos, closed_form_trainable(&cfg), "{cfg:?}");
        }
    }

    // The recorded shapes are exactly those of a built network.
    let cfg = tiny();
    let (net, vars) = build(&cfg, DType::F32);
    let mut built: Vec<(String, Vec<usize>)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .chain(
            net.buffers()
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec())),
        )
        .collect();
    built.sort();
    assert_eq!(recorded_shapes(&cfg), built);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. x̂ → v and its clamp.

#[test]
fn jit_x_to_velocity_and_clamp() -> TestResult {
    assert_eq!(JIT_T_CLAMP, 0.05);
    let xh = Tensor::new(&[[1.0f64, 2.0], [3.0, -4.0], [0.5, 0.25]], &Device::Cpu)?;
    let z = Tensor::new(&[[0.5f64, -1.0], [1.0, 1.0], [0.0, 1.0]], &Device::Cpu)?;
    let t = ts(&[0.0, 0.75, 0.99], DType::F64);
    let v: Vec<Vec<f64>> = x_to_velocity(&xh, &z, &t, JIT_T_CLAMP)?.to_vec2()?;
    let want = [
        [0.5, 3.0],                 // / 1
        [2.0 / 0.25, -5.0 / 0.25],  // / (1 − 0.75)
        [0.5 / 0.05, -0.75 / 0.05], // 1 − 0.99 < 0.05: / 0.05
    ];
    for (row, w) in v.iter().zip(want) {
        for (a, b) in row.iter().zip(w) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }
    // Images: t broadcast per sample; below the clamp exactly (x̂ − z)/(1 − t).
    let xh = randn(&[2, 1, 2, 2], 1, DType::F64);
    let z = randn(&[2, 1, 2, 2], 2, DType::F64);
    let t = ts(&[0.3, 0.94], DType::F64);
    let v = x_to_velocity(&xh, &z, &t, JIT_T_CLAMP)?;
    let d = (&xh - &z)?;
    let want = Tensor::cat(
        &[
            (d.get(0)? / 0.7)?.unsqueeze(0)?,
            (d.get(1)? / (1.0 - 0.94))?.unsqueeze(0)?,
        ],
        0,
    )?;
    assert!(max_abs_diff(&v, &want) < 1e-12);
    let t = ts(&[1.0, 0.96], DType::F64);
    let v = x_to_velocity(&xh, &z, &t, JIT_T_CLAMP)?;
    assert!(max_abs_diff(&v, &(d / 0.05)?) < 1e-12);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. RoPE: hand-computed values and the relative-position property.

#[test]
fn jit_rope_golden_values() -> TestResult {
    // rotate_half on consecutive pairs.
    let x = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0], &Device::Cpu)?;
    assert_eq!(
        rotate_half(&x)?.to_vec1::<f64>()?,
        vec![-2.0, 1.0, -4.0, 3.0]
    );

    // head_dim 8 on a 4×4 grid: ω = [1, 10000^(−2/4) = 0.01]; token 11 = (row 2, col 3).
    let a = rope_angles(8, 4);
    assert_eq!(a.len(), 16 * 8);
    let tok: Vec<f64> = a[11 * 8..12 * 8].iter().map(|&v| v as f64).collect();
    let want = [2.0, 2.0, 0.02, 0.02, 3.0, 3.0, 0.03, 0.03];
    for (g, w) in tok.iter().zip(want) {
        assert!((g - w).abs() < 1e-7, "{tok:?}");
    }
    // Rotating x = 1..8 at token 11.
    let rope = Rope::new(8, 4, 0, DType::F64, &Device::Cpu)?;
    let xs: Vec<f64> = (1..=8).map(|v| v as f64).collect();
    let x = Tensor::from_vec(
        (0..16).flat_map(|_| xs.clone()).collect::<Vec<_>>(),
        (1, 1, 16, 8),
        &Device::Cpu,
    )?;
    let out = vals(&rope.apply(&x)?.get(0)?.get(0)?.get(11)?);
    let mut want = Vec::new();
    for (k, ang) in [2.0f64, 0.02, 3.0, 0.03].iter().enumerate() {
        let (a, b) = (xs[2 * k], xs[2 * k + 1]);
        want.push(a * ang.cos() - b * ang.sin());
        want.push(b * ang.cos() + a * ang.sin());
    }
    for (g, w) in out.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{out:?} vs {want:?}");
    }
    // Token 0 is not rotated; neither are the in-context rows.
    assert!(max_abs_diff(&rope.apply(&x)?.narrow(2, 0, 1)?, &x.narrow(2, 0, 1)?) < 1e-12);
    let (cos, sin) = rope_tables(8, 4, 3);
    assert_eq!(cos.len(), 19 * 8);
    assert!(cos[..24].iter().all(|&c| c == 1.0) && sin[..24].iter().all(|&s| s == 0.0));
    assert_eq!(cos[3 * 8..], rope_tables(8, 4, 0).0[..]);
    Ok(())
}

#[test]
fn jit_rope_inner_products_depend_only_on_relative_position() -> TestResult {
    let (d, g, cls) = (16, 6, 2);
    let rope = Rope::new(d, g, cls, DType::F64, &Device::Cpu)?;
    assert_eq!(rope.len(), cls + g * g);
    let n = cls + g * g;
    let rep = |seed| {
        randn(&[1, 1, 1, d], seed, DType::F64)
            .broadcast_as((1, 1, n, d))
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k) = (rep(1), rep(2));
    let (rq, rk) = (rope.apply(&q)?, rope.apply(&k)?);
    // Rotations preserve norms.
    let norms = |t: &Tensor| vals(&t.sqr().unwrap().sum(D::Minus1).unwrap());
    for (a, b) in norms(&rq).iter().zip(norms(&q)) {
        assert!((a - b).abs() < 1e-5 * b);
    }
    let gram: Vec<Vec<f64>> = rq.matmul(&rk.t()?)?.get(0)?.get(0)?.to_vec2()?;
    let idx = |r: usize, c: usize| cls + r * g + c;
    let mut checked = 0;
    let mut spread = 0.0f64;
    for (r1, c1, r2, c2) in [(0, 0, 1, 2), (2, 1, 0, 4), (3, 3, 3, 0), (1, 4, 4, 1)] {
        let base = gram[idx(r1, c1)][idx(r2, c2)];
        for dr in 0..g {
            for dc in 0..g {
                let ok = |v: usize| v + dr < g;
                let okc = |v: usize| v + dc < g;
                if ok(r1) && ok(r2) && okc(c1) && okc(c2) {
                    let other = gram[idx(r1 + dr, c1 + dc)][idx(r2 + dr, c2 + dc)];
                    assert!(
                        (other - base).abs() < 1e-5,
                        "shift ({dr},{dc}): {other} vs {base}"
                    );
                    checked += 1;
                }
            }
        }
        // ... but does depend on the offset itself.
        spread = spread.max((gram[idx(r1, c1)][idx(r2, c2)] - gram[idx(0, 0)][idx(0, 0)]).abs());
    }
    assert!(checked > 20 && spread > 1e-3);
    // A class token (unrotated) against patch tokens: plain q·R(n)k, so it varies with n.
    let row: Vec<f64> = (0..g * g).map(|j| gram[0][cls + j]).collect();
    assert!(row.iter().any(|v| (v - row[0]).abs() > 1e-3));
    let plain: f64 = vals(&q.get(0)?.get(0)?.get(0)?)
        .iter()
        .zip(vals(&k.get(0)?.get(0)?.get(0)?))
        .map(|(a, b)| a * b)
        .sum();
    assert!(
        (gram[0][1] - plain).abs() < 1e-9,
        "class tokens are not rotated"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Configuration.

#[test]
fn jit_config_presets_and_validation() -> TestResult {
    let names = JitConfig::preset_names();
    for want in [
        "jit-b-16",
        "jit-b-32",
        "jit-l-16",
        "jit-l-32",
        "jit-h-16",
        "jit-h-32",
        "jit-b-4",
        "jit-mini-4",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing");
    }
    for n in &names {
        JitConfig::preset(n)?.validate()?;
    }
    let err = JitConfig::preset("jit-x-16").unwrap_err();
    assert!(matches!(err, ModelError::UnknownPreset { .. }));
    assert!(err.to_string().contains("jit-b-16"));

    let (b, l, hh) = (JitConfig::b_16(), JitConfig::l_16(), JitConfig::h_16());
    assert_eq!((b.depth, b.hidden_size, b.num_heads), (12, 768, 12));
    assert_eq!((l.depth, l.hidden_size, l.num_heads), (24, 1024, 16));
    assert_eq!((hh.depth, hh.hidden_size, hh.num_heads), (32, 1280, 16));
    assert_eq!(
        (b.bottleneck_dim, l.bottleneck_dim, hh.bottleneck_dim),
        (128, 128, 256)
    );
    assert_eq!(
        (b.in_context_start, l.in_context_start, hh.in_context_start),
        (4, 8, 10)
    );
    assert_eq!(
        (b.in_context_len, b.input_size, b.patch_size),
        (32, 256, 16)
    );
    assert_eq!(
        (b.mlp_hidden(), l.mlp_hidden(), hh.mlp_hidden()),
        (2048, 2730, 3413)
    );
    assert_eq!(
        (JitConfig::b_4().input_size, JitConfig::b_4().patch_size),
        (64, 4)
    );
    let mini = JitConfig::mini_4();
    assert_eq!(
        (
            mini.depth,
            mini.hidden_size,
            mini.num_heads,
            mini.patch_size
        ),
        (4, 128, 4, 4)
    );

    let bad = |f: &dyn Fn(&mut JitConfig)| {
        let mut c = JitConfig::mini_4();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(bad(&|c| c.input_size = 30).contains("multiple of patch_size"));
    assert!(bad(&|c| c.num_heads = 3).contains("divisible"));
    assert!(bad(&|c| c.num_heads = 64).contains("multiple of 4")); // head dim 2
    assert!(bad(&|c| c.in_context_start = 4).contains("in_context_start"));
    assert!(bad(&|c| c.bottleneck_dim = 0).contains("positive"));
    assert!(bad(&|c| c.class_dropout_prob = 1.0).contains("class_dropout_prob"));
    let mut ok = JitConfig::mini_4();
    ok.in_context_len = 0;
    ok.in_context_start = 99; // irrelevant without class tokens
    ok.validate()?;
    Ok(())
}

//! UNet tests: finite-difference gradients, every parameter trained, reference initialisation,
//! the reference parameter count and key names, seeded dropout, shapes, labels, GroupNorm,
//! timestep features, upsampling and configuration checks.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result as CResult, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cbs_models::common::init::init_all_random;
use cbs_models::unet::init::init_unet;
use cbs_models::unet::layers::{
    timestep_embedding, upsample_nearest_2x, AttentionBlock, Dropout, GroupNorm32,
};
use cbs_models::unet::{Unet, UnetConfig};
use cbs_models::ModelError;

use super::common::{
    assert_every_param_has_gradient, fd_check_model, labels, max_abs_diff, randn_std as randn,
    sorted_vars, ts, vals, Recorder, Rtol,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A tiny UNet: 8 px, 2 levels (32, 64 channels), attention at 4 px (2 heads of 32), 3 classes
/// plus the null row.
fn tiny(scale_shift: bool, dropout: f64) -> UnetConfig {
    let mut c = UnetConfig::mini();
    c.image_size = 8;
    c.in_channels = 2;
    c.model_channels = 32;
    c.num_res_blocks = 1;
    c.channel_mult = vec![1, 2];
    c.attention_resolutions = vec![4];
    c.num_heads = 1;
    c.num_head_channels = Some(32);
    c.num_classes = 3;
    c.class_dropout_prob = 0.1;
    c.dropout = dropout;
    c.use_scale_shift_norm = scale_shift;
    c.validate().expect("valid tiny config");
    c
}

struct Built {
    varmap: VarMap,
    model: Unet,
}

impl Built {
    fn new(cfg: &UnetConfig, dtype: DType) -> CResult<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let model = Unet::new(cfg, vb)?;
        Ok(Self { varmap, model })
    }
    fn vars(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.varmap)
    }
}

fn is_zero_module(name: &str) -> bool {
    name.contains(".out_layers.3.") || name.contains(".proj_out.") || name.starts_with("out.2.")
}

// ---------------------------------------------------------------------------------------------
// 1. Finite-difference gradients (f64): every parameter tensor at a few entries, x and t.
// No op of the UNet has an approximate backward (no GELU), so one tight tolerance holds.

fn fd_check(scale_shift: bool) -> TestResult {
    let cfg = tiny(scale_shift, 0.0);
    let m = Built::new(&cfg, DType::F64)?;
    let vars = m.vars();
    init_all_random(&vars, 11, 0.2)?;
    // GroupNorm scales around 1 keep the activations in a sensible range.
    for (n, v) in &vars {
        if v.dims().len() == 1 && n.ends_with(".weight") {
            v.set(&(v.as_tensor() + 1.0)?)?;
        }
    }
    let rep = fd_check_model(
        &vars,
        |x, t, y| m.model.forward(x, t, Some(y)),
        4,
        Rtol::Uniform(1e-6),
    )?;
    let (checked, nonzero, noise, worst) = (rep.checked, rep.nonzero, rep.noise, &rep.worst);
    println!(
        "unet fd check (scale_shift {scale_shift}): {checked} entries of {} tensors, noise \
         {noise:e}, max rel err {:e} at {}",
        rep.tensors, worst.0, worst.1
    );
    assert!(
        nonzero * 10 > checked * 9,
        "too few non-zero gradients ({nonzero}/{checked})"
    );
    rep.assert_no_mismatch();
    Ok(())
}

#[test]
fn unet_finite_difference_gradients_f64() -> TestResult {
    fd_check(false)
}

#[test]
fn unet_finite_difference_gradients_f64_scale_shift_norm() -> TestResult {
    fd_check(true)
}

// ---------------------------------------------------------------------------------------------
// 2. Every trainable parameter receives a non-zero gradient (f32, reference init with the
// zero-initialised layers perturbed, through the training forward with dropout).

#[test]
fn unet_every_parameter_gets_a_gradient_f32() -> TestResult {
    let cfg = tiny(false, 0.1);
    let m = Built::new(&cfg, DType::F32)?;
    let vars = m.vars();
    init_unet(&vars, 3)?;
    for (k, (n, v)) in vars.iter().enumerate() {
        if is_zero_module(n) {
            v.set(&randn(v.dims(), 100 + k as u64, 0.05, DType::F32))?;
        }
    }
    let x = randn(&[2, 2, 8, 8], 1, 1.0, DType::F32);
    let t = ts(&[0.2, 0.7], DType::F32);
    let y = labels(&[0, 2]);
    let r = randn(&[2, 2, 8, 8], 2, 1.0, DType::F32);
    let loss = m
        .model
        .forward_train(&x, &t, Some(&y), 5)?
        .mul(&r)?
        .sum_all()?;
    let grads = loss.backward()?;
    // time_embed 4 + label_emb 1 + input conv 2; encoder: res 32→32 (10), down (2),
    // res 32→64 with skip conv (12) + attention (6); middle 10 + 6 + 10; decoder at 64 ch:
    // 2 × (res with skip conv 12 + attention 6) + upsample 2, at 32 ch: 2 res with skip conv
    // (12 each); out 4.
    assert_eq!(vars.len(), 7 + 30 + 26 + 62 + 4);
    assert_every_param_has_gradient(&vars, &grads);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Reference initialisation.

#[test]
fn unet_reference_initialisation() -> TestResult {
    let cfg = tiny(false, 0.0);
    let m = Built::new(&cfg, DType::F32)?;
    let vars = m.vars();
    init_unet(&vars, 7)?;
    let shapes: HashMap<String, Vec<usize>> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    let mut uniform_checked = 0;
    for (name, var) in &vars {
        let v = vals(var.as_tensor());
        let dims = var.dims();
        if is_zero_module(name) {
            assert!(v.iter().all(|&x| x == 0.0), "{name} must be zero");
        } else if name == "label_emb.weight" {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert_eq!(
                dims,
                &[4, 128],
                "label table: 3 classes + null row, 4·32 wide"
            );
            assert!((std - 1.0).abs() < 0.15, "label_emb std {std}");
        } else if dims.len() == 1 && name.ends_with(".weight") {
            assert!(v.iter().all(|&x| x == 1.0), "{name}: GroupNorm weight 1");
        } else {
            let wdims = if name.ends_with(".bias") {
                let w = shapes[&name.replace(".bias", ".weight")].clone();
                if w.len() == 1 {
                    assert!(v.iter().all(|&x| x == 0.0), "{name}: GroupNorm bias 0");
                    continue;
                }
                w
            } else {
                dims.to_vec()
            };
            let fan_in: usize = wdims[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mx = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            assert!(mx <= bound, "{name}: |w| {mx} > 1/sqrt({fan_in})");
            if v.len() >= 1000 {
                let n = v.len() as f64;
                let std = (v.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
                let want = bound / 3f64.sqrt();
                assert!(
                    (std / want - 1.0).abs() < 0.1,
                    "{name}: std {std} vs U(±{bound}) {want}"
                );
                uniform_checked += 1;
            }
        }
    }
    assert!(uniform_checked > 10);
    // At the reference init the output conv is zero: the velocity is exactly 0.
    let x = randn(&[2, 2, 8, 8], 1, 1.0, DType::F32);
    let out = m
        .model
        .forward(&x, &ts(&[0.1, 0.9], DType::F32), Some(&labels(&[0, 3])))?;
    assert!(vals(&out).iter().all(|&v| v == 0.0));
    // Same seed, same values; another seed, different values.
    let snapshot = |vars: &[(String, Var)]| -> Vec<Vec<f64>> {
        vars.iter().map(|(_, v)| vals(v.as_tensor())).collect()
    };
    let a = snapshot(&vars);
    init_unet(&vars, 7)?;
    assert_eq!(a, snapshot(&vars));
    init_unet(&vars, 8)?;
    assert_ne!(a, snapshot(&vars));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Parameter count and key names of `unet-cifar`, from a shape-recording backend (nothing
// allocated).

fn recorded_shapes(cfg: &UnetConfig) -> HashMap<String, Vec<usize>> {
    let rec = Recorder::new();
    let vb = rec.var_builder(DType::F32, &Device::Cpu);
    Unet::new(cfg, vb).expect("build");
    let v = rec.shapes();
    let n = v.len();
    let map: HashMap<String, Vec<usize>> = v.into_iter().collect();
    assert_eq!(map.len(), n, "a parameter name was requested twice");
    map
}

fn total(shapes: &HashMap<String, Vec<usize>>) -> usize {
    shapes.values().map(|d| d.iter().product::<usize>()).sum()
}

#[test]
fn unet_cifar_parameter_count_and_keys() -> TestResult {
    let cfg = UnetConfig::preset("unet-cifar")?;
    cfg.validate()?;
    let shapes = recorded_shapes(&cfg);
    // Reference: torchcfm `UNetModelWrapper(dim=(3, 32, 32), num_res_blocks=2,
    // num_channels=128, channel_mult=[1, 2, 2, 2], num_heads=4, num_head_channels=64,
    // attention_resolutions="16", dropout=0.1)` (examples/images/cifar10/train_cifar10.py),
    // whose `sum(p.nelement())` is 35 746 307 (printed there as "34.09 M" = /1024/1024).
    // Derivation (ted = 512; res(c→o) = 2c + (9co + o) + (512o + o) + 2o + (9o² + o)
    // [+ co + o when c ≠ o]; attn(c) = 2c + (3c² + 3c) + (c² + c)): time_embed 328 704;
    // encoder 10 194 304 (input conv, 8 res blocks, 3 strided convs, 2 attention blocks at
    // 16 px); middle 2 888 704 (res 256, attn 256, res 256); decoder 22 330 880 (12 res blocks
    // on concatenated skips, 3 upsample convs, 3 attention blocks); out 3 715. E.g. res(128→128)
    // = 361 344, res(256→256) = 1 312 512, attn(256) = 263 680.
    assert_eq!(total(&shapes), 35_746_307);
    let expect: &[(&str, &[usize])] = &[
        ("time_embed.0.weight", &[512, 128]),
        ("time_embed.0.bias", &[512]),
        ("time_embed.2.weight", &[512, 512]),
        ("input_blocks.0.0.weight", &[128, 3, 3, 3]),
        ("input_blocks.1.0.in_layers.0.weight", &[128]),
        ("input_blocks.1.0.in_layers.2.weight", &[128, 128, 3, 3]),
        ("input_blocks.1.0.emb_layers.1.weight", &[128, 512]),
        ("input_blocks.1.0.out_layers.0.bias", &[128]),
        ("input_blocks.1.0.out_layers.3.weight", &[128, 128, 3, 3]),
        ("input_blocks.3.0.op.weight", &[128, 128, 3, 3]),
        ("input_blocks.4.0.skip_connection.weight", &[256, 128, 1, 1]),
        ("input_blocks.4.1.norm.weight", &[256]),
        ("input_blocks.4.1.qkv.weight", &[768, 256, 1]),
        ("input_blocks.4.1.qkv.bias", &[768]),
        ("input_blocks.4.1.proj_out.weight", &[256, 256, 1]),
        ("input_blocks.5.1.qkv.weight", &[768, 256, 1]),
        ("input_blocks.11.0.in_layers.2.weight", &[256, 256, 3, 3]),
        ("middle_block.0.emb_layers.1.weight", &[256, 512]),
        ("middle_block.1.qkv.weight", &[768, 256, 1]),
        ("middle_block.2.out_layers.3.bias", &[256]),
        ("output_blocks.0.0.in_layers.0.weight", &[512]),
        (
            "output_blocks.0.0.skip_connection.weight",
            &[256, 512, 1, 1],
        ),
        ("output_blocks.2.1.conv.weight", &[256, 256, 3, 3]),
        ("output_blocks.6.1.qkv.weight", &[768, 256, 1]),
        ("output_blocks.8.0.in_layers.0.weight", &[384]),
        ("output_blocks.8.2.conv.weight", &[256, 256, 3, 3]),
        (
            "output_blocks.9.0.skip_connection.weight",
            &[128, 384, 1, 1],
        ),
        ("output_blocks.11.0.in_layers.0.weight", &[256]),
        ("out.0.weight", &[128]),
        ("out.2.weight", &[3, 128, 3, 3]),
        ("out.2.bias", &[3]),
    ];
    for (k, d) in expect {
        assert_eq!(shapes.get(*k).map(|v| v.as_slice()), Some(*d), "key `{k}`");
    }
    let absent = [
        "label_emb.weight",
        "input_blocks.12.0.in_layers.0.weight",
        "output_blocks.12.0.in_layers.0.weight",
        "input_blocks.1.0.skip_connection.weight", // same channels: identity
        "input_blocks.1.1.qkv.weight",             // no attention at 32 px
        "input_blocks.7.1.qkv.weight",             // nor at 8 px
        "output_blocks.2.2.conv.weight",           // upsample at index 1 without attention
        "output_blocks.11.1.conv.weight",          // no upsample at level 0
    ];
    for k in absent {
        assert!(!shapes.contains_key(k), "unexpected key `{k}`");
    }
    let attn = shapes.keys().filter(|k| k.ends_with(".qkv.weight")).count();
    assert_eq!(
        attn,
        2 + 1 + 3,
        "attention blocks: 2 encoder, middle, 3 decoder"
    );
    let res = shapes
        .keys()
        .filter(|k| k.ends_with(".emb_layers.1.weight"))
        .count();
    assert_eq!(res, 8 + 2 + 12, "res blocks");

    // Class-conditional: exactly `label_emb` more ([classes (+ null row), 512]).
    let mut cond = cfg.clone();
    cond.num_classes = 10;
    cond.validate()?;
    let cs = recorded_shapes(&cond);
    assert_eq!(cs.len(), shapes.len() + 1);
    assert_eq!(cs["label_emb.weight"], vec![11, 512]);
    assert_eq!(total(&cs), 35_746_307 + 11 * 512);
    cond.class_dropout_prob = 0.0; // the reference's class_cond table: no null row
    assert_eq!(total(&recorded_shapes(&cond)), 35_751_427);

    // learn_sigma doubles the output conv only.
    let mut sig = cfg.clone();
    sig.learn_sigma = true;
    let ss = recorded_shapes(&sig);
    assert_eq!(ss["out.2.weight"], vec![6, 128, 3, 3]);
    assert_eq!(total(&ss), 35_746_307 + 3 * 128 * 9 + 3);

    // The CPU preset.
    let mini = UnetConfig::preset("unet-mini")?;
    mini.validate()?;
    assert_eq!(total(&recorded_shapes(&mini)), 1_112_801);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Dropout: p = 0 is the eval forward; p > 0 is a function of the seed.

#[test]
fn unet_training_dropout_is_seeded() -> TestResult {
    let x = randn(&[2, 2, 8, 8], 1, 1.0, DType::F32);
    let t = ts(&[0.25, 0.6], DType::F32);
    let y = labels(&[2, 0]);
    for p in [0.0, 0.3] {
        let m = Built::new(&tiny(false, p), DType::F32)?;
        init_all_random(&m.vars(), 4, 0.1)?;
        let eval = m.model.forward(&x, &t, Some(&y))?;
        let a = m.model.forward_train(&x, &t, Some(&y), 17)?;
        if p == 0.0 {
            assert_eq!(vals(&a), vals(&eval), "dropout 0 must be the eval forward");
            continue;
        }
        let b = m.model.forward_train(&x, &t, Some(&y), 17)?;
        let c = m.model.forward_train(&x, &t, Some(&y), 18)?;
        assert_eq!(vals(&a), vals(&b), "same seed, same output");
        assert!(max_abs_diff(&a, &c) > 1e-4, "another seed, another output");
        assert!(max_abs_diff(&a, &eval) > 1e-4, "dropout changes the output");
    }
    // The masks: zeros or 1/(1 − p), about a fraction p dropped, successive calls differ.
    let ones = Tensor::ones((4, 64, 32, 32), DType::F32, &Device::Cpu)?;
    let mut d = Dropout::new(0.25, 9);
    let m1 = vals(&d.apply(&ones)?);
    let m2 = vals(&d.apply(&ones)?);
    let scale = (1.0f32 / 0.75) as f64;
    assert!(m1.iter().all(|&v| v == 0.0 || v == scale));
    let dropped = m1.iter().filter(|&&v| v == 0.0).count() as f64 / m1.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
    assert_ne!(m1, m2);
    assert_eq!(m1, vals(&Dropout::new(0.25, 9).apply(&ones)?));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Shapes, labels, output channels.

#[test]
fn unet_output_shapes_and_labels() -> TestResult {
    let x = randn(&[3, 2, 8, 8], 1, 1.0, DType::F32);
    let t = ts(&[0.0, 0.5, 1.0], DType::F32);

    // Unconditional.
    let mut unc = tiny(false, 0.0);
    unc.num_classes = 0;
    unc.validate()?;
    let m = Built::new(&unc, DType::F32)?;
    init_all_random(&m.vars(), 1, 0.1)?;
    assert!(!m.vars().iter().any(|(n, _)| n.starts_with("label_emb")));
    assert_eq!(m.model.forward(&x, &t, None)?.dims(), &[3, 2, 8, 8]);
    assert!(m.model.forward(&x, &t, Some(&labels(&[0, 1, 2]))).is_err());

    // Class-conditional with a null row: `None` is the null class.
    let cfg = tiny(false, 0.0);
    let m = Built::new(&cfg, DType::F32)?;
    init_all_random(&m.vars(), 2, 0.1)?;
    let y = labels(&[0, 2, 3]);
    let out = m.model.forward(&x, &t, Some(&y))?;
    assert_eq!(out.dims(), &[3, 2, 8, 8]);
    let null = m.model.forward(&x, &t, None)?;
    let explicit = m.model.forward(&x, &t, Some(&labels(&[3, 3, 3])))?;
    assert_eq!(vals(&null), vals(&explicit));
    assert!(max_abs_diff(&out, &null) > 1e-6, "labels must matter");
    // Without a null row, labels are required.
    let mut no_null = cfg.clone();
    no_null.class_dropout_prob = 0.0;
    let m2 = Built::new(&no_null, DType::F32)?;
    assert!(m2.model.forward(&x, &t, None).is_err());

    // learn_sigma: twice the output channels inside, the velocity half outside.
    let mut sig = cfg.clone();
    sig.learn_sigma = true;
    let m3 = Built::new(&sig, DType::F32)?;
    init_all_random(&m3.vars(), 3, 0.1)?;
    assert_eq!(m3.model.forward(&x, &t, Some(&y))?.dims(), &[3, 2, 8, 8]);
    assert_eq!(m3.model.config(), &sig);

    // A mini preset at its real geometry (32 px, 1 channel, 10 classes).
    let mut mini = UnetConfig::preset("unet-mini")?;
    mini.num_classes = 10;
    mini.validate()?;
    let m4 = Built::new(&mini, DType::F32)?;
    init_unet(&m4.vars(), 0)?;
    let xm = randn(&[2, 1, 32, 32], 5, 1.0, DType::F32);
    let out = m4
        .model
        .forward(&xm, &ts(&[0.1, 0.9], DType::F32), Some(&labels(&[9, 10])))?;
    assert_eq!(out.dims(), &[2, 1, 32, 32]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Layers against hand computations.

#[test]
fn unet_group_norm_matches_hand_computation() -> TestResult {
    // 64 channels → 32 groups of 2 channels; 3 spatial positions → 6 values per group.
    let (b, c, s) = (2usize, 64usize, 3usize);
    let x = randn(&[b, c, s], 1, 2.0, DType::F64);
    let w = randn(&[c], 2, 1.0, DType::F64);
    let bias = randn(&[c], 3, 1.0, DType::F64);
    let vb = VarBuilder::from_tensors(
        HashMap::from([
            ("weight".to_string(), w.clone()),
            ("bias".to_string(), bias.clone()),
        ]),
        DType::F64,
        &Device::Cpu,
    );
    let gn = GroupNorm32::new(c, cbs_models::Kernels::Fused, vb)?;
    let xv = vals(&x);
    let (wv, bv) = (vals(&w), vals(&bias));
    let mut want = vec![0.0; xv.len()];
    for bi in 0..b {
        for g in 0..32 {
            let idx: Vec<usize> = (2 * g..2 * g + 2)
                .flat_map(|ci| (0..s).map(move |si| (bi * c + ci) * s + si))
                .collect();
            let mean = idx.iter().map(|&i| xv[i]).sum::<f64>() / idx.len() as f64;
            let var = idx.iter().map(|&i| (xv[i] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
            for &i in &idx {
                let ci = (i / s) % c;
                want[i] = (xv[i] - mean) / (var + 1e-5).sqrt() * wv[ci] + bv[ci];
            }
        }
    }
    let want = Tensor::from_vec(want, (b, c, s), &Device::Cpu)?;
    let got = gn.forward(&x)?;
    assert!(max_abs_diff(&got, &want) < 1e-12, "f64 GroupNorm");
    // 4-D input: same values.
    let got4 = gn.forward(&x.reshape((b, c, s, 1))?)?.reshape((b, c, s))?;
    assert!(max_abs_diff(&got4, &want) < 1e-12);
    Ok(())
}

/// The attention block against plain loops over the reference's legacy layout: qkv channels
/// `[head][q | k | v][ch]`, q·k scaled by 1/√ch, softmax over keys, residual through proj_out.
#[test]
fn unet_attention_matches_legacy_qkv_loops() -> TestResult {
    let (b, c, hw, heads) = (2usize, 64usize, 2usize, 2usize);
    let t = hw * hw;
    let ch = c / heads;
    let mut cfg = UnetConfig::mini();
    cfg.num_head_channels = Some(ch);
    let mut map = HashMap::new();
    map.insert("norm.weight".to_string(), randn(&[c], 1, 0.5, DType::F64));
    map.insert("norm.bias".to_string(), randn(&[c], 2, 0.5, DType::F64));
    map.insert(
        "qkv.weight".to_string(),
        randn(&[3 * c, c, 1], 3, 0.3, DType::F64),
    );
    map.insert("qkv.bias".to_string(), randn(&[3 * c], 4, 0.3, DType::F64));
    map.insert(
        "proj_out.weight".to_string(),
        randn(&[c, c, 1], 5, 0.3, DType::F64),
    );
    map.insert("proj_out.bias".to_string(), randn(&[c], 6, 0.3, DType::F64));
    let vb = VarBuilder::from_tensors(map.clone(), DType::F64, &Device::Cpu);
    let block = AttentionBlock::new(&cfg, c, vb)?;
    let x = randn(&[b, c, hw, hw], 7, 1.0, DType::F64);
    let got = vals(&block.forward(&x)?);

    let norm = GroupNorm32::new(
        c,
        cbs_models::Kernels::Fused,
        VarBuilder::from_tensors(
            HashMap::from([
                ("weight".to_string(), map["norm.weight"].clone()),
                ("bias".to_string(), map["norm.bias"].clone()),
            ]),
            DType::F64,
            &Device::Cpu,
        ),
    )?;
    let xn = vals(&norm.forward(&x.reshape((b, c, t))?)?); // checked by its own test
    let xv = vals(&x);
    let (wq, bq) = (vals(&map["qkv.weight"]), vals(&map["qkv.bias"]));
    let (wp, bp) = (vals(&map["proj_out.weight"]), vals(&map["proj_out.bias"]));
    let mut want = vec![0.0; b * c * t];
    for bi in 0..b {
        // qkv[o][s] = Σ_i W[o, i] xn[i, s] + b[o]
        let qkv: Vec<Vec<f64>> = (0..3 * c)
            .map(|o| {
                (0..t)
                    .map(|s| {
                        (0..c)
                            .map(|i| wq[o * c + i] * xn[(bi * c + i) * t + s])
                            .sum::<f64>()
                            + bq[o]
                    })
                    .collect()
            })
            .collect();
        let mut a = vec![vec![0.0; t]; c]; // [C, T]
        for hd in 0..heads {
            let base = hd * 3 * ch;
            for tq in 0..t {
                let logits: Vec<f64> = (0..t)
                    .map(|tk| {
                        (0..ch)
                            .map(|k| qkv[base + k][tq] * qkv[base + ch + k][tk])
                            .sum::<f64>()
                            / (ch as f64).sqrt()
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for k in 0..ch {
                    a[hd * ch + k][tq] = (0..t)
                        .map(|tk| e[tk] / z * qkv[base + 2 * ch + k][tk])
                        .sum();
                }
            }
        }
        for o in 0..c {
            for s in 0..t {
                let p: f64 = (0..c).map(|i| wp[o * c + i] * a[i][s]).sum::<f64>() + bp[o];
                want[(bi * c + o) * t + s] = xv[(bi * c + o) * t + s] + p;
            }
        }
    }
    let err = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-12, "attention vs loops: {err:e}");
    Ok(())
}

#[test]
fn unet_timestep_embedding_is_cos_then_sin() -> TestResult {
    let t = ts(&[0.0, 0.37, 1.0], DType::F64);
    for dim in [8usize, 9] {
        let e = timestep_embedding(&t, dim)?;
        assert_eq!(e.dims(), &[3, dim]);
        let ev = vals(&e);
        let half = dim / 2;
        for (bi, tv) in [0.0, 0.37, 1.0].iter().enumerate() {
            for k in 0..half {
                let f = (-(10000f64.ln()) * k as f64 / half as f64).exp();
                assert!((ev[bi * dim + k] - (tv * f).cos()).abs() < 1e-12);
                assert!((ev[bi * dim + half + k] - (tv * f).sin()).abs() < 1e-12);
            }
            if dim % 2 == 1 {
                assert_eq!(ev[bi * dim + dim - 1], 0.0);
            }
        }
    }
    Ok(())
}

#[test]
fn unet_nearest_upsampling_and_its_gradient() -> TestResult {
    let x = Var::from_tensor(&randn(&[2, 3, 4, 5], 1, 1.0, DType::F64))?;
    let up = upsample_nearest_2x(x.as_tensor())?;
    assert_eq!(vals(&up), vals(&x.as_tensor().upsample_nearest2d(8, 10)?));
    // x is used twice: the gradient must be the sum of both paths (4 copies + 1).
    let loss = (up.sum_all()? + x.as_tensor().sum_all()?)?;
    let g = loss.backward()?;
    assert!(vals(g.get(x.as_tensor()).unwrap())
        .iter()
        .all(|&v| v == 5.0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Configuration.

#[test]
fn unet_presets_and_validation() -> TestResult {
    assert_eq!(UnetConfig::preset_names(), vec!["unet-cifar", "unet-mini"]);
    for name in UnetConfig::preset_names() {
        UnetConfig::preset(&name)?.validate()?;
    }
    let cifar = UnetConfig::preset("unet-cifar")?;
    assert_eq!(cifar, UnetConfig::cifar());
    assert_eq!(cifar.attention_ds(), vec![2]);
    assert_eq!(cifar.heads_for(256), 4);
    assert_eq!(cifar.time_embed_dim(), 512);
    assert!(!cifar.use_scale_shift_norm, "torchcfm's wrapper default");
    assert!(matches!(
        UnetConfig::preset("unet-huge"),
        Err(ModelError::UnknownPreset { .. })
    ));
    let invalid = |f: &dyn Fn(&mut UnetConfig), what: &str| {
        let mut c = UnetConfig::cifar();
        f(&mut c);
        match c.validate() {
            Err(ModelError::Invalid(m)) => assert!(m.contains(what), "`{m}` lacks `{what}`"),
            other => panic!("expected an invalid config ({what}), got {other:?}"),
        }
    };
    invalid(&|c| c.resblock_updown = true, "resblock_updown");
    invalid(
        &|c| c.use_new_attention_order = true,
        "use_new_attention_order",
    );
    invalid(&|c| c.conv_resample = false, "conv_resample");
    invalid(&|c| c.image_size = 28, "image_size"); // 28 is not a multiple of 8
    invalid(
        &|c| c.attention_resolutions = vec![12],
        "attention resolution 12",
    );
    invalid(
        &|c| c.attention_resolutions = vec![64],
        "attention resolution 64",
    );
    invalid(&|c| c.model_channels = 48, "GroupNorm");
    invalid(&|c| c.num_head_channels = Some(96), "num_head_channels");
    invalid(
        &|c| {
            c.num_head_channels = None;
            c.num_heads = 3
        },
        "num_heads",
    );
    invalid(&|c| c.dropout = 1.0, "dropout");
    invalid(&|c| c.class_dropout_prob = -0.1, "class_dropout_prob");
    invalid(&|c| c.channel_mult = vec![], "channel_mult");
    // The caller's data overrides: 32 px, 1 channel, 10 classes.
    let mut c = UnetConfig::cifar();
    c.in_channels = 1;
    c.num_classes = 10;
    c.validate()?;
    assert_eq!(c.label_rows(), 11);
    assert_eq!(c.null_class(), Some(10));
    assert_eq!(c.out_channels(), 1);
    Ok(())
}

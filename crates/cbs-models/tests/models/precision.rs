//! Mixed precision on the CPU: every backbone computing in f16 (the CPU's stand-in for bf16,
//! which candle's CPU backend cannot convolve) and, where the backbone has no convolution, in
//! bf16 — against the same weights in f32: outputs in the caller's dtype, close to f32, and
//! f32 gradients for every f32 variable, close to the f32 gradients.

use candle_core::{DType, Device, Tensor};
use cbs_models::{Architecture, Kernels, ModelSpec, Trainable};

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// The velocity and every variable's gradient.
type Outputs = (Tensor, Vec<(String, Tensor)>);

fn arch(preset: &str) -> Architecture {
    let sample: Vec<usize> = if preset.starts_with("mlp-") {
        vec![2]
    } else {
        vec![3, 16, 16]
    };
    ModelSpec::new(preset).resolve(&sample, 10).unwrap()
}

fn norm(t: &Tensor) -> f64 {
    let t = t.to_dtype(DType::F64).unwrap();
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// `‖a − b‖ / ‖b‖`.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap();
    (d.to_scalar::<f64>().unwrap() / n.to_scalar::<f64>().unwrap()).sqrt()
}

/// Loss `Σ v·c` of the network's velocity at a fixed input; its value, the velocity and the
/// gradient of every variable.
fn run(tr: &Trainable, dtype: DType) -> Result<Outputs, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let shape: Vec<usize> = std::iter::once(3).chain(tr.arch.sample_shape()).collect();
    let n: usize = shape.iter().product();
    // A fixed, noise-like input (the same for every dtype).
    let x = (Tensor::arange(0u32, n as u32, &dev)?
        .to_dtype(DType::F32)?
        .affine(0.737, 0.1)?
        .sin()?
        * 1.5)?
        .reshape(shape.as_slice())?;
    let t = Tensor::new(&[0.1f32, 0.5, 0.8], &dev)?;
    let y = Tensor::new(&[0u32, 3, 9], &dev)?;
    let cast;
    let model = if dtype == DType::F32 {
        &tr.model
    } else {
        cast = tr.cast_model(dtype)?;
        &cast
    };
    let v = model.forward(&x, &t, &y)?;
    assert_eq!(
        v.dtype(),
        DType::F32,
        "the velocity comes back in the input's dtype"
    );
    let c = v.ones_like()?.cumsum(v.rank() - 1)?.cos()?;
    let grads = (&v * &c)?.sum_all()?.backward()?;
    let g = tr
        .named_vars()
        .into_iter()
        .map(|(name, var)| {
            let g = grads
                .get(&var)
                .cloned()
                .unwrap_or_else(|| panic!("no gradient for `{name}`"));
            assert_eq!(
                g.dtype(),
                DType::F32,
                "`{name}`: f32 gradient of an f32 variable"
            );
            (name, g)
        })
        .collect();
    Ok((v, g))
}

fn check(preset: &str, half: DType, tol: f64) -> TestResult {
    let a = arch(preset);
    let tr = Trainable::new(&a, Kernels::Fused, 0, DType::F32, &Device::Cpu)?;
    cbs_models::common::init::init_all_random(&tr.named_vars(), 1, 0.05)?;
    let (v32, g32) = run(&tr, DType::F32)?;
    let (vh, gh) = run(&tr, half)?;
    let e = rel(&vh, &v32);
    assert!(
        e < tol,
        "{preset} {half:?}: velocity rel err {e:.2e} ≥ {tol:.0e}"
    );
    assert!(
        e > 0.0,
        "{preset} {half:?}: identical to f32: the half path did not run"
    );
    // Per-tensor relative error, with gradients far below the typical one measured on the
    // typical scale: f16 has no loss scaling, and values near its subnormal range (≈6e-8) keep
    // few bits (JiT's qk-norm weights at init get gradients ~1e-7).
    let norms: Vec<f64> = g32.iter().map(|(_, g)| norm(g)).collect();
    let floor = 1e-2 * norms.iter().sum::<f64>() / norms.len() as f64;
    assert!(floor > 0.0, "{preset}: no gradient at all");
    let mut worst = (0.0f64, String::new());
    for (((name, a), (_, b)), n) in gh.iter().zip(&g32).zip(&norms) {
        let e = rel(a, b) * n / n.max(floor);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    // The whole gradient (the update direction) tracks f32 to the tolerance; single tensors
    // to a looser bound that still catches a missing or mis-cast gradient (error ≈ 1): half
    // precision reductions over many elements (a convolution's bias gradient sums B·H·W
    // values; candle's CPU backend accumulates f16 sums in f16) lose a few more bits.
    let (mut d2, mut n2) = (0.0, 0.0);
    for ((_, a), (_, b)) in gh.iter().zip(&g32) {
        let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
        d2 += norm(&diff).powi(2);
        n2 += norm(b).powi(2);
    }
    let global = (d2 / n2).sqrt();
    assert!(
        global < tol,
        "{preset} {half:?}: whole-gradient rel err {global:.2e}"
    );
    assert!(
        worst.0 < 0.25,
        "{preset} {half:?}: gradient of `{}` rel err {:.2e}",
        worst.1,
        worst.0
    );
    Ok(())
}

#[test]
fn f16_forward_and_gradients_track_f32() -> TestResult {
    for preset in ["sit-nano-4", "jit-nano-4", "unet-mini", "mlp-64"] {
        check(preset, DType::F16, 2e-2)?;
    }
    Ok(())
}

#[test]
fn bf16_forward_and_gradients_track_f32() -> TestResult {
    // No convolutions in these (patch embeddings are linear layers): bf16 runs on the CPU.
    for preset in ["sit-nano-4", "jit-nano-4", "mlp-64"] {
        check(preset, DType::BF16, 6e-2)?;
    }
    Ok(())
}

#[test]
fn cast_model_keeps_the_f32_variables() -> TestResult {
    let a = arch("sit-nano-4");
    let tr = Trainable::new(&a, Kernels::Fused, 0, DType::F32, &Device::Cpu)?;
    let cast = tr.cast_model(DType::BF16)?;
    assert_eq!(cast.dtype(), DType::BF16);
    assert_eq!(tr.model.dtype(), DType::F32);
    for (name, v) in tr.named_vars() {
        assert_eq!(v.dtype(), DType::F32, "`{name}`");
    }
    Ok(())
}

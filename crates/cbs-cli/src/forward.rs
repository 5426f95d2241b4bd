//! `cbs forward`: one evaluation of a network on given inputs, written as safetensors.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::cli::ForwardArgs;

pub fn forward(a: ForwardArgs) -> Result<()> {
    let dev = a.device.open()?;
    let checkpoint = match (&a.checkpoint, &a.vae) {
        (_, Some(vae)) => return crate::vae::forward(vae, &a.inputs, &a.out, &dev),
        (Some(c), None) => c,
        (None, None) => bail!("give --checkpoint (a network) or --vae (an SD VAE)"),
    };
    let spec = a.torch.spec();
    let (loaded, entry) = cbs_run::torch_checkpoint::load_any(
        checkpoint,
        a.weights,
        spec.as_ref(),
        a.precision,
        &dev,
    )?;
    if let Some(e) = &entry {
        eprintln!("{}: PyTorch file, entry `{e}`", checkpoint.display());
    }
    let arch = &loaded.architecture;
    let tensors = candle_core::safetensors::load(&a.inputs, &Device::Cpu).with_context(|| {
        format!(
            "{}: expected a safetensors file with x, t (and y)",
            a.inputs.display()
        )
    })?;
    let p = &a.inputs;
    let Some(x) = tensors.get("x").cloned() else {
        bail!("{}: no tensor `x` (the noisy sample)", p.display());
    };
    let Some(t) = tensors.get("t").cloned() else {
        bail!("{}: no tensor `t` (times, [B])", p.display());
    };
    let shape = arch.sample_shape();
    let b = x.dim(0)?;
    if x.dims()[1..] != shape[..] || !x.dtype().is_float() {
        bail!(
            "{}: `x` is {:?} {:?}; this model takes float [B, {}]",
            p.display(),
            x.dtype(),
            x.dims(),
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if t.dims() != [b] || !t.dtype().is_float() {
        bail!(
            "{}: `t` is {:?} {:?}; expected float [{b}]",
            p.display(),
            t.dtype(),
            t.dims()
        );
    }
    let labels = arch.num_classes() + usize::from(arch.null_class().is_some());
    let y = match tensors.get("y").cloned() {
        Some(_) if arch.num_classes() == 0 => bail!(
            "{}: `y` (labels) given, but the model is unconditional; remove `y`",
            p.display()
        ),
        Some(y) => {
            if y.dims() != [b] || y.dtype().is_float() {
                bail!(
                    "{}: `y` is {:?} {:?}; expected integer [{b}]",
                    p.display(),
                    y.dtype(),
                    y.dims()
                );
            }
            let v: Vec<i64> = y.to_dtype(DType::I64)?.to_vec1()?;
            if let Some(bad) = v.iter().find(|&&l| l < 0 || l as usize >= labels.max(1)) {
                bail!(
                    "{}: label {bad} in `y` is outside 0..{} (the null class is {:?})",
                    p.display(),
                    labels.max(1),
                    arch.null_class()
                );
            }
            Tensor::from_vec(
                v.iter().map(|&l| l as u32).collect::<Vec<_>>(),
                b,
                &Device::Cpu,
            )?
        }
        None => Tensor::full(arch.null_class().unwrap_or(0), b, &Device::Cpu)?,
    };
    let (x, t, y) = (
        x.to_dtype(DType::F32)?.to_device(&dev)?,
        t.to_dtype(DType::F32)?.to_device(&dev)?,
        y.to_device(&dev)?,
    );
    let output = loaded.model.forward_raw(&x, &t, &y)?;
    let velocity = loaded.model.forward(&x, &t, &y)?;
    let out = [
        ("output".to_string(), output.to_device(&Device::Cpu)?),
        ("velocity".to_string(), velocity.to_device(&Device::Cpu)?),
    ];
    cbs_models::weights::save_safetensors(&a.out, &out)?;
    eprintln!(
        "wrote {} (output {:?}, velocity {:?})",
        a.out.display(),
        out[0].1.dims(),
        out[1].1.dims()
    );
    Ok(())
}

//! `cbs bench`: time full training steps or sampling steps of a preset on synthetic data.
//!
//! Data loading is excluded on purpose (one fixed random batch), so the figure is the step
//! itself: forward, backward, AdamW, EMA for `train`; one guided velocity evaluation per step
//! for `sample`. The PyTorch twin in `benches/` times the same work.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use cbs_core::rng::{self, Purpose};
use cbs_flow::VelocityField;
use cbs_models::shapes::parameter_count;
use cbs_models::ModelSpec;
use cbs_train::step::{Batch, PhaseTimes, StepOutcome, Stepper};
use cbs_train::TrainSection;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::cli::{BenchArgs, BenchCommand, BenchCommon, BenchMatmul};

pub fn bench(a: BenchArgs) -> Result<()> {
    match a.command {
        BenchCommand::Train(c) => bench_train(c),
        BenchCommand::Sample(c) => bench_sample(c),
        BenchCommand::Matmul(c) => bench_matmul(c),
    }
}

fn bench_matmul(c: BenchMatmul) -> Result<()> {
    let &[m, k, n] = c.shape.as_slice() else {
        bail!("--shape takes M,K,N");
    };
    if m == 0 || k == 0 || n == 0 || c.steps == 0 {
        bail!("--shape entries and --steps must be positive");
    }
    let dev = Device::Cpu;
    let lhs = if c.lhs_transposed {
        Tensor::randn(0f32, 1.0, (k, m), &dev)?.t()?
    } else {
        Tensor::randn(0f32, 1.0, (m, k), &dev)?
    };
    let rhs = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    let mut ms = Vec::with_capacity(c.steps);
    for i in 0..c.warmup + c.steps {
        let t0 = Instant::now();
        let out = cbs_kernels::product(&lhs, &rhs)?;
        if i >= c.warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        drop(out);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    let threads = cbs_kernels::par::threads();
    println!(
        "bench matmul: [{m}, {k}]·[{k}, {n}] f32 lhs_transposed={} threads={threads}",
        c.lhs_transposed
    );
    println!("gflops={:.1}", 2.0 * (m * k * n) as f64 / median / 1e6);
    println!("median_ms={median:.6}");
    Ok(())
}

fn random_batch(c: &BenchCommon, shape: &[usize], classes: usize, dev: &Device) -> Result<Batch> {
    let mut r = rng::stream(0, Purpose::TrainStep, 0);
    let n: usize = shape.iter().product();
    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| r.sample(StandardNormal)).collect() };
    let x0 = normal(n);
    let x1 = normal(n);
    let t: Vec<f32> = (0..c.batch).map(|_| r.random::<f32>()).collect();
    let y: Vec<u32> = (0..c.batch)
        .map(|_| r.random_range(0..classes.max(1) as u32))
        .collect();
    Ok(Batch {
        x0: Tensor::from_vec(x0, shape, dev)?,
        x1: Tensor::from_vec(x1, shape, dev)?,
        t: Tensor::from_vec(t, c.batch, dev)?,
        y: Tensor::from_vec(y, c.batch, dev)?,
        dropout_seed: 0,
        w: None,
    })
}

fn setup(c: &BenchCommon) -> Result<(cbs_models::Architecture, Vec<usize>, Device)> {
    c.precision.configure_products();
    if c.batch == 0 || c.steps == 0 {
        bail!("--batch and --steps must be positive");
    }
    let dev = c.device.open()?;
    let sample: Vec<usize> = if c.model.starts_with("mlp-") {
        vec![c.dim]
    } else {
        vec![c.in_channels, c.image_size, c.image_size]
    };
    let arch = ModelSpec::new(&c.model).resolve(&sample, c.num_classes)?;
    let shape: Vec<usize> = std::iter::once(c.batch).chain(sample).collect();
    Ok((arch, shape, dev))
}

/// Dense bf16 tensor-core peak of an H100/H200 SXM (FLOP/s), the denominator of MFU.
const PEAK_BF16_FLOPS: f64 = 989e12;

/// `params`: the model's element count, buffers included (as the PyTorch twin prints it, so
/// that the two sides can be checked to build the same network). `flops_per_image`: the
/// matrix-product FLOPs one image costs in this benchmark, when the backbone counts them.
fn report(
    c: &BenchCommon,
    what: &str,
    params: usize,
    mut ms: Vec<f64>,
    images_per_step: usize,
    flops_per_image: Option<f64>,
    dev: &Device,
) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let threads = cbs_kernels::par::threads();
    println!(
        "bench {what}: model={} params={params} batch={} device={} precision={} \
         threads={threads} kernels={} steps={} (after {} warm-up)",
        c.model,
        c.batch,
        c.device.device,
        c.precision,
        c.kernels.name(),
        c.steps,
        c.warmup
    );
    println!(
        "step ms: median {median:.2}, mean {mean:.2}, min {:.2}, max {:.2}",
        ms[0],
        ms[ms.len() - 1]
    );
    println!(
        "images_per_s={:.2}",
        images_per_step as f64 * 1000.0 / median
    );
    if let Some(kb) = peak_rss_kb() {
        println!("peak_rss_mb={:.1}", kb as f64 / 1024.0);
    }
    if let Some(bytes) = peak_device_bytes(dev) {
        println!("peak_device_mb={:.1}", bytes as f64 / (1 << 20) as f64);
    }
    if let Some(f) = flops_per_image {
        let per_s = f * images_per_step as f64 * 1000.0 / median;
        println!("model_tflops_per_s={:.2}", per_s / 1e12);
        // Only meaningful against a GPU's tensor cores.
        if dev.is_cuda() {
            println!("mfu={:.4}", per_s / PEAK_BF16_FLOPS);
        }
    }
    println!("median_step_ms={median:.3}");
}

/// High-water mark of the memory candle's CUDA allocations took from the device's default
/// stream-ordered pool (candle allocates with `cuMemAllocAsync`), in bytes.
#[cfg(feature = "cuda")]
fn peak_device_bytes(dev: &Device) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let Device::Cuda(d) = dev else {
        return None;
    };
    let cu = d.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut high: u64 = 0;
    // SAFETY: two driver queries with out-pointers valid for the duration of each call.
    let ok = unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, cu) == sys::CUresult::CUDA_SUCCESS
            && sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut high as *mut u64).cast(),
            ) == sys::CUresult::CUDA_SUCCESS
    };
    ok.then_some(high)
}

#[cfg(not(feature = "cuda"))]
fn peak_device_bytes(_: &Device) -> Option<u64> {
    None
}

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bench_train(c: BenchCommon) -> Result<()> {
    let (arch, shape, dev) = setup(&c)?;
    let tc = TrainSection {
        lr: 1e-4,
        kernels: c.kernels,
        precision: c.precision,
        activation_checkpointing: c.activation_checkpointing,
        ..Default::default()
    };
    let mut st = Stepper::new(&arch, &tc, &dev)?;
    let batch = random_batch(&c, &shape, arch.num_classes(), &dev)?;
    let mut ms = Vec::with_capacity(c.steps);
    let mut phases = PhaseTimes::default();
    for i in 0..c.warmup + c.steps {
        let t0 = Instant::now();
        let mut step_phases = PhaseTimes::default();
        let out = st.step_pending(&batch, tc.lr, Some(&mut step_phases))?;
        dev.synchronize()?;
        let elapsed = t0.elapsed();
        if let StepOutcome::NonFinite { loss, .. } = out.read()? {
            bail!("loss became {loss} during the benchmark");
        }
        if i >= c.warmup {
            ms.push(elapsed.as_secs_f64() * 1e3);
            phases.forward_ms += step_phases.forward_ms;
            phases.backward_ms += step_phases.backward_ms;
            phases.optimizer_ms += step_phases.optimizer_ms;
            phases.ema_ms += step_phases.ema_ms;
        }
    }
    let n = c.steps as f64;
    println!(
        "phase ms (mean): forward {:.1}, backward {:.1}, grad-norm+AdamW {:.1}, EMA {:.1}",
        phases.forward_ms / n,
        phases.backward_ms / n,
        phases.optimizer_ms / n,
        phases.ema_ms / n
    );
    // Forward plus a backward of twice its products.
    let flops = arch.backbone().forward_flops().map(|f| 3.0 * f);
    report(
        &c,
        "train",
        parameter_count(&arch)?,
        ms,
        c.batch,
        flops,
        &dev,
    );
    Ok(())
}

fn bench_sample(c: BenchCommon) -> Result<()> {
    let (arch, shape, dev) = setup(&c)?;
    let tc = TrainSection {
        kernels: c.kernels,
        ..Default::default()
    };
    let st = Stepper::new(&arch, &tc, &dev)?;
    // Random weights everywhere: the reference init zeroes whole branches, which a timing of
    // matrix products does not care about, but keep the arithmetic realistic anyway.
    cbs_models::common::init::init_all_random(&st.vars, 0, 0.02)?;
    // Plain (untracked) tensors, as `cbs sample` loads a checkpoint: built from variables, the
    // forward would record its graph and keep every activation alive.
    let weights: std::collections::HashMap<String, Tensor> = st
        .net
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.detach()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(weights, c.precision.compute_dtype(), &dev);
    let model = cbs_models::Model::new(&arch, c.kernels, vb)?;
    drop(st);
    let batch = random_batch(&c, &shape, arch.num_classes(), &dev)?;
    let field = cbs_flow::guidance::Guided::new(&model, c.cfg_scale);
    let mut ms = Vec::with_capacity(c.steps);
    for i in 0..c.warmup + c.steps {
        let t0 = Instant::now();
        let v = field.velocity(&batch.x0, &batch.t, Some(&batch.y))?;
        dev.synchronize()?;
        drop(v);
        if i >= c.warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Guidance evaluates each image twice (conditional and unconditional).
    let passes = if c.cfg_scale != 1.0 { 2.0 } else { 1.0 };
    let flops = arch.backbone().forward_flops().map(|f| passes * f);
    report(
        &c,
        "sample",
        parameter_count(&arch)?,
        ms,
        c.batch,
        flops,
        &dev,
    );
    Ok(())
}

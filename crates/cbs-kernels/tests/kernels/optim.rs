//! The per-step parameter passes with their device-side control: the control values against
//! the host rule, a refused step writing nothing, an applied one following the update rule,
//! the squared norm, and the loss kernel's backward reading its upstream gradient as a tensor.

use candle_core::{DType, Device, Tensor, Var};
use cbs_kernels::ops::optim::{
    control_values, fixed_control, step_control, sum_sq, sum_sq_tensor, EmaUpdate, MomentUpdate,
    ParamUpdate, CONTROL_LEN,
};

fn control(loss: f64, sums: &[f64], max_norm: f64) -> Vec<f64> {
    let loss = Tensor::new(&[loss as f32], &Device::Cpu).unwrap();
    let sums = Tensor::new(sums, &Device::Cpu).unwrap();
    let c = step_control(&loss, &sums, max_norm).unwrap();
    assert_eq!(c.dims(), [CONTROL_LEN]);
    c.to_vec1::<f64>().unwrap()
}

#[test]
fn step_control_clips_and_refuses_as_the_host_rule() {
    // ‖g‖ = √(9 + 16) = 5.
    let c = control(0.25, &[9.0, 16.0], 1.0);
    assert_eq!(c, vec![1.0 / (5.0 + 1e-6), 1.0, 5.0]);
    assert_eq!(control(0.25, &[9.0, 16.0], 10.0), vec![1.0, 1.0, 5.0]);
    // No clipping configured: never scaled, however large the norm.
    assert_eq!(control(0.25, &[9e10, 16e10], 0.0), vec![1.0, 1.0, 5e5]);
    // A non-finite loss or norm: not applied.
    for (loss, sums) in [
        (f64::NAN, vec![1.0]),
        (f64::INFINITY, vec![1.0]),
        (0.5, vec![1.0, f64::INFINITY]),
        (0.5, vec![f64::NAN, 1.0]),
    ] {
        let c = control(loss, &sums, 1.0);
        assert_eq!(c[1], 0.0, "loss {loss}, sums {sums:?}: {c:?}");
    }
    // The kernel and the shared scalar rule agree bit for bit.
    let sums = [0.1, 2.5, 1e-7, 3.25];
    let want = control_values(0.5f32 as f64, sums, 1.5);
    assert_eq!(control(0.5, &sums, 1.5), want.to_vec());
}

#[test]
fn squared_norm_on_the_device_equals_the_host_sum() {
    let v: Vec<f32> = (0..100_003)
        .map(|i| ((i % 97) as f32 - 48.0) / 7.0)
        .collect();
    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    let want: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let got = sum_sq_tensor(&t).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert_eq!(got.dims(), [1]);
    let got = got.to_vec1::<f64>().unwrap()[0];
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    assert_eq!(sum_sq(&t).unwrap(), got);
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Moments, weights and EMA of one 1000-element parameter after one pass with `ctrl`.
fn passes(ctrl: &Tensor) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let n = 1000;
    let g: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let p: Vec<f32> = (0..n)
        .map(|i| ((i * 11 % 53) as f32 - 26.0) / 13.0)
        .collect();
    let mv: Vec<f32> = (0..2 * n).map(|i| (i % 17) as f32 / 170.0).collect();
    let g = Tensor::new(g.as_slice(), &dev).unwrap();
    let p = Var::new(p.as_slice(), &dev).unwrap();
    let mv = Var::new(mv.as_slice(), &dev).unwrap();
    let e = Var::new(vec![0.5f32; n].as_slice(), &dev).unwrap();
    mv.inplace_op3(
        &g,
        ctrl,
        &MomentUpdate {
            beta1: 0.9,
            beta2: 0.999,
        },
    )
    .unwrap();
    p.inplace_op3(
        &mv,
        ctrl,
        &ParamUpdate {
            decay: 1.0 - 1e-3 * 0.01,
            step_size: 1e-3 / 0.1,
            bc2_sqrt: 0.001f64.sqrt(),
            eps: 1e-8,
        },
    )
    .unwrap();
    e.inplace_op3(&p, ctrl, &EmaUpdate { decay: 0.99 }).unwrap();
    (
        mv.as_tensor().copy().unwrap(),
        p.as_tensor().copy().unwrap(),
        e.as_tensor().copy().unwrap(),
    )
}

#[test]
fn a_refused_step_writes_nothing_and_an_applied_one_scales_its_gradient() {
    let dev = Device::Cpu;
    let refused = Tensor::new(&[0.5f64, 0.0, 7.0], &dev).unwrap();
    let untouched = passes(&Tensor::new(&[1.0f64, 0.0, 0.0], &dev).unwrap());
    let (mv, p, e) = passes(&refused);
    let (mv0, p0, e0) = untouched;
    assert_eq!(f32_bits(&mv), f32_bits(&mv0));
    assert_eq!(f32_bits(&p), f32_bits(&p0));
    assert_eq!(f32_bits(&e), f32_bits(&e0));
    // Applied with scale 0.5: the moments of g/2, exactly as a fixed scale of 0.5 gives, and
    // different from the untouched buffers.
    let (mv_a, p_a, e_a) = passes(&Tensor::new(&[0.5f64, 1.0, 7.0], &dev).unwrap());
    let (mv_f, p_f, e_f) = passes(&fixed_control(0.5, &dev).unwrap());
    assert_eq!(f32_bits(&mv_a), f32_bits(&mv_f));
    assert_eq!(f32_bits(&p_a), f32_bits(&p_f));
    assert_eq!(f32_bits(&e_a), f32_bits(&e_f));
    assert_ne!(f32_bits(&p_a), f32_bits(&p0));
    let (m, m0) = (
        mv_a.to_vec1::<f32>().unwrap(),
        mv0.to_vec1::<f32>().unwrap(),
    );
    let g1 = (37.0 - 50.0) / 25.0; // g[1] = ((1·37 mod 101) − 50) / 25
    let want = 0.9 * f64::from(m0[1]) + 0.1 * 0.5 * g1;
    assert!((f64::from(m[1]) - want).abs() < 1e-6, "{} vs {want}", m[1]);
    // A control tensor of another length is refused.
    let bad = Tensor::new(&[0.5f64, 1.0], &dev).unwrap();
    let v = Var::new(&[1f32, 2.0], &dev).unwrap();
    let e = v
        .inplace_op3(
            &Tensor::new(&[1f32, 2.0], &dev).unwrap(),
            &bad,
            &EmaUpdate { decay: 0.5 },
        )
        .unwrap_err();
    assert!(e.to_string().contains("control tensor"), "{e}");
}

#[test]
fn the_loss_backward_reads_its_upstream_gradient_as_a_tensor() {
    let dev = Device::Cpu;
    let a = Var::new(&[1.0f32, -2.0, 0.5, 4.0], &dev).unwrap();
    let b = Tensor::new(&[0.0f32, 1.0, 0.5, 3.0], &dev).unwrap();
    // d(3·mse)/da = 3·2(a − b)/n.
    let loss = (cbs_kernels::mse(a.as_tensor(), &b).unwrap() * 3.0).unwrap();
    let g = loss.backward().unwrap();
    let da = g.get(&a).unwrap().to_vec1::<f32>().unwrap();
    let want = [1.5f32, -4.5, 0.0, 1.5];
    for (x, w) in da.iter().zip(want) {
        assert!((x - w).abs() < 1e-6, "{da:?} vs {want:?}");
    }
}

//! Sampling: expert switching, reproducibility, labels, noise files, image outputs.

use std::cell::RefCell;

use candle_core::{DType, Device, Result as CResult, Tensor};
use cbs_flow::solver::{uniform_grid, Solver};
use cbs_flow::VelocityField;
use cbs_models::{Kernels, ModelSpec, Trainable};
use cbs_sample::experts::ExpertSet;
use cbs_sample::{generate, images, labels_for, SampleOptions, SampleShape};

fn mlp() -> Trainable {
    let arch = ModelSpec::new("mlp-64").resolve(&[2], 0).unwrap();
    Trainable::new(&arch, Kernels::Fused, 3, DType::F32, &Device::Cpu).unwrap()
}

fn opts(num: usize, grid: Vec<f64>, batch: usize) -> SampleOptions {
    SampleOptions {
        num,
        grid,
        solver: Solver::Heun,
        seed: 11,
        labels: None,
        noise: None,
        batch,
        tolerances: Default::default(),
        sde: None,
    }
}

fn points() -> SampleShape {
    SampleShape {
        dims: vec![2],
        num_classes: 0,
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Wraps a field and records every time it is called at.
struct Recording<'a> {
    inner: &'a dyn VelocityField,
    seen: RefCell<Vec<f64>>,
}
impl VelocityField for Recording<'_> {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> CResult<Tensor> {
        let ts = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.seen.borrow_mut().extend(ts);
        self.inner.velocity(x, t, y)
    }
}

#[test]
fn identical_experts_sample_bit_identically_to_the_single_model() {
    let net = mlp();
    let set = ExpertSet::new(&[0.3, 0.71], vec![&net.model, &net.model, &net.model]).unwrap();
    let (grid, owner) = set.plan(20);
    let o = opts(37, grid.clone(), 16);
    let single: &dyn VelocityField = &net.model;
    let (a, _) = generate(&|_| single, &points(), &o, &Device::Cpu, &mut |_, _| {}).unwrap();
    let fields: Vec<&dyn VelocityField> = set
        .experts
        .iter()
        .map(|m| *m as &dyn VelocityField)
        .collect();
    let (b, _) = generate(
        &|i| fields[owner[i]],
        &points(),
        &o,
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn each_expert_is_only_called_inside_its_interval() {
    let net = mlp();
    let knots = [0.4, 0.77];
    let rec: Vec<Recording> = (0..3)
        .map(|_| Recording {
            inner: &net.model,
            seen: RefCell::new(vec![]),
        })
        .collect();
    let set = ExpertSet::new(&knots, rec.iter().collect::<Vec<_>>()).unwrap();
    for solver in [Solver::Euler, Solver::Heun] {
        let (grid, owner) = set.plan(17);
        let mut o = opts(5, grid, 5);
        o.solver = solver;
        let fields: Vec<&dyn VelocityField> = set
            .experts
            .iter()
            .map(|r| *r as &dyn VelocityField)
            .collect();
        generate(
            &|i| fields[owner[i]],
            &points(),
            &o,
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap();
    }
    let edges = [0.0, 0.4, 0.77, 1.0];
    for (i, r) in rec.iter().enumerate() {
        let seen = r.seen.borrow();
        assert!(!seen.is_empty(), "expert {i} never called");
        for &t in seen.iter() {
            // f32 times: allow the rounding of the knot itself.
            assert!(
                t >= edges[i] - 1e-6 && t <= edges[i + 1] + 1e-6,
                "expert {i} called at t = {t}, outside [{}, {}]",
                edges[i],
                edges[i + 1]
            );
        }
    }
}

#[test]
fn expert_set_rejects_bad_knots_and_counts() {
    let net = mlp();
    assert!(ExpertSet::new(&[0.5], vec![&net.model]).is_err());
    assert!(ExpertSet::new(&[0.6, 0.4], vec![&net.model; 3]).is_err());
    assert!(ExpertSet::new(&[1.0], vec![&net.model; 2]).is_err());
}

#[test]
fn same_seed_same_samples_whatever_the_batch_size() {
    let net = mlp();
    let f: &dyn VelocityField = &net.model;
    let run = |batch, seed| {
        let mut o = opts(23, uniform_grid(8), batch);
        o.seed = seed;
        generate(&|_| f, &points(), &o, &Device::Cpu, &mut |_, _| {})
            .unwrap()
            .0
    };
    // Same settings: bit-identical. Another batch size: the same noise, so the same samples up
    // to the rounding of differently blocked matrix products.
    assert_eq!(bits(&run(23, 1)), bits(&run(23, 1)));
    let d = (run(23, 1) - run(4, 1))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    assert_ne!(bits(&run(23, 1)), bits(&run(23, 2)));
}

#[test]
fn labels_cycle_and_are_range_checked() {
    let shape = SampleShape {
        dims: vec![1, 4, 4],
        num_classes: 3,
    };
    let mut o = opts(7, uniform_grid(2), 7);
    assert_eq!(
        labels_for(&o, &shape).unwrap().unwrap(),
        vec![0, 1, 2, 0, 1, 2, 0]
    );
    o.labels = Some(vec![2, 1]);
    assert_eq!(
        labels_for(&o, &shape).unwrap().unwrap(),
        vec![2, 1, 2, 1, 2, 1, 2]
    );
    o.labels = Some(vec![3]);
    let e = labels_for(&o, &shape).unwrap_err().to_string();
    assert!(e.contains("label 3") && e.contains("3 classes"), "{e}");
    assert!(labels_for(&o, &points()).unwrap().is_none());
}

#[test]
fn uint8_conversion_matches_the_reference_formula() {
    let x = Tensor::new(&[-1.5f32, -1.0, 0.0, 0.5, 1.0, 2.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 3))
        .unwrap();
    let (b, dims) = images::to_uint8_nhwc(&x).unwrap();
    // clamp(127.5·x + 128, 0, 255), truncated.
    assert_eq!(b, vec![0, 0, 128, 191, 255, 255]);
    assert_eq!(dims, [1, 2, 3, 1]);
}

#[test]
fn grid_png_has_the_expected_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 5;
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i| vec![(i * 50) as u8; 4 * 4 * 3])
        .collect();
    let p = tmp.path().join("g.png");
    images::write_grid(&p, &bytes, [n, 4, 4, 3], 3).unwrap();
    let img = image::open(&p).unwrap().to_rgb8();
    // 3 columns, 2 rows, 2-pixel borders.
    assert_eq!((img.width(), img.height()), (3 * 6 + 2, 2 * 6 + 2));
    assert_eq!(img.get_pixel(2 + 6, 2).0, [50, 50, 50]);
    assert_eq!(img.get_pixel(2 + 6, 2 + 6).0, [200, 200, 200]);
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
}

/// A noise file holding NaN or ∞ is refused, naming the position (every sample would be NaN).
#[test]
fn non_finite_noise_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("noise.npy");
    let mut v = vec![0.5f32; 8];
    v[5] = f32::INFINITY;
    Tensor::from_vec(v, (4, 2), &Device::Cpu)
        .unwrap()
        .write_npy(&p)
        .unwrap();
    let e = cbs_sample::read_noise(&p, 4, &points(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite") && e.contains("index 5"), "{e}");
    let ok = dir.path().join("ok.npy");
    Tensor::ones((4, 2), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&ok)
        .unwrap();
    assert!(cbs_sample::read_noise(&ok, 4, &points(), &Device::Cpu).is_ok());
    // A directory or a missing file where the noise belongs: said as such, naming the path.
    let e = cbs_sample::read_noise(dir.path(), 4, &points(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a directory"), "{e}");
    let missing = dir.path().join("missing.npy");
    let e = cbs_sample::read_noise(&missing, 4, &points(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found") && e.contains("missing.npy"), "{e}");
}

/// `v = 1 − x` (elementwise): a field whose SDE noise is visible in the samples.
struct Pull;

impl VelocityField for Pull {
    fn velocity(&self, x: &Tensor, _t: &Tensor, _y: Option<&Tensor>) -> CResult<Tensor> {
        x.affine(-1.0, 1.0)
    }
}

/// Euler–Maruyama sampling: each sample's Brownian noise comes from its own stream, so the
/// batch size changes nothing; the seed changes the samples; without SDE settings it is an
/// error, not an ODE in disguise.
#[test]
fn sde_sampling_is_independent_of_the_batch_size() {
    let shape = points();
    let run = |batch: usize, seed: u64| {
        let mut o = opts(10, uniform_grid(20), batch);
        o.solver = Solver::EulerMaruyama;
        o.seed = seed;
        o.sde = Some(cbs_flow::sde::SdeSettings {
            path: cbs_flow::path::Interpolant::Linear,
            diffusion: cbs_flow::sde::Diffusion::Sigma,
            norm: 1.0,
        });
        generate(
            &|_| &Pull as &dyn VelocityField,
            &shape,
            &o,
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap()
        .0
    };
    let a = run(3, 1);
    assert_eq!(bits(&a), bits(&run(10, 1)));
    assert_ne!(bits(&a), bits(&run(3, 2)));
    // Not the ODE: the same noise integrated without the SDE terms differs.
    let mut o = opts(10, uniform_grid(20), 3);
    o.solver = Solver::Euler;
    o.seed = 1;
    assert_ne!(
        bits(&a),
        bits(
            &generate(
                &|_| &Pull as &dyn VelocityField,
                &shape,
                &o,
                &Device::Cpu,
                &mut |_, _| {}
            )
            .unwrap()
            .0
        )
    );
    o.solver = Solver::EulerMaruyama;
    assert!(generate(
        &|_| &Pull as &dyn VelocityField,
        &shape,
        &o,
        &Device::Cpu,
        &mut |_, _| {}
    )
    .is_err());
}

/// A data set of `n` 3×16×16 images that fails (once armed) on any batch reaching
/// `fail_from`, and counts the images it served.
struct Flaky {
    n: usize,
    fail_from: Option<usize>,
    served: std::sync::atomic::AtomicUsize,
}

impl cbs_data::Dataset for Flaky {
    fn len(&self) -> usize {
        self.n
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![3, 16, 16]
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn batch(&self, idx: &[usize], flips: &[bool]) -> cbs_data::Result<(Vec<f32>, Vec<u32>)> {
        if let Some(f) = self.fail_from {
            if idx.iter().any(|&i| i >= f) {
                return Err(cbs_data::DataError::Invalid {
                    field: "test",
                    reason: "simulated failure".into(),
                });
            }
        }
        self.served
            .fetch_add(idx.len(), std::sync::atomic::Ordering::SeqCst);
        let mut v = Vec::with_capacity(idx.len() * 768);
        for (&i, &flip) in idx.iter().zip(flips) {
            for k in 0..768 {
                let x = k % 16;
                let x = if flip { 15 - x } else { x };
                v.push(((i * 7 + x * 3 + k / 16) % 50) as f32 / 25.0 - 1.0);
            }
        }
        Ok((v, idx.iter().map(|&i| (i % 4) as u32).collect()))
    }
}

/// An encoding stopped by a failure keeps its finished shards; the same command continues
/// from them, encodes only the rest, and writes the file an uninterrupted run writes.
#[test]
fn encode_latents_resumes_from_finished_shards() {
    use cbs_sample::vae::{encode_dataset, EncodeOptions, PosteriorDraw, SHARD_IMAGES};
    let vae_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cbs-models/tests/fixtures/vae-tiny/vae");
    let vae = cbs_models::vae::AutoencoderKl::load(&vae_dir, &Device::Cpu, Kernels::Fused).unwrap();
    let n = SHARD_IMAGES + 40;
    let opts = EncodeOptions {
        batch: 256,
        draw: PosteriorDraw::Sample,
        seed: 3,
        flips: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    let whole = Flaky {
        n,
        fail_from: None,
        served: Default::default(),
    };
    encode_dataset(&vae, &whole, &a, &opts, "s", &Device::Cpu, &mut |_, _| {}).unwrap();
    // Fails in the second shard of the first pass.
    let broken = Flaky {
        n,
        fail_from: Some(SHARD_IMAGES + 10),
        served: Default::default(),
    };
    assert!(encode_dataset(&vae, &broken, &b, &opts, "s", &Device::Cpu, &mut |_, _| {}).is_err());
    assert!(!b.exists() && cbs_sample::vae::parts_dir(&b).is_dir());
    // Other settings are refused; the same ones resume.
    let other = encode_dataset(&vae, &whole, &b, &opts, "t", &Device::Cpu, &mut |_, _| {});
    assert!(other.unwrap_err().to_string().contains("another encoding"));
    let rest = Flaky {
        n,
        fail_from: None,
        served: Default::default(),
    };
    encode_dataset(&vae, &rest, &b, &opts, "s", &Device::Cpu, &mut |_, _| {}).unwrap();
    assert_eq!(
        rest.served.load(std::sync::atomic::Ordering::SeqCst),
        2 * n - SHARD_IMAGES,
        "the finished shard is not encoded again"
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!cbs_sample::vae::parts_dir(&b).exists());
}

mod velocity_error {
    use candle_core::{DType, Device, Result as CResult, Tensor};
    use cbs_flow::path::Interpolant;
    use cbs_flow::VelocityField;
    use cbs_sample::velocity_error::{
        midpoint_times, segment_means, velocity_error, ErrorGrid, Reference,
    };
    use cbs_split::gmm::{GmmOracle, GmmSpec};

    fn oracle(path: Interpolant) -> GmmOracle {
        let spec = GmmSpec::new(
            vec![vec![2.0, 0.0], vec![-1.0, 1.5], vec![0.0, -2.0]],
            vec![0.3, 0.5, 0.2],
            vec![1.0, 2.0, 1.0],
        );
        GmmOracle::new(spec).unwrap().with_path(path)
    }

    /// The oracle plus a constant offset `c` in every coordinate.
    struct Shifted<'a>(&'a GmmOracle, f64);
    impl VelocityField for Shifted<'_> {
        fn velocity(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> CResult<Tensor> {
            self.0.velocity(x, t, y)? + self.1
        }
    }

    fn data(o: &GmmOracle, n: usize) -> Tensor {
        Tensor::from_vec(o.sample(n, 5), (n, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_exact_field_has_zero_error_and_an_offset_its_square() {
        for path in [Interpolant::Linear, Interpolant::Gvp] {
            let o = oracle(path);
            let x = data(&o, 300);
            let times = midpoint_times(5);
            let grid = ErrorGrid {
                data: &x,
                labels: None,
                path,
                times: &times,
                seed: 3,
                batch: 64,
            };
            let exact = Reference::Field(&o);
            let zero = velocity_error(&|_| &o, &exact, &grid, &mut |_, _| {}).unwrap();
            assert!(zero.iter().all(|&e| e == 0.0), "{zero:?}");
            let shifted = Shifted(&o, 0.25);
            let e = velocity_error(&|_| &shifted, &exact, &grid, &mut |_, _| {}).unwrap();
            for v in e {
                assert!((v - 0.0625).abs() < 1e-12, "{v}");
            }
        }
    }

    /// Against the conditional target, the exact field's error is the Bayes floor (computed
    /// independently, in closed form given x_t, by the oracle).
    #[test]
    fn the_exact_fields_conditional_error_is_the_bayes_floor() {
        for path in [Interpolant::Linear, Interpolant::Vp] {
            let o = oracle(path);
            let x = data(&o, 6000);
            let times = [0.2, 0.5, 0.8, 0.95];
            let grid = ErrorGrid {
                data: &x,
                labels: None,
                path,
                times: &times,
                seed: 9,
                batch: 1000,
            };
            let e =
                velocity_error(&|_| &o, &Reference::Conditional, &grid, &mut |_, _| {}).unwrap();
            for (&t, &v) in times.iter().zip(&e) {
                let floor = o.bayes_floor(t, 6000, 1).unwrap();
                assert!(
                    (v - floor).abs() < 0.06 * floor + 1e-3,
                    "{path} t = {t}: error {v}, floor {floor}"
                );
            }
        }
    }

    /// The noise of image i at time j does not depend on the batch size, and the owner of each
    /// time is asked for that time.
    #[test]
    fn batch_size_changes_nothing_and_each_time_goes_to_its_owner() {
        let o = oracle(Interpolant::Linear);
        let x = data(&o, 50).to_dtype(DType::F32).unwrap();
        let times = midpoint_times(4);
        let run = |batch: usize, off: f64| {
            let grid = ErrorGrid {
                data: &x,
                labels: None,
                path: Interpolant::Linear,
                times: &times,
                seed: 1,
                batch,
            };
            let a = Shifted(&o, 0.0);
            let b = Shifted(&o, off);
            let owner = |t: f64| -> &dyn VelocityField {
                if t < 0.5 {
                    &a
                } else {
                    &b
                }
            };
            velocity_error(&owner, &Reference::Conditional, &grid, &mut |_, _| {}).unwrap()
        };
        let (one, many) = (run(7, 0.0), run(50, 0.0));
        for (a, b) in one.iter().zip(&many) {
            assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
        let shifted = run(16, 1.0);
        assert!((shifted[0] - one[0]).abs() < 1e-9 && (shifted[1] - one[1]).abs() < 1e-9);
        assert!(shifted[2] > one[2] + 0.5 && shifted[3] > one[3] + 0.5);
        let seg = segment_means(&times, &one, &[0.0, 0.5, 1.0]);
        assert!((seg[0] - (one[0] + one[1]) / 2.0).abs() < 1e-12);
        assert!((seg[1] - (one[2] + one[3]) / 2.0).abs() < 1e-12);
    }
}

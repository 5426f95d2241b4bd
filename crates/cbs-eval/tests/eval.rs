mod inception_tests {
    //! Tests of the FID Inception network and its preprocessing: the resize against hand-computed
    //! PyTorch values, the pooling variants against naive loops, the weight readers (safetensors,
    //! legacy `.pth` written byte by byte here) and a full forward pass with random weights.

    use std::collections::HashMap;

    use candle_core::{DType, Device, IndexOp, Tensor};
    use cbs_eval::inception::{self, InceptionV3};
    use cbs_eval::preprocess;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    /// Naive per-pixel PyTorch bilinear interpolation (`align_corners=False`), written from the
    /// formula independently of the library's matrix form.
    fn naive_bilinear(
        img: &[f32],
        ih: usize,
        iw: usize,
        oh: usize,
        ow: usize,
        y: usize,
        x: usize,
    ) -> f32 {
        let coord = |d: usize, i: usize, o: usize| -> (usize, usize, f32) {
            let s = ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(i - 1);
            (i0, i1, (s - i0 as f64) as f32)
        };
        let (y0, y1, ly) = coord(y, ih, oh);
        let (x0, x1, lx) = coord(x, iw, ow);
        let p = |yy: usize, xx: usize| img[yy * iw + xx];
        (1.0 - ly) * ((1.0 - lx) * p(y0, x0) + lx * p(y0, x1))
            + ly * ((1.0 - lx) * p(y1, x0) + lx * p(y1, x1))
    }

    fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / ((1u64 << 24) as f32)
            })
            .collect()
    }

    #[test]
    fn resize_2x2_to_3x3_matches_pytorch_by_hand() {
        // in 2 → out 3: sources (0.5·2/3 − 0.5 → clamped 0), 0.5, 1.1667 (both taps on index 1):
        // rows/cols [x0, (x0 + x1)/2, x1].
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = preprocess::resize_bilinear(&x, 3, 3).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let want = [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w, 1e-6), "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn resize_4x4_to_299_matches_formula_at_pixels() {
        let img: Vec<f32> = (0..16).map(|i| (i * i % 7) as f32 / 7.0).collect();
        let x = Tensor::from_vec(img.clone(), (1, 1, 4, 4), &Device::Cpu).unwrap();
        let y = preprocess::resize_bilinear(&x, 299, 299).unwrap();
        let y = y.i((0, 0)).unwrap().to_vec2::<f32>().unwrap();
        for &(r, c) in &[
            (0, 0),
            (0, 298),
            (298, 0),
            (298, 298),
            (1, 2),
            (37, 37),
            (38, 113),
            (150, 150),
            (261, 262),
        ] {
            let want = naive_bilinear(&img, 4, 4, 299, 299, r, c);
            assert!(
                close(y[r][c], want, 1e-5),
                "({r},{c}): {} vs {want}",
                y[r][c]
            );
        }
        // Hand-computed: dst 150 → src = 150.5·4/299 − 0.5 = 1.51338…; between rows 1 and 2.
        let s = 150.5f64 * 4.0 / 299.0 - 0.5;
        assert!((s - 1.513_377_9).abs() < 1e-6);
        // Border pixels are clamped copies of the corner.
        assert!(close(y[0][0], img[0], 1e-6));
        assert!(close(y[298][298], img[15], 1e-6));
    }

    #[test]
    fn resize_rectangular_up_and_down_matches_naive() {
        for &(ih, iw, oh, ow) in &[
            (3, 5, 7, 4),
            (8, 6, 3, 11),
            (32, 32, 299, 299),
            (5, 5, 5, 9),
        ] {
            let img = lcg_values(2 * 3 * ih * iw, (ih * 31 + iw) as u64);
            let x = Tensor::from_vec(img.clone(), (2, 3, ih, iw), &Device::Cpu).unwrap();
            let y: Vec<f32> = preprocess::resize_bilinear(&x, oh, ow)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for plane in 0..6 {
                let src = &img[plane * ih * iw..(plane + 1) * ih * iw];
                for r in 0..oh {
                    for c in 0..ow {
                        let got = y[plane * oh * ow + r * ow + c];
                        let want = naive_bilinear(src, ih, iw, oh, ow, r, c);
                        assert!(
                            close(got, want, 1e-5),
                            "{ih}x{iw}->{oh}x{ow} ({r},{c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interpolation_rows_sum_to_one() {
        for &(i, o) in &[(1, 299), (2, 3), (32, 299), (512, 299), (299, 299)] {
            let m = preprocess::interpolation_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
        // 299 → 299 is the identity (PyTorch's resize is then an exact copy).
        let m = preprocess::interpolation_matrix(299, 299);
        assert!((0..299).all(|d| m[d * 299 + d] == 1.0));
    }

    #[test]
    fn inception_input_is_resized_and_scaled() {
        let x = Tensor::full(0.25f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let y = preprocess::to_inception_input(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 299, 299]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&a| (a + 0.5).abs() < 1e-6));
        assert!(preprocess::to_inception_input(
            &Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap()
        )
        .is_err());
    }

    #[test]
    fn u8_nhwc_to_nchw_and_gray_to_rgb() {
        let dev = Device::Cpu;
        // One 1×2 RGB image: pixels (0, 51, 255) and (255, 102, 0).
        let rgb = [0u8, 51, 255, 255, 102, 0];
        let t = preprocess::u8_nhwc_to_f32_nchw(&rgb, 1, 1, 2, 3, &dev).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 1.0, 0.2, 0.4, 1.0, 0.0]);
        // Grayscale is repeated over three channels.
        let g = preprocess::u8_nhwc_to_f32_nchw(&[0u8, 255, 51, 102], 2, 1, 2, 1, &dev).unwrap();
        assert_eq!(g.dims(), &[2, 3, 1, 2]);
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            v,
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.2, 0.4, 0.2, 0.4, 0.2, 0.4]
        );
        assert!(preprocess::u8_nhwc_to_f32_nchw(&[0u8; 5], 1, 1, 2, 3, &dev).is_err());
        assert!(preprocess::u8_nhwc_to_f32_nchw(&[0u8; 4], 1, 1, 2, 2, &dev).is_err());
        let g1 = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev).unwrap();
        assert_eq!(preprocess::gray_to_rgb(&g1).unwrap().dims(), &[1, 3, 4, 4]);
    }

    /// Naive 3×3 / stride 1 / pad 1 pooling over the in-image window (`count_include_pad=False`
    /// average, or max).
    fn naive_pool(v: &[f32], planes: usize, h: usize, w: usize, max: bool) -> Vec<f32> {
        let mut out = vec![0f32; planes * h * w];
        for p in 0..planes {
            for i in 0..h as isize {
                for j in 0..w as isize {
                    let (mut s, mut m, mut n) = (0f32, f32::NEG_INFINITY, 0);
                    for di in -1..=1 {
                        for dj in -1..=1 {
                            let (y, x) = (i + di, j + dj);
                            if y >= 0 && x >= 0 && y < h as isize && x < w as isize {
                                let a = v[p * h * w + y as usize * w + x as usize];
                                s += a;
                                m = m.max(a);
                                n += 1;
                            }
                        }
                    }
                    out[p * h * w + i as usize * w + j as usize] =
                        if max { m } else { s / n as f32 };
                }
            }
        }
        out
    }

    #[test]
    fn pooling_variants_match_naive_loops() {
        for &(h, w) in &[(5, 4), (2, 2), (8, 8), (17, 3)] {
            let v: Vec<f32> = lcg_values(2 * 3 * h * w, (h * 7 + w) as u64)
                .iter()
                .map(|a| a * 4.0 - 2.0)
                .collect();
            let x = Tensor::from_vec(v.clone(), (2, 3, h, w), &Device::Cpu).unwrap();
            let avg: Vec<f32> = inception::avg_pool_3x3_same_exclude_pad(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let max: Vec<f32> = inception::max_pool_3x3_same(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (want_avg, want_max) = (
                naive_pool(&v, 6, h, w, false),
                naive_pool(&v, 6, h, w, true),
            );
            for k in 0..v.len() {
                assert!(
                    close(avg[k], want_avg[k], 1e-5),
                    "avg {h}x{w} at {k}: {} vs {}",
                    avg[k],
                    want_avg[k]
                );
                assert_eq!(max[k], want_max[k], "max {h}x{w} at {k}");
            }
        }
    }

    #[test]
    fn parameter_list_matches_the_torchvision_state_dict() {
        let shapes: HashMap<String, Vec<usize>> =
            inception::parameter_shapes().unwrap().into_iter().collect();
        // 94 BasicConv2d (conv weight + 4 BatchNorm tensors) + fc.weight.
        assert_eq!(shapes.len(), 94 * 5 + 1);
        assert_eq!(shapes["Conv2d_1a_3x3.conv.weight"], vec![32, 3, 3, 3]);
        assert_eq!(shapes["Mixed_5b.branch1x1.bn.running_mean"], vec![64]);
        assert_eq!(
            shapes["Mixed_5b.branch_pool.conv.weight"],
            vec![32, 192, 1, 1]
        );
        assert_eq!(
            shapes["Mixed_6b.branch7x7_2.conv.weight"],
            vec![128, 128, 1, 7]
        );
        assert_eq!(
            shapes["Mixed_6e.branch7x7dbl_4.conv.weight"],
            vec![192, 192, 7, 1]
        );
        assert_eq!(
            shapes["Mixed_7a.branch7x7x3_4.conv.weight"],
            vec![192, 192, 3, 3]
        );
        assert_eq!(
            shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"],
            vec![384, 384, 3, 1]
        );
        assert_eq!(
            shapes["Mixed_7c.branch_pool.conv.weight"],
            vec![192, 2048, 1, 1]
        );
        assert_eq!(shapes["fc.weight"], vec![1008, 2048]);
        let params: usize = shapes
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // torchvision inception_v3 has 27,161,264 parameters; minus the aux head (3,326,696), plus 8
        // more classes (8·2048 + 8): 23,850,960, fc.bias (1008) included.
        assert_eq!(params + 1008, 23_850_960);
    }

    #[test]
    fn missing_weights_file_and_missing_tensor_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pth");
        let err = InceptionV3::load(&missing, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.pth") && err.contains(inception::WEIGHTS_FILE),
            "{err}"
        );

        let mut w = inception::random_weights(3).unwrap();
        let gone = "Mixed_6c.branch7x7dbl_3.bn.running_var";
        assert!(w.remove(gone).is_some());
        let path = dir.path().join("partial.safetensors");
        candle_core::safetensors::save(&w, &path).unwrap();
        let err = InceptionV3::load(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(gone) && err.contains("partial.safetensors"),
            "{err}"
        );

        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"definitely not weights").unwrap();
        let err = InceptionV3::load(&junk, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("junk.bin"), "{err}");
    }

    // ---- a legacy (pre-1.6) torch.save file, written byte by byte ----

    fn p_str(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn p_int(out: &mut Vec<u8>, v: i32) {
        out.push(b'J');
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn p_ints(out: &mut Vec<u8>, v: &[usize]) {
        out.push(b'(');
        for &a in v {
            p_int(out, a as i32);
        }
        out.push(b't');
    }

    struct LegacyTensor<'a> {
        name: &'a str,
        storage_type: &'a str,
        key: &'a str,
        storage_numel: usize,
        offset: usize,
        size: &'a [usize],
        stride: &'a [usize],
    }

    fn legacy_pth(tensors: &[LegacyTensor], storages: &[(&str, Vec<u8>, usize)]) -> Vec<u8> {
        let mut b = vec![
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
            b'.',
        ];
        b.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']); // protocol 1001
        b.extend_from_slice(&[0x80, 0x02, b'}', b'(']); // sys_info
        p_str(&mut b, "little_endian");
        b.extend_from_slice(&[0x88, b'u', b'.']);
        b.extend_from_slice(&[0x80, 0x02]);
        b.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
        for t in tensors {
            p_str(&mut b, t.name);
            b.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            b.push(b'(');
            p_str(&mut b, "storage");
            b.extend_from_slice(format!("ctorch\n{}\n", t.storage_type).as_bytes());
            p_str(&mut b, t.key);
            p_str(&mut b, "cpu");
            p_int(&mut b, t.storage_numel as i32);
            b.extend_from_slice(b"NtQ");
            p_int(&mut b, t.offset as i32);
            p_ints(&mut b, t.size);
            p_ints(&mut b, t.stride);
            b.push(0x89);
            b.extend_from_slice(b"ccollections\nOrderedDict\n)RtR");
        }
        b.extend_from_slice(b"u.");
        b.extend_from_slice(&[0x80, 0x02, b']', b'(']);
        for (key, _, _) in storages {
            p_str(&mut b, key);
        }
        b.extend_from_slice(b"e.");
        for (_, data, numel) in storages {
            b.extend_from_slice(&(*numel as i64).to_le_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    #[test]
    fn legacy_pth_reader_handles_offsets_strides_and_dtypes() {
        let f: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let fbytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        let l = 7i64.to_le_bytes().to_vec();
        let tensors = [
            LegacyTensor {
                name: "a",
                storage_type: "FloatStorage",
                key: "0",
                storage_numel: 12,
                offset: 0,
                size: &[2, 3],
                stride: &[3, 1],
            },
            // A transposed view [3, 2] of the elements 6..12 of the same storage.
            LegacyTensor {
                name: "b.t",
                storage_type: "FloatStorage",
                key: "0",
                storage_numel: 12,
                offset: 6,
                size: &[3, 2],
                stride: &[1, 3],
            },
            LegacyTensor {
                name: "n",
                storage_type: "LongStorage",
                key: "1",
                storage_numel: 1,
                offset: 0,
                size: &[],
                stride: &[],
            },
        ];
        let bytes = legacy_pth(&tensors, &[("0", fbytes, 12), ("1", l, 1)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.pth");
        std::fs::write(&path, &bytes).unwrap();
        let w = inception::read_weights(&path).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            w["a"].to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 0.5, 1.0], vec![1.5, 2.0, 2.5]]
        );
        assert_eq!(
            w["b.t"].to_vec2::<f32>().unwrap(),
            vec![vec![3.0, 4.5], vec![3.5, 5.0], vec![4.0, 5.5]]
        );
        assert_eq!(w["n"].dtype(), DType::I64);
        assert_eq!(w["n"].to_scalar::<i64>().unwrap(), 7);
        // A truncated file is an error naming the file, not a panic.
        let cut = dir.path().join("cut.pth");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = inception::read_weights(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.pth") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn full_forward_with_random_weights() {
        let dev = Device::Cpu;
        let w = inception::random_weights(7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inception_random.safetensors");
        candle_core::safetensors::save(&w, &path).unwrap();
        let model = InceptionV3::load(&path, &dev).unwrap();

        let imgs = Tensor::from_vec(lcg_values(2 * 3 * 32 * 32, 11), (2, 3, 32, 32), &dev).unwrap();
        let (pool, logits, spatial) = model.forward_images01(&imgs).unwrap();
        assert_eq!(pool.dims(), &[2, inception::POOL_DIM]);
        assert_eq!(logits.dims(), &[2, inception::LOGITS_DIM]);
        assert_eq!(spatial.dims(), &[2, inception::SPATIAL_DIM]);
        assert_eq!(inception::SPATIAL_DIM, 2023);
        let pool_v: Vec<Vec<f32>> = pool.to_vec2().unwrap();
        let logit_v: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        let spatial_v: Vec<Vec<f32>> = spatial.to_vec2().unwrap();
        for rows in [&pool_v, &logit_v, &spatial_v] {
            assert!(rows.iter().flatten().all(|v| v.is_finite()));
        }
        // pool3 and the spatial features follow ReLUs; neither is all zeros, and the two images
        // give different features.
        assert!(pool_v.iter().flatten().all(|&v| v >= 0.0));
        assert!(spatial_v.iter().flatten().all(|&v| v >= 0.0));
        assert!(pool_v[0].iter().any(|&v| v > 0.0) && spatial_v[0].iter().any(|&v| v > 0.0));
        assert!(pool_v[0]
            .iter()
            .zip(&pool_v[1])
            .any(|(a, b)| (a - b).abs() > 1e-4));
        // The logits are pool3 · fc.weightᵀ, without the bias.
        let fc: Vec<Vec<f32>> = w["fc.weight"].to_vec2().unwrap();
        for (b, row) in logit_v.iter().enumerate() {
            for k in [0usize, 17, 1007] {
                let want: f32 = fc[k].iter().zip(&pool_v[b]).map(|(a, p)| a * p).sum();
                assert!(
                    close(row[k], want, 1e-4),
                    "logit {b},{k}: {} vs {want}",
                    row[k]
                );
            }
        }
        // Wrong input sizes are rejected.
        assert!(model
            .forward(&Tensor::zeros((1, 3, 64, 64), DType::F32, &dev).unwrap())
            .is_err());
    }
}

mod metrics_tests {
    //! Tests of the statistics, the metrics (FID against SciPy goldens, IS, precision/recall,
    //! KID), the stats `.npz` format, the input readers and the evaluation pipeline.

    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use cbs_eval::features::{extract_all, FeatureExtractor, PooledPixels};
    use cbs_eval::fid::{self, Factorization, Stats};
    use cbs_eval::inputs::{self, ImageSet, Input};
    use cbs_eval::metrics::{self, MetricOptions, Side};

    const CPU: Device = Device::Cpu;

    /// SplitMix64, as in scripts/golden/fid_golden.py.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * 2f64.powi(-53)
        }
    }

    /// X = shift + (U − 0.5)(A − 0.5), exactly as `features()` in fid_golden.py.
    fn golden_features(seed: u64, n: usize, d: usize, shift: f64) -> Tensor {
        let mut g = SplitMix64(seed);
        let u: Vec<f64> = (0..n * d).map(|_| g.uniform() - 0.5).collect();
        let mut h = SplitMix64(seed + 1000);
        let a: Vec<f64> = (0..d * d).map(|_| h.uniform() - 0.5).collect();
        let mut x = vec![shift; n * d];
        for i in 0..n {
            for k in 0..d {
                for j in 0..d {
                    x[i * d + j] += u[i * d + k] * a[k * d + j];
                }
            }
        }
        Tensor::from_vec(x, (n, d), &CPU).unwrap()
    }

    fn rel_close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    type Side4 = (u64, usize, usize, f64);

    /// Printed by `python3 scripts/golden/fid_golden.py` (numpy + scipy; see the script):
    /// pytorch-fid's FID with scipy.linalg.sqrtm, or the scipy.linalg.eigh value where the
    /// covariances are rank-deficient.
    const GOLDEN: &[(&str, Side4, Side4, f64)] = &[
        // numpy 2.4.6, scipy 1.17.1. sqrtm vs eigh: rel. diff 5.7e-16, 2.0e-15, 1.2e-14 (sqrtm
        // values used); the rank-deficient cases differ by 9.1e-9 and 6.3e-9 (eigh values used;
        // sqrtm gave 2.973531707095117 and 1.5077210452879326).
        ("d4", (1, 64, 4, 0.0), (2, 64, 4, 0.1), 0.14544009144023373),
        (
            "d8",
            (3, 200, 8, 0.0),
            (4, 150, 8, 0.0),
            0.22718812409950562,
        ),
        (
            "d16",
            (5, 300, 16, 0.0),
            (6, 300, 16, 0.05),
            0.8759640790430261,
        ),
        (
            "d16_rank9",
            (7, 10, 16, 0.0),
            (8, 10, 16, 0.2),
            2.9735317340229472,
        ),
        (
            "d12_rank5_vs_full",
            (9, 6, 12, 0.0),
            (10, 100, 12, -0.1),
            1.5077210547257147,
        ),
    ];

    #[test]
    fn fid_matches_scipy_goldens() {
        for &(name, a, b, want) in GOLDEN {
            let sa = Stats::from_features(&golden_features(a.0, a.1, a.2, a.3)).unwrap();
            let sb = Stats::from_features(&golden_features(b.0, b.1, b.2, b.3)).unwrap();
            let got = sa.frechet_distance(&sb).unwrap();
            assert!(rel_close(got, want, 1e-6), "{name}: {got} vs golden {want}");
            // Symmetric in its arguments.
            let back = sb.frechet_distance(&sa).unwrap();
            assert!(
                rel_close(back, want, 1e-6),
                "{name} reversed: {back} vs {want}"
            );
            // Both factorizations of Σ1, both orders.
            for (x, y) in [(&sa, &sb), (&sb, &sa)] {
                for how in [Factorization::PivotedCholesky, Factorization::Eigen] {
                    let r =
                        fid::frechet_details_with(&x.mu, &x.sigma, &y.mu, &y.sigma, how).unwrap();
                    assert!(rel_close(r.distance, want, 1e-6), "{name} {how:?}: {r:?}");
                    assert_eq!((r.offset, r.factorization), (0.0, how));
                }
            }
        }
    }

    #[test]
    fn statistics_match_numpy() {
        // From scripts/golden/fid_golden.py (np.mean, np.cov(rowvar=False)) for side 1 of "d4".
        let s = Stats::from_features(&golden_features(1, 64, 4, 0.0)).unwrap();
        assert!(
            rel_close(s.mu[0], -0.00431517321850319, 1e-12),
            "{}",
            s.mu[0]
        );
        assert!(
            rel_close(s.sigma[1], -0.00011166056120682233, 1e-10),
            "{}",
            s.sigma[1]
        );
        assert!(rel_close(s.sigma[4], s.sigma[1], 0.0), "symmetric");
        let trace: f64 = (0..4).map(|i| s.sigma[i * 4 + i]).sum();
        assert!(rel_close(trace, 0.09471849422878234, 1e-12), "{trace}");
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero() {
        for (n, d) in [(300, 16), (10, 16)] {
            let s = Stats::from_features(&golden_features(21, n, d, 0.3)).unwrap();
            let trace: f64 = (0..d).map(|i| s.sigma[i * d + i]).sum();
            let f = s.frechet_distance(&s).unwrap();
            assert!(f.abs() < 1e-7 * trace, "n {n}, d {d}: FID(x, x) = {f}");
        }
    }

    #[test]
    fn fid_of_diagonal_gaussians_is_analytic() {
        // Σ1 = diag(a), Σ2 = diag(b): FID = |Δμ|² + Σ (√a − √b)²; a zero variance included.
        let a = [1.0, 4.0, 0.0, 2.5];
        let b = [9.0, 1.0, 3.0, 2.5];
        let diag = |v: &[f64]| {
            let mut m = vec![0.0; 16];
            for i in 0..4 {
                m[i * 4 + i] = v[i];
            }
            m
        };
        let mu1 = [0.0, 1.0, 2.0, 3.0];
        let mu2 = [1.0, 1.0, 0.0, 3.0];
        let got = fid::frechet_distance(&mu1, &diag(&a), &mu2, &diag(&b)).unwrap();
        let want = 1.0
            + 4.0
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        assert!(rel_close(got, want, 1e-12), "{got} vs {want}");
    }

    #[test]
    fn fid_rejects_mismatched_or_non_finite_statistics() {
        let s4 = vec![0.0; 16];
        assert!(fid::frechet_distance(&[0.0; 4], &s4, &[0.0; 3], &[0.0; 9]).is_err());
        assert!(fid::frechet_distance(&[0.0; 4], &[0.0; 15], &[0.0; 4], &s4).is_err());
        let mut nan = s4.clone();
        nan[5] = f64::NAN;
        assert!(fid::frechet_distance(&[0.0; 4], &nan, &[0.0; 4], &s4).is_err());
        assert!(Stats::from_features(&Tensor::zeros((1, 4), DType::F32, &CPU).unwrap()).is_err());
    }

    #[test]
    fn inception_score_of_uniform_and_one_hot_logits() {
        let (n, k) = (200, 5);
        let uniform = Tensor::zeros((n, k), DType::F32, &CPU).unwrap();
        let is = metrics::inception_score(&uniform, 10).unwrap();
        assert!(
            (is.mean - 1.0).abs() < 1e-12 && is.std.abs() < 1e-12,
            "{is:?}"
        );
        // One-hot: every split holds each class equally often → IS = K exactly.
        let mut v = vec![0f32; n * k];
        for i in 0..n {
            v[i * k + i % k] = 1000.0;
        }
        let one_hot = Tensor::from_vec(v, (n, k), &CPU).unwrap();
        let is = metrics::inception_score(&one_hot, 10).unwrap();
        assert!((is.mean - k as f64).abs() < 1e-9 && is.std < 1e-9, "{is:?}");
        // A single class everywhere: p(y) = p(y|x) → IS = 1.
        let mut v = vec![0f32; n * k];
        for i in 0..n {
            v[i * k + 2] = 1000.0;
        }
        let same = Tensor::from_vec(v, (n, k), &CPU).unwrap();
        let is = metrics::inception_score(&same, 10).unwrap();
        assert!((is.mean - 1.0).abs() < 1e-12, "{is:?}");
        // Fewer rows than splits is an error.
        assert!(metrics::inception_score(&uniform.narrow(0, 0, 5).unwrap(), 10).is_err());
    }

    #[test]
    fn inception_score_std_is_over_splits() {
        // Split 0 one-hot over 2 classes (IS 2), split 1 uniform (IS 1): mean 1.5, std 0.5.
        let v: Vec<f32> = vec![1000.0, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0, 0.0];
        let l = Tensor::from_vec(v, (4, 2), &CPU).unwrap();
        let is = metrics::inception_score(&l, 2).unwrap();
        assert!(
            (is.mean - 1.5).abs() < 1e-12 && (is.std - 0.5).abs() < 1e-12,
            "{is:?}"
        );
    }

    #[test]
    fn precision_recall_of_identical_and_disjoint_sets() {
        let x = golden_features(31, 300, 8, 0.0)
            .to_dtype(DType::F32)
            .unwrap();
        let pr = metrics::precision_recall(&x, &x, 3, &CPU).unwrap();
        assert_eq!((pr.precision, pr.recall), (1.0, 1.0));
        let far = (&x + 1000.0).unwrap();
        let pr = metrics::precision_recall(&x, &far, 3, &CPU).unwrap();
        assert_eq!((pr.precision, pr.recall), (0.0, 0.0));
        // Samples = the reference points on one side of a hyperplane: all realistic (precision
        // 1), but the other side is missed (recall well below 1).
        let rows: Vec<Vec<f32>> = x.to_vec2().unwrap();
        let half: Vec<f32> = rows
            .iter()
            .filter(|r| r[0] < 0.0)
            .flatten()
            .copied()
            .collect();
        let n_half = half.len() / 8;
        let half = Tensor::from_vec(half, (n_half, 8), &CPU).unwrap();
        let pr = metrics::precision_recall(&x, &half, 3, &CPU).unwrap();
        assert_eq!(pr.precision, 1.0);
        assert!(pr.recall < 0.85, "{pr:?} with {n_half} of 300 points");
    }

    #[test]
    fn knn_radii_match_brute_force_across_blocks() {
        // More rows than one block (1024 × 4096) so the blocking is exercised.
        let n = 1100;
        let x = golden_features(41, n, 3, 0.0);
        let r = metrics::knn_sq_radii(&x, 3, &CPU).unwrap();
        let v: Vec<Vec<f64>> = x.to_vec2().unwrap();
        for i in [0usize, 1, 1023, 1024, 1099] {
            let mut d: Vec<f64> = v
                .iter()
                .map(|y| y.iter().zip(&v[i]).map(|(a, b)| (a - b) * (a - b)).sum())
                .collect();
            d.sort_by(|a, b| a.partial_cmp(b).unwrap());
            assert!((r[i] - d[3]).abs() < 1e-12, "row {i}: {} vs {}", r[i], d[3]);
        }
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_positive_when_shifted() {
        let x = golden_features(51, 400, 8, 0.0);
        let y = golden_features(51, 400, 8, 0.0);
        let k = metrics::kid(&x, &y, 20, 100, 0, &CPU).unwrap();
        assert_eq!((k.subsets, k.subset_size), (20, 100));
        let z = (&y + 0.5).unwrap();
        let shifted = metrics::kid(&x, &z, 20, 100, 0, &CPU).unwrap();
        assert!(shifted.mean > 0.1, "{shifted:?}");
        assert!(
            k.mean.abs() < 0.01 * shifted.mean,
            "{k:?} vs shifted {shifted:?}"
        );
        // Seeded: the same seed gives the same value, another seed another.
        let again = metrics::kid(&x, &z, 20, 100, 0, &CPU).unwrap();
        assert_eq!(again, shifted);
        let other = metrics::kid(&x, &z, 20, 100, 1, &CPU).unwrap();
        assert_ne!(other.mean, shifted.mean);
        // The subset size is capped by the smaller side.
        let small = metrics::kid(&x.narrow(0, 0, 30).unwrap(), &z, 3, 1000, 0, &CPU).unwrap();
        assert_eq!(small.subset_size, 30);
    }

    #[test]
    fn kid_of_a_full_subset_is_the_unbiased_mmd() {
        // Subsets = the whole sets: compare with a direct double loop.
        let x = golden_features(61, 12, 3, 0.0);
        let y = golden_features(62, 12, 3, 0.2);
        let k = metrics::kid(&x, &y, 1, 12, 0, &CPU).unwrap();
        let (xv, yv): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (x.to_vec2().unwrap(), y.to_vec2().unwrap());
        let kern = |a: &[f64], b: &[f64]| {
            (a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>() / 3.0 + 1.0).powi(3)
        };
        let m = 12.0;
        let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        for i in 0..12 {
            for j in 0..12 {
                if i != j {
                    sxx += kern(&xv[i], &xv[j]);
                    syy += kern(&yv[i], &yv[j]);
                }
                sxy += kern(&xv[i], &yv[j]);
            }
        }
        let want = (sxx + syy) / (m * (m - 1.0)) - 2.0 * sxy / (m * m);
        assert!(
            (k.mean - want).abs() < 1e-12 * want.abs().max(1.0),
            "{} vs {want}",
            k.mean
        );
        assert_eq!(k.std, 0.0);
    }

    #[test]
    fn stats_npz_round_trip_and_pytorch_fid_float32() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Stats::from_features(&golden_features(71, 50, 6, 0.1)).unwrap();
        let spatial = Stats::from_features(&golden_features(72, 50, 4, 0.0)).unwrap();
        let p = tmp.path().join("sub/stats.npz");
        fid::save_stats(&p, &pool, Some(&spatial)).unwrap();
        let (a, b) = fid::load_stats(&p).unwrap();
        assert_eq!(a, pool);
        assert_eq!(b, Some(spatial));
        // The arrays are float64 mu [D] and sigma [D, D], as pytorch-fid writes them.
        let arrays = Tensor::read_npz(&p).unwrap();
        let get = |n: &str| arrays.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("mu").dims(), &[6]);
        assert_eq!(get("sigma").dims(), &[6, 6]);
        assert_eq!(get("sigma").dtype(), DType::F64);
        // Without spatial statistics; and float32 arrays are accepted.
        let p2 = tmp.path().join("f32.npz");
        let mu = Tensor::new(&[1f32, 2.0], &CPU).unwrap();
        let sigma = Tensor::new(&[[1f32, 0.5], [0.5, 2.0]], &CPU).unwrap();
        Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &p2).unwrap();
        let (a, b) = fid::load_stats(&p2).unwrap();
        assert_eq!(a.mu, vec![1.0, 2.0]);
        assert_eq!(a.sigma, vec![1.0, 0.5, 0.5, 2.0]);
        assert!(b.is_none());
        match inputs::read_input(&p2).unwrap() {
            Input::Stats { pool, spatial } => assert!(pool.dim() == 2 && spatial.is_none()),
            other => panic!("expected statistics, got {}", other.describe()),
        }
        // Shape mismatches are named.
        let p3 = tmp.path().join("bad.npz");
        let sigma3 = Tensor::zeros((3, 3), DType::F64, &CPU).unwrap();
        Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma3)], &p3).unwrap();
        let e = fid::load_stats(&p3).unwrap_err().to_string();
        assert!(e.contains("bad.npz") && e.contains("sigma"), "{e}");
        // A sigma that is no covariance (eigenvalues 3 and −1; or not symmetric) is refused.
        for (m, why) in [
            ([[1f64, 2.0], [2.0, 1.0]], "not positive semi-definite"),
            ([[1f64, 0.5], [0.2, 1.0]], "not symmetric"),
        ] {
            let p4 = tmp.path().join("nocov.npz");
            let s4 = Tensor::new(&m, &CPU).unwrap();
            Tensor::write_npz(&[("mu", &mu), ("sigma", &s4)], &p4).unwrap();
            let e = fid::load_stats(&p4).unwrap_err().to_string();
            assert!(e.contains("nocov.npz") && e.contains(why), "{e}");
        }
    }

    // ---- input readers ----

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A zip archive with stored (uncompressed) entries, written by hand so that tests can put
    /// arbitrary bytes in an `.npz`.
    fn stored_zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let offset = out.len() as u32;
            let (crc, len) = (crc32(data), data.len() as u32);
            let common = |v: &mut Vec<u8>| {
                v.extend_from_slice(&20u16.to_le_bytes()); // version needed
                v.extend_from_slice(&0u16.to_le_bytes()); // flags
                v.extend_from_slice(&0u16.to_le_bytes()); // stored
                v.extend_from_slice(&0u32.to_le_bytes()); // time, date
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&(name.len() as u16).to_le_bytes());
                v.extend_from_slice(&0u16.to_le_bytes()); // extra
            };
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            common(&mut out);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&20u16.to_le_bytes()); // version made by
            common(&mut central);
            central.extend_from_slice(&[0u8; 8]); // comment len, disk, int. attr, ext. attr (part)
            central.extend_from_slice(&0u16.to_le_bytes()); // ext. attr (rest)
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        let n = entries.len() as u16;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// An `.npy` (version 1.0) with the given header dictionary and data.
    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        // Pad so that magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
        let pad = (64 - (10 + header.len() + 1) % 64) % 64;
        let h = format!("{header}{}\n", " ".repeat(pad));
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn err_of(p: &Path) -> String {
        match inputs::read_input(p) {
            Ok(i) => panic!("{} should not read, got {}", p.display(), i.describe()),
            Err(e) => e.to_string(),
        }
    }

    fn image_bytes(n: usize, h: usize, w: usize, c: usize, seed: u64) -> Vec<u8> {
        let mut g = SplitMix64(seed);
        (0..n * h * w * c)
            .map(|_| (g.next_u64() >> 56) as u8)
            .collect()
    }

    #[test]
    fn reads_image_directories_sorted_with_grayscale_as_rgb() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let rgb = image_bytes(1, 5, 7, 3, 1);
        image::RgbImage::from_raw(7, 5, rgb.clone())
            .unwrap()
            .save(dir.join("b.png"))
            .unwrap();
        let gray = image_bytes(1, 5, 7, 1, 2);
        image::GrayImage::from_raw(7, 5, gray.clone())
            .unwrap()
            .save(dir.join("a.PNG"))
            .unwrap();
        image::RgbImage::from_raw(7, 5, rgb.clone())
            .unwrap()
            .save(dir.join("c.jpg"))
            .unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let Input::Images(set) = inputs::read_input(dir).unwrap() else {
            panic!("expected images")
        };
        assert_eq!(set.pixels.dims(), &[3, 5, 7, 3]);
        let v: Vec<u8> = set.pixels.flatten_all().unwrap().to_vec1().unwrap();
        let per = 5 * 7 * 3;
        // a.PNG (gray, repeated over channels) sorts first, then b.png.
        for (i, &g) in gray.iter().enumerate() {
            assert_eq!(&v[i * 3..i * 3 + 3], &[g, g, g]);
        }
        assert_eq!(&v[per..2 * per], &rgb[..]);
        // The float batch is NCHW in [0, 1].
        let b = set.batch(1, 2, &CPU).unwrap();
        assert_eq!(b.dims(), &[2, 3, 5, 7]);
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(b[0], rgb[0] as f32 / 255.0);
        assert_eq!(b[1], rgb[3] as f32 / 255.0); // next pixel, same channel
                                                 // An image of another size is named.
        image::RgbImage::new(3, 3).save(dir.join("d.png")).unwrap();
        let e = err_of(dir);
        assert!(e.contains("d.png") && e.contains("one size"), "{e}");
    }

    #[test]
    fn non_images_and_empty_directories_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = err_of(&empty);
        assert!(e.contains("empty") && e.contains("PNG"), "{e}");
        let bad = tmp.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("x.png"), "this is not a png").unwrap();
        let e = err_of(&bad);
        assert!(e.contains("x.png"), "{e}");
        let e = err_of(&tmp.path().join("missing.npz"));
        assert!(e.contains("missing.npz") && e.contains("not found"), "{e}");
        let txt = tmp.path().join("notes.txt");
        std::fs::write(&txt, "hello").unwrap();
        let e = err_of(&txt);
        assert!(e.contains("notes.txt") && e.contains(".npz"), "{e}");
    }

    #[test]
    fn reads_adm_npz_and_sample_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = image_bytes(4, 6, 5, 3, 3);
        let t = Tensor::from_vec(bytes.clone(), (4, 6, 5, 3), &CPU).unwrap();
        let p = tmp.path().join("samples.npz");
        Tensor::write_npz(&[("arr_0", &t)], &p).unwrap();
        for path in [p.as_path(), tmp.path()] {
            let Input::Images(set) = inputs::read_input(path).unwrap() else {
                panic!("expected images")
            };
            assert_eq!(set.pixels.dims(), &[4, 6, 5, 3]);
            let v: Vec<u8> = set.pixels.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(v, bytes);
        }
        // Grayscale [N, H, W, 1] becomes 3 equal channels.
        let g = Tensor::from_vec(image_bytes(2, 3, 3, 1, 4), (2, 3, 3, 1), &CPU).unwrap();
        let pg = tmp.path().join("gray.npz");
        Tensor::write_npz(&[("arr_0", &g)], &pg).unwrap();
        let Input::Images(set) = inputs::read_input(&pg).unwrap() else {
            panic!("expected images")
        };
        assert_eq!(set.pixels.dims(), &[2, 3, 3, 3]);
        let v: Vec<u8> = set.pixels.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn malformed_npz_files_are_errors_not_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Truncated: half of a valid archive.
        let t = Tensor::from_vec(image_bytes(4, 8, 8, 3, 5), (4, 8, 8, 3), &CPU).unwrap();
        let good = dir.join("good.npz");
        Tensor::write_npz(&[("arr_0", &t)], &good).unwrap();
        let full = std::fs::read(&good).unwrap();
        let cut = dir.join("cut.npz");
        std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
        let e = err_of(&cut);
        assert!(e.contains("cut.npz"), "{e}");
        // A header declaring far more data than the file holds.
        let huge = dir.join("huge.npz");
        let h = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (100000000000, 64, 64, 3), }",
            &[0; 16],
        );
        std::fs::write(&huge, stored_zip(&[("arr_0.npy", h)])).unwrap();
        let e = err_of(&huge);
        assert!(e.contains("huge.npz") && e.contains("memory limit"), "{e}");
        // A shape whose element count overflows usize.
        let over = dir.join("overflow.npz");
        let h = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (18446744073709551615, 2, 1, 3), }",
            &[],
        );
        std::fs::write(&over, stored_zip(&[("arr_0.npy", h)])).unwrap();
        assert!(err_of(&over).contains("overflow.npz"));
        // Data shorter than the header says (within the size bound).
        let short = dir.join("short.npz");
        let h = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 4, 4, 3), }",
            &[7; 10],
        );
        std::fs::write(&short, stored_zip(&[("arr_0.npy", h)])).unwrap();
        assert!(err_of(&short).contains("short.npz"));
        // Garbage header, bad magic, unknown dtype.
        for (name, entry) in [
            ("garbage.npz", npy("not a dict at all", &[1, 2, 3])),
            ("magic.npz", b"NOTNUMPY-at-all".to_vec()),
            (
                "dtype.npz",
                npy(
                    "{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }",
                    &[0; 16],
                ),
            ),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, stored_zip(&[("arr_0.npy", entry)])).unwrap();
            let e = err_of(&p);
            assert!(e.contains(name), "{e}");
        }
        // Float images, a wrong rank, 2 channels, and no known array.
        let cases: Vec<(&str, Vec<(&str, Tensor)>)> = vec![
            (
                "float.npz",
                vec![(
                    "arr_0",
                    Tensor::zeros((2, 4, 4, 3), DType::F32, &CPU).unwrap(),
                )],
            ),
            (
                "rank.npz",
                vec![("arr_0", Tensor::zeros((2, 4), DType::U8, &CPU).unwrap())],
            ),
            (
                "chan.npz",
                vec![(
                    "arr_0",
                    Tensor::zeros((2, 4, 4, 2), DType::U8, &CPU).unwrap(),
                )],
            ),
            (
                "other.npz",
                vec![("x", Tensor::zeros(3, DType::U8, &CPU).unwrap())],
            ),
            (
                "stats_int.npz",
                vec![
                    ("mu", Tensor::zeros(3, DType::U8, &CPU).unwrap()),
                    ("sigma", Tensor::zeros((3, 3), DType::U8, &CPU).unwrap()),
                ],
            ),
            (
                "stats_half.npz",
                vec![("mu", Tensor::zeros(3, DType::F64, &CPU).unwrap())],
            ),
        ];
        for (name, arrays) in cases {
            let p = dir.join(name);
            let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(n, t)| (*n, t)).collect();
            Tensor::write_npz(&refs, &p).unwrap();
            let e = err_of(&p);
            assert!(e.contains(name), "{e}");
        }
    }

    // ---- the pipeline ----

    fn image_set(n: usize, seed: u64, bias: u8) -> ImageSet {
        let v: Vec<u8> = image_bytes(n, 8, 8, 3, seed)
            .iter()
            .map(|b| b / 2 + bias)
            .collect();
        ImageSet::from_nhwc(Tensor::from_vec(v, (n, 8, 8, 3), &CPU).unwrap()).unwrap()
    }

    #[test]
    fn extraction_is_batch_independent() {
        let set = image_set(23, 81, 0);
        let ex = PooledPixels {
            grid: 2,
            classes: 6,
        };
        let mut calls = Vec::new();
        let a = extract_all(&ex, &set, 5, &CPU, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(calls.last(), Some(&(5, 5)));
        let b = extract_all(&ex, &set, 50, &CPU, &mut |_, _| {}).unwrap();
        assert_eq!(a.pool.dims(), &[23, 12]);
        assert_eq!(a.logits.as_ref().unwrap().dims(), &[23, 6]);
        let (av, bv): (Vec<f32>, Vec<f32>) = (
            a.pool.flatten_all().unwrap().to_vec1().unwrap(),
            b.pool.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(av, bv);
        assert!(ex.name().contains("test"));
        assert!(extract_all(&ex, &set, 0, &CPU, &mut |_, _| {}).is_err());
    }

    #[test]
    fn evaluate_images_and_statistics() {
        let ex = PooledPixels {
            grid: 2,
            classes: 6,
        };
        let opts = MetricOptions {
            kid_subsets: 5,
            kid_subset_size: 30,
            ..MetricOptions::default()
        };
        let side = |set: &ImageSet| {
            let f = extract_all(&ex, set, 16, &CPU, &mut |_, _| {}).unwrap();
            Side::from_features(f, &CPU).unwrap()
        };
        let a = side(&image_set(60, 91, 0));
        let b = side(&image_set(60, 92, 120));
        let r = metrics::evaluate(&a, &b, &opts, "test", &CPU).unwrap();
        assert!(r.fid > 1.0, "{r:?}");
        assert!(r.sfid.unwrap() > 1.0);
        assert!(r.inception_score.unwrap().mean >= 1.0);
        assert_eq!((r.precision, r.recall), (Some(0.0), Some(0.0)));
        assert!(r.kid.unwrap() > 0.0);
        assert_eq!(
            (r.num_samples, r.num_reference, r.feature_dim),
            (Some(60), Some(60), 12)
        );
        let same = metrics::evaluate(&a, &a, &opts, "test", &CPU).unwrap();
        assert!(
            same.fid.abs() < 1e-9 && same.sfid.unwrap().abs() < 1e-9,
            "{same:?}"
        );
        assert_eq!((same.precision, same.recall), (Some(1.0), Some(1.0)));
        // Against statistics only the Fréchet distances are computable; the JSON has nulls.
        let stats = Side::from_stats(b.pool.clone(), b.spatial.clone());
        let r2 = metrics::evaluate(&a, &stats, &opts, "test", &CPU).unwrap();
        assert!((r2.fid - r.fid).abs() < 1e-12 && r2.sfid == r.sfid);
        assert_eq!((r2.precision, r2.kid, r2.num_reference), (None, None, None));
        let json = serde_json::to_value(&r2).unwrap();
        for key in [
            "fid",
            "sfid",
            "inception_score",
            "precision",
            "recall",
            "kid",
            "num_samples",
            "num_reference",
        ] {
            assert!(json.get(key).is_some(), "JSON lacks {key}: {json}");
        }
        assert!(json["precision"].is_null() && json["inception_score"]["mean"].is_number());
        // Different feature dimensions are refused.
        let other = Side::from_stats(Stats::new(vec![0.0; 3], vec![0.0; 9]).unwrap(), None);
        assert!(metrics::evaluate(&a, &other, &opts, "test", &CPU).is_err());
    }

    /// Timing of the 2048-d Fréchet distance (run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn fid_2048_timing() {
        let (n, d) = (2500, 2048);
        let features = |seed: u64, shift: f64| {
            // Uniform rows plus a shared low-rank component (correlated, full rank).
            let mut g = SplitMix64(seed);
            let mut x: Vec<f64> = (0..n * d).map(|_| g.uniform() + shift).collect();
            for i in 0..n {
                let c = g.uniform();
                for j in 0..d {
                    x[i * d + j] += c * ((j % 7) as f64);
                }
            }
            Tensor::from_vec(x, (n, d), &CPU).unwrap()
        };
        let t = std::time::Instant::now();
        let a = Stats::from_features(&features(101, 0.0)).unwrap();
        let b = Stats::from_features(&features(102, 0.1)).unwrap();
        eprintln!(
            "statistics of 2 × {n} × {d}: {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = std::time::Instant::now();
        let f = a.frechet_distance(&b).unwrap();
        eprintln!("FID 2048-d: {f} in {:.1}s", t.elapsed().as_secs_f64());
    }
}

mod bootstrap {
    use candle_core::{Device, Tensor};
    use cbs_eval::bootstrap::{
        bootstrap_metrics, paired_fid_difference, percentile_interval, resample_indices,
        BootstrapOptions, Reference,
    };
    use cbs_eval::features::Features;
    use cbs_eval::fid::Stats;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn gaussian(n: usize, d: usize, shift: f32, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .map(|x: f32| x + shift)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }

    fn feats(pool: Tensor) -> Features {
        Features {
            pool,
            logits: None,
            spatial: None,
        }
    }

    #[test]
    fn percentiles_and_indices() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        let (lo, hi) = percentile_interval(&v, 0.9);
        assert!(
            (lo - 5.0).abs() < 1e-9 && (hi - 95.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi) = percentile_interval(&[3.0, 1.0, 2.0], 0.5);
        assert!(
            (lo - 1.5).abs() < 1e-12 && (hi - 2.5).abs() < 1e-12,
            "{lo} {hi}"
        );
        let a = resample_indices(50, 3, 7);
        assert_eq!(a, resample_indices(50, 3, 7));
        assert_ne!(a, resample_indices(50, 4, 7));
        assert!(a.iter().all(|&i| i < 50));
    }

    #[test]
    fn intervals_cover_the_estimate_and_separate_a_shifted_set() {
        let dev = Device::Cpu;
        let reference = Reference::new(feats(gaussian(800, 4, 0.0, 1)), 3, &dev).unwrap();
        let opts = BootstrapOptions {
            replicates: 100,
            ..Default::default()
        };
        let near =
            bootstrap_metrics(&feats(gaussian(400, 4, 0.0, 2)), &reference, &opts, &dev).unwrap();
        let far =
            bootstrap_metrics(&feats(gaussian(400, 4, 1.0, 3)), &reference, &opts, &dev).unwrap();
        for r in [&near, &far] {
            assert!(
                r.fid.lo <= r.fid.value + 0.05 && r.fid.value <= r.fid.hi + 0.05,
                "{r:?}"
            );
            assert!(r.precision.lo <= r.precision.value && r.precision.value <= r.precision.hi);
        }
        // A mean shift of 1 in 4 dimensions adds ≈ 4 to the FID.
        assert!(far.fid.lo > near.fid.hi + 2.0, "{near:?} {far:?}");
        assert!(
            (far.fid.value - near.fid.value - 4.0).abs() < 1.0,
            "{far:?}"
        );
        assert!(far.precision.value < near.precision.value);
    }

    #[test]
    fn a_set_paired_with_itself_differs_by_nothing_and_with_a_shift_by_the_shift() {
        let x = gaussian(300, 3, 0.0, 4);
        let stats = Stats::from_features(&gaussian(600, 3, 0.0, 5)).unwrap();
        let opts = BootstrapOptions {
            replicates: 50,
            ..Default::default()
        };
        let (d, reps) = paired_fid_difference(&x, &x, &stats, &opts).unwrap();
        assert_eq!(d, 0.0);
        assert!(reps.iter().all(|&r| r == 0.0));
        // The same rows shifted by 0.5 in every coordinate: the paired replicates vary far
        // less than independent sets would, and centre near the difference.
        let y = (&x + 0.5).unwrap();
        let (d, reps) = paired_fid_difference(&y, &x, &stats, &opts).unwrap();
        let (lo, hi) = percentile_interval(&reps, 0.95);
        assert!(lo < d && d < hi && hi - lo < 0.6, "{d} [{lo}, {hi}]");
        assert!((d - 0.75).abs() < 0.3, "{d}");
    }
}

//! The CUDA side of [`super::attention`]: the launch code of `attention.cu` (its header has the
//! design: FlashAttention-2 tiling, online softmax, the log-sum-exp saved for a backward that
//! recomputes `P` tile by tile; WMMA bf16 products on sm_80+, FMA tiles for f32) and the shared
//! memory each kernel needs.
//!
//! **Compiled, not yet run on a GPU**: the kernels' logic was checked on the CPU under the
//! host emulation in `tests/cuda_emu/` (f32 and bf16, FMA and WMMA paths, N not a multiple of
//! the tiles, d = 16…128), but only `scripts/gpu-check.sh` (`cbs device-check --device cuda`)
//! verifies them on a device.

/// The kernels of `attention.cu` that use tiles and dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) enum Kern {
    Fwd,
    BwdKv,
    BwdQ,
}

/// Threads per block of the tiled kernels (4 warps), as `THREADS` in attention.cu.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const THREADS: u32 = 128;

/// The (query rows, key rows) of a kernel's tiles for f32 or bf16 (`half`), as `Cfg` in
/// attention.cu.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) fn tiles(k: Kern, half: bool) -> (usize, usize) {
    match (k, half) {
        (Kern::BwdKv, true) => (32, 64),
        (_, true) => (64, 64),
        (_, false) => (32, 32),
    }
}

/// Bytes of dynamic shared memory a kernel takes for head width `d`: the arrays of its `Smem`
/// layout in attention.cu, each rounded up to 128 bytes (keep the two in step; the kernels trap
/// when launched with less).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) fn smem_bytes(k: Kern, half: bool, d: usize) -> usize {
    let rup = |bytes: usize| bytes.div_ceil(128) * 128;
    let es = if half { 2 } else { 4 };
    let dp = d.div_ceil(16) * 16;
    let (bq, bk) = tiles(k, half);
    // Row strides: T tiles, f32 score tiles, f32 accumulators.
    let (ldt, lds, ldo) = if half {
        (dp + 8, bk + 4, dp + 4)
    } else {
        (dp + 1, bk + 1, dp + 1)
    };
    let tile_q = rup(bq * ldt * es);
    let tile_k = rup(bk * ldt * es);
    let score = rup(bq * lds * 4);
    // bf16 keeps P / dS apart from the f32 scores (f32 overwrites them in place).
    let p = if half { rup(bq * (bk + 8) * es) } else { 0 };
    let stat = rup(bq * 4);
    match k {
        Kern::Fwd => tile_q + 2 * tile_k + score + p + rup(bq * ldo * 4) + 3 * stat,
        Kern::BwdKv => {
            2 * tile_k + 2 * tile_q + 2 * score + 2 * p + 2 * rup(bk * ldo * 4) + 2 * stat
        }
        Kern::BwdQ => 2 * tile_q + 2 * tile_k + 2 * score + p + rup(bq * ldo * 4) + 2 * stat,
    }
}

#[cfg(feature = "cuda")]
pub(super) use launch_code::{fwd, AttentionBwd};

#[cfg(feature = "cuda")]
mod launch_code {
    use candle_core::op::BackpropOp;
    use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

    use super::super::attention::{cuda_supports, Dims};
    use super::{smem_bytes, tiles, Kern, THREADS};
    use crate::cuda::{self, dispatch, launch, BackendStorage, CudaStorage, LaunchConfig};

    const CUDA: cuda::Module = cuda::ptx_module!("attention");

    fn check(dm: Dims, op: &str) -> Result<()> {
        if let Err(e) = cuda_supports(&[dm.b, dm.n, 3 * dm.h * dm.d], dm.h) {
            bail!("{op}: {e}");
        }
        Ok(())
    }

    /// `<base><DMAX>`: the instance for head widths up to 64, or up to 128.
    fn kernel_name(base: &str, d: usize) -> String {
        format!("{base}{}", if d <= 64 { 64 } else { 128 })
    }

    /// Blocks `(⌈rows/tile⌉, H, B)` of [`THREADS`] threads with `smem` bytes of shared memory.
    fn config(dm: Dims, tile: usize, smem: usize) -> Result<LaunchConfig> {
        let x = u32::try_from(dm.n.div_ceil(tile)).map_err(candle_core::Error::wrap)?;
        let smem = u32::try_from(smem).map_err(candle_core::Error::wrap)?;
        Ok(LaunchConfig {
            grid_dim: (x, dm.h as u32, dm.b as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        })
    }

    /// The kernels' integer arguments `(n, heads, d)`.
    fn ints(dm: Dims) -> (i32, i32, i32) {
        (dm.n as i32, dm.h as i32, dm.d as i32)
    }

    /// The forward: `qkv` `[B, N, 3C]` → the output `[B, N, C]` and the log-sum-exp
    /// `[B, H, N]` (f32) the backward needs.
    pub(in crate::ops) fn fwd(
        s: &CudaStorage,
        l: &Layout,
        dm: Dims,
        scale: f64,
    ) -> Result<(CudaStorage, Tensor)> {
        let op = "fused-attention";
        check(dm, op)?;
        let dev = &s.device;
        let Dims { b, n, h, d } = dm;
        let half = s.dtype() == DType::BF16;
        let (ni, hi, di) = ints(dm);
        let scale = scale as f32;
        let mut lse = cuda::scratch(dev, b * h * n, op)?;
        let smem = smem_bytes(Kern::Fwd, half, d);
        let cfg = config(dm, tiles(Kern::Fwd, half).0, smem)?;
        let out = dispatch!(op, s.dtype(), |T| {
            let x = cuda::view::<T>(s, l, op)?;
            let mut y = cuda::alloc::<T>(dev, b * n * h * d, op)?;
            let func = CUDA.func::<T>(dev, &kernel_name("attention_fwd", d))?;
            func.allow_dynamic_smem(smem)?;
            launch!(func, cfg; &x, &mut y, &mut lse, &ni, &hi, &di, &scale);
            cuda::wrap(y, dev)
        });
        let lse = Tensor::from_storage(
            Storage::Cuda(cuda::wrap(lse, dev)),
            (b, h, n),
            BackpropOp::none(),
            false,
        );
        Ok((out, lse))
    }

    /// The backward: (qkv, output, output gradient) → the qkv gradient `[B, N, 3C]`, from the
    /// forward's log-sum-exp. Three kernels: `D = rowsum(dO ⊙ O)`; dK and dV per key tile; dQ per
    /// query tile (no atomics: a fixed summation order).
    pub(in crate::ops) struct AttentionBwd {
        pub dm: Dims,
        pub scale: f64,
        pub lse: Tensor,
    }

    impl CustomOp3 for AttentionBwd {
        fn name(&self) -> &'static str {
            "fused-attention-bwd"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("{}: CUDA tensors only", self.name())
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let op = self.name();
            let dm = self.dm;
            check(dm, op)?;
            let Dims { b, n, h, d } = dm;
            let c = h * d;
            if l1.dims() != [b, n, 3 * c] || l2.dims() != [b, n, c] || l3.dims() != [b, n, c] {
                bail!(
                    "{op}: expected qkv [{b}, {n}, {}] and output, gradient [{b}, {n}, {c}], got \
                     {:?}, {:?}, {:?}",
                    3 * c,
                    l1.dims(),
                    l2.dims(),
                    l3.dims()
                );
            }
            if s2.dtype() != s1.dtype() || s3.dtype() != s1.dtype() {
                bail!("{op}: mixed dtypes");
            }
            let dev = &s1.device;
            let half = s1.dtype() == DType::BF16;
            let (ni, hi, di) = ints(dm);
            let (bi, scale) = (b as i32, self.scale as f32);
            let rows = b * h * n;
            let mut dsum = cuda::scratch(dev, rows, op)?;
            let out = dispatch!(op, s1.dtype(), |T| {
                let x = cuda::view::<T>(s1, l1, op)?;
                let o = cuda::view::<T>(s2, l2, op)?;
                let g = cuda::view::<T>(s3, l3, op)?;
                cuda::with_view::<f32, _>(&self.lse, op, |lse| {
                    if lse.len() != rows {
                        bail!(
                            "{op}: {} saved log-sum-exp values for {rows} rows",
                            lse.len()
                        );
                    }
                    let mut dx = cuda::alloc::<T>(dev, b * n * 3 * c, op)?;
                    launch!(CUDA.func::<T>(dev, "attention_bwd_pre")?, cuda::elementwise(rows * 32);
                        &o, &g, &mut dsum, &bi, &ni, &hi, &di);
                    for (kern, base) in [
                        (Kern::BwdKv, "attention_bwd_kv"),
                        (Kern::BwdQ, "attention_bwd_q"),
                    ] {
                        let smem = smem_bytes(kern, half, d);
                        let (bq, bk) = tiles(kern, half);
                        let tile = if kern == Kern::BwdKv { bk } else { bq };
                        let func = CUDA.func::<T>(dev, &kernel_name(base, d))?;
                        func.allow_dynamic_smem(smem)?;
                        launch!(func, config(dm, tile, smem)?;
                            &x, &g, &lse, &dsum, &mut dx, &ni, &hi, &di, &scale);
                    }
                    Ok(cuda::wrap(dx, dev))
                })?
            });
            Ok((out, l1.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes attention.cu's layouts take (checked sufficient by the host emulation in
    /// tests/cuda_emu, which mirrors this function).
    #[test]
    fn shared_memory_sizes() {
        let cases = [
            (32, false, [21504, 34048, 29824]),
            (32, true, [51968, 60672, 74240]),
            (64, false, [37888, 58624, 50304]),
            (64, true, [72448, 89344, 98816]),
            (72, false, [46080, 70912, 60544]),
            (72, true, [82688, 103680, 111104]),
            (128, false, [70656, 107776, 91264]),
            (128, true, [113408, 146688, 147968]),
        ];
        for (d, half, want) in cases {
            let got = [Kern::Fwd, Kern::BwdKv, Kern::BwdQ].map(|k| smem_bytes(k, half, d));
            assert_eq!(got, want, "d = {d}, bf16 = {half}");
            // Within an A100's 163 KiB opt-in limit (H100/H200: 227 KiB).
            assert!(got.iter().all(|&b| b <= 163 * 1024));
        }
    }
}

//! Launch support for the ops' CUDA kernels (`src/ops/<op>.cu`, compiled to PTX by build.rs and
//! embedded): the f32/bf16 dispatch, views of contiguous inputs, output buffers, launch shapes.
//! Each op's `cuda_fwd` uses these; the kernels' arithmetic is f32 for both dtypes.

pub(crate) use candle_core::backend::BackendStorage;
pub(crate) use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
};
pub(crate) use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, Layout, Result, Shape, Storage, Tensor, WithDType};
pub(crate) use candle_core::{CudaDevice, CudaStorage};
use std::sync::Arc;

/// An element type with kernels: its name is the suffix of the kernels' names.
pub(crate) trait Elem: CudaDType + DeviceRepr + WithDType {
    const NAME: &'static str;
}

impl Elem for f32 {
    const NAME: &'static str = "f32";
}

impl Elem for half::bf16 {
    const NAME: &'static str = "bf16";
}

/// The PTX of one op's `.cu` file; its kernels are `<kernel>_<dtype>`.
pub(crate) struct Module {
    pub(crate) name: &'static str,
    pub(crate) ptx: &'static str,
}

/// The [`Module`] of `src/ops/<op>.cu`.
macro_rules! ptx_module {
    ($op:literal) => {
        $crate::cuda::Module {
            name: $op,
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $op, ".ptx")),
        }
    };
}
pub(crate) use ptx_module;

impl Module {
    /// The kernel `<kernel>_<T>`, its module loaded on the device at first use.
    pub(crate) fn func<T: Elem>(&self, dev: &CudaDevice, kernel: &str) -> Result<Kernel> {
        let name = format!("{kernel}_{}", T::NAME);
        let func = dev.get_or_load_custom_func(&name, &format!("cbs_{}", self.name), self.ptx)?;
        Ok(Kernel {
            func: func.into_cuda_function(),
            stream: dev.cuda_stream(),
        })
    }
}

/// A loaded kernel and the stream of the device it runs on (candle's one stream per device, so
/// that it is ordered with candle's own kernels).
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }

    /// Allow launches with `bytes` of dynamic shared memory (above the default 48 KiB a kernel
    /// must opt in; the call fails where the device has less).
    pub(crate) fn allow_dynamic_smem(&self, bytes: usize) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
        use candle_core::cuda_backend::WrapErr as _;
        let bytes = i32::try_from(bytes).map_err(candle_core::Error::wrap)?;
        self.func
            .set_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
            .w()
    }
}

/// Run `$body` with the type alias `$t` bound to the element type of `$dtype` (f32 or bf16).
macro_rules! dispatch {
    ($op:expr, $dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                #[allow(dead_code)]
                type $t = f32;
                $body
            }
            candle_core::DType::BF16 => {
                #[allow(dead_code)]
                type $t = half::bf16;
                $body
            }
            dt => candle_core::bail!("{}: the CUDA kernels take f32 or bf16, got {dt:?}", $op),
        }
    };
}
pub(crate) use dispatch;

/// Launch `$func` with `$cfg` and the arguments in order (references: device buffers, views and
/// scalars, which must match the kernel's parameter list in its `.cu` file).
macro_rules! launch {
    ($func:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        use candle_core::cuda_backend::WrapErr as _;
        let func = $func;
        let mut builder = func.builder();
        $(
            let arg = $arg;
            builder.arg(arg);
        )*
        // SAFETY: the arguments match the kernel's parameters (types and order), and the sizes
        // passed bound every access the kernel makes to the buffers passed.
        unsafe { builder.launch($cfg) }.w()?;
    }};
}
pub(crate) use launch;

/// The contiguous elements of a kernel's input (the callers make their inputs contiguous; an
/// offset into the storage is fine, strides are not).
pub(crate) fn view<'a, T: Elem>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => bail!(
            "{op}: the CUDA kernel needs a contiguous {:?} input of shape {:?}, got strides {:?}",
            s.dtype(),
            l.dims(),
            l.stride()
        ),
    }
}

/// `f` on the view of a tensor an op holds (a table, a bias), which must be a contiguous CUDA
/// tensor of the op's dtype.
pub(crate) fn with_view<T: Elem, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*st else {
        bail!(
            "{op}: a {:?} tensor where a CUDA one is needed",
            t.device().location()
        );
    };
    if s.dtype() != T::DTYPE {
        bail!(
            "{op}: a {:?} tensor where {:?} is needed",
            s.dtype(),
            T::DTYPE
        );
    }
    f(view::<T>(s, l, op)?)
}

/// An output buffer of `n` elements, every one of which the kernel writes.
pub(crate) fn alloc<T: Elem>(dev: &CudaDevice, n: usize, op: &str) -> Result<CudaSlice<T>> {
    if n == 0 {
        bail!("{op}: empty tensors take the composed ops");
    }
    // SAFETY: plain data, fully written by the kernel before anything reads it.
    unsafe { dev.alloc::<T>(n) }
}

/// A scratch buffer of `n` f32 values (per-row statistics, partial sums).
pub(crate) fn scratch(dev: &CudaDevice, n: usize, op: &str) -> Result<CudaSlice<f32>> {
    alloc::<f32>(dev, n.max(1), op)
}

pub(crate) fn wrap<T: Elem>(out: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

/// Threads per block of the element-wise and row kernels.
const THREADS: u32 = 256;

fn grid(n: usize, max: usize, op: &str) -> Result<u32> {
    if n == 0 || n > max {
        bail!("{op}: {n} blocks is outside the launch limits (1..={max})");
    }
    Ok(n as u32)
}

/// Grid-stride kernels over `n` elements: enough blocks to fill the device, no more.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 4096) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row of `cols` elements: up to 256 threads, a multiple of 32.
pub(crate) fn rows(rows: usize, cols: usize, op: &str) -> Result<LaunchConfig> {
    let threads = (cols.div_ceil(32) * 32).clamp(32, THREADS as usize) as u32;
    Ok(LaunchConfig {
        grid_dim: (grid(rows, i32::MAX as usize, op)?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// (32, 32) blocks, 32 columns of `cols` per block along x, `ys` blocks along y (one per sample
/// or chunk of rows): the column-sum kernels.
pub(crate) fn columns(cols: usize, ys: usize, op: &str) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            grid(cols.div_ceil(32), i32::MAX as usize, op)?,
            grid(ys, 65535, op)?,
            1,
        ),
        block_dim: (32, 32, 1),
        shared_mem_bytes: 0,
    })
}

/// How the kernels of a [`fused_op!`](crate::ops) op are launched.
#[derive(Clone, Copy)]
pub(crate) enum Launch {
    /// Grid-stride over all elements.
    Elementwise,
    /// One block per row of the last dimension.
    Rows,
}

impl Launch {
    fn config(self, n: usize, cols: usize, op: &str) -> Result<LaunchConfig> {
        match self {
            Launch::Elementwise => Ok(elementwise(n)),
            Launch::Rows => rows(n / cols, cols, op),
        }
    }
}

/// The forward of a one-input, same-shape op: `<module>_fwd_<T>(x, y, rows, cols, p)`.
pub(crate) fn unary_fwd(
    m: &Module,
    launch: Launch,
    op: &str,
    s: &CudaStorage,
    l: &Layout,
    p: f64,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let n = l.shape().elem_count();
    let cols = l.dims().last().copied().unwrap_or(1).max(1);
    let cfg = launch.config(n, cols, op)?;
    let (rows, p) = (n / cols, p as f32);
    let out = dispatch!(op, s.dtype(), |T| {
        let x = view::<T>(s, l, op)?;
        let mut y = alloc::<T>(dev, n, op)?;
        let func = m.func::<T>(dev, &format!("{}_fwd", m.name))?;
        launch!(func, cfg; &x, &mut y, &rows, &cols, &p);
        wrap(y, dev)
    });
    Ok((out, l.shape().clone()))
}

/// The backward of a [`unary_fwd`] op: `<module>_bwd_<T>(saved, g, dx, rows, cols, p)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn unary_bwd(
    m: &Module,
    launch: Launch,
    op: &str,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    p: f64,
) -> Result<(CudaStorage, Shape)> {
    if l1.shape() != l2.shape() {
        bail!("{op}: shape mismatch {:?} vs {:?}", l1.shape(), l2.shape());
    }
    let dev = &s1.device;
    let n = l1.shape().elem_count();
    let cols = l1.dims().last().copied().unwrap_or(1).max(1);
    let cfg = launch.config(n, cols, op)?;
    let (rows, p) = (n / cols, p as f32);
    let out = dispatch!(op, s1.dtype(), |T| {
        let a = view::<T>(s1, l1, op)?;
        let g = view::<T>(s2, l2, op)?;
        let mut dx = alloc::<T>(dev, n, op)?;
        let func = m.func::<T>(dev, &format!("{}_bwd", m.name))?;
        launch!(func, cfg; &a, &g, &mut dx, &rows, &cols, &p);
        wrap(dx, dev)
    });
    Ok((out, l1.shape().clone()))
}

//! `--device`: the one option every computing command shares.

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::cli::DeviceArgs;

impl DeviceArgs {
    /// `cpu`, `cuda` or `cuda:N` → a candle device.
    pub fn open(&self) -> Result<Device> {
        self.open_local(None)
    }

    /// As [`DeviceArgs::open`], with `cuda` meaning `cuda:LOCAL_RANK` in a data-parallel group.
    pub fn open_local(&self, local_rank: Option<usize>) -> Result<Device> {
        let d = self.device.trim();
        if let (Some(l), "cuda") = (local_rank, d) {
            return DeviceArgs {
                device: format!("cuda:{l}"),
            }
            .open();
        }
        if d == "cpu" {
            return Ok(Device::Cpu);
        }
        let ordinal = match d.strip_prefix("cuda") {
            Some("") => 0,
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .with_context(|| format!("--device `{d}`: expected cpu, cuda or cuda:N"))?,
            None => bail!("--device `{d}`: expected cpu, cuda or cuda:N"),
        };
        if !cfg!(feature = "cuda") {
            bail!(
                "--device {d}: this binary was built without CUDA (build it with \
                 scripts/build-cuda.sh, or cargo's --features cuda)"
            );
        }
        let dev = Device::new_cuda(ordinal).map_err(|e| {
            // The driver's error, without candle's backtrace.
            let e = match e {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                e => e,
            };
            anyhow::anyhow!(
                "--device {d}: no usable CUDA device {ordinal} ({e}); the NVIDIA driver \
                 (libcuda.so.1) and a GPU are needed at run time"
            )
        })?;
        // Honest about what is unverified: nothing of the CUDA path has run on a GPU in this
        // project's checks yet.
        eprintln!(
            "note: the CUDA path of cbs has not been verified on a GPU yet;              scripts/gpu-check.sh checks it against the CPU (`--kernels composed` avoids the              hand-written CUDA kernels)"
        );
        Ok(dev)
    }
}

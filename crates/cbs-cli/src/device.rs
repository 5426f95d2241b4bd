//! `--device`: the one option every computing command shares.

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::cli::DeviceArgs;

impl DeviceArgs {
    /// `cpu`, `cuda` or `cuda:N` → a candle device.
    pub fn open(&self) -> Result<Device> {
        let d = self.device.trim();
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
        Device::new_cuda(ordinal).with_context(|| {
            format!(
                "--device {d}: CUDA is unavailable (this binary must be built with --features \
                 cuda)"
            )
        })
    }
}

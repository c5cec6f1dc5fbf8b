//! `--device auto|cpu|cuda|cuda:N`: auto picks CUDA when present.

use anyhow::{bail, Result};
use tch::Device;

pub fn parse_device(s: &str) -> Result<Device> {
    let cuda_count = || tch::Cuda::device_count() as usize;
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
                    Some(i) => i,
                    None => bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
                },
                None => bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
            };
            let n = cuda_count();
            if n == 0 {
                bail!("--device {s}: no CUDA device is available on this machine (use --device cpu or auto)");
            }
            if index >= n {
                bail!("--device {s}: only {n} CUDA device(s) present");
            }
            Ok(Device::Cuda(index))
        }
    }
}

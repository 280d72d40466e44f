//! Which backend a command runs on: `--device auto|cpu|cuda`, resolved against what this binary
//! and this machine have, and the dispatch of device-generic work onto it.

use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use anyhow::Result;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// the GPU when a driver and a device are present, else the CPU
    Auto,
    Cpu,
    Cuda,
}

/// Work that runs on whichever backend was chosen (the model code is generic over `Backend`).
pub trait OnDevice {
    type Output;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Output>;
}

/// True when the GPU backend is compiled in and finds a driver and a device (probed without
/// letting cudarc panic on a machine without libcuda).
#[cfg(feature = "cuda")]
fn gpu_present() -> bool {
    crate::backend::cuda::cuda_available()
}
#[cfg(not(feature = "cuda"))]
fn gpu_present() -> bool {
    false
}

/// Resolves `auto`; `cuda` is refused with a clear message until the GPU backend exists.
pub fn resolve_device(choice: DeviceChoice) -> Result<DeviceChoice> {
    match choice {
        DeviceChoice::Cpu => Ok(DeviceChoice::Cpu),
        DeviceChoice::Auto if gpu_present() => Ok(DeviceChoice::Cuda),
        DeviceChoice::Auto => Ok(DeviceChoice::Cpu),
        DeviceChoice::Cuda if !cfg!(feature = "cuda") => anyhow::bail!(
            "--device cuda: this binary was built without the GPU backend (rebuild with `--features cuda`, see README)"
        ),
        DeviceChoice::Cuda if !gpu_present() => {
            anyhow::bail!("--device cuda: no CUDA driver (libcuda) or no GPU found on this machine")
        }
        DeviceChoice::Cuda => Ok(DeviceChoice::Cuda),
    }
}

pub fn run_on<T: OnDevice>(choice: DeviceChoice, task: T) -> Result<T::Output> {
    match resolve_device(choice)? {
        DeviceChoice::Cuda => run_cuda(task),
        _ => task.run(&Cpu::new()),
    }
}

#[cfg(feature = "cuda")]
fn run_cuda<T: OnDevice>(task: T) -> Result<T::Output> {
    let be = crate::backend::cuda::Cuda::new(0)?;
    task.run(&be)
}
#[cfg(not(feature = "cuda"))]
fn run_cuda<T: OnDevice>(_task: T) -> Result<T::Output> {
    anyhow::bail!("the GPU backend is not compiled into this binary")
}

//! Choosing where and in which precision the networks run.

use candle_core::{DType, Device};

/// `--device`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum DeviceChoice {
    /// CUDA when built with it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// `--dtype`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum DTypeChoice {
    /// float32 on the CPU, bfloat16 on CUDA (what NVIDIA runs).
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("CUDA requested, but this build has no CUDA support; rebuild with `--features cuda`")]
    NoCudaSupport,
    #[error("CUDA device 0 is not usable: {0}")]
    Cuda(String),
    #[error("{0} is not supported on the CPU in this build; use --dtype f32")]
    CpuDtype(&'static str),
}

pub fn select_device(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                return Err(DeviceError::NoCudaSupport);
            }
            Device::new_cuda(0).map_err(|e| DeviceError::Cuda(e.to_string()))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

pub fn select_dtype(choice: DTypeChoice, device: &Device) -> Result<DType, DeviceError> {
    match (choice, device.is_cpu()) {
        (DTypeChoice::Auto, true) | (DTypeChoice::F32, _) => Ok(DType::F32),
        (DTypeChoice::Auto, false) | (DTypeChoice::Bf16, false) => Ok(DType::BF16),
        (DTypeChoice::F16, false) => Ok(DType::F16),
        // candle's CPU convolutions have no bf16/f16 kernels worth using.
        (DTypeChoice::Bf16, true) => Err(DeviceError::CpuDtype("bf16")),
        (DTypeChoice::F16, true) => Err(DeviceError::CpuDtype("f16")),
    }
}

/// "CPU" or the CUDA device's description.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "CUDA device 0".to_string(),
        Device::Metal(_) => "Metal".to_string(),
    }
}

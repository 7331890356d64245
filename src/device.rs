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

/// Device memory of a CUDA device in bytes: the high-water mark of its default memory pool (where
/// candle's stream-ordered allocations live) and the device-wide use now. `None` off CUDA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMemory {
    pub pool_peak: u64,
    pub device_used: u64,
    pub device_total: u64,
}

/// Resets the pool's high-water mark, so that [`gpu_memory`] reports the peak from now on.
#[cfg(feature = "cuda")]
pub fn reset_gpu_peak(device: &Device) -> Result<(), DeviceError> {
    if !device.is_cuda() {
        return Ok(());
    }
    let pool = default_pool(device)?;
    let mut zero: u64 = 0;
    // SAFETY: `pool` is the device's live default pool, and USED_MEM_HIGH takes a u64 (writing 0
    // resets it, per the driver API).
    unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    }
    .result()
    .map_err(cuda_error)
}

#[cfg(feature = "cuda")]
fn cuda_error(error: cudarc::driver::DriverError) -> DeviceError {
    DeviceError::Cuda(error.to_string())
}

#[cfg(not(feature = "cuda"))]
pub fn reset_gpu_peak(_device: &Device) -> Result<(), DeviceError> {
    Ok(())
}

#[cfg(feature = "cuda")]
pub fn gpu_memory(device: &Device) -> Result<Option<GpuMemory>, DeviceError> {
    if !device.is_cuda() {
        return Ok(None);
    }
    let pool = default_pool(device)?;
    let mut peak: u64 = 0;
    // SAFETY: as in `reset_gpu_peak`; the driver writes one u64.
    unsafe {
        cudarc::driver::sys::cuMemPoolGetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut peak as *mut u64).cast(),
        )
    }
    .result()
    .map_err(cuda_error)?;
    let (free, total) = cudarc::driver::result::mem_get_info().map_err(cuda_error)?;
    Ok(Some(GpuMemory {
        pool_peak: peak,
        device_used: total.saturating_sub(free) as u64,
        device_total: total as u64,
    }))
}

#[cfg(not(feature = "cuda"))]
pub fn gpu_memory(_device: &Device) -> Result<Option<GpuMemory>, DeviceError> {
    Ok(None)
}

#[cfg(feature = "cuda")]
fn default_pool(device: &Device) -> Result<cudarc::driver::sys::CUmemoryPool, DeviceError> {
    let Device::Cuda(cuda) = device else {
        return Err(DeviceError::Cuda("not a CUDA device".into()));
    };
    let stream = cuda.cuda_stream();
    let context = stream.context();
    context.bind_to_thread().map_err(cuda_error)?;
    let mut pool: cudarc::driver::sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
    unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) }
        .result()
        .map_err(cuda_error)?;
    Ok(pool)
}

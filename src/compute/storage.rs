//! CPU f32 tensors as slices: which tensors take the fast path, and their values read in place
//! (no copy unless a tensor is not contiguous).
use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};

/// The fast path handles CPU f32 tensors outside of any autograd graph (also the attention
/// kernel's condition).
pub(crate) fn fast_path_applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let ok = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op();
    ok(x) && ok(weight) && bias.is_none_or(ok)
}

/// The contiguous f32 data of a CPU tensor.
fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("kernels: expected a cpu tensor")
    };
    contiguous_f32(cpu, layout)
}

/// Calls `f` with the contiguous f32 values of the input, the weights and the bias, after
/// checking that the bias has one value per output channel (`outputs`).
pub(crate) fn with_f32_values<R>(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    outputs: usize,
    f: impl FnOnce(&[f32], &[f32], Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    if let Some(b) = bias {
        let bo = b.dims1()?;
        if bo != outputs {
            bail!("kernels: bias has {bo} elements, expected {outputs}");
        }
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let bias_guard = bias.as_ref().map(Tensor::storage_and_layout);
    let bs = match &bias_guard {
        Some((bs, bl)) => Some(f32_slice(bs, bl)?),
        None => None,
    };
    f(f32_slice(&xs, xl)?, f32_slice(&ws, wl)?, bs)
}

/// The contiguous f32 values of CPU storage under `layout`.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("kernels: expected a contiguous tensor")
    };
    match storage.as_slice::<f32>()?.get(start..end) {
        Some(s) => Ok(s),
        None => bail!("kernels: tensor layout is out of its storage's bounds"),
    }
}

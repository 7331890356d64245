//! The training path's convolution: a candle custom op whose forward and backward passes run on
//! the implicit-GEMM kernel (candle's own conv backward is far slower on the CPU).
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::implicit_gemm::{conv_f32, oob, CpuKernel, Geom};
use super::storage::contiguous_f32;

/// conv2d without bias (NCHW, weight (O, I, kh, kw), symmetric zero padding) as a custom op with
/// a backward pass:
/// * input gradient: the gradient is scattered onto a zero canvas at the output positions'
///   strided offsets, then correlated with the spatially flipped, in/out-swapped kernel (a plain
///   stride-1 convolution on the fast kernel, whatever the forward stride and padding);
/// * weight gradient: `dW = G · im2col(x)ᵀ`, one GEMM per image, summed.
#[derive(Clone, Copy, Debug)]
pub(super) struct TrainableConv2d {
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl TrainableConv2d {
    fn geom(&self, x: &Layout, w: &Layout) -> Result<Geom> {
        Geom::conv(
            x.shape().dims4()?,
            w.shape().dims4()?,
            self.stride,
            self.padding,
        )
    }
}

/// The contiguous values of a CPU f32 tensor, detached from any graph.
fn values_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp2 for TrainableConv2d {
    fn name(&self) -> &'static str {
        "tokenscope-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(l1, l2)?;
        let out = conv_f32(
            CpuKernel::best(),
            &g,
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            None,
        )?;
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.layout(), weight.layout())?;
        let grad_values = values_f32(grad)?;
        let w_values = values_f32(weight)?;
        let x_values = values_f32(x)?;
        let grad_x = input_gradient(&g, &grad_values, &w_values)?;
        let grad_w = weight_gradient(&g, &grad_values, &x_values)?;
        Ok((
            Some(Tensor::from_vec(
                grad_x,
                (g.n, g.c, g.h, g.w),
                &Device::Cpu,
            )?),
            Some(Tensor::from_vec(
                grad_w,
                (g.o, g.c, g.kh, g.kw),
                &Device::Cpu,
            )?),
        ))
    }
}

/// dL/dx of a convolution, given dL/dy (N, O, Ho, Wo) and the weights (O, C, kh, kw).
fn input_gradient(g: &Geom, grad: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    // x[i] receives g[o]·w[t] wherever o·s + t − p = i. On a canvas z of size H + k − 1 holding
    // g[o] at o·s + k − 1 − p, that is x[i] = Σ_t' z[i + t']·w[k − 1 − t']: a valid convolution.
    let (ch, cw) = (g.h + g.kh - 1, g.w + g.kw - 1);
    let mut canvas = vec![0f32; g.n * g.o * ch * cw];
    canvas
        .par_chunks_mut(ch * cw)
        .zip(grad.par_chunks(g.ho * g.wo))
        .for_each(|(plane, src)| {
            for oy in 0..g.ho {
                let Some(y) = (oy * g.stride + g.kh - 1).checked_sub(g.pad) else {
                    continue;
                };
                if y >= ch {
                    continue;
                }
                for ox in 0..g.wo {
                    let Some(x) = (ox * g.stride + g.kw - 1).checked_sub(g.pad) else {
                        continue;
                    };
                    if let (true, Some(dst), Some(&v)) =
                        (x < cw, plane.get_mut(y * cw + x), src.get(oy * g.wo + ox))
                    {
                        *dst = v;
                    }
                }
            }
        });
    // Flipped kernel with input and output channels swapped: (C, O, kh, kw).
    let mut flipped = vec![0f32; w.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let src = ((o * g.c + c) * g.kh + ky) * g.kw + kx;
                    let dst = ((c * g.o + o) * g.kh + (g.kh - 1 - ky)) * g.kw + (g.kw - 1 - kx);
                    if let (Some(d), Some(&v)) = (flipped.get_mut(dst), w.get(src)) {
                        *d = v;
                    }
                }
            }
        }
    }
    let back = Geom {
        n: g.n,
        c: g.o,
        h: ch,
        w: cw,
        o: g.c,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        pad: 0,
        ho: g.h,
        wo: g.w,
        image_stride: g.o * ch * cw,
        channel_stride: ch * cw,
    };
    conv_f32(CpuKernel::best(), &back, &canvas, &flipped, None)
}

/// dL/dW of a convolution, given dL/dy (N, O, Ho, Wo) and the input (N, C, H, W).
fn weight_gradient(g: &Geom, grad: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    let k_total = g.c * g.kh * g.kw;
    let plane = g.ho * g.wo;
    let per_image: Vec<Result<Vec<f32>>> = (0..g.n)
        .into_par_iter()
        .map(|n| {
            // im2col of image n stored (K, P): for every tap each output row reads one input
            // row segment, so filling it is row copies (the GEMM reads it transposed).
            let mut cols = vec![0f32; plane * k_total];
            let image = x
                .get(n * g.c * g.h * g.w..(n + 1) * g.c * g.h * g.w)
                .ok_or_else(oob)?;
            for c in 0..g.c {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let k = (c * g.kh + ky) * g.kw + kx;
                        let dst_plane = cols.get_mut(k * plane..(k + 1) * plane).ok_or_else(oob)?;
                        // Output columns whose input column lies inside the image.
                        let ox_lo = g.pad.saturating_sub(kx).div_ceil(g.stride);
                        let ox_hi = (g.w + g.pad)
                            .saturating_sub(kx)
                            .div_ceil(g.stride)
                            .min(g.wo);
                        if ox_lo >= ox_hi {
                            continue;
                        }
                        let ix0 = ox_lo * g.stride + kx - g.pad;
                        for (oy, dst_row) in dst_plane.chunks_exact_mut(g.wo).enumerate() {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let src_row = (c * g.h + iy as usize) * g.w + ix0;
                            let Some(dst) = dst_row.get_mut(ox_lo..ox_hi) else {
                                continue;
                            };
                            if g.stride == 1 {
                                if let Some(src) = image.get(src_row..src_row + dst.len()) {
                                    dst.copy_from_slice(src);
                                }
                            } else {
                                for (j, d) in dst.iter_mut().enumerate() {
                                    *d = image.get(src_row + j * g.stride).copied().unwrap_or(0.0);
                                }
                            }
                        }
                    }
                }
            }
            let g_n = grad
                .get(n * g.o * plane..(n + 1) * g.o * plane)
                .ok_or_else(oob)?;
            let mut dw = vec![0f32; g.o * k_total];
            // SAFETY: gemm reads m×k and k×n matrices and writes m×n through the given strides;
            // the slices above have exactly those sizes.
            unsafe {
                gemm::gemm(
                    g.o,
                    k_total,
                    plane,
                    dw.as_mut_ptr(),
                    1,
                    k_total as isize,
                    false,
                    g_n.as_ptr(),
                    1,
                    plane as isize,
                    cols.as_ptr(),
                    plane as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            Ok(dw)
        })
        .collect();
    let mut total = vec![0f32; g.o * k_total];
    for dw in per_image {
        for (t, v) in total.iter_mut().zip(dw?) {
            *t += v;
        }
    }
    Ok(total)
}

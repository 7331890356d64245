//! Optical-flow consistency (stage 2 of the Cosmos recipe): flow is estimated on the *input*
//! frames with a classical coarse-to-fine Lucas–Kanade, then the reconstruction of frame t−1 is
//! warped onto frame t and compared with the reconstruction of frame t where the flow is
//! trustworthy. The warp is a differentiable bilinear gather, so gradients reach both frames.

use candle_core::{DType, Tensor};

use super::Result;

/// A single-channel image in row-major order.
#[derive(Clone, Debug)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Gray {
    fn at(&self, x: isize, y: isize) -> f32 {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        // Clamped into the image above.
        self.values[y * self.width + x]
    }

    /// Bilinear sample with edge clamping.
    pub fn sample(&self, x: f32, y: f32) -> f32 {
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let top = self.at(x0, y0) * (1.0 - fx) + self.at(x0 + 1, y0) * fx;
        let bottom = self.at(x0, y0 + 1) * (1.0 - fx) + self.at(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Half resolution by 2x2 averaging (odd edges dropped).
    fn half(&self) -> Gray {
        let (w, h) = (self.width / 2, self.height / 2);
        let mut values = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = (2 * x as isize, 2 * y as isize);
                values.push(
                    0.25 * (self.at(sx, sy)
                        + self.at(sx + 1, sy)
                        + self.at(sx, sy + 1)
                        + self.at(sx + 1, sy + 1)),
                );
            }
        }
        Gray {
            width: w,
            height: h,
            values,
        }
    }
}

/// Per-pixel displacement (dx, dy): pixel p of the target frame sits at p + d in the source frame.
#[derive(Clone, Debug)]
pub struct Flow {
    pub width: usize,
    pub height: usize,
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
}

impl Flow {
    fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            dx: vec![0.0; width * height],
            dy: vec![0.0; width * height],
        }
    }

    /// Twice the size and twice the displacement (nearest neighbour).
    fn upsampled(&self, width: usize, height: usize) -> Self {
        let mut out = Self::zeros(width, height);
        for y in 0..height {
            for x in 0..width {
                let sx = (x / 2).min(self.width.saturating_sub(1));
                let sy = (y / 2).min(self.height.saturating_sub(1));
                let src = sy * self.width + sx;
                let dst = y * width + x;
                if let (Some(o), Some(&v)) = (out.dx.get_mut(dst), self.dx.get(src)) {
                    *o = 2.0 * v;
                }
                if let (Some(o), Some(&v)) = (out.dy.get_mut(dst), self.dy.get(src)) {
                    *o = 2.0 * v;
                }
            }
        }
        out
    }
}

/// Sums over a (2r+1)² window (edges clamped), via separable running sums.
fn box_sum(values: &[f32], width: usize, height: usize, r: usize) -> Vec<f32> {
    let mut rows = Vec::with_capacity(values.len());
    for row in values.chunks_exact(width.max(1)) {
        rows.extend((0..width).map(|x| {
            let (lo, hi) = (x.saturating_sub(r), (x + r).min(width - 1));
            row.get(lo..=hi).map_or(0.0, |s| s.iter().sum::<f32>())
        }));
    }
    let mut out = Vec::with_capacity(values.len());
    for y in 0..height {
        let (lo, hi) = (y.saturating_sub(r), (y + r).min(height - 1));
        out.extend((0..width).map(|x| {
            (lo..=hi)
                .filter_map(|yy| rows.get(yy * width + x))
                .sum::<f32>()
        }));
    }
    out
}

/// One Lucas–Kanade refinement of `flow` at one pyramid level.
fn refine(source: &Gray, target: &Gray, flow: &mut Flow, radius: usize) {
    let (w, h) = (target.width, target.height);
    let n = w * h;
    // Per pixel: the structure tensor terms gx², gx·gy, gy² and the right-hand sides.
    let mut terms = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    for (i, ((&fx, &fy), &t)) in flow.dx.iter().zip(&flow.dy).zip(&target.values).enumerate() {
        let (x, y) = ((i % w.max(1)) as isize, (i / w.max(1)) as isize);
        let (px, py) = (x as f32 + fx, y as f32 + fy);
        let warped = source.sample(px, py);
        // Gradients averaged over both frames (a symmetric, more stable linearisation).
        let gx = 0.25
            * (source.sample(px + 1.0, py) - source.sample(px - 1.0, py) + target.at(x + 1, y)
                - target.at(x - 1, y));
        let gy = 0.25
            * (source.sample(px, py + 1.0) - source.sample(px, py - 1.0) + target.at(x, y + 1)
                - target.at(x, y - 1));
        let e = warped - t;
        for (term, value) in terms
            .iter_mut()
            .zip([gx * gx, gx * gy, gy * gy, -gx * e, -gy * e])
        {
            term.push(value);
        }
    }
    let [sxx, sxy, syy, sbx, sby] = terms.map(|v| box_sum(&v, w, h, radius));
    // Tikhonov term: flat, textureless windows keep the coarser estimate.
    let lambda = 1e-3 * ((2 * radius + 1) * (2 * radius + 1)) as f32;
    let systems = sxx.iter().zip(&sxy).zip(&syy).zip(sbx.iter().zip(&sby));
    for ((dx, dy), (((&xx, &xy), &yy), (&bx, &by))) in
        flow.dx.iter_mut().zip(flow.dy.iter_mut()).zip(systems)
    {
        let (a, b, d) = (xx + lambda, xy, yy + lambda);
        let det = a * d - b * b;
        if det.abs() < 1e-12 {
            continue;
        }
        *dx += ((d * bx - b * by) / det).clamp(-2.0, 2.0);
        *dy += ((a * by - b * bx) / det).clamp(-2.0, 2.0);
    }
}

/// Flow from `target` back to `source` (coarse to fine, `levels` pyramid levels).
pub fn estimate(source: &Gray, target: &Gray, levels: usize, iterations: usize) -> Flow {
    let mut sources = vec![source.clone()];
    let mut targets = vec![target.clone()];
    for _ in 1..levels {
        let (s, t) = match (sources.last(), targets.last()) {
            (Some(s), Some(t)) if s.width >= 16 && s.height >= 16 => (s.half(), t.half()),
            _ => break,
        };
        sources.push(s);
        targets.push(t);
    }
    let mut flow: Option<Flow> = None;
    for (s, t) in sources.iter().zip(&targets).rev() {
        let mut current = match flow {
            Some(f) => f.upsampled(t.width, t.height),
            None => Flow::zeros(t.width, t.height),
        };
        for _ in 0..iterations {
            refine(s, t, &mut current, 2);
        }
        flow = Some(current);
    }
    flow.unwrap_or_else(|| Flow::zeros(target.width, target.height))
}

/// Luma in [-1, 1] of each frame of a (B, 3, T, H, W) batch: `[b][t]`.
pub fn gray_frames(batch: &Tensor) -> Result<Vec<Vec<Gray>>> {
    let (b, _, t, h, w) = batch.dims5()?;
    let values = batch
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b);
    for item in 0..b {
        let mut frames = Vec::with_capacity(t);
        for frame in 0..t {
            let channel = |c: usize| {
                let start = ((item * 3 + c) * t + frame) * plane;
                values.get(start..start + plane).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "frame {frame} of item {item}: channel {c} is outside the batch"
                    ))
                })
            };
            let (r, g, bl) = (channel(0)?, channel(1)?, channel(2)?);
            let luma = r
                .iter()
                .zip(g)
                .zip(bl)
                .map(|((&r, &g), &b)| 0.299 * r + 0.587 * g + 0.114 * b)
                .collect();
            frames.push(Gray {
                width: w,
                height: h,
                values: luma,
            });
        }
        out.push(frames);
    }
    Ok(out)
}

/// A fixed bilinear warp of (N, C, H, W) images: four gathers with constant weights, so the
/// result is differentiable in the images (not in the flow, which comes from the input).
#[derive(Clone, Debug)]
pub struct Warp {
    /// Per corner: (N, C, H·W) u32 source indices and (N, 1, H·W) weights.
    corners: Vec<(Tensor, Tensor)>,
    channels: usize,
}

impl Warp {
    /// `flows[n]` maps pixel p of output image n to p + flow in input image n.
    pub fn new(flows: &[Flow], channels: usize, device: &candle_core::Device) -> Result<Self> {
        let n = flows.len();
        let (w, h) = flows.first().map_or((0, 0), |f| (f.width, f.height));
        let plane = w * h;
        if let Some(odd) = flows
            .iter()
            .find(|f| (f.width, f.height) != (w, h) || f.dx.len() != plane || f.dy.len() != plane)
        {
            return Err(candle_core::Error::Msg(format!(
                "flows of one warp must all be {w}x{h} with one vector per pixel, got {}x{} ({} / {} vectors)",
                odd.width,
                odd.height,
                odd.dx.len(),
                odd.dy.len()
            ))
            .into());
        }
        let mut index = vec![vec![0u32; n * plane]; 4];
        let mut weight = vec![vec![0f32; n * plane]; 4];
        for (item, flow) in flows.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let p = y * w + x;
                    // Every flow was checked to hold one vector per pixel above.
                    let sx = (x as f32 + flow.dx[p]).clamp(0.0, (w - 1) as f32);
                    let sy = (y as f32 + flow.dy[p]).clamp(0.0, (h - 1) as f32);
                    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                    let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                    let corners = [
                        (y0 * w + x0, (1.0 - fx) * (1.0 - fy)),
                        (y0 * w + x1, fx * (1.0 - fy)),
                        (y1 * w + x0, (1.0 - fx) * fy),
                        (y1 * w + x1, fx * fy),
                    ];
                    for (k, (src, wt)) in corners.into_iter().enumerate() {
                        if let (Some(i), Some(v)) = (
                            index.get_mut(k).and_then(|v| v.get_mut(item * plane + p)),
                            weight.get_mut(k).and_then(|v| v.get_mut(item * plane + p)),
                        ) {
                            *i = src as u32;
                            *v = wt;
                        }
                    }
                }
            }
        }
        let mut corners = Vec::with_capacity(4);
        for (idx, wt) in index.into_iter().zip(weight) {
            let idx = Tensor::from_vec(idx, (n, 1, plane), device)?
                .repeat((1, channels, 1))?
                .contiguous()?;
            let wt = Tensor::from_vec(wt, (n, 1, plane), device)?;
            corners.push((idx, wt));
        }
        Ok(Self { corners, channels })
    }

    /// Warps (N, C, H, W) images.
    pub fn apply(&self, images: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = images.dims4()?;
        if c != self.channels {
            return Err(super::TrainError::Invalid(format!(
                "warp built for {} channels, got {c}",
                self.channels
            )));
        }
        let flat = images.reshape((n, c, h * w))?.contiguous()?;
        let mut out: Option<Tensor> = None;
        for (idx, wt) in &self.corners {
            let term = flat.gather(idx, 2)?.broadcast_mul(wt)?;
            out = Some(match out {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let out = out.ok_or_else(|| super::TrainError::Invalid("empty warp".into()))?;
        Ok(out.reshape((n, c, h, w))?)
    }
}

/// The temporal-consistency term for a (B, 3, T, H, W) input and its reconstruction: mean over
/// consecutive pairs of |recon_t − warp(recon_{t−1})| where the flow explains the input
/// (its own warp error below `0.1`, on the [-1, 1] scale). Zero for single frames.
pub fn flow_loss(input: &Tensor, reconstruction: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = input.dims5()?;
    if t < 2 {
        return Ok(Tensor::zeros(
            (),
            reconstruction.dtype(),
            reconstruction.device(),
        )?);
    }
    let gray = gray_frames(input)?;
    let mut flows = Vec::with_capacity(b * (t - 1));
    let mut masks = Vec::with_capacity(b * (t - 1) * h * w);
    for frames in &gray {
        for pair in frames.windows(2) {
            let (Some(prev), Some(next)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let flow = estimate(prev, next, 3, 3);
            for (p, ((&fx, &fy), &value)) in
                flow.dx.iter().zip(&flow.dy).zip(&next.values).enumerate()
            {
                let (x, y) = ((p % w) as f32, (p / w) as f32);
                let ok = (prev.sample(x + fx, y + fy) - value).abs() < 0.1;
                masks.push(if ok { 1f32 } else { 0.0 });
            }
            flows.push(flow);
        }
    }
    let device = reconstruction.device();
    // (B, T, C, H, W) → previous and next frames as (B·(T−1), C, H, W).
    let frames = reconstruction.permute((0, 2, 1, 3, 4))?;
    let prev = frames
        .narrow(1, 0, t - 1)?
        .reshape((b * (t - 1), c, h, w))?;
    let next = frames
        .narrow(1, 1, t - 1)?
        .reshape((b * (t - 1), c, h, w))?;
    let warp = Warp::new(&flows, c, device)?;
    let mask = Tensor::from_vec(masks, (b * (t - 1), 1, h, w), device)?;
    let kept = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let diff = (next - warp.apply(&prev)?)?.abs()?.broadcast_mul(&mask)?;
    Ok((diff.sum_all()? / f64::from(kept * c as f32))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(width: usize, height: usize, shift_x: f32, shift_y: f32) -> Gray {
        let values = (0..height)
            .flat_map(|y| {
                (0..width).map(move |x| {
                    let (u, v) = (x as f32 - shift_x, y as f32 - shift_y);
                    (0.31 * u).sin() * (0.23 * v).cos() + 0.5 * (0.11 * (u + v)).sin()
                })
            })
            .collect();
        Gray {
            width,
            height,
            values,
        }
    }

    #[test]
    fn lucas_kanade_recovers_a_known_translation() {
        // The target is the source moved right by 3.0 and down by 1.5 pixels, so each target
        // pixel is found at (−3.0, −1.5) in the source.
        let source = textured(64, 48, 0.0, 0.0);
        let target = textured(64, 48, 3.0, 1.5);
        let flow = estimate(&source, &target, 3, 4);
        let inner: Vec<usize> = (10..38)
            .flat_map(|y| (10..54).map(move |x| y * 64 + x))
            .collect();
        let mean = |v: &[f32]| inner.iter().map(|&i| v[i]).sum::<f32>() / inner.len() as f32;
        let (mx, my) = (mean(&flow.dx), mean(&flow.dy));
        assert!(
            (mx + 3.0).abs() < 0.2 && (my + 1.5).abs() < 0.2,
            "({mx}, {my})"
        );
    }

    #[test]
    fn the_warp_moves_images_by_the_flow_and_passes_gradients() {
        let flow = Flow {
            width: 4,
            height: 2,
            dx: vec![1.0; 8],
            dy: vec![0.0; 8],
        };
        let image = candle_core::Var::from_vec(
            (0..8).map(|v| v as f32).collect::<Vec<f32>>(),
            (1, 1, 2, 4),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let warp = Warp::new(&[flow], 1, &candle_core::Device::Cpu).unwrap();
        let out = warp.apply(image.as_tensor()).unwrap();
        let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![1.0, 2.0, 3.0, 3.0, 5.0, 6.0, 7.0, 7.0]);
        let grads = out.sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(image.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Each source pixel receives one unit per output that samples it.
        assert_eq!(g, vec![0.0, 1.0, 1.0, 2.0, 0.0, 1.0, 1.0, 2.0]);
    }
}

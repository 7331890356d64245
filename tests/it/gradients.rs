//! Finite-difference checks of every hand-written differentiable op used in training: the
//! convolution with its own backward, the fused GroupNorm+SiLU, the bilinear flow warp and the
//! Gram matrix. (The FSQ straight-through estimator is checked analytically in `fsq.rs`: by
//! design its gradient is not the derivative of the rounded forward pass.)

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{Device, Tensor, Var};
use tokenscope::compute;
use tokenscope::train::flow::{Flow, Warp};
use tokenscope::train::vgg;

fn values(n: usize, seed: u64) -> Vec<f32> {
    crate::common::uniform_values(n, seed)
}

/// Compares d f / d x from autograd with central differences at a spread of elements.
/// `f` must map the input to a scalar; the weighting makes every output element matter.
fn check(name: &str, shape: &[usize], seed: u64, f: impl Fn(&Tensor) -> Tensor) {
    let n: usize = shape.iter().product();
    let x0 = values(n, seed);
    let var = Var::from_vec(x0.clone(), shape, &Device::Cpu).unwrap();
    let grads = f(var.as_tensor()).backward().unwrap();
    let analytic = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let eval = |x: &[f32]| -> f64 {
        let t = Tensor::from_vec(x.to_vec(), shape, &Device::Cpu).unwrap();
        f64::from(f(&t).to_scalar::<f32>().unwrap())
    };
    let eps = 1e-2f32;
    let step = (n / 23).max(1);
    for i in (0..n).step_by(step) {
        let mut plus = x0.clone();
        plus[i] += eps;
        let mut minus = x0.clone();
        minus[i] -= eps;
        let numeric = (eval(&plus) - eval(&minus)) / (2.0 * f64::from(eps));
        let got = f64::from(analytic[i]);
        let tol = 2e-2 * (1.0 + numeric.abs());
        assert!(
            (got - numeric).abs() <= tol,
            "{name}: element {i}: autograd {got:.5}, finite differences {numeric:.5}"
        );
    }
}

fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = Tensor::from_vec(values(y.elem_count(), seed), y.dims(), &Device::Cpu).unwrap();
    (y * r).unwrap().sum_all().unwrap()
}

#[test]
fn convolution_backward_matches_finite_differences() {
    let w = Tensor::from_vec(values(6 * 4 * 9, 2), (6, 4, 3, 3), &Device::Cpu).unwrap();
    for (stride, pad) in [(1, 1), (2, 0)] {
        check(&format!("conv2d input s{stride}"), &[2, 4, 9, 8], 1, |x| {
            let y = compute::conv2d(x, &w, None, stride, pad).unwrap();
            weighted_sum(&y, 3)
        });
        let x = Tensor::from_vec(values(2 * 4 * 9 * 8, 4), (2, 4, 9, 8), &Device::Cpu).unwrap();
        check(&format!("conv2d weight s{stride}"), &[6, 4, 3, 3], 5, |w| {
            let y = compute::conv2d(&x, w, None, stride, pad).unwrap();
            weighted_sum(&y, 6)
        });
    }
}

#[test]
fn group_norm_silu_backward_matches_finite_differences() {
    let gamma = Tensor::from_vec(values(8, 7), 8, &Device::Cpu).unwrap();
    let beta = Tensor::from_vec(values(8, 8), 8, &Device::Cpu).unwrap();
    for groups in [1, 4] {
        check(
            &format!("group norm x ({groups} groups)"),
            &[2, 8, 5, 4],
            9,
            |x| {
                let y = compute::group_norm(x, groups, &gamma, &beta, 1e-6, true).unwrap();
                weighted_sum(&y, 10)
            },
        );
    }
    let x = Tensor::from_vec(values(2 * 8 * 20, 11), (2, 8, 5, 4), &Device::Cpu).unwrap();
    check("group norm scale", &[8], 12, |g| {
        let y = compute::group_norm(&x, 1, g, &beta, 1e-6, true).unwrap();
        weighted_sum(&y, 13)
    });
}

#[test]
fn flow_warp_backward_matches_finite_differences() {
    let (w, h) = (7, 5);
    let flow = Flow {
        width: w,
        height: h,
        dx: values(w * h, 14).iter().map(|v| 2.0 * v).collect(),
        dy: values(w * h, 15).iter().map(|v| 1.5 * v).collect(),
    };
    let warp = Warp::new(&[flow], 3, &Device::Cpu).unwrap();
    check("warp", &[1, 3, h, w], 16, |x| {
        weighted_sum(&warp.apply(x).unwrap(), 17)
    });
}

#[test]
fn gram_matrix_backward_matches_finite_differences() {
    check("gram", &[2, 4, 3, 5], 18, |x| {
        weighted_sum(&vgg::gram(x).unwrap(), 19)
    });
}

/// The gradient the trainer steps on, for a whole network: autograd through `autoencode` (the
/// inference forward with the hand-written kernels' backward) against central differences of
/// the same forward, at elements of every parameter tensor.
fn check_whole_network(variant: &str, channels: usize, input_shape: &[usize]) {
    use tokenscope::tokenizer::config::find_variant;
    use tokenscope::tokenizer::NetworkConfig;
    use tokenscope::train::params::Parameters;
    let config = NetworkConfig {
        channels,
        num_res_blocks: 1,
        ..find_variant(variant).unwrap().config
    };
    let params = Parameters::initialised(&config, 3, &Device::Cpu).unwrap();
    let n: usize = input_shape.iter().product();
    let x = Tensor::from_vec(values(n, 21), input_shape, &Device::Cpu).unwrap();
    let loss = |params: &Parameters| -> Tensor {
        let model = params.tokenizer(&config).unwrap();
        weighted_sum(&model.autoencode(&x).unwrap(), 22)
    };
    let grads = loss(&params).backward().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, var) in params.iter() {
        let Some(grad) = grads.get(var.as_tensor()) else {
            failures.push(format!("{name}: no gradient"));
            continue;
        };
        let grad = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let count = original.len();
        for i in [0, count / 2, count - 1] {
            let at = |delta: f32| -> f64 {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                f64::from(loss(&params).to_scalar::<f32>().unwrap())
            };
            let eps = 1e-2f32;
            let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
            var.set(&Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let got = f64::from(grad[i]);
            checked += 1;
            if (got - numeric).abs() > 3e-2 * (1.0 + numeric.abs()) {
                failures.push(format!(
                    "{name}[{i}]: autograd {got:.5}, finite differences {numeric:.5}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{variant}: {} of {checked} gradients disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn video_network_gradient_matches_finite_differences() {
    // CV8x8x8: both resamplers are hybrid in space and time.
    check_whole_network("CV8x8x8", 8, &[1, 3, 9, 16, 16]);
}

#[test]
fn image_network_gradient_matches_finite_differences() {
    check_whole_network("CI8x8", 32, &[1, 3, 16, 16]);
}

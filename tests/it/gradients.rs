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

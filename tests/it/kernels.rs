//! The fast CPU convolution kernels against candle's own ops (computed in f64).
//!
//! `cargo test --release --test it -- --ignored --nocapture kernels::bench_conv_shapes` prints a
//! GFLOP/s table of candle vs the fast kernels for the tokenizer's layer shapes.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use tokenscope::compute;

/// Deterministic uniform values in [-1, 1).
fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(crate::common::uniform_values(n, seed), shape, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |got - want| <= 1e-4 * (1 + max |want|)
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.to_dtype(DType::F64).unwrap();
    let err = max_abs(&(got - want).unwrap());
    let tol = 1e-4 * (1.0 + max_abs(want));
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
}

fn reference_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Tensor {
    let x = x.to_dtype(DType::F64).unwrap();
    let w = w.to_dtype(DType::F64).unwrap();
    let y = x.conv2d(&w, pad, stride, 1, 1).unwrap();
    match b {
        Some(b) => {
            let b = b.to_dtype(DType::F64).unwrap();
            y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1)).unwrap())
                .unwrap()
        }
        None => y,
    }
}

fn reference_pointwise(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let x = x.to_dtype(DType::F64).unwrap();
    let w = w.to_dtype(DType::F64).unwrap();
    let y = w.broadcast_matmul(&x).unwrap();
    match b {
        Some(b) => {
            let b = b.to_dtype(DType::F64).unwrap();
            y.broadcast_add(&b.reshape((1, b.elem_count(), 1)).unwrap())
                .unwrap()
        }
        None => y,
    }
}

struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // odd sizes, small channel counts
    Case { n: 1, c: 3, h: 7, w: 9, o: 5, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 2, c: 5, h: 17, w: 13, o: 7, kh: 3, kw: 3, stride: 1, pad: 1, bias: false },
    Case { n: 1, c: 1, h: 5, w: 5, o: 1, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    // output smaller than one 16-pixel tile, padding wider than the image
    Case { n: 1, c: 3, h: 2, w: 2, o: 4, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 1, c: 2, h: 1, w: 1, o: 3, kh: 3, kw: 3, stride: 1, pad: 2, bias: true },
    // stride 2, with and without padding (the tokenizer pre-pads and uses pad 0)
    Case { n: 1, c: 16, h: 33, w: 35, o: 13, kh: 3, kw: 3, stride: 2, pad: 0, bias: true },
    Case { n: 3, c: 4, h: 10, w: 11, o: 8, kh: 3, kw: 3, stride: 2, pad: 1, bias: true },
    Case { n: 1, c: 32, h: 65, w: 65, o: 24, kh: 3, kw: 3, stride: 2, pad: 0, bias: false },
    Case { n: 1, c: 9, h: 15, w: 16, o: 12, kh: 3, kw: 3, stride: 3, pad: 1, bias: false },
    // other kernel sizes, non-square kernels
    Case { n: 1, c: 19, h: 16, w: 16, o: 6, kh: 1, kw: 1, stride: 1, pad: 0, bias: true },
    Case { n: 1, c: 7, h: 12, w: 20, o: 11, kh: 5, kw: 5, stride: 1, pad: 2, bias: true },
    Case { n: 2, c: 3, h: 11, w: 13, o: 5, kh: 2, kw: 4, stride: 1, pad: 1, bias: true },
    Case { n: 1, c: 64, h: 20, w: 37, o: 50, kh: 3, kw: 3, stride: 1, pad: 0, bias: true },
    // several reduction chunks, channel counts that are multiples of nothing
    Case { n: 1, c: 300, h: 9, w: 9, o: 40, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 2, c: 77, h: 18, w: 21, o: 29, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    // many output channels (work split over channel ranges)
    Case { n: 1, c: 32, h: 8, w: 8, o: 300, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    // tall/wide images (work split over row bands / columns)
    Case { n: 1, c: 8, h: 96, w: 64, o: 16, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 1, c: 40, h: 1, w: 700, o: 10, kh: 1, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 1, c: 4, h: 3, w: 200, o: 8, kh: 3, kw: 3, stride: 1, pad: 1, bias: false },
    // batches, tokenizer-like shapes
    Case { n: 5, c: 8, h: 6, w: 6, o: 4, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 2, c: 48, h: 32, w: 48, o: 128, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 3, c: 128, h: 16, w: 16, o: 64, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
    Case { n: 1, c: 16, h: 16, w: 16, o: 512, kh: 3, kw: 3, stride: 1, pad: 1, bias: true },
];

#[test]
fn conv2d_matches_candle_f64() {
    for (i, t) in CASES.iter().enumerate() {
        let x = rand_tensor(&[t.n, t.c, t.h, t.w], 2 * i as u64 + 1);
        let w = (rand_tensor(&[t.o, t.c, t.kh, t.kw], 2 * i as u64 + 2) * 0.2).unwrap();
        let b = t.bias.then(|| rand_tensor(&[t.o], 1000 + i as u64));
        let got = compute::conv2d(&x, &w, b.as_ref(), t.stride, t.pad).unwrap();
        let want = reference_conv(&x, &w, b.as_ref(), t.stride, t.pad);
        let what = format!(
            "case {i}: n{} {}->{} {}x{} k{}x{} s{} p{} bias {}",
            t.n, t.c, t.o, t.h, t.w, t.kh, t.kw, t.stride, t.pad, t.bias
        );
        assert_eq!(got.dtype(), DType::F32, "{what}");
        assert_close(&got, &want, &what);
    }
}

/// Every micro-kernel this CPU has (AVX-512, AVX2, portable) gives the same convolution.
#[test]
fn every_cpu_kernel_matches_candle_f64() {
    let available = compute::CpuKernel::available();
    println!("kernels on this CPU: {available:?}");
    for kernel in available {
        for (i, t) in CASES.iter().enumerate() {
            let x = rand_tensor(&[t.n, t.c, t.h, t.w], 2 * i as u64 + 1);
            let w = (rand_tensor(&[t.o, t.c, t.kh, t.kw], 2 * i as u64 + 2) * 0.2).unwrap();
            let b = t.bias.then(|| rand_tensor(&[t.o], 1000 + i as u64));
            let got = compute::conv2d_using(kernel, &x, &w, b.as_ref(), t.stride, t.pad).unwrap();
            let want = reference_conv(&x, &w, b.as_ref(), t.stride, t.pad);
            assert_close(&got, &want, &format!("{kernel:?} case {i}"));
        }
    }
}

/// Every 3x3 algorithm (direct, Winograd F(2x2) and F(4x4)) on every micro-kernel this CPU has
/// gives the f64 reference convolution, on the stride-1 pad-1 cases above: partial tiles at the
/// right and bottom edges, images smaller than a tile, several groups of 16 tiles per row
/// (w = 200), batches, output channel counts that do not fill a micro-tile, several reduction
/// chunks.
#[test]
fn every_conv3x3_algorithm_matches_candle_f64() {
    let cases = CASES
        .iter()
        .enumerate()
        .filter(|(_, t)| (t.kh, t.kw, t.stride, t.pad) == (3, 3, 1, 1));
    for (i, t) in cases {
        let x = rand_tensor(&[t.n, t.c, t.h, t.w], 2 * i as u64 + 1);
        let w = (rand_tensor(&[t.o, t.c, 3, 3], 2 * i as u64 + 2) * 0.2).unwrap();
        let b = t.bias.then(|| rand_tensor(&[t.o], 1000 + i as u64));
        let want = reference_conv(&x, &w, b.as_ref(), 1, 1);
        for kernel in compute::CpuKernel::available() {
            for algorithm in compute::Conv3x3::ALL {
                let got = compute::conv3x3_using(kernel, algorithm, &x, &w, b.as_ref()).unwrap();
                assert_close(&got, &want, &format!("{kernel:?} {algorithm:?} case {i}"));
            }
        }
    }
}

/// Winograd trades multiplies for additions of transformed values, which costs some float
/// accuracy. On a full-size tokenizer layer (512 channels, weights of the scale a trained
/// network has) F(4x4)'s error against f64 stays within a small factor of the direct
/// convolution's (measured: direct 3.0e-6, F2 7e-7, F4 1.1e-5 of the largest output) and
/// inside the reference README's tight parity bound (2e-5 of the largest magnitude).
#[test]
fn winograd_error_is_close_to_the_direct_convolution() {
    let (c, o, hw) = (512, 64, 16);
    let x = rand_tensor(&[1, c, hw, hw], 11);
    // Uniform in ±sqrt(3 / (9 c)): unit variance in, unit variance out.
    let w = (rand_tensor(&[o, c, 3, 3], 12) * (3.0 / (9.0 * c as f64)).sqrt()).unwrap();
    let b = rand_tensor(&[o], 13);
    let want = reference_conv(&x, &w, Some(&b), 1, 1);
    let peak = max_abs(&want);
    let kernel = compute::CpuKernel::best();
    let err = |algorithm| {
        let got = compute::conv3x3_using(kernel, algorithm, &x, &w, Some(&b)).unwrap();
        max_abs(&(got.to_dtype(DType::F64).unwrap() - &want).unwrap()) / peak
    };
    let direct = err(compute::Conv3x3::Direct);
    let f2 = err(compute::Conv3x3::WinogradF2);
    let f4 = err(compute::Conv3x3::WinogradF4);
    println!("max error / max |y|: direct {direct:.2e}, F2 {f2:.2e}, F4 {f4:.2e}");
    assert!(
        f2 <= 4.0 * direct.max(1e-7),
        "F2 {f2:e} vs direct {direct:e}"
    );
    assert!(
        f4 <= 8.0 * direct.max(1e-7),
        "F4 {f4:e} vs direct {direct:e}"
    );
    assert!(f4 < 2e-5, "F4 {f4:e}");
}

#[test]
fn conv2d_accepts_non_contiguous_input() {
    // (N, C, W, H) transposed into an (N, C, H, W) view.
    let x = rand_tensor(&[2, 6, 13, 10], 7).transpose(2, 3).unwrap();
    assert!(!x.is_contiguous());
    let w = rand_tensor(&[9, 6, 3, 3], 8);
    let b = rand_tensor(&[9], 9);
    let got = compute::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    assert_close(
        &got,
        &reference_conv(&x, &w, Some(&b), 1, 1),
        "transposed input",
    );
}

#[test]
fn pointwise_matches_candle_f64() {
    #[rustfmt::skip]
    let cases: &[(usize, usize, usize, usize, bool)] = &[
        // (n, i, s, o, bias)
        (1, 16, 100, 6, true),
        (3, 6, 257, 16, true),
        (2, 256, 1024, 16, false),
        (1, 16, 4096, 512, true),
        (1, 300, 3000, 37, true),
        (2, 5, 1, 3, true),
        (1, 1, 33, 1, false),
    ];
    for (i, &(n, ci, s, o, bias)) in cases.iter().enumerate() {
        let x = rand_tensor(&[n, ci, s], 50 + i as u64);
        let w = (rand_tensor(&[o, ci], 80 + i as u64) * 0.2).unwrap();
        let b = bias.then(|| rand_tensor(&[o], 90 + i as u64));
        let got = compute::pointwise(&x, &w, b.as_ref()).unwrap();
        let want = reference_pointwise(&x, &w, b.as_ref());
        assert_close(
            &got,
            &want,
            &format!("pointwise case {i}: n{n} {ci}->{o} s{s}"),
        );
    }
}

/// Both succeed with bit-identical tensors of the same dtype, or both fail with the same error.
fn assert_same_outcome(
    ours: candle_core::Result<Tensor>,
    candle: candle_core::Result<Tensor>,
    what: &str,
) {
    match (ours, candle) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
            assert_eq!(a.dims(), b.dims(), "{what}: shape");
            let a = a.to_dtype(DType::F64).unwrap();
            let b = b.to_dtype(DType::F64).unwrap();
            assert_eq!(
                max_abs(&(a - b).unwrap()),
                0.0,
                "{what}: must be exactly candle's"
            );
        }
        // Compare the messages without the backtraces candle may attach.
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a.lines().next(), b.lines().next(), "{what}: error");
        }
        (a, b) => panic!(
            "{what}: ours {:?} vs candle {:?}",
            a.map(|t| t.dtype()),
            b.map(|t| t.dtype())
        ),
    }
}

#[test]
fn bf16_and_f16_use_candle_fallback() {
    // On the CPU candle 0.11.1 has no bf16 conv2d (its im2col matmul rejects bf16), so the
    // fallback must report candle's own error; f16 works and must match candle bit for bit.
    for dtype in [DType::BF16, DType::F16] {
        let x = rand_tensor(&[2, 8, 9, 10], 1).to_dtype(dtype).unwrap();
        let w = rand_tensor(&[5, 8, 3, 3], 2).to_dtype(dtype).unwrap();
        let b = rand_tensor(&[5], 3).to_dtype(dtype).unwrap();
        let candle = x
            .conv2d(&w, 1, 1, 1, 1)
            .and_then(|y| y.broadcast_add(&b.reshape((1, 5, 1, 1))?));
        let ours = compute::conv2d(&x, &w, Some(&b), 1, 1);
        assert_same_outcome(ours, candle, &format!("{dtype:?} conv2d"));

        let xp = rand_tensor(&[2, 8, 30], 4).to_dtype(dtype).unwrap();
        let wp = rand_tensor(&[5, 8], 5).to_dtype(dtype).unwrap();
        let candle = wp
            .broadcast_matmul(&xp)
            .and_then(|y| y.broadcast_add(&b.reshape((1, 5, 1))?));
        let ours = compute::pointwise(&xp, &wp, Some(&b));
        assert_same_outcome(ours, candle, &format!("{dtype:?} pointwise"));
    }
}

#[test]
fn tracked_tensors_stay_in_the_graph_with_gradients() {
    let x = rand_tensor(&[1, 3, 6, 7], 11);
    let w = Var::from_tensor(&rand_tensor(&[4, 3, 3, 3], 12)).unwrap();
    let b = Var::from_tensor(&rand_tensor(&[4], 13)).unwrap();
    let y = compute::conv2d(&x, w.as_tensor(), Some(b.as_tensor()), 1, 1).unwrap();
    assert!(y.track_op(), "the result must stay in the autograd graph");
    assert_close(
        &y,
        &reference_conv(&x, w.as_tensor(), Some(b.as_tensor()), 1, 1),
        "tracked conv2d",
    );
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());

    let xp = rand_tensor(&[2, 3, 10], 14);
    let wp = Var::from_tensor(&rand_tensor(&[4, 3], 15)).unwrap();
    let y = compute::pointwise(&xp, wp.as_tensor(), None).unwrap();
    assert!(y.track_op());
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(wp.as_tensor()).is_some());
}

/// The training path's backward (our own input- and weight-gradient kernels) against candle's
/// conv2d backward in f64, for every geometry the networks use (3x3 pad 1, 3x3 stride 2 pad 0 on
/// even and odd sizes, 1x1) and odd shapes.
#[test]
fn trainable_conv2d_gradients_match_candle_f64() {
    let cases: [(&[usize], &[usize], usize, usize); 5] = [
        (&[2, 5, 9, 11], &[7, 5, 3, 3], 1, 1),
        (&[3, 4, 10, 12], &[6, 4, 3, 3], 2, 0),
        (&[2, 4, 9, 13], &[5, 4, 3, 3], 2, 0),
        (&[2, 9, 6, 5], &[3, 9, 1, 1], 1, 0),
        (&[1, 3, 17, 20], &[8, 3, 3, 3], 1, 1),
    ];
    for (i, (xs, ws, stride, pad)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = Var::from_tensor(&rand_tensor(xs, seed)).unwrap();
        let w = Var::from_tensor(&rand_tensor(ws, seed + 1)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&ws[..1], seed + 2)).unwrap();
        let y = compute::conv2d(
            x.as_tensor(),
            w.as_tensor(),
            Some(b.as_tensor()),
            stride,
            pad,
        )
        .unwrap();
        // A non-uniform upstream gradient: d(sum(y * r))/dy = r.
        let r = rand_tensor(y.dims(), seed + 3);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();

        let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let w64 = Var::from_tensor(&w.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let b64 = Var::from_tensor(&b.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let y64 = x64
            .as_tensor()
            .conv2d(w64.as_tensor(), pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b64.as_tensor().reshape((1, ws[0], 1, 1)).unwrap())
            .unwrap();
        assert_close(&y, &y64, &format!("case {i}: forward"));
        let r64 = r.to_dtype(DType::F64).unwrap();
        let want = (&y64 * &r64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, got, reference) in [
            ("dx", grads.get(x.as_tensor()), want.get(x64.as_tensor())),
            ("dw", grads.get(w.as_tensor()), want.get(w64.as_tensor())),
            ("db", grads.get(b.as_tensor()), want.get(b64.as_tensor())),
        ] {
            assert_close(
                got.unwrap(),
                reference.unwrap(),
                &format!("case {i}: {name}"),
            );
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let x = rand_tensor(&[1, 3, 8, 8], 1);
    assert!(compute::conv2d(&x, &rand_tensor(&[4, 5, 3, 3], 2), None, 1, 1).is_err());
    assert!(compute::conv2d(
        &x,
        &rand_tensor(&[4, 3, 3, 3], 2),
        Some(&rand_tensor(&[5], 3)),
        1,
        1
    )
    .is_err());
    assert!(compute::conv2d(&x, &rand_tensor(&[4, 3, 11, 11], 2), None, 1, 1).is_err());
    assert!(compute::conv2d(&x, &rand_tensor(&[4, 3, 3, 3], 2), None, 0, 1).is_err());
    let best = compute::CpuKernel::best();
    let f4 = compute::Conv3x3::WinogradF4;
    assert!(compute::conv3x3_using(best, f4, &x, &rand_tensor(&[4, 3, 5, 5], 2), None).is_err());
    assert!(compute::conv3x3_using(best, f4, &x, &rand_tensor(&[4, 2, 3, 3], 2), None).is_err());
    let short_bias = rand_tensor(&[3], 3);
    let w = rand_tensor(&[4, 3, 3, 3], 2);
    assert!(compute::conv3x3_using(best, f4, &x, &w, Some(&short_bias)).is_err());
    let xp = rand_tensor(&[1, 3, 8], 1);
    assert!(compute::pointwise(&xp, &rand_tensor(&[4, 5], 2), None).is_err());
}

/// CPU time consumed so far by all threads of this process, in seconds (Linux; NaN elsewhere).
/// Read from `/proc/self/task/*/schedstat`, whose first field is nanoseconds on the CPU.
fn process_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}

/// Median wall time and median process CPU time of `reps` runs (after one warm-up run), in
/// seconds. On a shared machine the CPU time shows what the code would do with the cores to
/// itself.
fn median_time(reps: usize, mut f: impl FnMut() -> Tensor) -> (f64, f64) {
    drop(f());
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..reps)
        .map(|_| {
            let c = process_cpu_seconds();
            let t = Instant::now();
            let y = f();
            let dt = t.elapsed().as_secs_f64();
            drop(y);
            (dt, process_cpu_seconds() - c)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[reps / 2], cpu[reps / 2])
}

fn print_row(what: String, gflop: f64, candle: (f64, f64), ours: (f64, f64)) {
    println!(
        "{what:<38} {gflop:>6.2} | {:>8.1} {:>7.1} {:>7.1} | {:>8.1} {:>7.1} {:>7.1} | {:>6.2}x",
        candle.0 * 1e3,
        gflop / candle.0,
        gflop / candle.1,
        ours.0 * 1e3,
        gflop / ours.0,
        gflop / ours.1,
        candle.0 / ours.0
    );
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_conv_shapes() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "rayon threads: {}, load average: {}",
        rayon::current_num_threads(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("GF/s: GFLOP per wall second; GF/cpu-s: GFLOP per CPU second of all threads");
    println!(
        "{:<38} {:>6} | {:>8} {:>7} {:>7} | {:>8} {:>7} {:>7} | {:>7}",
        "shape", "GFLOP", "candle ms", "GF/s", "GF/cpu-s", "ours ms", "GF/s", "GF/cpu-s", "speedup"
    );
    #[rustfmt::skip]
    let convs: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        // (n, cin, h, w, cout, stride, pad), 3x3
        (1, 128, 256, 256, 128, 1, 1),
        (1, 48, 256, 256, 128, 1, 1),
        (1, 192, 128, 128, 128, 1, 1),
        (1, 128, 128, 128, 256, 1, 1),
        (1, 256, 128, 128, 256, 1, 1),
        (1, 256, 64, 64, 512, 1, 1),
        (1, 512, 64, 64, 512, 1, 1),
        (1, 512, 32, 32, 512, 1, 1),
        (1, 512, 16, 16, 512, 1, 1),
        (1, 512, 64, 64, 256, 1, 1),
        (1, 256, 128, 128, 192, 1, 1),
        (1, 256, 256, 256, 48, 1, 1),
        (1, 16, 16, 16, 512, 1, 1),
        (1, 16, 64, 64, 512, 1, 1),
        (4, 256, 64, 64, 256, 1, 1),
        (17, 256, 32, 32, 256, 1, 1),
        (17, 512, 16, 16, 512, 1, 1),
        (1, 256, 257, 257, 256, 2, 0),
        (1, 512, 129, 129, 512, 2, 0),
        (4, 256, 65, 65, 256, 2, 0),
    ];
    for &(n, c, h, w, o, stride, pad) in convs {
        let x = rand_tensor(&[n, c, h, w], 1);
        let wt = (rand_tensor(&[o, c, 3, 3], 2) * 0.05).unwrap();
        let b = rand_tensor(&[o], 3);
        let (ho, wo) = (
            (h + 2 * pad - 3) / stride + 1,
            (w + 2 * pad - 3) / stride + 1,
        );
        let gflop = 2.0 * (n * o * ho * wo * c * 9) as f64 / 1e9;
        let t_candle = median_time(reps, || {
            x.conv2d(&wt, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap()
        });
        let t_ours = median_time(reps, || {
            compute::conv2d(&x, &wt, Some(&b), stride, pad).unwrap()
        });
        let what = format!("3x3 s{stride} p{pad} n{n} {c}->{o} {h}x{w}");
        print_row(what, gflop, t_candle, t_ours);
    }
    #[rustfmt::skip]
    let pws: &[(usize, usize, usize, usize)] = &[
        // (n, i, s, o)
        (1, 512, 128 * 128, 16),
        (1, 16, 128 * 128, 512),
        (1, 256, 128 * 128, 16),
        (1, 16, 128 * 128, 256),
        (17, 16, 32 * 32, 6),
        (17, 6, 32 * 32, 16),
        (4, 512, 64 * 64, 512),
    ];
    for &(n, i, s, o) in pws {
        let x = rand_tensor(&[n, i, s], 1);
        let wt = (rand_tensor(&[o, i], 2) * 0.05).unwrap();
        let b = rand_tensor(&[o], 3);
        let gflop = 2.0 * (n * o * i * s) as f64 / 1e9;
        let t_candle = median_time(reps, || {
            wt.broadcast_matmul(&x)
                .unwrap()
                .broadcast_add(&b.reshape((1, o, 1)).unwrap())
                .unwrap()
        });
        let t_ours = median_time(reps, || compute::pointwise(&x, &wt, Some(&b)).unwrap());
        print_row(
            format!("pointwise n{n} {i}->{o} S={s}"),
            gflop,
            t_candle,
            t_ours,
        );
    }
}

/// The in-place causal temporal convolution equals replicate-padding frame 0, stacking the
/// shifted frames and multiplying (computed here in f64 with candle), for both strides, batches,
/// clips shorter than the padding and frames larger than one band of the first frames' copy.
#[test]
fn causal_temporal_conv_matches_padded_reference() {
    #[rustfmt::skip]
    let cases: &[(usize, usize, usize, usize, usize, usize)] = &[
        // (batch, frames, channels, pixels, out channels, stride) with kernel 3
        (1, 5, 16, 64, 24, 1),
        (2, 9, 8, 40, 30, 1),
        (1, 1, 4, 20, 6, 1),
        (1, 2, 4, 20, 6, 1),
        (1, 9, 16, 33, 16, 2),
        (3, 5, 6, 17, 10, 2),
        (1, 2, 5, 16, 7, 2),
        // More pixels than one band of the first frames' stacked copy (16,384), plus a
        // partial band.
        (1, 3, 3, 16 * 1024 * 2 + 100, 5, 1),
        (2, 3, 2, 16 * 1024 + 7, 4, 2),
    ];
    let kernel = 3;
    for (i, &(b, t, c, s, o, stride)) in cases.iter().enumerate() {
        let x = rand_tensor(&[b, t, c, s], 70 + i as u64);
        let w = (rand_tensor(&[o, kernel * c], 80 + i as u64) * 0.2).unwrap();
        let bias = rand_tensor(&[o], 90 + i as u64);
        let got = compute::causal_temporal_conv(&x, &w, Some(&bias), kernel, stride)
            .unwrap()
            .expect("CPU f32 takes the fast path");
        let pad = kernel - stride;
        let out_t = (t + pad - kernel) / stride + 1;
        let x64 = x.to_dtype(DType::F64).unwrap();
        let w64 = w.to_dtype(DType::F64).unwrap();
        let b64 = bias.to_dtype(DType::F64).unwrap().reshape((o, 1)).unwrap();
        let mut batches = Vec::new();
        for bi in 0..b {
            let mut frames = Vec::new();
            for ti in 0..out_t {
                let taps: Vec<Tensor> = (0..kernel)
                    .map(|tap| {
                        let src = (stride * ti + tap).saturating_sub(pad);
                        x64.get(bi).unwrap().get(src).unwrap()
                    })
                    .collect();
                let stacked = Tensor::cat(&taps, 0).unwrap();
                frames.push(w64.matmul(&stacked).unwrap().broadcast_add(&b64).unwrap());
            }
            batches.push(Tensor::stack(&frames, 0).unwrap());
        }
        let want = Tensor::stack(&batches, 0).unwrap();
        assert_eq!(got.dims(), want.dims(), "case {i}");
        assert_close(&got, &want, &format!("temporal case {i}"));
    }
    // One frame cannot be strided by 2 with a kernel of 3 (PyTorch refuses it too).
    let x = rand_tensor(&[1, 1, 4, 16], 1);
    let w = rand_tensor(&[4, 12], 2);
    let err = compute::causal_temporal_conv(&x, &w, None, 3, 2).unwrap_err();
    assert!(err.to_string().contains("fewer than the kernel"), "{err}");
}

/// `TOKENSCOPE_ATTENTION=materialised|blocked|avx2 cargo test --test kernels -- --ignored --nocapture
/// bench_attention` under `/usr/bin/time -v`: one mid-block spatial attention of
/// full-size CV8x8x8 at 720p (3 latent frames of 90×160 cells, 512 channels).
#[test]
#[ignore = "benchmark: run by hand"]
fn bench_attention() {
    let (n, c, s) = (3, 512, 90 * 160);
    let q = Tensor::randn(0f32, 1.0, (n, c, s), &Device::Cpu).unwrap();
    let k = Tensor::randn(0f32, 1.0, (n, c, s), &Device::Cpu).unwrap();
    let v = Tensor::randn(0f32, 1.0, (n, c, s), &Device::Cpu).unwrap();
    // `blocked` (the widest kernel), `avx2` (the gemm crate's products, as on AVX2 machines) or
    // `materialised`.
    let method = std::env::var("TOKENSCOPE_ATTENTION").unwrap_or_else(|_| "blocked".into());
    let started = std::time::Instant::now();
    let out = match method.as_str() {
        "materialised" => compute::attention_materialised(&q, &k, &v, false).unwrap(),
        "avx2" => compute::attention_cpu_with(
            compute::CpuKernel::Avx2,
            &q,
            &k,
            &v,
            false,
            compute::CPU_QUERY_BLOCK,
            compute::CPU_KEY_BLOCK,
        )
        .unwrap(),
        _ => compute::attention_channels_first(&q, &k, &v, false).unwrap(),
    };
    println!(
        "{method}: ({n}, {c}, {s}) in {:.2} s, output {:?}",
        started.elapsed().as_secs_f64(),
        out.dims()
    );
}

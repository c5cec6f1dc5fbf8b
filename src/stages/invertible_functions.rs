//! Table 1 of Menon et al. (ICVGIP 2024) reproduced (`bench invertible-functions`): the invertible MLP learns
//! a monotonic scalar function y = g(x) and is then inverted; the learning error is the
//! MSE of f(x) against g(x), the inversion error the MSE of f⁻¹(g(x)) against x, both on
//! fresh test points. Square layers need equal input and output widths, so the scalar
//! lives in the first coordinate of a `width`-wide vector whose other coordinates are 0
//! at both ends (the extra width is the network's working room).

use crate::models::invertible::{Diagonal, InvertibleConfig, InvertibleMlp};
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::schedule::lr_at;
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Serialize)]
pub struct FunctionRow {
    pub function: &'static str,
    pub domain: (f64, f64),
    pub learning_mse: f64,
    pub inversion_mse: f64,
    /// Table 1 of Menon et al. 2024, for comparison.
    pub seed_learning: f64,
    pub seed_inversion: f64,
    pub seconds: f64,
    /// max |f⁻¹(f(x)) − x|: the inverse of the network's own predictions.
    pub roundtrip_max_error: f64,
}

#[derive(Clone, Debug)]
pub struct FunctionBenchOptions {
    pub width: i64,
    pub layers: i64,
    pub steps: u64,
    pub lr: f64,
    pub points: i64,
}

type Target = fn(&Tensor) -> Tensor;

/// A row of the table to reproduce: name, g, its domain, Menon et al.'s learning and
/// inversion errors.
type Function = (&'static str, Target, (f64, f64), f64, f64);

fn sine(x: &Tensor) -> Tensor {
    x.sin()
}
fn polynomial(x: &Tensor) -> Tensor {
    x.pow_tensor_scalar(3) + x * 0.5
}
fn exponential(x: &Tensor) -> Tensor {
    x.exp()
}

/// The three functions of the table, each on a domain where it is one-to-one.
const FUNCTIONS: [Function; 3] = [
    ("sine", sine, (-1.5, 1.5), 1e-5, 1e-4),
    ("polynomial x^3 + x/2", polynomial, (-1.0, 1.0), 1e-6, 1e-6),
    ("exponential", exponential, (-1.0, 1.0), 1e-4, 1e-4),
];

fn lift(x: &Tensor, width: i64) -> Tensor {
    let n = x.size()[0];
    Tensor::cat(
        &[
            x.view([n, 1]),
            Tensor::zeros([n, width - 1], (Kind::Double, Device::Cpu)),
        ],
        1,
    )
}

fn points(n: i64, (lo, hi): (f64, f64)) -> Tensor {
    Tensor::rand([n], (Kind::Double, Device::Cpu)) * (hi - lo) + lo
}

pub fn run(o: &FunctionBenchOptions) -> Vec<FunctionRow> {
    // 8-wide matrices: thread hand-offs would cost more than the arithmetic.
    tch::set_num_threads(1);
    FUNCTIONS
        .iter()
        .map(|&(name, g, domain, seed_l, seed_i)| {
            let start = std::time::Instant::now();
            tch::manual_seed(0);
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Double);
            let f = InvertibleMlp::new(
                vs.root() / "f",
                &InvertibleConfig {
                    dim: o.width,
                    layers: o.layers,
                    slope: 0.5,
                    diagonal: Diagonal::Learned,
                },
            );
            let mut opt = AdamW::new(
                &vs,
                AdamWConfig {
                    weight_decay: 0.0,
                    ..Default::default()
                },
            );
            let x = points(o.points, domain);
            let (xs, ys) = (lift(&x, o.width), lift(&g(&x), o.width));
            for step in 0..o.steps {
                opt.zero_grad();
                (f.forward(&xs) - &ys)
                    .square()
                    .mean(Kind::Double)
                    .backward();
                opt.step(lr_at(step, o.steps, o.lr, o.steps / 20, 0.01));
            }
            let xt = points(o.points, domain);
            let (xts, yts) = (lift(&xt, o.width), lift(&g(&xt), o.width));
            let (learning, inversion, roundtrip) = tch::no_grad(|| {
                let pred = f.forward(&xts);
                let l = (&pred - &yts).square().mean(Kind::Double).double_value(&[]);
                let i = (f.inverse(&yts) - &xts)
                    .square()
                    .mean(Kind::Double)
                    .double_value(&[]);
                let r = (f.inverse(&pred) - &xts).abs().max().double_value(&[]);
                (l, i, r)
            });
            FunctionRow {
                function: name,
                domain,
                learning_mse: learning,
                inversion_mse: inversion,
                seed_learning: seed_l,
                seed_inversion: seed_i,
                seconds: start.elapsed().as_secs_f64(),
                roundtrip_max_error: roundtrip,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_learns_every_function_and_inverts_its_own_predictions() {
        let rows = run(&FunctionBenchOptions {
            width: 4,
            layers: 3,
            steps: 300,
            lr: 1e-2,
            points: 256,
        });
        for r in rows {
            // Far from the table's figures after 300 steps, but well below the variance of
            // the targets: the network learns.
            assert!(
                r.learning_mse < 0.02,
                "{}: learning {}",
                r.function,
                r.learning_mse
            );
            // The inverse is exact for what the network itself predicts; how far the
            // inverse of the *true* targets lands is the measured inversion error.
            assert!(
                r.roundtrip_max_error < 1e-8,
                "{}: {}",
                r.function,
                r.roundtrip_max_error
            );
            assert!(r.inversion_mse.is_finite());
        }
    }
}

//! BatchNorm whose training statistics span every rank of a data-parallel job, as
//! PyTorch's `SyncBatchNorm`: N ranks with B/N samples normalise exactly as one process
//! with B. Outside a data-parallel job (and in evaluation) it is tch's `BatchNorm`.

use crate::distributed;
use tch::{nn, nn::ModuleT, Kind, Tensor};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// A 2-D BatchNorm (the variables are tch's: `weight`, `bias`, `running_mean`,
/// `running_var`, so checkpoints load either way).
#[derive(Debug)]
pub struct BatchNorm2d {
    inner: nn::BatchNorm,
}

pub fn batch_norm2d(p: nn::Path, channels: i64) -> BatchNorm2d {
    let config = nn::BatchNormConfig {
        eps: EPS,
        momentum: MOMENTUM,
        ..Default::default()
    };
    BatchNorm2d {
        inner: nn::batch_norm2d(p, channels, config),
    }
}

impl BatchNorm2d {
    /// `train` normalises with the (global) batch statistics and updates the running
    /// ones; otherwise the running statistics are used.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match distributed::current() {
            Some(group) if train => self.synced(group, x),
            _ => self.inner.forward_t(x, train),
        }
    }

    /// Two passes over the global batch (mean, then the mean squared deviation), each one
    /// differentiable sum over ranks, so the backward pass is exact too.
    fn synced(&self, group: &distributed::Group, x: &Tensor) -> Tensor {
        let c = x.size()[1];
        let local = (x.numel() as i64 / c.max(1)) as f64;
        let total = local * group.world as f64;
        let dims: &[i64] = &[0, 2, 3];
        let sum = x.sum_dim_intlist(dims, false, Kind::Float);
        let mean = distributed::reduce_or_record(group, &sum) / total;
        let centred = x - mean.view([1, c, 1, 1]);
        let sq = centred.square().sum_dim_intlist(dims, false, Kind::Float);
        let var = distributed::reduce_or_record(group, &sq) / total;
        tch::no_grad(|| {
            let unbiased = var.detach() * (total / (total - 1.0).max(1.0));
            let mut rm = self.inner.running_mean.shallow_clone();
            let mut rv = self.inner.running_var.shallow_clone();
            rm.copy_(&(&rm * (1.0 - MOMENTUM) + mean.detach() * MOMENTUM));
            rv.copy_(&(&rv * (1.0 - MOMENTUM) + unbiased * MOMENTUM));
        });
        let y = centred / (var + EPS).sqrt().view([1, c, 1, 1]);
        match (&self.inner.ws, &self.inner.bs) {
            (Some(w), Some(b)) => y * w.view([1, c, 1, 1]) + b.view([1, c, 1, 1]),
            _ => y,
        }
    }
}

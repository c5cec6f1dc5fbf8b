//! Data-parallel training through libtorch's own c10d engine (what `torch.distributed`
//! and DDP run on; Li et al., VLDB 2020): Gloo on CPU, NCCL on CUDA, started by
//! `torchrun --no-python`. One process per device; each reads its share of every batch,
//! gradients are averaged in buckets after backward, and rank 0 alone writes.
//!
//! The process group is process-wide (set once by [`init_from_env`]) because the layers
//! that must see the whole global batch (SyncBatchNorm, the contrastive loss, the keyed
//! random draws) sit far below the runner.

mod ffi;

use anyhow::{bail, Context, Result};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// A process group of `world` ranks.
pub struct Group {
    raw: ffi::RawGroup,
    pub rank: usize,
    pub world: usize,
    /// The rank within this machine (the CUDA device index under NCCL).
    pub local_rank: usize,
    pub backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

#[derive(Clone, Copy)]
pub enum Reduce {
    Sum,
    Max,
}

static GROUP: OnceLock<Group> = OnceLock::new();

/// The process group, when this process is one rank of a data-parallel job.
pub fn current() -> Option<&'static Group> {
    GROUP.get()
}

/// This process's rank (0 when not data-parallel).
pub fn rank() -> usize {
    current().map_or(0, |g| g.rank)
}

/// The number of ranks (1 when not data-parallel).
pub fn world() -> usize {
    current().map_or(1, |g| g.world)
}

/// Whether this process writes files: rank 0, or the only process.
pub fn is_writer() -> bool {
    rank() == 0
}

/// How long a collective may wait for a peer before the job ends with an error
/// (`EKPHRASIS_DIST_TIMEOUT` seconds; 300 by default, as a first NCCL init can be slow).
fn timeout_ms() -> Result<i64> {
    match std::env::var("EKPHRASIS_DIST_TIMEOUT") {
        Err(_) => Ok(300_000),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok((s * 1000.0) as i64),
            _ => bail!("EKPHRASIS_DIST_TIMEOUT={v:?}: expected seconds in (0, 86400]"),
        },
    }
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a non-negative integer")),
    }
}

/// The launch a torchrun-style environment describes: RANK, WORLD_SIZE, LOCAL_RANK,
/// MASTER_ADDR, MASTER_PORT (and TORCHELASTIC_USE_AGENT_STORE when torchrun's agent
/// hosts the store). None when WORLD_SIZE is absent or 1.
#[derive(Debug, PartialEq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub addr: String,
    pub port: u16,
    pub agent_store: bool,
    pub restart: usize,
}

impl Launch {
    pub fn from_env() -> Result<Option<Launch>> {
        let Some(world) = env_usize("WORLD_SIZE")? else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        let need = |name: &str| -> Result<String> {
            std::env::var(name).with_context(|| {
                format!("WORLD_SIZE={world} is set but {name} is not: start the job with torchrun (or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
            })
        };
        let rank: usize = need("RANK")?
            .trim()
            .parse()
            .context("RANK is not a non-negative integer")?;
        if rank >= world {
            bail!("RANK={rank} is not below WORLD_SIZE={world}");
        }
        let local_rank = env_usize("LOCAL_RANK")?.unwrap_or(rank);
        let port: u16 = need("MASTER_PORT")?
            .trim()
            .parse()
            .context("MASTER_PORT is not a port number")?;
        let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(Launch {
            rank,
            world,
            local_rank,
            addr: need("MASTER_ADDR")?,
            port,
            agent_store,
            restart: env_usize("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
        }))
    }
}

/// Joins the data-parallel job the environment describes (a no-op outside torchrun),
/// on `device`: Gloo for the CPU, NCCL for CUDA. Returns the device this rank trains on
/// (CUDA device LOCAL_RANK under NCCL).
pub fn init_from_env(device: Device) -> Result<Device> {
    let Some(launch) = Launch::from_env()? else {
        return Ok(device);
    };
    if let Some(g) = current() {
        return Ok(g.device(device));
    }
    // NCCL where this build has it; otherwise Gloo, which reduces CUDA gradients through
    // host copies (slower, but the same numbers).
    let backend = if device.is_cuda() && cfg!(ekphrasis_nccl) {
        Backend::Nccl
    } else {
        Backend::Gloo
    };
    if device.is_cuda() && backend == Backend::Gloo && launch.rank == 0 {
        eprintln!("note: this build has no NCCL (no CUDA headers at build time): CUDA ranks reduce through Gloo on the host");
    }
    if device.is_cuda() {
        let n = tch::Cuda::device_count() as usize;
        if launch.local_rank >= n {
            bail!(
                "LOCAL_RANK={} but this machine has {n} CUDA device(s): start at most {n} processes per node",
                launch.local_rank
            );
        }
    }
    // torchrun's agent hosts the store when it says so; otherwise rank 0 does (a plain
    // launch with the env vars set by hand).
    let host_store = !launch.agent_store && launch.rank == 0;
    let prefix = format!("/ekphrasis/attempt_{}/", launch.restart);
    let raw = ffi::RawGroup::new(
        backend.name(),
        &launch.addr,
        launch.port,
        launch.rank,
        launch.world,
        host_store,
        &prefix,
        timeout_ms()?,
    )
    .with_context(|| {
        format!(
            "joining the {} process group as rank {} of {} at {}:{}",
            backend.name(),
            launch.rank,
            launch.world,
            launch.addr,
            launch.port
        )
    })?;
    let group = Group {
        raw,
        rank: launch.rank,
        world: launch.world,
        local_rank: launch.local_rank,
        backend,
    };
    let dev = group.device(device);
    if GROUP.set(group).is_err() {
        bail!("the process group was initialised twice");
    }
    Ok(dev)
}

impl Group {
    /// The device this rank computes on, given the one asked for: one GPU per process
    /// (LOCAL_RANK) when CUDA is asked for.
    pub fn device(&self, asked: Device) -> Device {
        if asked.is_cuda() {
            Device::Cuda(self.local_rank)
        } else {
            asked
        }
    }

    /// Where collectives' tensors must live for this backend.
    fn comm_device(&self) -> Device {
        match self.backend {
            Backend::Nccl => Device::Cuda(self.local_rank),
            Backend::Gloo => Device::Cpu,
        }
    }

    /// Runs `f` on a contiguous copy of `t` on the backend's device, then writes the
    /// result back into `t` (a no-op copy when `t` already qualifies).
    fn in_place(&self, t: &mut Tensor, f: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
        let dev = self.comm_device();
        if t.device() == dev && t.is_contiguous() {
            return f(t);
        }
        let mut buf = t.to_device(dev).contiguous();
        f(&mut buf)?;
        t.copy_(&buf);
        Ok(())
    }

    /// Reduces `t` over all ranks in place.
    pub fn all_reduce(&self, t: &mut Tensor, op: Reduce) -> Result<()> {
        self.in_place(t, |b| self.raw.all_reduce(b, op))
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.in_place(t, |b| self.raw.broadcast(b, root))
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        let mut one = Tensor::ones([1], (Kind::Float, self.comm_device()));
        self.raw.all_reduce(&mut one, Reduce::Sum)
    }

    /// The sum of `t` over ranks, differentiable: the gradient of each rank's `t` is the
    /// sum over ranks of the result's gradient.
    pub fn all_reduce_grad(&self, t: &Tensor) -> Result<Tensor> {
        let dev = t.device();
        let x = t.to_device(self.comm_device());
        Ok(self.raw.all_reduce_grad(&x)?.to_device(dev))
    }

    /// Every rank's `t` (same shape on all ranks) stacked along dim 0 in rank order,
    /// differentiable (as `torch.distributed.nn.all_gather`): this rank's rows carry the
    /// gradient every rank's loss sends them.
    pub fn all_gather_grad(&self, t: &Tensor) -> Result<Tensor> {
        let n = t.size()[0];
        let mut shape = t.size();
        shape[0] = n * self.world as i64;
        let placed = Tensor::zeros(&shape, (t.kind(), t.device())).slice_scatter(
            t,
            0,
            Some(n * self.rank as i64),
            Some(n * (self.rank as i64 + 1)),
            1,
        );
        self.all_reduce_grad(&placed)
    }

    /// Raises an error on every rank when `ok` is false on any one (e.g. a non-finite
    /// loss), so no rank waits for a peer that has stopped.
    pub fn all_ok(&self, ok: bool) -> Result<bool> {
        let mut t = Tensor::from_slice(&[if ok { 0.0f32 } else { 1.0 }]);
        self.all_reduce(&mut t, Reduce::Max)?;
        Ok(t.double_value(&[0]) == 0.0)
    }
}

/// This rank's rows of a global batch of `rows.len()`: the ranks take consecutive equal
/// parts in rank order, so rank 0's rows come first (as 1 process would hold them).
pub fn shard<T: Clone>(rows: &[T]) -> Vec<T> {
    let Some(g) = current() else {
        return rows.to_vec();
    };
    let per = rows.len() / g.world;
    rows[g.rank * per..(g.rank + 1) * per].to_vec()
}

/// The index of this rank's first row in the global batch, for a local batch of `local`.
pub fn first_row(local: usize) -> usize {
    rank() * local
}

/// Refuses a global batch the ranks cannot split evenly (the equivalence with one
/// process holds only then).
pub fn check_batch(batch: usize, field: &str) -> Result<()> {
    let w = world();
    if w > 1 && !batch.is_multiple_of(w) {
        bail!("{field} = {batch} does not split over {w} ranks: choose a multiple of {w} (it is the global batch; each rank reads {field} / {w})");
    }
    Ok(())
}

/// `sum / count` where both are summed over every rank's share of the batch, scaled so
/// that the ranks' averaged gradients equal one process's gradient of the global mean
/// (a token-mean cross-entropy, whose count differs between ranks).
pub fn global_mean(sum: &Tensor, count: &Tensor) -> Tensor {
    let Some(g) = current() else {
        return sum / count.clamp_min(1.0);
    };
    let mut total = count.detach().to_kind(Kind::Double).reshape([1]);
    if let Err(e) = g.all_reduce(&mut total, Reduce::Sum) {
        record(e);
    }
    let total = total.double_value(&[0]).max(1.0);
    sum * (g.world as f64 / total)
}

/// The global batch of a per-sample tensor (rows of every rank, in rank order), with the
/// gradient flowing back to each rank's rows; `x` itself outside a data-parallel job. A
/// loss over it is the same on every rank, so its gradients are scaled by the world size
/// (what averaging then divides away); contrastive losses use it (OpenCLIP's
/// `gather_with_grad`).
pub fn gather_batch(x: &Tensor) -> Tensor {
    match current() {
        None => x.shallow_clone(),
        Some(g) => g.all_gather_grad(x).unwrap_or_else(|e| {
            record(e);
            Tensor::cat(&vec![x; g.world], 0)
        }),
    }
}

/// `x.roll(shift, 0)` over the global batch: this rank's rows of the rolled global batch
/// (a GAN's mismatched pairs take the next row's caption, which may sit on the next
/// rank). Gradients flow back to whichever rank holds each row.
pub fn roll_global(x: &Tensor, shift: i64) -> Tensor {
    let Some(g) = current() else {
        return x.roll([shift], [0]);
    };
    let n = x.size()[0];
    gather_batch(x)
        .roll([shift], [0])
        .narrow(0, n * g.rank as i64, n)
}

/// The differentiable sum of `t` over ranks for layers that cannot return an error
/// (SyncBatchNorm): a failure is recorded for [`take_error`] and `t` returned.
pub fn reduce_or_record(g: &Group, t: &Tensor) -> Tensor {
    g.all_reduce_grad(t).unwrap_or_else(|e| {
        record(e);
        t * g.world as f64
    })
}

static FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn record(e: anyhow::Error) {
    if let Ok(mut f) = FAILURE.lock() {
        f.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// The first collective failure inside a forward pass, as an error (the runner asks
/// after every micro-batch).
pub fn take_error() -> Result<()> {
    let failure = FAILURE.lock().ok().and_then(|mut f| f.take());
    match failure {
        Some(e) => bail!("a collective inside the forward pass failed: {e}"),
        None => Ok(()),
    }
}

/// Averages the gradients of `vars` over ranks, in buckets of about 25 MB (DDP's
/// default): each bucket is flattened into one tensor, all-reduced, and copied back.
/// A variable that any rank has a gradient for gets one (zeros) on every rank first, so
/// every rank reduces the same buckets.
pub fn average_gradients(vars: &[Tensor]) -> Result<()> {
    let Some(g) = current() else {
        return Ok(());
    };
    let flags: Vec<f32> = vars
        .iter()
        .map(|v| f32::from(u8::from(v.grad().defined())))
        .collect();
    let mut present = Tensor::from_slice(&flags);
    g.all_reduce(&mut present, Reduce::Max)?;
    let present: Vec<f32> = Vec::<f32>::try_from(&present)?;
    let missing: Vec<Tensor> = vars
        .iter()
        .zip(&present)
        .filter(|(v, p)| **p > 0.0 && !v.grad().defined())
        .map(|(v, _)| (v * 0.0).sum(Kind::Float))
        .collect();
    if !missing.is_empty() {
        Tensor::stack(&missing, 0).sum(Kind::Float).f_backward()?;
    }
    const BUCKET_BYTES: usize = 25 << 20;
    let grads: Vec<Tensor> = vars
        .iter()
        .map(|v| v.grad())
        .filter(|g| g.defined())
        .collect();
    let mut start = 0;
    while start < grads.len() {
        let kind = grads[start].kind();
        let mut end = start;
        let mut bytes = 0;
        while end < grads.len()
            && grads[end].kind() == kind
            && (bytes < BUCKET_BYTES || end == start)
        {
            bytes += grads[end].numel() * grads[end].kind().elt_size_in_bytes();
            end += 1;
        }
        let bucket = &grads[start..end];
        let flat: Vec<Tensor> = bucket.iter().map(|t| t.reshape([-1])).collect();
        let mut flat = Tensor::cat(&flat, 0);
        g.all_reduce(&mut flat, Reduce::Sum)?;
        let flat = flat / g.world as f64;
        let mut offset = 0;
        for t in bucket {
            let n = t.numel() as i64;
            let mut t = t.shallow_clone();
            t.copy_(&flat.narrow(0, offset, n).view_as(&t));
            offset += n;
        }
        start = end;
    }
    Ok(())
}

/// Whether `ok` holds on every rank (true outside a data-parallel job: `ok` itself).
/// Decisions that end the loop (a non-finite loss, Ctrl-C, early stopping) go through
/// it, so no rank waits in a collective for a peer that has stopped.
pub fn all_agree(ok: bool) -> Result<bool> {
    match current() {
        None => Ok(ok),
        Some(g) => g.all_ok(ok),
    }
}

/// Waits for every rank (a no-op outside a data-parallel job).
pub fn barrier() -> Result<()> {
    match current() {
        None => Ok(()),
        Some(g) => g.barrier(),
    }
}

/// Makes every rank's `vars` (weights and buffers) rank 0's.
pub fn broadcast_from_first(vars: &mut [Tensor]) -> Result<()> {
    let Some(g) = current() else {
        return Ok(());
    };
    tch::no_grad(|| -> Result<()> {
        for v in vars.iter_mut() {
            g.broadcast(v, 0)?;
        }
        Ok(())
    })
}

/// The mean over ranks of one number per rank (a loss, for the log).
pub fn mean_of(v: f64) -> Result<f64> {
    let Some(g) = current() else {
        return Ok(v);
    };
    let mut t = Tensor::from_slice(&[v]);
    g.all_reduce(&mut t, Reduce::Sum)?;
    Ok(t.double_value(&[0]) / g.world as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_torchrun_there_is_one_rank_and_nothing_is_sharded() {
        // The test harness never sets WORLD_SIZE (and no test initialises a group).
        assert!(current().is_none());
        assert_eq!((rank(), world()), (0, 1));
        assert_eq!(shard(&[1, 2, 3]), vec![1, 2, 3]);
        assert!(check_batch(7, "train.batch_size").is_ok());
        let m = global_mean(&Tensor::from(6.0f32), &Tensor::from(4.0f32));
        assert!((m.double_value(&[]) - 1.5).abs() < 1e-9);
    }
}

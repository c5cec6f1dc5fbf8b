//! AdamW (Loshchilov & Hutter 2019) with its moments held as named tensors, so they can
//! be checkpointed: tch's `nn::Optimizer` keeps them inside libtorch, out of reach.
//! The arithmetic follows `torch.optim.AdamW` exactly (see the step-for-step test).

use tch::{nn::VarStore, Kind, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay every parameter (as `nn::AdamW` does) instead of matrices only.
    pub decay_all: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_all: false,
        }
    }
}

struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
    /// This variable steps at `lr × lr_scale` (1 unless [`AdamW::scale_lr`] set it).
    lr_scale: f64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    /// Number of updates applied so far (the bias-correction step count).
    pub steps: i64,
    params: Vec<Param>,
    /// Prefix of this optimizer's tensors in a checkpoint.
    key: String,
}

impl AdamW {
    /// Tracks every trainable variable of `vs`, in name order.
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Self {
        Self::for_group(vs, cfg, "adam", &[])
    }

    /// Tracks the trainable variables whose names start with one of `prefixes` (all of
    /// them when empty); its checkpoint tensors are named `<key>.…`. Models with several
    /// optimizers (a GAN's generator and discriminator) use one per group.
    pub fn for_group(vs: &VarStore, cfg: AdamWConfig, key: &str, prefixes: &[String]) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(n, t)| {
                t.requires_grad()
                    && (prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p.as_str())))
            })
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| Param {
                m: var.zeros_like(),
                v: var.zeros_like(),
                decay: cfg.decay_all || var.dim() >= 2,
                lr_scale: 1.0,
                name,
                var,
            })
            .collect();
        AdamW {
            cfg,
            steps: 0,
            params,
            key: key.to_string(),
        }
    }

    /// Steps the variables whose names start with `prefix` at `lr × scale` (a pretrained
    /// part fine-tuned gently); returns how many it matched. Moments and checkpoints are
    /// unchanged by it: the scale is the config's, set again on every start.
    pub fn scale_lr(&mut self, prefix: &str, scale: f64) -> usize {
        let mut matched = 0;
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            p.lr_scale = scale;
            matched += 1;
        }
        matched
    }

    /// The variables this optimizer updates, in name order (shallow handles).
    pub fn variables(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    /// How many variables this optimizer updates.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Rescales gradients so their global L2 norm is at most `max_norm` (no-op when
    /// `max_norm` ≤ 0); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if max_norm > 0.0 && total > max_norm {
            let scale = max_norm / (total + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        total
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bc2 = 1.0 - c.beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for p in self.params.iter_mut() {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lr * p.lr_scale;
                if p.decay && c.weight_decay > 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.m.lerp_(&g, 1.0 - c.beta1);
                let _ = p.v.g_mul_scalar_(c.beta2);
                let _ = p.v.addcmul_(&g, &(&g * (1.0 - c.beta2)));
                let denom = p.v.sqrt() / bc2.sqrt() + c.eps;
                let _ = p.var.addcdiv_(&(&p.m * (-lr / bc1)), &denom);
            }
        });
    }

    /// The moments as named tensors (`adam.m.<var>`, `adam.v.<var>`) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let k = &self.key;
        let mut out = vec![(format!("{k}.steps"), Tensor::from_slice(&[self.steps]))];
        for p in &self.params {
            out.push((format!("{k}.m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("{k}.v.{}", p.name), p.v.shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; every tensor must be present with
    /// the right shape.
    pub fn load_state(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
    ) -> anyhow::Result<()> {
        let steps = saved
            .get(&format!("{}.steps", self.key))
            .ok_or_else(|| anyhow::anyhow!("checkpoint has no optimizer state"))?;
        self.steps = steps.int64_value(&[0]);
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in self.params.iter_mut() {
                for (key, dst) in [
                    (format!("{}.m.{}", self.key, p.name), &mut p.m),
                    (format!("{}.v.{}", self.key, p.name), &mut p.v),
                ] {
                    let src = saved
                        .get(&key)
                        .ok_or_else(|| anyhow::anyhow!("checkpoint lacks {key}"))?;
                    if src.size() != dst.size() {
                        anyhow::bail!(
                            "checkpoint {key} has shape {:?}, the model needs {:?}",
                            src.size(),
                            dst.size()
                        );
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, OptimizerConfig};
    use tch::Device;

    /// Same model, same data: our AdamW and `nn::AdamW` (libtorch's) stay equal step by step.
    #[test]
    fn matches_libtorch_adamw_step_for_step() {
        tch::manual_seed(0);
        let xs = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
        let ys = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
        let build = |vs: &nn::VarStore| {
            let p = vs.root();
            nn::seq()
                .add(nn::linear(&p / "a", 5, 8, Default::default()))
                .add_fn(|x| x.tanh())
                .add(nn::linear(&p / "b", 8, 3, Default::default()))
        };
        let vs1 = nn::VarStore::new(Device::Cpu);
        let m1 = build(&vs1);
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let m2 = build(&vs2);
        vs2.copy(&vs1).unwrap();
        let cfg = AdamWConfig {
            decay_all: true,
            ..Default::default()
        };
        let mut ours = AdamW::new(&vs1, cfg);
        let mut theirs = nn::AdamW::default().build(&vs2, 1e-2).unwrap();
        for step in 0..20 {
            ours.zero_grad();
            (m1.forward(&xs) - &ys).square().mean(None).backward();
            ours.step(1e-2);
            theirs.zero_grad();
            (m2.forward(&xs) - &ys).square().mean(None).backward();
            theirs.step();
            let v1 = vs1.variables();
            for (name, t2) in vs2.variables() {
                let diff = (&v1[&name] - t2).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "step {step} {name}: {diff}");
            }
        }
    }

    /// A scaled prefix moves by its share of the step; the other variables as before.
    #[test]
    fn a_scaled_prefix_steps_at_its_share_of_the_rate() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let a = (vs.root() / "a").randn("w", &[4, 4], 0.0, 1.0);
        let b = (vs.root() / "b").randn("w", &[4, 4], 0.0, 1.0);
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let step_once = |scale: f64| {
            let (a0, b0) = (a.detach().copy(), b.detach().copy());
            let mut opt = AdamW::new(&vs, cfg);
            assert_eq!(opt.scale_lr("a.", scale), 1);
            opt.zero_grad();
            ((&a * 3.0).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float)).backward();
            opt.step(0.1);
            let moved = (
                (&a - &a0).abs().mean(Kind::Float).double_value(&[]),
                (&b - &b0).abs().mean(Kind::Float).double_value(&[]),
            );
            tch::no_grad(|| {
                a.detach().copy_(&a0);
                b.detach().copy_(&b0);
            });
            moved
        };
        let (a_full, b_full) = step_once(1.0);
        let (a_tenth, b_same) = step_once(0.1);
        let (a_frozen, _) = step_once(0.0);
        assert!(
            (a_full - 0.1).abs() < 1e-5,
            "Adam's first step moves by lr: {a_full}"
        );
        assert!((a_tenth - 0.01).abs() < 1e-6, "{a_tenth}");
        assert_eq!(a_frozen, 0.0);
        assert!((b_full - b_same).abs() < 1e-9, "{b_full} {b_same}");
    }
}

//! Exponential moving average of the weights (a shadow copy), used for evaluation,
//! saved in checkpoints and exported when present.

use tch::{nn::VarStore, Tensor};

pub struct Ema {
    pub decay: f64,
    shadow: Vec<(String, Tensor, Tensor)>, // (name, live variable, shadow)
}

impl Ema {
    pub fn new(vs: &VarStore, decay: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let shadow = vars
            .into_iter()
            .map(|(n, v)| {
                let s = v.detach().copy();
                (n, v, s)
            })
            .collect();
        Ema { decay, shadow }
    }

    /// Folds the live weights in. The effective decay ramps up over the first steps
    /// (`(1+t)/(10+t)`), so early averages are not dominated by the random init.
    pub fn update(&mut self, step: i64) {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        tch::no_grad(|| {
            for (_, v, s) in self.shadow.iter_mut() {
                let _ = s.lerp_(v, 1.0 - d);
            }
        });
    }

    /// Runs `f` with the shadow weights loaded into the model, then restores the live ones.
    pub fn with_shadow<T>(&self, f: impl FnOnce() -> T) -> T {
        let backup: Vec<Tensor> = self
            .shadow
            .iter()
            .map(|(_, v, _)| v.detach().copy())
            .collect();
        tch::no_grad(|| {
            for (_, v, s) in &self.shadow {
                v.shallow_clone().copy_(s);
            }
        });
        let out = f();
        tch::no_grad(|| {
            for ((_, v, _), b) in self.shadow.iter().zip(&backup) {
                v.shallow_clone().copy_(b);
            }
        });
        out
    }

    /// The shadow as named tensors (`ema.<var>`) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(n, _, s)| (format!("ema.{n}"), s.shallow_clone()))
            .collect()
    }

    pub fn load_state(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
    ) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for (n, _, s) in self.shadow.iter_mut() {
                let src = saved
                    .get(&format!("ema.{n}"))
                    .ok_or_else(|| anyhow::anyhow!("checkpoint lacks ema.{n}"))?;
                if src.size() != s.size() {
                    anyhow::bail!(
                        "checkpoint ema.{n} has shape {:?}, the model needs {:?}",
                        src.size(),
                        s.size()
                    );
                }
                s.copy_(src);
            }
            Ok(())
        })
    }
}

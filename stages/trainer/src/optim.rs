//! AdamW with decoupled weight decay, warm-up then cosine learning rate, and global
//! gradient-norm clipping. Written out (rather than libtorch's optimiser) so its whole
//! state is a set of named tensors that a checkpoint saves and restores exactly.

use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerOptions {
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub warmup_steps: u64,
    /// Steps of cosine decay after warm-up; the rate stays at the minimum afterwards.
    pub decay_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Largest global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            min_learning_rate: 3e-5,
            warmup_steps: 200,
            decay_steps: 100_000,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            grad_clip: 1.0,
        }
    }
}

impl OptimizerOptions {
    /// The learning rate of optimiser step `step` (0-based).
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let progress =
            ((step - self.warmup_steps) as f64 / self.decay_steps.max(1) as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_learning_rate + (self.learning_rate - self.min_learning_rate) * cosine
    }
}

pub struct AdamW {
    pub options: OptimizerOptions,
    /// (name, parameter, first moment, second moment), in name order.
    params: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Optimiser steps taken.
    pub step: u64,
}

impl AdamW {
    pub fn new(named: Vec<(String, Tensor)>, options: OptimizerOptions) -> Self {
        let mut params: Vec<_> = named
            .into_iter()
            .map(|(name, p)| {
                let (m, v) = (p.zeros_like(), p.zeros_like());
                (name, p, m, v)
            })
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            options,
            params,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Clips, then applies one update at the scheduled rate; returns (rate, gradient
    /// norm before clipping).
    pub fn step(&mut self) -> (f64, f64) {
        let o = self.options.clone();
        let lr = o.learning_rate_at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let (bias1, bias2) = (1.0 - o.beta1.powf(t), 1.0 - o.beta2.powf(t));
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p, _, _)| p.grad()).collect();
            let norm = grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| {
                    g.to_kind(tch::Kind::Float)
                        .pow_tensor_scalar(2)
                        .sum(tch::Kind::Float)
                })
                .fold(None::<Tensor>, |acc, s| {
                    Some(acc.map_or(s.shallow_clone(), |a| a + s))
                })
                .map_or(0.0, |s| s.sqrt().double_value(&[]));
            let clip = if o.grad_clip > 0.0 && norm > o.grad_clip {
                o.grad_clip / (norm + 1e-6)
            } else {
                1.0
            };
            for ((_, p, m, v), g) in self.params.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                let g = g * clip;
                let _ = m.g_mul_scalar_(o.beta1).g_add_(&(&g * (1.0 - o.beta1)));
                let _ = v
                    .g_mul_scalar_(o.beta2)
                    .g_add_(&(&g * &g * (1.0 - o.beta2)));
                // Decay matrices only; norms' gains stay put.
                if p.dim() >= 2 && o.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * o.weight_decay);
                }
                let denominator = (&*v / bias2).sqrt() + o.epsilon;
                let _ = p.g_sub_(&(&*m / &denominator * (lr / bias1)));
            }
            (lr, norm)
        })
    }

    /// The moments as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|(name, _, m, v)| {
                [
                    (format!("m.{name}"), m.shallow_clone()),
                    (format!("v.{name}"), v.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments saved by [`Self::state`].
    pub fn load_state(&mut self, state: &[(String, Tensor)], step: u64) -> anyhow::Result<()> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for (name, _, m, v) in &mut self.params {
                for (prefix, moment) in [("m", &mut *m), ("v", &mut *v)] {
                    let saved = by_name
                        .get(format!("{prefix}.{name}").as_str())
                        .ok_or_else(|| anyhow::anyhow!("optimiser state lacks {prefix}.{name}"))?;
                    moment.f_copy_(saved)?;
                }
            }
            anyhow::Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_cosine_down_to_the_minimum() {
        let o = OptimizerOptions {
            learning_rate: 1.0,
            min_learning_rate: 0.1,
            warmup_steps: 10,
            decay_steps: 100,
            ..Default::default()
        };
        assert!((o.learning_rate_at(0) - 0.1).abs() < 1e-12);
        assert!((o.learning_rate_at(9) - 1.0).abs() < 1e-12);
        assert!((o.learning_rate_at(60) - 0.55).abs() < 1e-9, "half way");
        assert!((o.learning_rate_at(110) - 0.1).abs() < 1e-12);
        assert!((o.learning_rate_at(10_000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn descends_a_quadratic_and_clips() {
        let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let mut adam = AdamW::new(
            vec![("x".into(), x.shallow_clone())],
            OptimizerOptions {
                learning_rate: 0.1,
                min_learning_rate: 0.1,
                warmup_steps: 0,
                weight_decay: 0.0,
                grad_clip: 1.0,
                ..Default::default()
            },
        );
        let mut first_norm = 0.0;
        for i in 0..200 {
            adam.zero_grad();
            x.pow_tensor_scalar(2).sum(tch::Kind::Float).backward();
            let (_, norm) = adam.step();
            if i == 0 {
                first_norm = norm;
            }
        }
        assert!((first_norm - (36.0f64 + 16.0).sqrt()).abs() < 1e-4);
        assert!(x.abs().max().double_value(&[]) < 0.05, "{x}");
    }
}

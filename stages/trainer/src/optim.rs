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
    /// Matrices (weight-decayed), then the rest (norms' gains: not decayed).
    groups: Vec<Group>,
    /// Optimiser steps taken.
    pub step: u64,
}

/// Parameters under one weight-decay rule, packed into one buffer: each parameter becomes
/// a view of `flat`, so an update is a few kernels over all of them (the effect of torch's
/// fused multi-tensor AdamW, which tch does not bind) rather than a few per parameter,
/// which on a GPU cost more in launches than in arithmetic.
struct Group {
    decay: bool,
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    /// (name, parameter, offset into the buffers), in name order.
    members: Vec<(String, Tensor, i64)>,
}

impl Group {
    fn new(decay: bool, mut members: Vec<(String, Tensor)>) -> Self {
        let flat = tch::no_grad(|| {
            let pieces: Vec<Tensor> = members
                .iter()
                .map(|(_, p)| p.detach().reshape([-1]))
                .collect();
            Tensor::cat(&pieces, 0)
        });
        let mut offset = 0;
        let members = members
            .iter_mut()
            .map(|(name, p)| {
                let numel = p.numel() as i64;
                p.set_data(&flat.narrow(0, offset, numel).view(p.size().as_slice()));
                offset += numel;
                (std::mem::take(name), p.shallow_clone(), offset - numel)
            })
            .collect();
        Self {
            decay,
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            flat,
            members,
        }
    }

    /// The gradients as one flat tensor (a parameter without one counts as zero).
    fn gradient(&self) -> Tensor {
        let pieces: Vec<Tensor> = self
            .members
            .iter()
            .map(|(_, p, _)| match p.grad() {
                g if g.defined() => g.reshape([-1]),
                _ => p.zeros_like().reshape([-1]),
            })
            .collect();
        Tensor::cat(&pieces, 0)
    }

    /// A member's slice of a flat buffer (`m` or `v`), shaped like its parameter.
    fn slice(&self, buffer: &Tensor, parameter: &Tensor, offset: i64) -> Tensor {
        buffer
            .narrow(0, offset, parameter.numel() as i64)
            .view(parameter.size().as_slice())
    }
}

impl AdamW {
    pub fn new(named: Vec<(String, Tensor)>, options: OptimizerOptions) -> Self {
        let mut named = named;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        // Decay matrices only; norms' gains stay put.
        let (matrices, rest): (Vec<_>, Vec<_>) = named.into_iter().partition(|(_, p)| p.dim() >= 2);
        let groups = [(true, matrices), (false, rest)]
            .into_iter()
            .filter(|(_, members)| !members.is_empty())
            .map(|(decay, members)| Group::new(decay, members))
            .collect();
        Self {
            options,
            groups,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for group in &mut self.groups {
            for (_, p, _) in &mut group.members {
                p.zero_grad();
            }
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
            let grads: Vec<Tensor> = self.groups.iter().map(Group::gradient).collect();
            let norm = grads
                .iter()
                .map(|g| g.square().sum(tch::Kind::Float))
                .reduce(|a, b| a + b)
                .map_or(0.0, |s| s.sqrt().double_value(&[]));
            let clip = if o.grad_clip > 0.0 && norm > o.grad_clip {
                o.grad_clip / (norm + 1e-6)
            } else {
                1.0
            };
            // In place where libtorch allows: each call is one pass over a buffer.
            for (group, mut g) in self.groups.iter_mut().zip(grads) {
                if clip != 1.0 {
                    let _ = g.g_mul_scalar_(clip);
                }
                let _ = group.m.lerp_(&g, 1.0 - o.beta1);
                let _ = group.v.lerp_(&g.square_(), 1.0 - o.beta2);
                if group.decay && o.weight_decay > 0.0 {
                    let _ = group.flat.g_mul_scalar_(1.0 - lr * o.weight_decay);
                }
                // p -= lr · m̂ / (√v̂ + ε), with m̂ = m / bias1 and v̂ = v / bias2.
                let mut denominator = group.v.sqrt();
                let _ = denominator
                    .g_mul_scalar_(1.0 / bias2.sqrt())
                    .g_add_scalar_(o.epsilon);
                let mut update = &group.m / &denominator;
                let _ = group.flat.g_sub_(&update.g_mul_scalar_(lr / bias1));
            }
            (lr, norm)
        })
    }

    /// The moments as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = self
            .groups
            .iter()
            .flat_map(|group| {
                group.members.iter().flat_map(move |(name, p, offset)| {
                    [
                        (format!("m.{name}"), group.slice(&group.m, p, *offset)),
                        (format!("v.{name}"), group.slice(&group.v, p, *offset)),
                    ]
                })
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// Restores the moments saved by [`Self::state`].
    pub fn load_state(&mut self, state: &[(String, Tensor)], step: u64) -> anyhow::Result<()> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for group in &self.groups {
                for (name, p, offset) in &group.members {
                    for (prefix, buffer) in [("m", &group.m), ("v", &group.v)] {
                        let saved = by_name
                            .get(format!("{prefix}.{name}").as_str())
                            .ok_or_else(|| {
                                anyhow::anyhow!("optimiser state lacks {prefix}.{name}")
                            })?;
                        group.slice(buffer, p, *offset).f_copy_(saved)?;
                    }
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
    fn one_step_decays_matrices_only_and_updates_the_callers_tensors() {
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f32, -1.0]).set_requires_grad(true);
        let (lr, decay) = (0.01, 0.5);
        let mut adam = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            OptimizerOptions {
                learning_rate: lr,
                min_learning_rate: lr,
                warmup_steps: 0,
                weight_decay: decay,
                grad_clip: 0.0,
                ..Default::default()
            },
        );
        // Gradients 3·sign pattern for w, -2 for b: the first update is lr·sign(g).
        let pattern = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0]).view([2, 2]);
        for _ in 0..2 {
            adam.zero_grad();
            ((&w * &pattern * 3.0).sum(tch::Kind::Float) - (&b * 2.0).sum(tch::Kind::Float))
                .backward();
            adam.step();
            // The second pass checks gradients still reach the packed parameters.
        }
        let expect_w: Vec<f32> = [1.0f64, 2.0, 3.0, 4.0]
            .iter()
            .zip([1.0, -1.0, 1.0, -1.0])
            .map(|(x, s)| {
                let once = x * (1.0 - lr * decay) - lr * s;
                (once * (1.0 - lr * decay) - lr * s) as f32
            })
            .collect();
        let got_w: Vec<f32> = w.view([-1]).try_into().unwrap();
        let got_b: Vec<f32> = b.try_into().unwrap();
        for (g, e) in got_w.iter().zip(&expect_w) {
            assert!((g - e).abs() < 1e-5, "w {got_w:?} vs {expect_w:?}");
        }
        assert!(
            (got_b[0] - 1.02).abs() < 1e-5 && (got_b[1] + 0.98).abs() < 1e-5,
            "b {got_b:?}"
        );
        let state = adam.state();
        assert_eq!(state.len(), 4);
        assert_eq!(state[0].0, "m.b");
        assert_eq!(state[1].1.size(), [2, 2], "m.w keeps w's shape");
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

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
/// a view of `flat`, and each gradient a view of `grad` (backward accumulates into it in
/// place), so an update runs over all of them at once rather than a few kernels per
/// parameter, which on a GPU cost more in launches than in arithmetic. tch binds no fused
/// AdamW: on a CUDA device the update is a few whole-buffer kernels, on the CPU one pass
/// of our own ([`update_on_cpu`]).
struct Group {
    decay: bool,
    flat: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    /// (name, parameter, offset into the buffers), in name order.
    members: Vec<(String, Tensor, i64)>,
}

/// The scalars of one update.
#[derive(Debug, Clone, Copy)]
struct Update {
    clip: f64,
    beta1: f64,
    beta2: f64,
    /// What the parameters are multiplied by first (1 without weight decay).
    decay: f64,
    /// lr / (1 − β1ᵗ)
    step_size: f64,
    /// 1 / √(1 − β2ᵗ)
    inverse_root_bias2: f64,
    epsilon: f64,
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
            grad: flat.zeros_like(),
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            flat,
            members,
        }
    }

    /// The gradients as one flat tensor. Autograd allocates a parameter's first
    /// gradient itself: it is copied in and the gradient made a view of `grad`, where
    /// later backward passes accumulate without a copy. A parameter without a
    /// gradient counts as zero.
    fn gradient(&mut self) -> &mut Tensor {
        for (_, p, offset) in &self.members {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut view = self.slice(&self.grad, p, *offset);
            if g.data_ptr() != view.data_ptr() {
                view.copy_(&g);
                g.set_data(&view);
            }
        }
        &mut self.grad
    }

    /// A member's slice of a flat buffer, shaped like its parameter.
    fn slice(&self, buffer: &Tensor, parameter: &Tensor, offset: i64) -> Tensor {
        buffer
            .narrow(0, offset, parameter.numel() as i64)
            .view(parameter.size().as_slice())
    }

    /// p ← p·decay − step_size · m / (√v · inverse_root_bias2 + ε), after the moments
    /// take the clipped gradient.
    fn update(&mut self, u: Update) {
        let cpu_f32 = [&self.flat, &self.grad, &self.m, &self.v]
            .iter()
            .all(|t| t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float);
        if cpu_f32 {
            update_on_cpu(&self.flat, &self.grad, &self.m, &self.v, u);
            return;
        }
        // In place where libtorch allows: each call is one pass over a buffer. The
        // gradient is scratch here: zero_grad clears it next.
        let g = &mut self.grad;
        if u.clip != 1.0 {
            let _ = g.g_mul_scalar_(u.clip);
        }
        let _ = self.m.lerp_(g, 1.0 - u.beta1);
        let _ = self.v.lerp_(&g.square_(), 1.0 - u.beta2);
        if u.decay != 1.0 {
            let _ = self.flat.g_mul_scalar_(u.decay);
        }
        let mut denominator = self.v.sqrt();
        let _ = denominator
            .g_mul_scalar_(u.inverse_root_bias2)
            .g_add_scalar_(u.epsilon);
        let mut step = &self.m / &denominator;
        let _ = self.flat.g_sub_(&step.g_mul_scalar_(u.step_size));
    }
}

/// The whole AdamW update in one pass over four contiguous f32 buffers, split across
/// the cores: what torch's fused CPU kernel does. Element-wise libtorch calls would
/// read and write the buffers a dozen times, and on a CPU the optimiser step of a large
/// model is bound by exactly that memory traffic.
fn update_on_cpu(flat: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, u: Update) {
    let n = flat.numel();
    for t in [flat, grad, m, v] {
        assert!(
            t.is_contiguous() && t.numel() == n,
            "flat optimiser buffers"
        );
    }
    // SAFETY: the four tensors are distinct contiguous f32 CPU allocations of `n`
    // elements made by Group::new, nothing else runs on them during a step (libtorch's
    // CPU ops are synchronous and the step runs outside autograd), and each thread
    // below gets disjoint chunks.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(flat.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(grad.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = n.div_ceil(threads).max(1 << 14);
    let [clip, beta1, beta2, decay, step_size, inverse_root_bias2, epsilon] = [
        u.clip,
        u.beta1,
        u.beta2,
        u.decay,
        u.step_size,
        u.inverse_root_bias2,
        u.epsilon,
    ]
    .map(|x| x as f32);
    std::thread::scope(|scope| {
        let chunks = p
            .chunks_mut(chunk)
            .zip(g.chunks(chunk))
            .zip(m.chunks_mut(chunk))
            .zip(v.chunks_mut(chunk));
        for (((p, g), m), v) in chunks {
            scope.spawn(move || {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    let g = g * clip;
                    *m += (1.0 - beta1) * (g - *m);
                    *v += (1.0 - beta2) * (g * g - *v);
                    *p = *p * decay - step_size * *m / (v.sqrt() * inverse_root_bias2 + epsilon);
                }
            });
        }
    });
}

impl AdamW {
    pub fn new(mut named: Vec<(String, Tensor)>, options: OptimizerOptions) -> Self {
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

    /// Zeroes every gradient: one kernel per flat buffer, not one per parameter.
    pub fn zero_grad(&mut self) {
        tch::no_grad(|| {
            for group in &mut self.groups {
                let _ = group.gradient().zero_();
            }
        });
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
            let norm = self
                .groups
                .iter_mut()
                .map(|group| group.gradient().norm().square())
                .reduce(|a, b| a + b)
                .map_or(0.0, |s| s.sqrt().double_value(&[]));
            let clip = if o.grad_clip > 0.0 && norm > o.grad_clip {
                o.grad_clip / (norm + 1e-6)
            } else {
                1.0
            };
            for group in &mut self.groups {
                let decay = if group.decay {
                    1.0 - lr * o.weight_decay
                } else {
                    1.0
                };
                group.update(Update {
                    clip,
                    beta1: o.beta1,
                    beta2: o.beta2,
                    decay,
                    step_size: lr / bias1,
                    inverse_root_bias2: 1.0 / bias2.sqrt(),
                    epsilon: o.epsilon,
                });
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
    fn the_whole_buffer_kernels_match_the_one_pass_cpu_update() {
        // f32 on the CPU takes update_on_cpu; f64 takes the libtorch kernels a GPU runs.
        let run = |kind: tch::Kind| {
            let w = Tensor::from_slice(&[0.5f64, -1.5, 2.0, 0.25, -0.75, 1.0])
                .to_kind(kind)
                .view([2, 3])
                .set_requires_grad(true);
            let b = Tensor::from_slice(&[0.1f64, -0.2, 0.3])
                .to_kind(kind)
                .set_requires_grad(true);
            let mut adam = AdamW::new(
                vec![
                    ("w".into(), w.shallow_clone()),
                    ("b".into(), b.shallow_clone()),
                ],
                OptimizerOptions {
                    learning_rate: 0.05,
                    warmup_steps: 2,
                    grad_clip: 0.5,
                    ..Default::default()
                },
            );
            for step in 0..6 {
                adam.zero_grad();
                let x = Tensor::from_slice(&[1.0f64, -2.0, 0.5]).to_kind(kind) * (step + 1) as f64;
                (w.matmul(&x).pow_tensor_scalar(2).sum(kind) + (&b * &x).sum(kind)).backward();
                adam.step();
            }
            let mut all: Vec<f64> = w.to_kind(tch::Kind::Double).view([-1]).try_into().unwrap();
            all.extend(Vec::<f64>::try_from(b.to_kind(tch::Kind::Double)).unwrap());
            for (_, t) in adam.state() {
                all.extend(Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).view([-1])).unwrap());
            }
            all
        };
        let (one_pass, kernels) = (run(tch::Kind::Float), run(tch::Kind::Double));
        assert_eq!(one_pass.len(), 27, "weights, then both moments");
        for (a, b) in one_pass.iter().zip(&kernels) {
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                "{one_pass:?}\n{kernels:?}"
            );
        }
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

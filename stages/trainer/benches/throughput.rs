//! Training throughput of a preset on this machine's device: tokens per second of full
//! optimiser steps (forward, backward, clipping, AdamW) on random tokens, model-FLOPs
//! utilisation against an H100's 989 TFLOPS bf16 peak, and GPU memory.
//!
//!     cargo bench -p codelupe-trainer                      # tiny, CPU-sized
//!     PRESET=125m SEQ=2048 ROWS=16 STEPS=30 cargo bench -p codelupe-trainer   # on a GPU
//!
//! PHASES=1 then times each phase of the same number of steps (forward, backward,
//! optimiser), the device synchronised after each, as pytorch_reference.py does: it
//! shows in which phase a gap to PyTorch lies, as libtorch from Rust binds no profiler.

use std::time::Instant;

use codelupe_trainer::model::ModelConfig;
use codelupe_trainer::optim::OptimizerOptions;
use codelupe_trainer::stage::choose_device;
use codelupe_trainer::train::{Sequences, Trainer};

mod common;

use common::{env, random_batch};

fn main() {
    let preset: String = env("PRESET", "tiny".to_string());
    let (seq, rows, steps, vocab): (i64, i64, usize, i64) = (
        env("SEQ", 256),
        env("ROWS", 8),
        env("STEPS", 20),
        env("VOCAB", 32_768),
    );
    let device = choose_device(&env("DEVICE", "auto".to_string())).unwrap();
    let config = ModelConfig::preset(&preset, vocab).unwrap();
    let mut trainer = Trainer::new(config, OptimizerOptions::default(), device, 0, true);
    let batch = random_batch(vocab, rows, seq);
    let step = |trainer: &mut Trainer| {
        trainer.accumulate(&batch, 1);
        trainer.step();
    };
    for _ in 0..3 {
        step(&mut trainer); // warm-up: kernels, allocator
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let started = Instant::now();
    for _ in 0..steps {
        step(&mut trainer);
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_second = (steps as i64 * rows * seq) as f64 / seconds;
    let flops = tokens_per_second * config.flops_per_token(seq);
    println!(
        "preset {preset} ({:.1}M parameters), {device:?}, {rows}x{seq} tokens per step, {steps} steps in {seconds:.2} s",
        config.parameters() as f64 / 1e6
    );
    println!(
        "{tokens_per_second:.0} tokens/s, {:.2} TFLOPS = {:.1}% MFU of an H100's 989 TFLOPS bf16",
        flops / 1e12,
        100.0 * flops / 989e12
    );
    if std::env::var_os("PHASES").is_some() {
        phases(&mut trainer, &batch, steps);
    }
    if device.is_cuda() {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader",
            ])
            .output();
        if let Ok(out) = out {
            println!(
                "GPU memory (used, total): {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
}

/// Milliseconds a step of each phase, the device synchronised after each (which costs
/// the overlap of one phase's launches with the last one's kernels: compare phases with
/// phases, not with the tokens/s above).
fn phases(trainer: &mut Trainer, batch: &Sequences, steps: usize) {
    let device = trainer.device();
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    let mut spent = [0.0f64; 3];
    let mut timed = |phase: usize, work: &mut dyn FnMut()| {
        let started = Instant::now();
        work();
        sync();
        spent[phase] += started.elapsed().as_secs_f64();
    };
    sync();
    for _ in 0..steps {
        let mut loss = None;
        timed(0, &mut || loss = Some(trainer.loss(batch)));
        timed(1, &mut || {
            let loss = loss.take().expect("forward ran");
            loss.backward();
            std::hint::black_box(loss.double_value(&[]));
        });
        timed(2, &mut || {
            trainer.step();
        });
    }
    let ms = spent.map(|s| 1e3 * s / steps as f64);
    println!(
        "phases, ms a step: forward {:.1}, backward {:.1}, optimiser {:.1} (norm, clip, update, zeroing)",
        ms[0], ms[1], ms[2]
    );
}

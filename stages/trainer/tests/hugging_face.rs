//! The Hugging Face export of a trained tiny checkpoint, loaded by `transformers` (PyPI,
//! in the torch venv: setup/hf.sh) as `AutoModelForCausalLM`: its fp32 logits on a
//! 64-token prompt are the trainer's within 1e-4, its greedy continuation is the
//! trainer's token for token, and `AutoTokenizer` encodes a source file to the
//! batcher's ids. The model is built with a RoPE base and an RMSNorm epsilon other than
//! the defaults, so an export that dropped either would show.

mod corpus;

use std::path::Path;
use std::process::Command;

use codelupe_trainer::generate::{Generator, Sampling};
use tch::{Device, Tensor};

const PROMPT_TOKENS: usize = 64;
const GENERATED_TOKENS: usize = 32;

#[test]
fn transformers_loads_the_export_and_computes_what_the_trainer_computes() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 40);
    let checkpoint = corpus::trained_checkpoint(&dir.path().join("checkpoints"), &corpus);
    let out = dir.path().join("hf");
    let exported = codelupe_trainer_api::hf::export(&checkpoint, &out).unwrap();
    assert_eq!(exported.context, corpus::SEQUENCE_LENGTH as i64);

    // The trainer's own forward pass and greedy continuation, from the checkpoint.
    let generator = Generator::load(&checkpoint, Device::Cpu).unwrap();
    let source = corpus::files()
        .into_iter()
        .map(|f| f.content)
        .find(|c| c.len() > 2_000)
        .unwrap();
    let source_ids = corpus.tokenizer.encode(&source).unwrap();
    let prompt = &source_ids[..PROMPT_TOKENS];
    let logits_path = dir.path().join("logits.safetensors");
    let logits = generator.logits(prompt, Device::Cpu);
    Tensor::write_safetensors(&[("logits", logits)], &logits_path).unwrap();
    let sampling = Sampling {
        max_tokens: GENERATED_TOKENS,
        temperature: 0.0,
        top_k: 0,
        seed: 0,
        device: Device::Cpu,
    };
    let generated = generator.continue_ids(prompt, &sampling);
    let distinct: std::collections::HashSet<_> = generated.iter().collect();
    assert!(
        distinct.len() >= 4,
        "a continuation worth comparing, not one token repeated: {generated:?}"
    );
    let expected = dir.path().join("expected.json");
    let facts = serde_json::json!({
        "prompt": prompt,
        "generated": generated,
        "max_tokens": GENERATED_TOKENS,
        "source": source,
        "source_ids": source_ids,
        "logits": logits_path,
    });
    std::fs::write(&expected, facts.to_string()).unwrap();

    let run = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hugging_face.py"))
        .arg(&out)
        .arg(&expected)
        .output()
        .expect("python3 (the torch venv's, first on PATH: setup/torch.sh)");
    assert!(
        run.status.success(),
        "transformers could not load the export (transformers is installed by \
         `source setup/hf.sh`):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    eprintln!("transformers saw: {seen}");
    assert_eq!(seen["class"], "LlamaForCausalLM");
    let diff = seen["max_abs_diff"].as_f64().unwrap();
    assert!(diff < 1e-4, "fp32 logits differ by {diff}");
    assert_eq!(
        seen["generated"],
        serde_json::json!(generated),
        "greedy continuations"
    );
    assert_eq!(seen["tokenizer_ids_equal"], true, "{seen}");
    assert_eq!(seen["eos_token"], "<|endoftext|>");
    assert_eq!(seen["rope_theta"], 50_000.0);
    assert_eq!(seen["rms_norm_eps"], 1e-5);
}

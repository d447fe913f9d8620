//! A checkpoint as a Hugging Face model that `transformers` loads as it is
//! (`AutoModelForCausalLM.from_pretrained`): `config.json` for `LlamaForCausalLM`,
//! `model.safetensors` under Hugging Face's tensor names, `generation_config.json`, and
//! the tokenizer (`tokenizer.json`, `tokenizer_config.json`). The trainer's model is a
//! Llama (RMSNorm, SwiGLU, no biases, tied embeddings, rotary positions over the
//! channel pairs (i, i + D/2), which is Hugging Face's `rotate_half`, so no permutation
//! is needed); the export renames tensors and splits the fused q/k/v projection. It
//! reads the checkpoint's files without libtorch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use codelupe_tokenizer::CodeTokenizer;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Deserialize;
use serde_json::json;

use crate::model::ModelConfig;

/// The context written for a checkpoint that did not record the longest sequence it
/// trained on (those before it did): the window `generate` feeds the model.
pub const UNRECORDED_CONTEXT: i64 = 2048;

/// What the export reads of a checkpoint's `state.json`.
#[derive(Deserialize)]
struct Facts {
    step: u64,
    model: ModelConfig,
    #[serde(default)]
    context: Option<i64>,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub step: u64,
    pub tensors: usize,
    pub parameters: usize,
    pub context: i64,
}

/// Writes the checkpoint at `checkpoint` as a Hugging Face model into `out`.
pub fn export(checkpoint: &Path, out: &Path) -> anyhow::Result<Exported> {
    let read = |name: &str| {
        let path = checkpoint.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let facts: Facts = serde_json::from_slice(&read("state.json")?)
        .with_context(|| format!("{}: state.json", checkpoint.display()))?;
    let tokenizer = CodeTokenizer::load(&checkpoint.join("tokenizer.json"))?;
    let weights = read("model.safetensors")?;
    let weights = SafeTensors::deserialize(&weights)
        .map_err(|e| anyhow!("{}: model.safetensors: {e:?}", checkpoint.display()))?;
    let tensors = hugging_face_tensors(&weights, &facts.model)?;
    let dtype = tensors
        .get("model.embed_tokens.weight")
        .map(|t| t.dtype())
        .ok_or_else(|| anyhow!("no embedding"))?;
    let parameters = tensors
        .values()
        .map(|t| t.shape().iter().product::<usize>())
        .sum();
    let count = tensors.len();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(tensors, &metadata, &out.join("model.safetensors"))
        .map_err(|e| anyhow!("writing {}/model.safetensors: {e:?}", out.display()))?;
    let context = facts.context.unwrap_or(UNRECORDED_CONTEXT);
    let files = [
        (
            "config.json",
            config(&facts.model, &tokenizer, dtype, context)?,
        ),
        ("generation_config.json", generation_config(&tokenizer)),
        ("tokenizer_config.json", tokenizer_config(context)),
    ];
    for (name, value) in files {
        std::fs::write(out.join(name), serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}/{name}", out.display()))?;
    }
    std::fs::copy(
        checkpoint.join("tokenizer.json"),
        out.join("tokenizer.json"),
    )
    .with_context(|| format!("copying the tokenizer into {}", out.display()))?;
    Ok(Exported {
        step: facts.step,
        tensors: count,
        parameters,
        context,
    })
}

/// The checkpoint's tensors under Hugging Face's names, q/k/v split; every tensor of
/// the checkpoint must have a place (a tensor the export does not know is an error,
/// not a silent loss).
fn hugging_face_tensors<'a>(
    weights: &'a SafeTensors<'a>,
    model: &ModelConfig,
) -> anyhow::Result<BTreeMap<String, TensorView<'a>>> {
    let mut out = BTreeMap::new();
    for (name, tensor) in weights.tensors() {
        match hugging_face_name(&name) {
            Some(Renamed::One(hf)) => {
                out.insert(hf, tensor);
            }
            Some(Renamed::Qkv(layer)) => {
                for (part, view) in ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .zip(split_rows(&tensor, 3)?)
                {
                    out.insert(
                        format!("model.layers.{layer}.self_attn.{part}.weight"),
                        view,
                    );
                }
            }
            None => bail!("tensor {name} has no place in a LlamaForCausalLM"),
        }
    }
    let expected = 2 + model.n_layers as usize * 9;
    if out.len() != expected {
        bail!(
            "{} tensors, but a Llama of {} layers has {expected}",
            out.len(),
            model.n_layers
        );
    }
    Ok(out)
}

enum Renamed {
    One(String),
    /// The fused projection of this layer: q, k and v stacked by rows.
    Qkv(String),
}

/// Hugging Face's name for one of the trainer's tensors.
fn hugging_face_name(name: &str) -> Option<Renamed> {
    let one = |s: String| Some(Renamed::One(s));
    match name {
        "embedding.weight" => return one("model.embed_tokens.weight".into()),
        "final_norm.weight" => return one("model.norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let layer_name = |hf: &str| one(format!("model.layers.{layer}.{hf}.weight"));
    match part {
        "attention_norm.weight" => layer_name("input_layernorm"),
        "qkv.weight" => Some(Renamed::Qkv(layer.to_string())),
        "out.weight" => layer_name("self_attn.o_proj"),
        "mlp_norm.weight" => layer_name("post_attention_layernorm"),
        "gate.weight" => layer_name("mlp.gate_proj"),
        "up.weight" => layer_name("mlp.up_proj"),
        "down.weight" => layer_name("mlp.down_proj"),
        _ => None,
    }
}

/// `tensor` [rows, columns] cut into `parts` equal row blocks (each contiguous).
fn split_rows<'a>(tensor: &TensorView<'a>, parts: usize) -> anyhow::Result<Vec<TensorView<'a>>> {
    let shape = tensor.shape();
    if shape.len() != 2 || shape[0] % parts != 0 {
        bail!("cannot split a tensor of shape {shape:?} into {parts} row blocks");
    }
    let rows = shape[0] / parts;
    let block = tensor.data().len() / parts;
    let data: &'a [u8] = tensor.data();
    (0..parts)
        .map(|i| {
            TensorView::new(
                tensor.dtype(),
                vec![rows, shape[1]],
                &data[i * block..(i + 1) * block],
            )
            .map_err(|e| anyhow!("{e:?}"))
        })
        .collect()
}

fn torch_dtype(dtype: Dtype) -> anyhow::Result<&'static str> {
    Ok(match dtype {
        Dtype::F32 => "float32",
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        other => bail!("weights of {other:?} are not a torch dtype the export writes"),
    })
}

/// `config.json`: every size from the checkpoint's own model config.
fn config(
    m: &ModelConfig,
    tokenizer: &CodeTokenizer,
    dtype: Dtype,
    context: i64,
) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_heads,
        "head_dim": m.d_model / m.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": m.norm_eps,
        // transformers 5 reads rope_parameters, earlier releases rope_theta.
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "rope_theta": m.rope_theta,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": true,
        "bos_token_id": null,
        "eos_token_id": tokenizer.end_of_text,
        "pad_token_id": tokenizer.end_of_text,
        "dtype": torch_dtype(dtype)?,
        "torch_dtype": torch_dtype(dtype)?,
        "use_cache": true,
    }))
}

fn generation_config(tokenizer: &CodeTokenizer) -> serde_json::Value {
    json!({
        "bos_token_id": null,
        "eos_token_id": tokenizer.end_of_text,
        "pad_token_id": tokenizer.end_of_text,
    })
}

/// The special tokens by name; the ids are in tokenizer.json's added tokens.
fn tokenizer_config(context: i64) -> serde_json::Value {
    use codelupe_tokenizer::{END_OF_TEXT, SPECIAL_TOKENS};
    let additional: Vec<&str> = SPECIAL_TOKENS
        .iter()
        .copied()
        .filter(|t| *t != END_OF_TEXT)
        .collect();
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "unk_token": null,
        "additional_special_tokens": additional,
        "model_max_length": context,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint folder with the trainer's tensor names (zeros), a tokenizer and a
    /// state.json, plus `extra` tensors.
    fn checkpoint(dir: &Path, extra: &[&str]) -> ModelConfig {
        let texts = [
            "fn main() { println!(\"hi\"); }\n",
            "def f(x):\n    return x\n",
        ];
        let tokenizer = CodeTokenizer::train(texts.iter(), 300).unwrap();
        tokenizer.save(&dir.join("tokenizer.json")).unwrap();
        let mut model = ModelConfig::preset("tiny", tokenizer.vocab_size() as i64).unwrap();
        model.rope_theta = 123_456.0;
        let state = json!({"step": 7, "model": model, "context": 96});
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
        let (d, ff, v) = (
            model.d_model as usize,
            model.d_ff as usize,
            model.vocab_size as usize,
        );
        let mut shapes = vec![
            ("embedding.weight".to_string(), vec![v, d]),
            ("final_norm.weight".to_string(), vec![d]),
        ];
        for layer in 0..model.n_layers {
            for (part, shape) in [
                ("attention_norm", vec![d]),
                ("qkv", vec![3 * d, d]),
                ("out", vec![d, d]),
                ("mlp_norm", vec![d]),
                ("gate", vec![ff, d]),
                ("up", vec![ff, d]),
                ("down", vec![d, ff]),
            ] {
                shapes.push((format!("blocks.{layer}.{part}.weight"), shape));
            }
        }
        shapes.extend(extra.iter().map(|name| (name.to_string(), vec![d])));
        let bytes: Vec<Vec<u8>> = shapes
            .iter()
            .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, TensorView)> = shapes
            .iter()
            .zip(&bytes)
            .map(|((name, shape), data)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize_to_file(views, &None, &dir.join("model.safetensors"))
            .unwrap();
        model
    }

    #[test]
    fn every_size_comes_from_the_checkpoint_and_qkv_is_split_by_rows() {
        let dir = tempfile::tempdir().unwrap();
        let model = checkpoint(dir.path(), &[]);
        let out = dir.path().join("hf");
        let exported = export(dir.path(), &out).unwrap();
        assert_eq!((exported.step, exported.context), (7, 96));
        assert_eq!(exported.tensors, 2 + 9 * model.n_layers as usize);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["hidden_size"], model.d_model);
        assert_eq!(config["num_hidden_layers"], model.n_layers);
        assert_eq!(config["vocab_size"], model.vocab_size);
        assert_eq!(config["max_position_embeddings"], 96);
        assert_eq!(config["rope_parameters"]["rope_theta"], 123_456.0);
        assert_eq!(config["tie_word_embeddings"], true);
        let weights = std::fs::read(out.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&weights).unwrap();
        let d = model.d_model as usize;
        for part in ["q_proj", "k_proj", "v_proj"] {
            let name = format!("model.layers.1.self_attn.{part}.weight");
            assert_eq!(weights.tensor(&name).unwrap().shape(), [d, d], "{name}");
        }
        assert!(
            weights.tensor("lm_head.weight").is_err(),
            "tied, not stored"
        );
        for file in [
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(file).exists(), "{file}");
        }
    }

    #[test]
    fn a_tensor_with_no_place_in_a_llama_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        checkpoint(dir.path(), &["blocks.0.extra_norm.weight"]);
        let err = export(dir.path(), &dir.path().join("hf")).unwrap_err();
        assert!(
            err.to_string().contains("blocks.0.extra_norm.weight"),
            "{err}"
        );
    }
}

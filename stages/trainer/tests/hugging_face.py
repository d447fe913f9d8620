"""Loads a Hugging Face export of a trainer checkpoint with transformers, as a user
would, and prints as JSON what it computed: the largest difference between its fp32
logits and the trainer's on the same prompt, its greedy continuation, and whether
AutoTokenizer encodes a source file to the batcher's ids.

Arguments: the export's folder, and a JSON file holding the prompt's ids, the trainer's
greedy continuation (of at most max_tokens, ended by the end of text), a source text with its ids, and the path of the trainer's logits
(safetensors, one tensor "logits" [T, vocab])."""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

out, expected_path = sys.argv[1], sys.argv[2]
with open(expected_path) as f:
    expected = json.load(f)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
model.eval()
prompt = torch.tensor([expected["prompt"]])
with torch.no_grad():
    logits = model(prompt).logits[0]
theirs = load_file(expected["logits"])["logits"]
generated = model.generate(
    prompt,
    max_new_tokens=expected["max_tokens"],
    do_sample=False,
    attention_mask=torch.ones_like(prompt),
)[0][prompt.shape[1]:].tolist()
eos = model.generation_config.eos_token_id
if generated and generated[-1] == eos:
    generated = generated[:-1]
tokenizer = AutoTokenizer.from_pretrained(out)
ids = tokenizer(expected["source"], add_special_tokens=False)["input_ids"]
print(json.dumps({
    "class": type(model).__name__,
    "max_abs_diff": (logits - theirs).abs().max().item(),
    "generated": generated,
    "tokenizer_ids_equal": ids == expected["source_ids"],
    "tokenizer_first_ids": ids[:16],
    "eos_token": tokenizer.eos_token,
    "rope_theta": model.config.rope_parameters["rope_theta"],
    "rms_norm_eps": model.config.rms_norm_eps,
}))

# Sourced by tests/run after setup/torch.sh: puts (once) Hugging Face transformers 5.23.0
# and safetensors 0.8.0 from PyPI into the torch venv (it has the torch they run on;
# about 60 MB more), for the test that loads the trainer's Hugging Face export with them.
TORCH_VENV=${TORCH_VENV:-$HOME/.cache/codelupe/torch-venv}
if [ ! -f "$TORCH_VENV/.transformers-5.23.0-ok" ]; then
  echo "setup: installing transformers 5.23.0 and safetensors 0.8.0 into $TORCH_VENV (once)" >&2
  "$TORCH_VENV/bin/pip" install --disable-pip-version-check --quiet transformers==5.23.0 safetensors==0.8.0 >&2
  "$TORCH_VENV/bin/python" -c 'import transformers, safetensors' >&2
  touch "$TORCH_VENV/.transformers-5.23.0-ok"
fi

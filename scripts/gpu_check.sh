#!/usr/bin/env bash
# The GPU check (issue 24), for a machine with NVIDIA GPUs and this project installed; under 10 minutes
# on one H100 with the embedded SmolLM2-135M. Writes its figures and logs under OUT (default
# bench-results/gpu); each step says when it was skipped and why, and the script exits non-zero when a
# step that could run failed.
#   1. vLLM, when installed: Distillery's engine path against vLLM's own offline path on one engine
#      (bench/vllm_throughput.py), then `vllm bench throughput` on the same model and lengths.
#   2. Training steps in bf16 on the GPU: sft, kd with stored labels, kd with the teacher model, gkd
#      (bench/train.py).
#   3. FSDP through accelerate with the shipped config (recipes/accelerate/fsdp.yaml, every GPU):
#      a few optimizer steps of `sft run` on a small generated set, then final/ loads with transformers.
#
#   bash scripts/gpu_check.sh [OUT]          (make bench-gpu)
#
# GPU_CHECK_CPU=1 runs it without a GPU, to check the script itself: step 2 is skipped (bench/train.py
# is the CPU benchmark there) and step 3 uses the two-CPU-process config (cpu-2proc.yaml), which
# trains but does not shard.
set -u
cd "$(dirname "$0")/.."
out="${1:-bench-results/gpu}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
failed=0
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

cpu="${GPU_CHECK_CPU:-0}"
config=recipes/accelerate/fsdp.yaml
step "GPU"
if [ "$cpu" = 1 ]; then
  echo "GPU_CHECK_CPU=1: no GPU; checking the script itself"
  gpus=2
  config=recipes/accelerate/cpu-2proc.yaml
elif nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"; then
  gpus=$(nvidia-smi -L | wc -l)
else
  echo "no NVIDIA GPU here (nvidia-smi failed): this check is for a GPU machine (GPU_CHECK_CPU=1 to try the script)" >&2
  exit 2
fi
model="$("$py" -c 'from synth.models import embedded_model_dir; print(embedded_model_dir())')" || exit 2

step "1. vLLM: Distillery's engine path vs vLLM's offline path, then vllm bench throughput"
if "$py" -c "import vllm" 2>/dev/null; then
  "$py" bench/vllm_throughput.py --model "$model" --prompts 512 --input-len 128 --output-len 256 \
    --dtype bfloat16 --out "$out/vllm_throughput.json" 2>&1 | tee "$out/vllm_throughput.log" || failed=1
  "$py" -m vllm.entrypoints.cli.main bench throughput --model "$model" --dataset-name random \
    --input-len 128 --output-len 256 --num-prompts 512 --dtype bfloat16 \
    --output-json "$out/vllm_bench_throughput.json" 2>&1 | tail -5 | tee "$out/vllm_bench_throughput.log" || failed=1
else
  echo "skipped: vLLM is not installed for $py (pip install 'distillery[vllm]')"
fi

step "2. training steps in bf16 on the GPU (bench/train.py)"
if [ "$cpu" = 1 ]; then
  echo "skipped without a GPU"
else
  "$py" bench/train.py --out "$out/train.json" 2>&1 | tee "$out/train.log" || failed=1
fi

step "3. FSDP with $config on $gpus process(es)"
run="$out/fsdp-run"
rm -rf "$run"
fsdp_ok=0
"$py" -m synth.cli generate recipes/concise-answers.yaml --run-dir "$run" --limit 48 generate.max_new_tokens=48 \
  > "$out/fsdp.log" 2>&1 &&
  "$py" -m synth.cli curate recipes/concise-answers.yaml --run-dir "$run" >> "$out/fsdp.log" 2>&1 &&
  "$py" -m accelerate.commands.launch --config_file "$config" --num_processes "$gpus" \
    -m sft.cli run recipes/concise-answers.yaml --run-dir "$run" train.max_steps=4 >> "$out/fsdp.log" 2>&1 &&
  fsdp_ok=1
tail -5 "$out/fsdp.log"
if [ "$fsdp_ok" = 1 ]; then
  "$py" - "$run" <<'PY' || failed=1
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

finals = sorted(Path(sys.argv[1]).glob("train/**/final"))
assert finals, f"no final/ under {sys.argv[1]}/train"
for final in finals:
    weights = sorted(p.name for p in final.iterdir() if p.suffix == ".safetensors" or p.name.startswith("pytorch_model"))
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    print(f"FSDP final/ loads: {final} ({', '.join(weights) or 'an adapter'}; {n:,} parameters)")
PY
else
  echo "FSDP run failed: see $out/fsdp.log" >&2
  failed=1
fi
exit "$failed"

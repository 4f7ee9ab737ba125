#!/usr/bin/env bash
# The vLLM engine's tests on the real vLLM (CPU build) in .venv-vllm; fails when none was collected.
set -u
cd "$(dirname "$0")/.."
# vLLM's CPU backend would otherwise reserve most of the machine's memory for its KV cache
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
.venv-vllm/bin/python -m pytest -p no:cacheprovider tests/vllm "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no vLLM tests (is vLLM importable in .venv-vllm?): failing on purpose" >&2
  exit 1
fi
exit "$rc"

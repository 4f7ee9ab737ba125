#!/usr/bin/env bash
# `make test` as on a machine that never ran it: a copy of this checkout (tracked and untracked files,
# nothing git ignores, so no .venv*) in a scratch folder, with HOME, DISTILLERY_CACHE and pip's cache
# pointed at empty folders there, so every environment, helper build and model conversion is made
# anew from the locks. A green `make test` on a machine with a warm cache can hide a missing install
# step or a loose pin; this cannot. Prints the wall time; the scratch folder is removed on success and
# kept on failure (its path is printed), or always with KEEP=1.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/distillery-fresh.XXXXXX")"
mkdir -p "$scratch/repo" "$scratch/home" "$scratch/cache"
cd "$ROOT"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"  # a file deleted but not yet committed is not copied
done | tar --null -T - -cf - | tar -xf - -C "$scratch/repo"
# ../shared sits beside the checkout in CI; keep that layout
[ -d "$ROOT/../shared" ] && ln -s "$ROOT/../shared" "$scratch/shared"
echo "test-fresh: $scratch/repo with an empty HOME and DISTILLERY_CACHE=$scratch/cache" >&2
start=$(date +%s)
env -u VIRTUAL_ENV HOME="$scratch/home" DISTILLERY_CACHE="$scratch/cache" PIP_CACHE_DIR="$scratch/home/pip-cache" \
  HF_HOME="$scratch/home/hf" make -C "$scratch/repo" test
rc=$?
elapsed=$(($(date +%s) - start))
printf 'test-fresh: make test from nothing took %d min %02d s and exited %d\n' $((elapsed / 60)) $((elapsed % 60)) "$rc" >&2
if [ "$rc" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
  rm -rf "$scratch"
else
  echo "test-fresh: kept $scratch (its repo/ holds the test logs; remove it when done)" >&2
fi
exit "$rc"

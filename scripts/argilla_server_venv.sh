#!/usr/bin/env bash
# Prints the python of a virtualenv holding argilla-server, building it once if needed (test infrastructure).
#
# argilla-server 2.8.0 pins old typer/pydantic/fastapi that clash with ours, so it lives in its own
# virtualenv, built by scripts/pyenv.sh from locks/argilla-server.txt and cached in $DISTILLERY_CACHE
# (default ~/.cache/distillery) under a name that holds the hash of the lock and of the builder: a
# changed pin or build step builds a new one.
# fakeredis stands in for the Redis server it pings at start-up (see tests/argilla_server_main.py).
# Built in a temp folder and renamed into place, so an interrupted build is never mistaken for a
# finished one (only its python is used, which works from the new place).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
key=$(cat "$ROOT/locks/argilla-server.txt" "$ROOT/scripts/pyenv.sh" | sha256sum | cut -c1-12)  # the pins and their builder
cache="${DISTILLERY_CACHE:-$HOME/.cache/distillery}/argilla-server-2.8.0-$key-venv"
if [ -x "$cache/bin/python" ] && [ -f "$cache/.complete" ]; then echo "$cache/bin/python"; exit 0; fi
mkdir -p "$(dirname "$cache")"
tmp="$cache.tmp-$$"
trap 'rm -rf "$tmp"' EXIT
echo "creating the argilla-server virtualenv in $cache from locks/argilla-server.txt (one time, ~1 min)" >&2
bash "$ROOT/scripts/pyenv.sh" argilla-server "$tmp" >&2
touch "$tmp/.complete"
rm -rf "$cache"
mv "$tmp" "$cache"
echo "$cache/bin/python"

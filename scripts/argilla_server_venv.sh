#!/usr/bin/env bash
# Prints the python of a virtualenv holding argilla-server, building it once if needed (test infrastructure).
#
# argilla-server 2.8.0 pins old typer/pydantic/fastapi that clash with ours, so it lives in its own
# virtualenv, cached in $DISTILLERY_CACHE (default ~/.cache/distillery). fakeredis stands in for the
# Redis server it pings at start-up (see tests/argilla_server_main.py). Built in a temp folder and
# renamed into place, so an interrupted build is never mistaken for a finished one.
set -euo pipefail
SERVER=2.8.0
FAKEREDIS=2.40.0
cache="${DISTILLERY_CACHE:-$HOME/.cache/distillery}/argilla-server-$SERVER-venv"
if [ -x "$cache/bin/python" ] && [ -f "$cache/.complete" ]; then echo "$cache/bin/python"; exit 0; fi
base="${PYTHON3:-python3}"
tmp="$cache.tmp-$$"
trap 'rm -rf "$tmp"' EXIT
echo "creating the argilla-server $SERVER virtualenv in $cache (one time, ~1 min)" >&2
"$base" -m venv "$tmp"
"$tmp/bin/python" -m pip install -q --disable-pip-version-check "argilla-server==$SERVER" "fakeredis==$FAKEREDIS" >&2
touch "$tmp/.complete"
rm -rf "$cache"
mv "$tmp" "$cache"
echo "$cache/bin/python"

#!/usr/bin/env bash
# Lints, then runs the test suite; fails when pytest collected no test at all (pytest's exit code 5).
set -u
cd "$(dirname "$0")/.."
.venv/bin/ruff check synth sft tests bench || { echo "ruff found problems: fix them (or run 'ruff check --fix')" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"

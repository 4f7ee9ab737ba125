"""Fails when the running environment holds anything its lock file does not pin, at that version.

    <venv>/bin/python scripts/check_lock.py locks/ENV.txt

`pip install -c LOCK` only constrains what the lock names: a dependency missing from it is installed at
whatever release is newest that day, which is how a fresh machine came to differ from CI. This check
makes "the lock is complete" something a build verifies rather than hopes. Run by scripts/pyenv.sh.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

# Never in `pip freeze`; the project itself is installed editable from the checkout.
UNPINNED = {"setuptools", "wheel", "distribute", "distillery"}
# torch==X pins its CUDA packages exactly itself; they exist only on a GPU machine.
GPU_ONLY = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def canonical(name: str) -> str:
    """PEP 503 name: the same package whatever its spelling in a lock or in metadata."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """The version without its local label: torch 2.13.0+cpu is the lock's torch==2.13.0."""
    return version.split("+", 1)[0]


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"{path}:{number}: '{line}' is not 'name==version'; regenerate it with scripts/pyenv.sh --update")
        pins[canonical(name)] = public(version.strip())
    return pins


def main() -> None:
    lock = Path(sys.argv[1])
    pins = read_lock(lock)
    problems = []
    for dist in metadata.distributions():
        name, version = canonical(dist.metadata["Name"]), dist.version
        if name in UNPINNED or (name not in pins and GPU_ONLY.match(name)):
            continue
        if name not in pins:
            problems.append(f"{name}=={version} is installed but not pinned")
        elif public(version) != pins[name]:
            problems.append(f"{name}=={version} is installed but the lock pins {pins[name]}")
    if problems:
        env = lock.stem
        print(f"{lock}: this environment is not what the lock describes:", file=sys.stderr)
        for p in sorted(problems):
            print(f"  {p}", file=sys.stderr)
        print(
            f"A requirement changed without its lock: run 'bash scripts/pyenv.sh --update {env} <scratch folder>' "
            "and commit the new lock.",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

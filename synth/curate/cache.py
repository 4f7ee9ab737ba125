"""Row-check results kept shard by shard until a `synth curate` succeeds, so that one that was killed,
or stopped on an error after its checks ran, does not pay again for what it computed: an LLM judge's
calls, a verifier's runs, embeddings.

Each checked shard (`CheckedShard`: its table with verdicts, counts, dedup keys) is pickled into
`RUN/.curate-cache/<fingerprint>/` as soon as it is checked, written atomically. The fingerprint covers
everything the row checks depend on: the recipe's check list, the models a judge may be (`path: self`
is the student, a teacher spec the judge's), the source of users' python check modules and of
Distillery's curate code; a shard is reused only while its generations file is the same (name, size,
modification time). Another fingerprint's folder is stale and removed; the whole cache is removed once
curated/ is written. The files are the user's own run folder's, read by the user's own process: the
same trust as the recipe's python checks, which is why pickle is acceptable here.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

from synth.io import atomic_write_bytes

CACHE_DIR = ".curate-cache"


class CheckedCache:
    """The checked shards of one curate configuration, by generations file."""

    def __init__(self, run_dir: Path, recipe: Any, recipe_dir: Path | None) -> None:
        self.root = run_dir / CACHE_DIR
        self.folder = self.root / fingerprint(recipe, recipe_dir)
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        self.reused = 0

    def _file(self, shard: Path) -> Path:
        st = shard.stat()
        key = hashlib.sha256(f"{shard.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.pkl"

    def has(self, shard: Path) -> bool:
        return self._file(shard).is_file()

    def get(self, shard: Path) -> Any | None:
        """The checked shard kept for this generations file, or None (none kept, or unreadable)."""
        file = self._file(shard)
        if not file.is_file():
            return None
        try:
            value = pickle.loads(file.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
            file.unlink(missing_ok=True)  # half-written by an older version, or damaged: check again
            return None
        self.reused += 1
        return value

    def put(self, shard: Path, checked: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._file(shard), pickle.dumps(checked, protocol=pickle.HIGHEST_PROTOCOL))

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fingerprint(recipe: Any, recipe_dir: Path | None) -> str:
    """What the row checks' results depend on (see the module docstring), hashed."""
    import synth

    checks = [c.model_dump(mode="json") for c in recipe.curate.checks]
    parts = {
        "checks": checks,
        "model": recipe.model.model_dump(mode="json"),
        "teacher": recipe.teacher.model_dump(mode="json"),
        "modules": {c["function"]: _module_digest(c["function"], recipe_dir) for c in checks if c["type"] == "python"},
        "code": _code_digest(),
        "version": synth.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _module_digest(function: str, recipe_dir: Path | None) -> str:
    """The source of a python check's module where it is a file beside the recipe or in the working
    folder (where `load_function` looks first), else of the module's file on sys.path."""
    import importlib.util

    from synth.curate.checks.verifiers import local_module

    if found := local_module(function, recipe_dir):
        return hashlib.sha256(found[0].read_bytes()).hexdigest()
    try:
        spec = importlib.util.find_spec(function.split(":")[0])
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin and Path(origin).is_file() else "unknown"


def _code_digest() -> str:
    """Distillery's own curate code: a fix to a check must not reuse the old check's verdicts."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()

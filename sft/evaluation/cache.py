"""The eval's own models answered once per run: the teacher's and the base student's answers (and the
base student's fidelity) reused by the next `sft eval` of the same run folder.

A run is usually evaluated several times (`make demo`, then `make demo-gkd`; another arm trained; a
behaviour check changed), and the teacher and the base student answer the same held-out prompts the
same way each time: greedy decoding, seeded samples. Their answers are kept in RUN_DIR/eval-cache/,
one JSON file per model, named by a hash of everything they depend on: the model's recipe section
(path, revision, dtype, system prompt, engine), the files of its local folder (names, sizes, times),
the prompts in the view it reads, the eval's generation settings, the device, and this module's
CACHE_VERSION. Anything else and the file name differs, so the model answers again. What is judged
from the answers (the checks, relevance, the report) is always computed anew.

Only local transformers models are cached: a server's model can change behind the same name. The
teacher's fidelity is not cached, because its pass also computes the log-probs the other models' KL
is measured against (sft/evaluation/fidelity.py, `TeacherLogProbs`); the base student's is, keyed
also by the teacher's answers it was measured on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synth.io import atomic_write_text
from synth.records import Completion

CACHE_VERSION = 1
"""Raise when what is cached, or how answers are made, changes: every cached answer is then remade."""


def folder_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of each file in a model folder: a retrained or replaced model
    changes at least one."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of JSON-able parts."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class EvalCache:
    """Answers of the eval's own models in RUN_DIR/eval-cache/<arm>-<key>.json."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "eval-cache"

    def path(self, arm: str, key: str) -> Path:
        return self.folder / f"{arm}-{key}.json"

    def load(self, arm: str, key: str | None) -> dict[str, Any] | None:
        """{"comps": per prompt its Completions, "tokens_per_s", "fidelity"}, or None when not cached
        (or the file cannot be read: then the model answers again and the file is rewritten)."""
        if key is None:
            return None
        try:
            saved = json.loads(self.path(arm, key).read_text(encoding="utf-8"))
            comps = [[Completion(**c) for c in cs] for cs in saved["comps"]]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return {"comps": comps, "tokens_per_s": saved.get("tokens_per_s"), "fidelity": saved.get("fidelity")}

    def save(
        self,
        arm: str,
        key: str | None,
        comps: list[list[Completion]],
        tokens_per_s: float | None,
        fidelity: dict[str, Any] | None = None,
    ) -> None:
        """Write this model's answers (atomically), replacing older files of the same arm."""
        if key is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {"comps": [[asdict(c) for c in cs] for cs in comps], "tokens_per_s": tokens_per_s, "fidelity": fidelity}
        atomic_write_text(self.path(arm, key), json.dumps(body, ensure_ascii=False, allow_nan=True))
        for old in self.folder.glob(f"{arm}-*.json"):
            if old.name != self.path(arm, key).name:
                old.unlink(missing_ok=True)

"""Generation speed a reader can trust, in the eval report: what `bench/speed.py` measured, per model.

The eval's own tokens/s is one timed pass inside a process that has already run other models, so it is
labelled indicative. `bench/speed.py MODEL_DIR ... --out RUN_DIR/speed.json` measures each model folder
in a fresh process with a warm-up, a fixed number of new tokens (end-of-sequence ignored), batch 1 and
a larger batch, and at least 5 repeats. When that file is in the run folder, `sft eval` matches its
folders to the models it evaluates and reports `speed.<model>`, with a verdict against the teacher
that says "faster" only when the spreads of the repeats separate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth.errors import UserError

SPEED_FILE = "speed.json"
"""RUN_DIR/speed.json: the list bench/speed.py writes with --out."""


def faster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A is faster than B only when the spreads separate: A's slowest repeat beats B's fastest."""
    return a["tokens_per_s_spread"][0] > b["tokens_per_s_spread"][1]


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    return "faster" if faster(a, b) else "slower" if faster(b, a) else "not separable (spreads overlap)"


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def read_speed(run_dir: Path, folders: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """`speed.<model>` from RUN_DIR/speed.json (empty without it): for each model (arm) the first of its
    folders bench/speed.py measured, at the largest batch measured (`by_batch` has every batch), with
    `vs_teacher` where the teacher was measured too."""
    path = run_dir / SPEED_FILE
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        measured = [(r["model"], {k: v for k, v in r.items() if k.startswith("batch_")}) for r in results]
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"{path}: not what bench/speed.py writes ({type(exc).__name__}: {exc})",
            f"rerun `python bench/speed.py MODEL_DIR ... --out {path}`, or remove the file",
        ) from None
    out: dict[str, dict[str, Any]] = {}
    for name, candidates in folders.items():
        found = next(((f, b) for f in candidates for m, b in measured if b and _same(m, f)), None)
        if found is None:
            continue
        folder, batches = found
        largest = max(batches.values(), key=lambda e: e["batch"])
        out[name] = dict(largest) | {"folder": str(folder), "by_batch": batches}
    teacher = out.get("teacher")
    for name, entry in out.items():
        if teacher is not None and name != "teacher":
            entry["vs_teacher"] = {
                key: verdict(b, teacher["by_batch"][key])
                for key, b in entry["by_batch"].items()
                if key in teacher["by_batch"]
            }
    return out

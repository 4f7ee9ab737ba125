"""Which base model a LoRA adapter was trained on, so it is never merged into another one.

An adapter folder names its base only as a path (`base_model_name_or_path`: a local cache folder
that may not exist on the machine that evaluates or publishes it). Eval and publish merge it into
whatever `model.path` says *now*; after a recipe edit that is another model, possibly of another
depth, and PEFT loads an adapter with keys for layers the base lacks without a word (it warns only
about missing keys). So `sft run` records a fingerprint of the base's config beside the adapter, and
every merge compares it first. Only a local base folder has a config to record (the embedded model,
a pruned student, a downloaded folder); a Hub id is not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RECORD = "distillery_base.json"
SHAPE = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)
"""The config fields that fix the weights' shapes: the fingerprint leaves out the rest, which a newer
transformers may add, rename or rewrite (versions, dtypes, defaults) for the very same weights."""


def _fingerprint(config: dict[str, Any]) -> str:
    kept = {k: config.get(k) for k in SHAPE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_base(adapter: Path, model_path: str, base: Path) -> None:
    """Write the fingerprint of the base model folder `base` (recipe's `model.path`) beside the adapter."""
    config = _config(base)
    if config is None:
        return
    record = {
        "model.path": model_path,
        "config_sha256": _fingerprint(config),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
    }
    (adapter / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def base_mismatch(adapter: Path, base: Path) -> str | None:
    """Why the adapter in `adapter` was not trained on the model folder `base`, or None when it was
    (or when the adapter predates the record: nothing to compare)."""
    try:
        record = json.loads((adapter / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = _config(base)
    if not isinstance(record, dict) or config is None or record.get("config_sha256") == _fingerprint(config):
        return None
    layers, hidden = record.get("num_hidden_layers"), record.get("hidden_size")
    was = f"{record.get('model.path')!r} ({layers} layers, hidden size {hidden})"
    now = f"{config.get('num_hidden_layers')} layers, hidden size {config.get('hidden_size')}"
    return f"the adapter in {adapter} was trained on model.path={was}, not on this model ({now})"

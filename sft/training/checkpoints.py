"""Which checkpoint `sft run --resume` continues from: the newest complete one, never a half-saved one.

`transformers.trainer_utils.get_last_checkpoint` takes the highest `checkpoint-N` folder, which a
`kill -9` during a save leaves incomplete; resuming from it then fails or silently starts over.
Here every file the Trainer writes is checked (trainer_state.json, weights with their byte counts,
optimizer and scheduler archives), and the skipped folders are named.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from synth.errors import UserError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_MODEL_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole: its header must parse and cover the file exactly."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                return f"{path.name} is {'empty' if size == 0 else 'cut short'} ({size} bytes)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{path.name} has a damaged header"
    if 8 + n + end != size:
        return f"{path.name} is cut short ({size} of {8 + n + end} bytes)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive, its index at the end) is not whole."""
    if not path.is_file():
        return f"no {path.name}"
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError):
        return f"{path.name} is cut short"
    return None


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"no {path.name}"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return f"{path.name} is not valid JSON (half-written)"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why `folder` holds no complete model or adapter (weights, config, every shard whole), or None."""
    adapter = [n for n in _ADAPTER_WEIGHTS if (folder / n).is_file()]
    model = [n for n in _MODEL_WEIGHTS if (folder / n).is_file()]
    if not adapter and not model:
        return "no model weights (adapter_model.safetensors or model.safetensors)"
    problem = _json_problem(folder / ("adapter_config.json" if adapter else "config.json"))
    if problem:
        return problem
    files = []
    for name in adapter or model:
        if name.endswith(".index.json"):
            if problem := _json_problem(folder / name):
                return problem
            shards = set(json.loads((folder / name).read_text(encoding="utf-8")).get("weight_map", {}).values())
            files += [folder / s for s in sorted(shards)]
        else:
            files.append(folder / name)
    for f in files:
        if not f.is_file():
            return f"no {f.name}"
        problem = _safetensors_problem(f) if f.suffix == ".safetensors" else _torch_file_problem(f)
        if problem:
            return problem
    return None


def checkpoint_problem(folder: Path, with_optimizer: bool = True) -> str | None:
    """Why the checkpoint folder cannot be resumed from (a save that was cut short), or None if complete.

    Transformers' Trainer writes, in order: the weights (+ config, tokenizer, training_args.bin),
    optimizer.pt, scheduler.pt, rng_state.pth, then trainer_state.json. A kill anywhere in between
    leaves a folder that `get_last_checkpoint` would still pick.
    """
    m = _CHECKPOINT.match(folder.name)
    if not m or not folder.is_dir():
        return "not a checkpoint-N folder"
    state_file = folder / "trainer_state.json"
    if problem := _json_problem(state_file):
        return problem
    state = json.loads(state_file.read_text(encoding="utf-8"))
    step = state.get("global_step") if isinstance(state, dict) else None
    if step != int(m[1]):
        return f"trainer_state.json says step {step}, not {m[1]}"
    if problem := weights_problem(folder):
        return problem
    if with_optimizer:
        for name in ("optimizer.pt", "scheduler.pt"):
            if problem := _torch_file_problem(folder / name):
                return problem
    return None


def resume_checkpoint(out: Path, with_optimizer: bool = True) -> tuple[Path, list[tuple[Path, str]]]:
    """The newest complete checkpoint in `out`, and the newer incomplete ones skipped (with why)."""
    found = []
    if out.is_dir():
        found = sorted(
            ((int(m[1]), p) for p in out.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()), reverse=True
        )
    skipped: list[tuple[Path, str]] = []
    for _, folder in found:
        problem = checkpoint_problem(folder, with_optimizer)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    detail = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise UserError(
        f"no complete checkpoint in {out}; run without --resume to start over"
        + (f" (incomplete: {detail})" if detail else "")
    )


def resume_from(out: Path, args: dict[str, Any]) -> tuple[Path, list[tuple[Path, str]]]:
    """`resume_checkpoint` for the TRL args of this run."""
    # without an optimizer state (save_only_model, or DeepSpeed/FSDP, which store theirs elsewhere)
    # the weights and trainer_state.json are what a complete checkpoint must hold
    with_optimizer = not (args.get("save_only_model") or args.get("deepspeed") or args.get("fsdp") or sharded_launch())
    return resume_checkpoint(out, with_optimizer)


def sharded_launch() -> bool:
    """Launched by `accelerate launch` with a DeepSpeed or FSDP config (recipes/accelerate/*.yaml): accelerate
    says so to every process in its environment, and then the Trainer keeps no optimizer.pt either."""
    return any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true" for name in ("DEEPSPEED", "FSDP"))

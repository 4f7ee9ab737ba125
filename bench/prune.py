"""Measurement: which layers Block Influence drops from SmolLM2-135M-Instruct, and how much worse the
pruned start is than the teacher, against dropping every other layer or one contiguous block.

Calibration prompts are training prompts (the first N of data/seed_prompts.jsonl, read with the
project's prompt loader); the NLL is measured on the teacher's own greedy answers to held-out
prompts (data/heldout_prompts.jsonl), teacher-forced: mean negative log-likelihood per answer token.
Not a test; prints BI per layer and one NLL line per variant.

    .venv/bin/python bench/prune.py [--calibration 16] [--eval 8] [--n-drop 15] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import torch

from sft.compression.prune import (
    block_distances,
    choose_block_to_drop,
    choose_layers_to_drop,
    layer_importance,
    prune_layers,
)
from synth.models import embedded_model_dir
from synth.prompts import load_prompts
from synth.specs import PromptsSpec, TeacherSpec

ROOT = Path(__file__).resolve().parents[1]


def prompts(file: str, n: int) -> list[list[dict[str, str]]]:
    items, _ = load_prompts(PromptsSpec(path=str(ROOT / "data" / file), limit=n), TeacherSpec())
    return [item.prompt for item in items]


def answer_nll(model: Any, rows: list[tuple[list[int], list[int]]]) -> float:
    """Mean NLL per answer token, the prompt's tokens given (teacher forcing)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt_ids, answer_ids in rows:
            ids = torch.tensor([prompt_ids + answer_ids])
            logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1].float()
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(answer_ids), reduction="sum"))
            count += len(answer_ids)
    return total / count


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8)
    ap.add_argument("--n-drop", type=int, default=15)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    src = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(src)
    teacher = AutoModelForCausalLM.from_pretrained(src).eval()
    n_layers = teacher.config.num_hidden_layers

    calib = prompts("seed_prompts.jsonl", args.calibration)
    bi = layer_importance(teacher, tok, calib, max_length=256)
    print("BI per layer (seed prompts):")
    for i, b in enumerate(bi):
        print(f"  {i:2d} {b:.4f}")
    held = layer_importance(teacher, tok, prompts("heldout_prompts.jsonl", args.calibration), max_length=256)
    order = sorted(range(n_layers), key=lambda i: bi[i])
    held_order = sorted(range(n_layers), key=lambda i: held[i])
    shared = len(set(order[: args.n_drop]) & set(held_order[: args.n_drop]))
    print(f"lowest-{args.n_drop} BI layers shared by seed and held-out calibration: {shared}")

    rows = []
    for messages in prompts("heldout_prompts.jsonl", args.eval):
        p = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = teacher.generate(torch.tensor([p]), max_new_tokens=args.max_new_tokens, do_sample=False)
        rows.append((list(p), out[0, len(p) :].tolist()))

    k = args.n_drop
    dist = block_distances(teacher, tok, calib, k, max_length=256)
    variants = {
        "teacher (no pruning)": [],
        "BI (lowest, keep first/last)": choose_layers_to_drop(bi, k),
        "every other (odd 1,3,..,29)": list(range(1, n_layers, 2))[:k],
        "every other (even 0,2,..,28)": list(range(0, n_layers, 2))[:k],
        "contiguous block (angular)": choose_block_to_drop(dist, k),
        "last layers but one": list(range(n_layers - 1 - k, n_layers - 1)),
    }
    for name, drop in variants.items():
        model = prune_layers(copy.deepcopy(teacher), drop)
        nll = answer_nll(model, rows)
        print(f"{name:30s} NLL {nll:7.3f} (ppl {math.exp(min(nll, 50)):10.1f})  drop {drop}")


if __name__ == "__main__":
    main()

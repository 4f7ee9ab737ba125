"""Benchmark: the transformers engine's decoding loop against batched `model.generate` (its own
previous path, still its fallback), in float32 and, where this CPU computes bf16 natively, in the
dtype 'auto' picks there (bfloat16); optionally a naive loop of one `generate` per prompt.

Same process, same model (the embedded SmolLM2-135M-Instruct), the same prompts (the first N of
data/seed_prompts.jsonl in the default recipe's teacher view), the default recipe's sampling (n = 4,
temperature 0.7, top-p 0.95, up to 96 new tokens) and the same `--batch-size` sequences per forward
pass. One short warm-up each, then `--repeats` runs of each line taken in turn (A B C A B C ..., so a
machine that slows down slows all); median and min-max of completion tokens/s. A ratio is "faster"
only when the spreads separate. The baseline is `model.generate` in float32, what the engine did
before its own loop and before bf16. Also this machine's matmul peak per dtype measured in the same
run (bench/peak.py) and each line's share of the peak of its dtype: tokens/s x 2 x parameters (the
matmul FLOPs of a token) over the peak.

    .venv/bin/python bench/generate.py [--prompts 16] [--n 4] [--batch-size 64] [--max-new-tokens 96]
                                       [--repeats 3] [--naive] [--threads 2] [--out generate.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from peak import measure  # bench/peak.py: this folder is on sys.path when run as a script

from synth.engines.base import SamplingParams
from synth.engines.hf import TransformersEngine
from synth.models import EMBEDDED_ID, embedded_model_dir
from synth.runtime import dtype_name, pick_dtype

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Always answer in at most 40 words."  # the default recipe's teacher view


def naive(engine: TransformersEngine, prompts: list[list[dict[str, str]]], p: SamplingParams) -> int:
    """One generate call per prompt and sample, batch 1: what a hand-rolled script does. Returns tokens made."""
    tokens = 0
    for i, messages in enumerate(prompts):
        ids = torch.tensor([engine.encode(messages)])
        for j in range(p.n):
            torch.manual_seed(p.seed + i * p.n + j)
            with torch.inference_mode():
                out = engine.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=p.max_new_tokens,
                    do_sample=True,
                    temperature=p.temperature,
                    top_p=p.top_p,
                    top_k=0,
                    pad_token_id=engine.tokenizer.pad_token_id,
                )
            new = out[0, ids.shape[1] :].tolist()
            tokens += next((j for j, t in enumerate(new) if t in engine.eos_ids), len(new))
    return tokens


def engine_run(engine: TransformersEngine, loop: bool, prompts: list[Any], p: SamplingParams) -> int:
    """The engine with its decoding loop (loop=True) or with batched `model.generate`. Returns tokens made."""
    engine.decoder_problem = None if loop else "benchmark baseline: model.generate"
    out = engine.generate(prompts, p)
    return sum(c.completion_tokens or 0 for comps in out for c in comps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="also time one generate call per prompt (slow)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = (ROOT / "data" / "seed_prompts.jsonl").read_text().splitlines()[: args.prompts]
    system = {"role": "system", "content": SYSTEM}
    prompts = [[system, {"role": "user", "content": json.loads(x)["prompt"]}] for x in lines]
    params = SamplingParams(
        n=args.n, temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0
    )  # fmt: skip
    path = str(embedded_model_dir())
    engines = {"float32": TransformersEngine(path, EMBEDDED_ID, dtype="float32", batch_size=args.batch_size)}
    auto = dtype_name(pick_dtype("auto", "cpu"))
    if auto != "float32":
        engines[auto] = TransformersEngine(path, EMBEDDED_ID, dtype=auto, batch_size=args.batch_size)
    # name: (dtype, decoding loop?)
    lines_run: dict[str, tuple[str, bool]] = {"model.generate, float32": ("float32", False)}
    lines_run |= {f"decoding loop, {d}": (d, True) for d in engines}
    for dtype, loop in lines_run.values():  # warm-up: allocations, kernel selection
        engine_run(engines[dtype], loop, prompts[:2], SamplingParams(n=2, max_new_tokens=8))
    rates: dict[str, list[float]] = {name: [] for name in lines_run}
    tokens: dict[str, list[int]] = {name: [] for name in lines_run}
    for r in range(args.repeats):
        for name, (dtype, loop) in lines_run.items():
            run = SamplingParams(**(params.as_dict() | {"seed": r}))
            start = time.perf_counter()
            made = engine_run(engines[dtype], loop, prompts, run)
            rates[name].append(made / (time.perf_counter() - start))
            tokens[name].append(made)
    line_dtype = {name: dtype for name, (dtype, _) in lines_run.items()}
    if args.naive:
        start = time.perf_counter()
        made = naive(engines["float32"], prompts, params)
        name = "naive loop (batch 1), float32"
        rates[name], tokens[name], line_dtype[name] = [made / (time.perf_counter() - start)], [made], "float32"
    measured = measure(threads=args.threads)
    peaks = {d: measured[d]["median"] for d in engines}  # type: ignore[index]
    flops = 2 * sum(p.numel() for p in engines["float32"].model.parameters())  # per generated token, matmuls
    rows = {
        name: {
            "dtype": line_dtype[name],
            "tokens_per_s": statistics.median(rs),
            "spread": [min(rs), max(rs)],
            "tokens": tokens[name],
            "share_of_peak": statistics.median(rs) * flops / 1e9 / peaks[line_dtype[name]],
        }
        for name, rs in rates.items()
    }
    base, new = rows["model.generate, float32"], rows[f"decoding loop, {auto}"]
    result = {
        "model": EMBEDDED_ID,
        "prompts": len(prompts),
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "auto_dtype": auto,
        "peak_gflops": peaks,
        "lines": rows,
        "speedup": new["tokens_per_s"] / base["tokens_per_s"],
        "separated": new["spread"][0] > base["spread"][1],
        "share_of_peak": new["share_of_peak"],
    }
    print(f"model: {EMBEDDED_ID}, {len(prompts)} prompts x n={args.n}, up to {args.max_new_tokens} new tokens")
    print(f"batch {args.batch_size} sequences, {args.threads} threads, {args.repeats} runs each after a warm-up")
    print(f"{'':32}{'tokens/s':>10}{'spread':>16}{'share of peak':>15}")
    for name, row in rows.items():
        lo, hi = row["spread"]
        print(f"{name:32}{row['tokens_per_s']:>10.1f}{f'{lo:.1f}-{hi:.1f}':>16}{row['share_of_peak']:>15.0%}")
    verdict = "faster (spreads separate)" if result["separated"] else "spreads overlap"
    ratio = f"{result['speedup']:.2f}x, {verdict}"
    print(f"decoding loop, {auto} (the engine's default here) / model.generate, float32: {ratio}")
    for dtype, peak in peaks.items():
        print(f"{dtype} matmul peak measured in this run: {peak:.1f} GFLOP/s (limit {peak * 1e9 / flops:.0f} tokens/s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

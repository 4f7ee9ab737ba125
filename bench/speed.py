"""Benchmark: generation speed of several model folders, measured so that "faster" can be trusted.

Each model runs in a fresh process (no model warms the caches or the allocator for the next), on the
same prompts (the first N held-out prompts, the student's view), with the same threads, greedy, with
a fixed number of new tokens (end-of-sequence ignored: `min_new_tokens = max_new_tokens`, so a model
that stops early is not "faster"), at batch 1 and at a larger batch. One warm-up pass, then at least
5 timed repeats; the median and the spread (min-max) of tokens/s are reported with the parameter
count and the FLOPs per generated token (2 x parameters: the matmuls, attention over the context
left out). Model A is called faster than B only when A's slowest repeat beats B's fastest.

    .venv/bin/python bench/speed.py MODEL_DIR [MODEL_DIR ...] [--repeats 5] [--new-tokens 32]
        [--batches 1 8] [--prompts 8] [--threads 2] [--out speed.json]

`sft eval`'s tokens/s comes from one timed pass inside the eval and is labelled indicative; use this
for a claim about speed. With `--out RUNS/<name>/speed.json` the next `sft eval` of that run reports
these measurements per model (`speed.<model>` in report.json, with "faster" only where spreads separate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sft.evaluation.speed import verdict

ROOT = Path(__file__).resolve().parents[1]


def measure_one(folder: str, prompts: int, new_tokens: int, batches: list[int], repeats: int, threads: int) -> dict:
    """Runs in the child process: load, warm up, time `repeats` passes per batch size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lines = (ROOT / "data" / "heldout_prompts.jsonl").read_text().splitlines()[:prompts]
    chats = [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in lines]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {"model": folder, "params": params, "flops_per_token": 2 * params, "threads": threads}
    for batch in batches:
        chosen = (texts * batch)[:batch]
        enc = tokenizer(chosen, return_tensors="pt", padding=True, add_special_tokens=False)

        def run(enc: Any = enc) -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            return time.perf_counter() - start

        run()  # warm-up
        rates = [batch * new_tokens / run() for _ in range(repeats)]
        out[f"batch_{batch}"] = {
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_spread": [min(rates), max(rates)],
            "repeats": repeats,
            "batch": batch,
            "new_tokens": new_tokens,
            "params": params,
            "flops_per_token": 2 * params,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="model folders (a transformers model each), or smollm2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this folder, print JSON
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats: at least 5, or the spread means little")
    if args.one:
        found = measure_one(args.one, args.prompts, args.new_tokens, args.batches, args.repeats, args.threads)
        print(json.dumps(found))
        return
    from synth.models import resolve_model

    # "smollm2" (the embedded model) or a folder; the resolved folder is what `sft eval` matches
    args.models = [resolve_model(m)[0] for m in args.models or ["smollm2"]]
    results = []
    for folder in args.models:
        cmd = [sys.executable, __file__, "--one", folder, "--repeats", str(args.repeats)]
        cmd += ["--new-tokens", str(args.new_tokens), "--prompts", str(args.prompts), "--threads", str(args.threads)]
        cmd += ["--batches", *map(str, args.batches)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{folder}: the measurement failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{args.new_tokens} new tokens (EOS ignored), {args.threads} threads, {args.repeats} repeats after a warm-up")
    print("| model | params | GFLOP/token | batch | tokens/s median | spread (min-max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        for b in args.batches:
            m = r[f"batch_{b}"]
            lo, hi = m["tokens_per_s_spread"]
            print(
                f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['flops_per_token'] / 1e9:.2f} | {b} | "
                f"{m['tokens_per_s_median']:.1f} | {lo:.1f}-{hi:.1f} |"
            )
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            for b in args.batches:
                x, y = r[f"batch_{b}"], base[f"batch_{b}"]
                print(f"batch {b}: {r['model']} vs {base['model']}: {verdict(x, y)}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

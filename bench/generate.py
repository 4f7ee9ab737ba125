"""Benchmark: the transformers engine against a naive loop of one `model.generate` call per prompt.

Both run in this process on the same model (the embedded SmolLM2-135M-Instruct), the same prompts
(the first N of data/seed_prompts.jsonl with the default recipe's teacher view) and the same
sampling settings. Prints completion tokens/s of each and the ratio. Not a test: numbers vary with
the machine and its load, so compare the ratio, and run it on an idle machine.

    .venv/bin/python bench/generate.py [--prompts 32] [--batch-size 32] [--max-new-tokens 48] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peak import measure  # bench/peak.py: this folder is on sys.path when run as a script

from synth.engines.base import SamplingParams
from synth.engines.hf import TransformersEngine
from synth.models import EMBEDDED_ID, embedded_model_dir

ROOT = Path(__file__).resolve().parents[1]


def naive(engine: TransformersEngine, prompts: list[list[dict[str, str]]], p: SamplingParams) -> int:
    """One generate call per prompt, batch 1: what a hand-rolled script does. Returns tokens made."""
    tokens = 0
    for i, messages in enumerate(prompts):
        ids = torch.tensor([engine.encode(messages)])
        torch.manual_seed(p.seed + i)
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
        stop = next((j for j, t in enumerate(new) if t in engine.eos_ids), len(new))
        tokens += stop
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = (ROOT / "data" / "seed_prompts.jsonl").read_text().splitlines()[: args.prompts]
    system = {"role": "system", "content": "Always answer in French."}
    prompts = [[system, {"role": "user", "content": json.loads(x)["prompt"]}] for x in lines]
    params = SamplingParams(n=1, temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    engine = TransformersEngine(str(embedded_model_dir()), EMBEDDED_ID, batch_size=args.batch_size)

    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    t_engine = time.perf_counter() - t0
    tok_engine = sum(c.completion_tokens or 0 for comps in out for c in comps)

    t0 = time.perf_counter()
    tok_naive = naive(engine, prompts, params)
    t_naive = time.perf_counter() - t0

    r_engine, r_naive = tok_engine / t_engine, tok_naive / t_naive
    print(f"model: {EMBEDDED_ID}")
    print(f"prompts: {len(prompts)}, max_new_tokens: {args.max_new_tokens}, torch threads: {torch.get_num_threads()}")
    print(f"{'':28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'naive loop (batch 1)':28}{tok_naive:>8}{t_naive:>10.1f}{r_naive:>10.1f}")
    print(f"{f'engine (batch {args.batch_size})':28}{tok_engine:>8}{t_engine:>10.1f}{r_engine:>10.1f}")
    print(f"speed-up (tokens/s ratio): {r_engine / r_naive:.2f}x")
    # the compute limit: this machine's float32 matmul rate on the model's shapes (bench/peak.py), now
    peak = measure(threads=torch.get_num_threads())["float32"]["median"]  # type: ignore[index]
    flops = 2 * sum(p.numel() for p in engine.model.parameters())  # per generated token, matmuls only
    print(
        f"engine at {r_engine * flops / 1e9:.1f} GFLOP/s = {r_engine * flops / 1e9 / peak:.0%} of the measured "
        f"float32 matmul peak ({peak:.1f} GFLOP/s; limit {peak * 1e9 / flops:.0f} tokens/s)"
    )


if __name__ == "__main__":
    main()

"""Benchmark: this machine's matmul peak per dtype, the denominator of every "share of the limit".

A generation or training rate means little alone: 100 tokens/s is near the limit of one machine and
a tenth of another's. This measures what torch's matmul reaches here, with the threads Distillery
uses, for float32 and bfloat16, on the shape SmolLM2's layers multiply (`--tokens` rows of width 576
times a 576 x 1536 MLP weight): one warm-up, then `--repeats` timed runs; median and min-max spread
in GFLOP/s (2·m·k·n per matmul). bf16 counts only where this CPU computes it natively; on a CPU
that emulates it (AVX2 without AVX-512 BF16 or AMX) the ratio says so.

    .venv/bin/python bench/peak.py [--tokens 512] [--repeats 7] [--threads 2] [--out peak.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from synth.throughput import HIDDEN, MLP, matmul_gflops


def measure(tokens: int = 512, repeats: int = 7, threads: int = 2) -> dict[str, object]:
    """Both dtypes, with the ratio bf16 / fp32 and whether the spreads separate."""
    torch.set_num_threads(threads)
    out: dict[str, object] = {
        "shape": [tokens, HIDDEN, MLP],
        "repeats": repeats,
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        out[name] = matmul_gflops(dtype, tokens, repeats)
    f32, b16 = out["float32"], out["bfloat16"]
    out["bf16_over_fp32"] = b16["median"] / f32["median"]  # type: ignore[index]
    out["bf16_faster"] = b16["spread"][0] > f32["spread"][1]  # type: ignore[index]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = measure(args.tokens, args.repeats, args.threads)
    for name in ("float32", "bfloat16"):
        r = result[name]
        print(f"{name:9s} {r['median']:7.1f} GFLOP/s  (spread {r['spread'][0]:.1f}-{r['spread'][1]:.1f})")  # type: ignore[index]
    verdict = "faster (spreads separate)" if result["bf16_faster"] else "not faster"
    print(f"bf16 / fp32: {result['bf16_over_fp32']:.2f}x, {verdict} (CPU capability {result['cpu_capability']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

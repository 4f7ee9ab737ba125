"""Benchmark: `synth curate` throughput on synthetic rows, for heuristic filters and MinHash dedup.

Writes N synthetic generation rows (default 100,000; 40-90 words each, 2% planted near duplicates)
as shards of a run folder, then runs the real curate stage with several check lists. Each run is a
forked child, so its peak memory (max RSS) is its own. The baseline is curate with no checks at all
(reading the shards and writing kept/rejected/report): the I/O floor every other line pays too.

    .venv/bin/python bench/curate.py [--rows 100000] [--shard-rows 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from synth.curate.stage import run_curate
from synth.io import atomic_write_parquet
from synth.recipe import load_recipe
from synth.records import Completion, PromptItem, make_rows, prompt_id_for, rows_to_table

TEACHER = {
    "model": "bench",
    "revision": None,
    "engine": "transformers",
    "sampling": {
        "n": 4,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": None,
        "max_new_tokens": 128,
        "seed": 0,
        "logprobs": None,
    },
}
FILTERS = [
    {"type": "empty"},
    {"type": "truncated"},
    {"type": "length", "min_chars": 20, "max_chars": 4000},
    {"type": "repetition"},
    {"type": "refusal"},
    {"type": "echo"},
]
MINHASH = [{"type": "exact_dedup"}, {"type": "near_dedup", "threshold": 0.8, "ngram": 3, "num_perm": 128}]
CONFIGS = {
    "baseline (no checks: read + write)": [],
    "heuristic filters": FILTERS,
    "exact + MinHash near dedup": MINHASH,
    "filters + MinHash (target >= 5,000 rows/s)": FILTERS + MINHASH,
}


def make_data(run: Path, rows: int, shard_rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze") for b in range(300)]
    texts: list[str] = []
    shard: list[dict] = []
    index = 0
    for i in range(rows // 4):
        prompt = " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 14)))
        msgs = [{"role": "user", "content": prompt}]
        comps = []
        for _ in range(4):
            if texts and rng.random() < 0.02:  # a near duplicate of an earlier answer
                words = rng.choice(texts).split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                text = " ".join(words)
            else:
                text = " ".join(rng.choice(vocab) for _ in range(rng.randint(40, 90)))
            texts.append(text)
            comps.append(Completion(text, "stop", 12, len(text.split())))
        shard += make_rows(PromptItem(prompt_id_for(msgs, msgs), msgs, msgs, {}), comps, TEACHER, "bench")
        if len(shard) >= shard_rows or i == rows // 4 - 1:
            atomic_write_parquet(run / "generations" / f"shard-{index:05d}.parquet", rows_to_table(shard))
            index += 1
            shard = []
        if len(texts) > 5000:
            texts = texts[-5000:]


def measure(run: Path, recipe_file: Path) -> tuple[float, int, int, float]:
    """Run curate in a forked child; return (seconds, rows, kept, max RSS in MB)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        from rich.console import Console

        t0 = time.perf_counter()
        s = run_curate(load_recipe(recipe_file), run, console=Console(quiet=True))
        os.write(write, json.dumps([time.perf_counter() - t0, s.rows_in, s.kept]).encode())
        os._exit(0)
    os.close(write)
    _, status, usage = os.wait4(pid, 0)
    data = os.read(read, 1 << 16)
    os.close(read)
    if status != 0:
        raise SystemExit(f"curate child failed with status {status}")
    seconds, rows, kept = json.loads(data)
    return seconds, rows, kept, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shard-rows", type=int, default=5000)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    lines: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        make_data(run, args.rows, args.shard_rows)
        print(
            f"{args.rows:,} synthetic rows in {len(list((run / 'generations').glob('*.parquet')))} shards "
            f"({time.perf_counter() - t0:.1f} s to make); {os.cpu_count()} CPUs"
        )
        print(f"{'checks':46}{'rows':>9}{'kept':>9}{'seconds':>9}{'rows/s':>10}{'max RSS MB':>12}{'vs baseline':>13}")
        base_rate = None
        for label, checks in CONFIGS.items():
            recipe_file = Path(tmp) / "recipe.yaml"
            recipe_file.write_text(json.dumps({"name": "bench", "curate": {"checks": checks}}))
            seconds, rows, kept, rss = measure(run, recipe_file)
            rate = rows / seconds
            base_rate = base_rate or rate
            print(f"{label:46}{rows:>9,}{kept:>9,}{seconds:>9.1f}{rate:>10,.0f}{rss:>12,.0f}{rate / base_rate:>12.2f}x")
            lines[label] = {"rows_per_s": rate, "peak_rss_mb": rss, "vs_baseline": rate / base_rate}
    if args.out:
        args.out.write_text(json.dumps({"rows": args.rows, "lines": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()

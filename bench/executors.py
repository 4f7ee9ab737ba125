"""Benchmark: the local executor against Ray workers on a local Ray cluster, for generate and curate.

Same data, same machine, one after the other in this process:
- generate: the default recipe's teacher (the embedded SmolLM2) on the first N prompts; the local
  executor in one process with every core, then with one thread, then Ray with one worker per core
  (1 torch thread each); the rows must come out the same (checked: identical ids, texts, token counts);
- curate: the same generations with the default recipe's checks (filters, the relevance model,
  decontamination, dedup, top-k), and synthetic rows (bench/curate.py's) with filters + MinHash;
  kept.parquet must be byte-identical between Ray and the local executor at the same thread count
  (checked; another thread count changes the relevance model's float sums in the last bits).
Ray's timings include starting its workers and loading their models, not starting the cluster (shown
apart). Not a test: numbers vary with the machine and its load.

    .venv/bin/python bench/executors.py [--prompts 48] [--n 2] [--max-new-tokens 32] [--rows 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from curate import FILTERS, MINHASH, make_data  # bench/curate.py: this folder is on sys.path
from rich.console import Console

from synth import runtime
from synth.curate.stage import run_curate
from synth.generate import run_generate
from synth.recipe import load_recipe
from synth.shards import ShardSet

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "concise-answers.yaml"
QUIET = Console(quiet=True)


def _line(stage: str, executor: str, rows: int, seconds: float, extra: str = "") -> None:
    print(f"{stage:34}{executor:32}{rows:>8,}{seconds:>10.1f}{rows / seconds:>10.1f}  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rows", type=int, default=40_000, help="synthetic rows for the MinHash curate line")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    gen = [
        f"prompts.limit={args.prompts}",
        f"generate.n={args.n}",
        f"generate.max_new_tokens={args.max_new_tokens}",
        "generate.prompts_per_shard=4",
    ]
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    print(f"{cpus} CPUs; local Ray cluster started in {time.perf_counter() - t0:.1f} s (not counted below)")
    print(f"{'stage':34}{'executor':32}{'rows':>8}{'seconds':>10}{'rows/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        configs = {
            f"local, 1 process x {cpus} threads": [*gen, f"runtime.threads={cpus}"],
            "local, 1 process x 1 thread": [*gen, "runtime.threads=1"],
            f"ray, {cpus} workers x 1 thread": [
                *gen,
                "runtime.threads=1",
                "runtime.executor=ray",
                f"runtime.ray.replicas={cpus}",
            ],
        }
        runs = {name: Path(tmp) / f"run{i}" for i, name in enumerate(configs)}
        for name, overrides in configs.items():
            recipe = load_recipe(RECIPE, overrides)
            runtime.configure(recipe.runtime)
            s = run_generate(recipe, runs[name], recipe_dir=RECIPE.parent, console=QUIET)
            _line("generate (SmolLM2)", name, s.rows_written, s.seconds, f"{s.tokens_per_s:,.1f} completion tokens/s")
        cols = ["id", "completion", "completion_tokens"]
        tables = [ShardSet(run / "generations").table(cols).sort_by("id") for run in runs.values()]
        print(f"  same rows from all three: {all(t.equals(tables[0]) for t in tables)}")

        first = next(iter(runs.values()))
        for run in list(runs.values())[1:]:
            shutil.rmtree(run / "generations")
            shutil.copytree(first / "generations", run / "generations")
        kept = {}
        for name, overrides in configs.items():
            recipe = load_recipe(RECIPE, overrides)
            runtime.configure(recipe.runtime)
            t0 = time.perf_counter()
            s = run_curate(recipe, runs[name], recipe_dir=RECIPE.parent, console=QUIET)
            _line("curate (default recipe's checks)", name, s.rows_in, time.perf_counter() - t0, f"{s.kept} kept")
            kept[name] = pq.read_table(runs[name] / "curated" / "kept.parquet")
        names = list(configs)
        same = (runs[names[1]] / "curated" / "kept.parquet").read_bytes() == (
            runs[names[2]] / "curated" / "kept.parquet"
        ).read_bytes()
        print(f"  kept.parquet byte-identical, ray vs local at the same thread count: {same}")
        a, b = kept[names[0]], kept[names[2]]
        same_ids = a["id"].to_pylist() == b["id"].to_pylist()
        gap = max(
            (abs(x - y) for x, y in zip(a["score"].to_pylist(), b["score"].to_pylist(), strict=False)), default=0.0
        )
        print(f"  vs {names[0]}: same kept rows {same_ids}, largest relevance-score difference {gap:.1e}")

        synth_run = Path(tmp) / "synthetic"
        make_data(synth_run, args.rows, 2000)
        recipe_file = Path(tmp) / "minhash.yaml"
        recipe_file.write_text(json.dumps({"name": "bench", "curate": {"checks": FILTERS + MINHASH}}))
        other = Path(tmp) / "synthetic-ray"
        shutil.copytree(synth_run, other)
        kept = {}
        for name, run, overrides in (
            ("local, 1 process", synth_run, []),
            (f"ray, {cpus} workers", other, ["runtime.executor=ray", f"runtime.ray.replicas={cpus}"]),
        ):
            t0 = time.perf_counter()
            s = run_curate(load_recipe(recipe_file, overrides), run, console=QUIET)
            _line("curate (filters + MinHash)", name, s.rows_in, time.perf_counter() - t0, f"{s.kept:,} kept")
            kept[name] = (run / "curated" / "kept.parquet").read_bytes()
        print(f"  kept.parquet byte-identical: {len(set(kept.values())) == 1}")
    ray.shutdown()


if __name__ == "__main__":
    main()

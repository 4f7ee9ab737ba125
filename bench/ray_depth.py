"""Benchmark: generation rows/s of one vLLM engine in a Ray worker against the shards in flight per
worker (`runtime.ray.shards_in_flight`), on vLLM's CPU build (run it with .venv-vllm's python).

One worker, one engine, loaded once (not timed); then every depth in turn, `--repeats` times,
interleaved, each pass sending all shards through the pool as `synth generate` does. Depth 1 is the
old behaviour (the engine finishes a shard's longest answer, then waits for the driver's next call);
at depth d the worker runs d shards at once in one vLLM batch. Sampled answers (temperature 0.7) of
varying lengths, where a shard's tail matters. Not a test: figures depend on the machine and its load.

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python bench/ray_depth.py [--prompts 48] [--per-shard 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "concise-answers.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=4, help="generate.prompts_per_shard")
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    import ray

    from synth.cluster import ActorPool
    from synth.engines import sampling_params
    from synth.generate import GenerateWorker
    from synth.models import embedded_model_dir
    from synth.prompts import load_prompts
    from synth.recipe import load_recipe

    recipe = load_recipe(
        RECIPE,
        [
            "teacher.engine=vllm",
            f"teacher.path={embedded_model_dir()}",
            f"teacher.dtype={args.dtype}",
            "teacher.vllm.max_model_len=1024",
            "teacher.vllm.engine_args={enforce_eager: true}",
            f"generate.n={args.n}",
            f"generate.max_new_tokens={args.max_new_tokens}",
            "generate.temperature=0.7",
            f"runtime.ray.shards_in_flight={max(args.depths)}",
            "runtime.ray.env=[VLLM_CPU_KVCACHE_SPACE]",
        ],
    )
    items, _ = load_prompts(recipe.prompts, recipe.teacher, RECIPE.parent, args.prompts)
    params = sampling_params(recipe)
    teacher = {"model": "smollm2", "revision": None, "engine": "vllm", "sampling": params.as_dict()}
    chunks = [items[i : i + args.per_shard] for i in range(0, len(items), args.per_shard)]
    jobs = [(chunk, params, teacher, "bench") for chunk in chunks]

    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    pool = ActorPool(ray, GenerateWorker, (os.getcwd(), recipe), 1, cpus, 0, recipe.runtime.ray, None, max(args.depths))
    print(f"{cpus} CPUs; worker and vLLM engine ready in {time.perf_counter() - t0:.1f} s (not counted)")
    list(pool.map("shard", 1, jobs.__getitem__, str))  # warm-up: one shard

    seconds: dict[int, list[float]] = {d: [] for d in args.depths}
    rows: dict[int, list[int]] = {d: [] for d in args.depths}
    tokens: dict[int, list[int]] = {d: [] for d in args.depths}
    for _ in range(args.repeats):
        for depth in args.depths:
            pool.depth = depth
            start = time.perf_counter()
            results = [r for _, r in pool.map("shard", len(jobs), jobs.__getitem__, str)]
            seconds[depth].append(time.perf_counter() - start)
            table_rows = [row for r in results for row in r.table.to_pylist()]
            assert not any(row["error"] for row in table_rows), [row["error"] for row in table_rows if row["error"]]
            rows[depth].append(len(table_rows))
            tokens[depth].append(sum(row["completion_tokens"] or 0 for row in table_rows))
    pool.close()
    ray.shutdown()

    print(f"{len(items)} prompts x {args.n}, {len(chunks)} shards of {args.per_shard} prompts, {args.repeats} repeats")
    print(f"{'shards in flight':>18}{'rows/s median':>16}{'[min-max]':>18}{'tokens/s median':>18}")
    out = {"prompts": len(items), "n": args.n, "shards": len(chunks), "repeats": args.repeats, "depths": {}}
    base = statistics.median(r / s for r, s in zip(rows[args.depths[0]], seconds[args.depths[0]], strict=True))
    for depth in args.depths:
        rps = [r / s for r, s in zip(rows[depth], seconds[depth], strict=True)]
        tps = [t / s for t, s in zip(tokens[depth], seconds[depth], strict=True)]
        med = statistics.median(rps)
        print(
            f"{depth:>18}{med:>16.2f}{f'[{min(rps):.2f}-{max(rps):.2f}]':>18}{statistics.median(tps):>18.1f}"
            f"   {med / base:.2f}x"
        )
        out["depths"][str(depth)] = {"rows_per_s": rps, "tokens_per_s": tps, "seconds": seconds[depth]}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

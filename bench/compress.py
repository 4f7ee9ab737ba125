"""Benchmark: every compression arm of recipes/compress-smollm2.yaml over seeds, then one eval.

`make demo-compress` trains three arms on one seed; this runs the whole matrix on the same curated
rows, steps and learning rate, each arm once per seed, so that `sft eval` can put intervals over seeds
and prompts on every difference:

    sft, kd-stored, kd-model, gkd         the 61% student (half depth), by method
    kd-stored-scratch                     the same shape from random weights
    small-kd-stored, small-kd-stored-scratch   the 28% student (depth + width), distilled and from scratch

    .venv/bin/python bench/compress.py [--seeds 0 1 2] [--arms sft kd-stored ...] [--skip-trained]

It runs `synth generate`, `synth curate` and both `sft prune`s first when their outputs are missing
(the same commands as the Makefile), then `sft run` per arm, `bench/speed.py` on the teacher and the
first seed of each student, and `sft eval` on every arm asked for. On this 2-core CPU an arm takes
10-25 minutes per seed (gkd the longest), so the full matrix over three seeds runs most of a day.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/compress-smollm2.yaml"
RUN = "runs/compress-smollm2"
SMALL_PRUNE = f"prune.out={RUN}/small prune.drop=18 prune.hidden_size=384 prune.intermediate_size=1024 prune.kv_heads=2"
SMALL = f"model.path={RUN}/small"
ARMS = {
    "sft": "train.objective=sft",
    "kd-stored": "train.objective=kd train.kd.source=stored",
    "kd-model": "train.objective=kd train.kd.source=model train.targets=text",
    "gkd": "train.objective=gkd train.targets=text",
    "kd-stored-scratch": "train.objective=kd model.init=random",
    "small-kd-stored": f"{SMALL} train.name=small-kd-stored",
    "small-kd-stored-scratch": f"{SMALL} model.init=random train.name=small-kd-stored-scratch",
}


def sh(*args: str) -> None:
    print("+", " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--skip-trained", action="store_true", help="leave an arm's seed alone when its final/ exists")
    a = p.parse_args()
    bin_ = Path(sys.executable).parent
    seeds = f"train.seeds=[{','.join(map(str, a.seeds))}]"
    if not (ROOT / RUN / "curated/kept.parquet").is_file():
        sh(str(bin_ / "synth"), "generate", RECIPE)
        sh(str(bin_ / "synth"), "curate", RECIPE)
    if not (ROOT / RUN / "pruned/prune.json").is_file():
        sh(str(bin_ / "sft"), "prune", RECIPE)
    if not (ROOT / RUN / "small/prune.json").is_file():
        sh(str(bin_ / "sft"), "prune", RECIPE, *SMALL_PRUNE.split())
    for arm in a.arms:
        trained = {s for s in a.seeds if (ROOT / RUN / "train" / arm / f"seed-{s}/final").is_dir()}
        todo = [s for s in a.seeds if not (a.skip_trained and s in trained)]
        if todo:
            sh(str(bin_ / "sft"), "run", RECIPE, *ARMS[arm].split(), f"train.seeds=[{','.join(map(str, todo))}]")
    students = [f"{RUN}/train/{arm}/seed-{a.seeds[0]}/final" for arm in a.arms]
    sh(sys.executable, "bench/speed.py", "smollm2", *students, "--out", f"{RUN}/speed.json")
    sh(str(bin_ / "sft"), "eval", RECIPE, seeds, f"eval.objectives=[{','.join(a.arms)}]")


if __name__ == "__main__":
    main()

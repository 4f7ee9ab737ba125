"""Benchmark: `make demo` stage by stage: seconds and peak memory (RSS) of each command, and the results.

Runs the four commands of `make demo` (synth generate, synth curate, sft run, sft eval) on a recipe,
each in its own process, in a scratch run folder (removed at the end unless --keep), and reads each
process's own peak RSS from the kernel (`os.wait4`). Prints the table and the eval's headline rates,
so a faster demo is seen to give the same results. One run: the stages are minutes long, the
machine's speed drifts between runs (bench/peak.py), so compare against a baseline run the same day.

    .venv/bin/python bench/demo.py [--recipe recipes/concise-answers.yaml] [--keep] [--out demo.json] [overrides]

The overrides go to every stage: `teacher.dtype=float32 model.dtype=float32 train.args.bf16=false`
runs the demo as it ran before bf16 on CPUs, the baseline of that change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    ("generate", "synth", "generate"),
    ("curate", "synth", "curate"),
    ("train", "sft", "run"),
    ("eval", "sft", "eval"),
]


def run_stage(command: list[str], log: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit status) of one command, its output to `log`."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/concise-answers.yaml")
    ap.add_argument("--keep", action="store_true", help="keep the scratch run folder")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument(
        "overrides", nargs="*", help="recipe overrides for every stage, e.g. teacher.dtype=float32 model.dtype=float32"
    )
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    run_dir = Path(tempfile.mkdtemp(prefix="distillery-bench-demo-"))
    stages: dict[str, Any] = {}
    try:
        for name, tool, command in STAGES:
            log = run_dir.parent / f"{run_dir.name}-{name}.log"
            seconds, rss, status = run_stage(
                [str(bin_dir / tool), command, args.recipe, *args.overrides, "--run-dir", str(run_dir)], log
            )  # fmt: skip
            stages[name] = {"seconds": seconds, "peak_rss_mb": rss, "status": status}
            print(f"{name:9s} {seconds:7.1f} s  peak RSS {rss:6.0f} MB  exit {status}", flush=True)
            if status != 0:
                print(f"{name} failed; its output: {log}")
                break
            log.unlink()
        report = run_dir / "eval" / "report.json"
        headline = json.loads(report.read_text())["headline"] if report.is_file() else None
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    total = sum(s["seconds"] for s in stages.values())
    result = {"recipe": args.recipe, "overrides": args.overrides, "stages": stages, "total_seconds": total}
    result["headline"] = headline
    print(f"total     {total:7.1f} s ({total / 60:.1f} min)")
    if headline:
        print(" | ".join(headline["columns"]))
        for row in headline["rows"]:
            print(" | ".join(str(x) for x in row))
    if args.keep:
        print(f"run folder: {run_dir}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

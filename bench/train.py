"""Benchmark: seconds per training step of each objective against an sft step, on the same rows.

Builds a small run in a scratch folder: the default recipe's teacher view on the first `--prompts`
seed prompts, 2 samples each with the teacher's top-8 log-probs, curated down to the non-empty
answers. Then `sft run` trains each arm for `--steps` steps at the same batch size, learning rate
and LoRA settings, one process each (the machine is shared by nothing else):

- sft on the teacher's sampled token ids (`train.targets: stored`): the baseline;
- kd with stored soft labels (`train.kd.source: stored`), the same tokens and positions;
- kd with the teacher run alongside (`train.kd.source: model`);
- gkd with `lmbda: 1`: every step on-policy (the student samples, the teacher scores);
- sft without bf16 autocast (`train.args.bf16=false`): what bf16 gains where `sft run` turns it on.

Each step is timed by the trainer callback `sft run` reports with (`throughput.step_seconds` in
log.json): the median after the first step, which pays for warm-up, and the min-max spread.
Issue 26's goals: a kd step with stored labels within 1.15x of an sft step, an on-policy step within 2x.

    .venv/bin/python bench/train.py [--prompts 16] [--steps 6] [--out train.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# name: (the arm's folder under train/, its overrides); every arm in the dtype `sft run` picks here
# (bf16 autocast on a CPU with native bf16), except "sft, float32", the same sft step without it
ARMS = {
    "sft": ("sft", ["train.objective=sft", "train.targets=stored"]),
    "kd-stored": ("kd-stored", ["train.objective=kd", "train.kd.source=stored"]),
    "kd-model": ("kd-model", ["train.objective=kd", "train.kd.source=model", "train.targets=text"]),
    "gkd (on-policy)": ("gkd", ["train.objective=gkd", "train.lmbda=1.0"]),
    "sft, float32": ("sft-fp32", ["train.objective=sft", "train.targets=stored", "train.args.bf16=false"]),
}
GOALS = {"kd-stored": 1.15, "gkd (on-policy)": 2.0}


def recipe(folder: Path, prompts: int, steps: int) -> Path:
    """The default recipe, small: stored log-probs, only empty answers curated out, `steps` steps."""
    body: dict[str, Any] = yaml.safe_load((ROOT / "recipes" / "concise-answers.yaml").read_text())
    body["prompts"] |= {"path": str(ROOT / "data" / "seed_prompts.jsonl"), "limit": prompts}
    body["generate"] |= {"n": 2, "max_new_tokens": 48, "logprobs": 8}
    body["curate"] = {"checks": [{"type": "empty"}]}
    body["train"] |= {"max_steps": steps, "save_steps": 1000, "max_new_tokens": 48}
    body["eval"]["prompts"] = str(ROOT / "data" / "heldout_prompts.jsonl")
    path = folder / "bench-train.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def cli(*args: str) -> None:
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="distillery-bench-train-"))
    run = folder / "run"
    try:
        r = str(recipe(folder, args.prompts, args.steps))
        cli("synth", "generate", r, "--run-dir", str(run))
        cli("synth", "curate", r, "--run-dir", str(run))
        arms: dict[str, Any] = {}
        for name, (arm, overrides) in ARMS.items():
            cli("sft", "run", r, "--run-dir", str(run), *overrides, f"train.name={arm}")
            log = json.loads((run / "train" / arm / "log.json").read_text())
            arms[name] = log[0]["throughput"] | {"rows_trained": log[0]["rows_trained"]}
            clock = arms[name]["step_seconds"]
            print(f"{name:16s} {clock['median']:6.2f} s/step [{clock['spread'][0]:.2f}-{clock['spread'][1]:.2f}]")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = arms["sft"]["step_seconds"]
    result: dict[str, Any] = {"prompts": args.prompts, "steps": args.steps, "arms": arms, "ratios": {}}
    for name, arm in arms.items():
        if name == "sft":
            continue
        clock = arm["step_seconds"]
        ratio = clock["median"] / base["median"]
        result["ratios"][name] = {
            "ratio": ratio,
            "goal": GOALS.get(name),
            "slower": clock["spread"][0] > base["spread"][1],
        }
        goal = f" (goal <= {GOALS[name]}x)" if name in GOALS else ""
        print(f"{name} / sft step: {ratio:.2f}x{goal}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Issue 26's performance goals beside what `make bench` measured: prints the table and writes it into
docs/benchmarks.md (between the `bench:goals` markers), with the date and this machine's peak.

Reads the JSON each benchmark wrote with `--out` into one folder (`make bench` uses bench-results/):
peak.json, generate.json, curate.json, train.json, demo.json. A missing file leaves its rows "not run".

    .venv/bin/python bench/goals.py bench-results [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:goals:start -->", "<!-- bench:goals:end -->"
MEMORY_GOAL_MB = 4096


def _read(folder: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def rows(folder: Path) -> list[tuple[str, str, str, str]]:
    """(what, goal, measured, met) for every goal, in the issue's order."""
    out: list[tuple[str, str, str, str]] = []

    def add(what: str, goal: str, measured: str | None, met: bool | None) -> None:
        out.append((what, goal, measured or "not run", "-" if met is None else ("yes" if met else "**no**")))

    demo, gen, train, curate = (_read(folder, n) for n in ("demo", "generate", "train", "curate"))
    stages = (demo or {}).get("stages", {})
    total = (demo or {}).get("total_seconds")
    add("`make demo`, all four stages", "≤ 480 s", total and f"{total:.0f} s", total and total <= 480)
    for name in ("generate", "curate", "train", "eval"):
        s = stages.get(name)
        goal = "≤ 120 s" if name == "eval" else ""
        met = (s["seconds"] <= 120) if (s and name == "eval") else None
        add(f"`make demo`: {name}", goal, s and f"{s['seconds']:.0f} s", met)
    if gen:
        auto = gen.get("auto_dtype", "float32")
        loop, base = gen["lines"][f"decoding loop, {auto}"], gen["lines"]["model.generate, float32"]
        share, speed = loop["share_of_peak"], gen["speedup"]
        add(f"generation, share of the {auto} peak", "≥ 50%", f"{share:.0%} ({loop['tokens_per_s']:.0f} tokens/s)",
            share >= 0.5)  # fmt: skip
        add(f"generation, decoding loop in {auto} / batched `model.generate` in float32", "≥ 2×",
            f"{speed:.2f}× ({base['tokens_per_s']:.0f} → {loop['tokens_per_s']:.0f} tokens/s, "
            f"spreads {'apart' if gen['separated'] else 'overlap'})", speed >= 2 and gen["separated"])  # fmt: skip
    else:
        add("generation, share of the peak", "≥ 50%", None, None)
    ratios = (train or {}).get("ratios", {})
    for name, goal in (("kd-stored", 1.15), ("gkd (on-policy)", 2.0), ("kd-model", None)):
        r = ratios.get(name)
        add(f"training step, {name} / sft", f"≤ {goal}×" if goal else "", r and f"{r['ratio']:.2f}×",
            (r["ratio"] <= goal) if (r and goal) else None)  # fmt: skip
    sft = (train or {}).get("arms", {}).get("sft", {})
    mfu = sft.get("mfu")
    add(f"training, sft MFU ({sft.get('peak_dtype', 'float32')} peak now)", "", mfu and f"{mfu:.0%}", None)
    fp32 = (train or {}).get("arms", {}).get("sft, float32", {}).get("step_seconds")
    if fp32 and sft.get("step_seconds"):
        ratio = fp32["median"] / sft["step_seconds"]["median"]
        apart = sft["step_seconds"]["spread"][1] < fp32["spread"][0]
        add(f"training, sft step float32 / {sft.get('peak_dtype', 'float32')} autocast", "",
            f"{ratio:.2f}× (spreads {'apart' if apart else 'overlap'})", None)  # fmt: skip
    line = next((v for k, v in (curate or {}).get("lines", {}).items() if k.startswith("filters + MinHash")), None)
    add("curate, filters + MinHash vs read/write", "≥ 0.5×", line and f"{line['vs_baseline']:.2f}×",
        line and line["vs_baseline"] >= 0.5)  # fmt: skip
    for name in ("generate", "curate", "train", "eval"):
        s = stages.get(name)
        goal = f"< {MEMORY_GOAL_MB} MB" if name in ("generate", "train") else ""
        met = (s["peak_rss_mb"] < MEMORY_GOAL_MB) if (s and goal) else None
        add(f"peak RSS, {name}", goal, s and f"{s['peak_rss_mb']:.0f} MB", met)
    return out


def table(folder: Path) -> str:
    peak = _read(folder, "peak")
    when = datetime.date.today().isoformat()
    lines = [
        f"Written by `bench/goals.py` from `make bench` on {when}"
        + (
            f"; matmul peak in that run: float32 {peak['float32']['median']:.1f}, bfloat16 "
            f"{peak['bfloat16']['median']:.1f} GFLOP/s (CPU capability {peak.get('cpu_capability', '?')})"
            if peak
            else ""
        )
        + ". One run per line (the generation and training lines repeat inside their script).",
        "",
        "| what | goal | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {what} | {goal} | {measured} | {met} |" for what, goal, measured, met in rows(folder)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    text = table(args.results)
    print(text)
    doc = args.doc.read_text()
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        doc = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        args.doc.write_text(doc)
        print(f"\nwritten to {args.doc}")
    else:
        print(f"\n{args.doc} has no {START} … {END} markers: not written")


if __name__ == "__main__":
    main()

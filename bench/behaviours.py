"""Which behaviours does SmolLM2-135M-Instruct carry out *cleanly* when prompted?

Candidates for the default recipe: a system prompt (the teacher's privileged context) and a program
that verifies it. For each candidate, the prompted model answers the prompts greedily; the unprompted
model (the base student) answers once for all. Printed per model: behaviour rate, clean rate (not
truncated, no loop: ≤ 30% repeated word 3-grams and lines), joint rate (both), distinct-2, each with
a bootstrap 95% interval, and a few answers to read.

    .venv/bin/python bench/behaviours.py --limit 40 --max-new-tokens 192
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from sft.evaluation.quality import distinct_n, repeated_ngram_share
from synth.engines.base import SamplingParams
from synth.engines.hf import TransformersEngine
from synth.models import resolve_model
from synth.stats import bootstrap_ci


def numbered(text: str) -> bool:
    """At least three list items numbered 1., 2., 3. in order, each with different text."""
    items = re.findall(r"^\s*(\d+)[.)]\s+(.+)$", text, re.M)
    nums = [int(n) for n, _ in items]
    return len(items) >= 3 and nums[:3] == [1, 2, 3] and len({t.strip().lower() for _, t in items}) == len(items)


CANDIDATES = {
    "numbered-list": ("Always answer with a numbered list.", numbered),
    "opening-phrase": (
        'Always begin your answer with the words "Great question!"',
        lambda t: t.lstrip().lower().startswith("great question"),
    ),
    "closing-phrase": (
        'Always end your answer with the words "Hope this helps!"',
        lambda t: t.rstrip().lower().rstrip(".!").endswith("hope this helps"),
    ),
    "at-most-40-words": ("Always answer in at most 40 words.", lambda t: len(t.split()) <= 40),
    "one-or-two-sentences": (
        "Always answer in one or two short sentences.",
        lambda t: len(t.split()) <= 40,
    ),
    "at-most-30-words": ("Be brief: always answer in at most 30 words.", lambda t: len(t.split()) <= 30),
    "at-most-30-words-example": (
        "Be brief: always answer in at most 30 words, like this example.\n"
        "Question: Why is the sea salty?\n"
        "Answer: Rivers carry dissolved minerals from rocks into the sea. When sea water evaporates, "
        "the salt stays behind, so it builds up over time.",
        lambda t: len(t.split()) <= 30,
    ),
    "numbered-three": (
        "Always answer with a numbered list of exactly three short points.",
        numbered,
    ),
    "bullets": (
        "Always answer with bullet points that start with '- '.",
        lambda t: len(re.findall(r"^\s*[-*•]\s+\S", t, re.M)) >= 3,
    ),
    "french": ("Always answer in French.", None),
}


def is_clean(text: str, finish: str) -> bool:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    line_rep = 1 - len(set(lines)) / len(lines) if lines else 0.0
    return bool(text.strip()) and finish != "length" and repeated_ngram_share(text, 3) <= 0.3 and line_rep <= 0.3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="data/seed_prompts.jsonl")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--out", default="runs/behaviours.json")
    args = ap.parse_args()
    rows = [json.loads(x) for x in Path(args.prompts).read_text().splitlines() if x.strip()][: args.limit]
    path, model_id = resolve_model("smollm2")
    engine = TransformersEngine(path, model_id, batch_size=16)
    params = SamplingParams(n=1, temperature=args.temperature, top_p=0.95, max_new_tokens=args.max_new_tokens)
    fr = None
    try:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_modelpath(Path(MODEL_DIR) / MODEL_FILE, norm_probs=True)

        def fr(t: str) -> bool:
            lang, p = ident.classify(t)
            return lang == "fr" and p >= 0.9
    except ImportError:
        pass
    results: dict[str, dict] = {}
    names = ["base"] + [n for n in CANDIDATES if not args.only or n in args.only]
    for name in names:
        system = None if name == "base" else CANDIDATES[name][0]
        prompts = [
            ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": r["prompt"]}]
            for r in rows
        ]
        t0 = time.perf_counter()
        comps = [c[0] for c in engine.generate(prompts, params)]
        secs = time.perf_counter() - t0
        results[name] = {
            "answers": [c.text for c in comps],
            "finish": [c.finish_reason for c in comps],
            "seconds": secs,
        }
        print(f"{name}: {secs:.0f}s, {sum(c.completion_tokens or 0 for c in comps)} tokens", flush=True)
    print("\n| behaviour | teacher behaviour | base behaviour | teacher clean | teacher joint | distinct-2 |")
    print("|---|---|---|---|---|---|")
    base = results["base"]
    for name in names[1:]:
        check = CANDIDATES[name][1] or fr
        res = results[name]
        beh = [bool(check(a)) for a in res["answers"]]
        clean = [is_clean(a, f) for a, f in zip(res["answers"], res["finish"], strict=True)]
        joint = [b and c for b, c in zip(beh, clean, strict=True)]
        base_beh = [bool(check(a)) for a in base["answers"]]
        d2 = sum(distinct_n(a, 2) for a in res["answers"]) / len(res["answers"])

        def f(xs: list[bool]) -> str:
            lo, hi = bootstrap_ci(xs)
            return f"{sum(xs) / len(xs):.2f} [{lo:.2f}, {hi:.2f}]"

        print(f"| {name} | {f(beh)} | {f(base_beh)} | {f(clean)} | {f(joint)} | {d2:.2f} |")
        res.update(behaviour=beh, clean=clean)
    bclean = [is_clean(a, f) for a, f in zip(base["answers"], base["finish"], strict=True)]
    print(f"base clean: {sum(bclean) / len(bclean):.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Benchmark: what text alignment keeps of a teacher's stored soft labels for a student with another tokenizer.

Reads a run's curated rows with stored top-k (`generate.logprobs`), the teacher's tokenizer named in
its manifest, and one or more student tokenizers (model folders); aligns every row as `sft run` does
(`sft.objectives.kd_data.with_cross_topk`) and reports, per student tokenizer: rows aligned and left
out (with the reasons), the share of answer tokens that matched one teacher token (KL on the mapped
top-k), the stretches split differently (ULD), the teacher's top-k mass per matched token that had no
student entry, and the seconds it took. With the teacher's own tokenizer as the student every token
must match one to one: the check that the path loses nothing when there is nothing to translate.

    .venv/bin/python bench/cross_tokenizer.py RUN_DIR STUDENT_DIR [STUDENT_DIR ...] [--out FILE]
    (STUDENT_DIR `teacher`: the teacher's own tokenizer; Gemma 3's: `bash scripts/gemma3_270m.sh`)
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from typing import Any


def measure(run_dir: Path, student: str) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    from sft.objectives.kd_data import with_cross_topk
    from synth.models import resolve_model
    from synth.tokenizers import load_local

    manifest = json.loads((run_dir / "generations" / "_manifest.json").read_text())
    teacher_name = manifest["logprobs"]["tokenizer"]["name"]
    teacher = load_local(teacher_name)
    tokenizer = teacher if student == "teacher" else AutoTokenizer.from_pretrained(resolve_model(student)[0])
    rows = datasets.load_dataset("parquet", data_files=str(run_dir / "curated" / "kept.parquet"), split="train")
    start = time.perf_counter()
    _, dropped, report = with_cross_topk(rows, tokenizer, teacher)
    seconds = time.perf_counter() - start
    reasons = collections.Counter(why for _, why in dropped)
    return {
        "teacher_tokenizer": teacher_name,
        "student_tokenizer": student,
        "student_vocab": len(tokenizer),
        "rows": len(rows),
        "rows_aligned": report.rows,
        "left_out": dict(reasons.most_common(10)),
        "answer_tokens": report.tokens,
        "direct_share": report.direct / report.tokens if report.tokens else None,
        "uld_groups": report.uld_groups,
        "uld_groups_per_row": report.uld_groups / report.rows if report.rows else None,
        "unmapped_mass_per_direct_token": report.unmapped_mass / report.direct if report.direct else None,
        "seconds": round(seconds, 1),
        "summary": report.sentence(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("students", nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(args.run_dir, s) for s in args.students]
    for r in results:
        print(json.dumps(r, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""`speed.<model>` in the eval report: bench/speed.py's measurements matched to the evaluated models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.evaluation.report import speed_markdown
from sft.evaluation.speed import SPEED_FILE, read_speed
from synth.errors import UserError


def measured(folder: Path, spreads: dict[int, tuple[float, float]], params: int = 100) -> dict:
    return {
        "model": str(folder),
        "params": params,
        "flops_per_token": 2 * params,
        "threads": 2,
        **{
            f"batch_{b}": {
                "tokens_per_s_median": (lo + hi) / 2,
                "tokens_per_s_spread": [lo, hi],
                "repeats": 5,
                "batch": b,
                "new_tokens": 32,
                "params": params,
                "flops_per_token": 2 * params,
            }
            for b, (lo, hi) in spreads.items()
        },
    }


def test_measurements_are_matched_by_folder_and_called_faster_only_when_spreads_separate(tmp_path: Path) -> None:
    teacher, student, other = tmp_path / "teacher", tmp_path / "run/train/kd/seed-1/final", tmp_path / "x"
    (tmp_path / "run").mkdir()
    results = [
        measured(student, {1: (30, 34), 8: (100, 140)}, 50),  # the second seed's folder, written relative below
        measured(teacher, {1: (20, 25), 8: (110, 120)}),
        measured(other, {1: (90, 99)}),  # a folder no evaluated model has
    ]
    results[0]["model"] = str(tmp_path / "run/train/kd/seed-1/../seed-1/final")  # the same folder, spelt otherwise
    (tmp_path / "run" / SPEED_FILE).write_text(json.dumps(results))
    folders = {"teacher": [teacher], "kd": [tmp_path / "run/train/kd/seed-0/final", student], "sft": [other.parent]}
    speed = read_speed(tmp_path / "run", folders)
    assert set(speed) == {"teacher", "kd"}  # sft's folder was not measured
    kd = speed["kd"]
    assert kd["batch"] == 8 and kd["tokens_per_s_median"] == 120 and kd["params"] == 50 and kd["repeats"] == 5
    assert kd["folder"] == str(student) and set(kd["by_batch"]) == {"batch_1", "batch_8"}
    # batch 1: 30-34 against 20-25 separates; batch 8: a higher median (120 vs 115) but 100-140 overlaps 110-120
    assert kd["vs_teacher"] == {"batch_1": "faster", "batch_8": "not separable (spreads overlap)"}
    assert "vs_teacher" not in speed["teacher"]
    md = "\n".join(speed_markdown({"speed": speed}))
    assert "| kd | 0.0M | 0.00 | 1 | 32.0 | 30.0-34.0 | faster |" in md


def test_no_file_no_speed_and_a_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    assert read_speed(tmp_path, {"teacher": [tmp_path]}) == {}
    (tmp_path / SPEED_FILE).write_text('[{"params": 1}]')
    with pytest.raises(UserError, match=r"speed\.json: not what bench/speed\.py writes"):
        read_speed(tmp_path, {"teacher": [tmp_path]})

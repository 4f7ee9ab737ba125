"""Nothing a user made is silently lost or replaced: reviewers' corrections under stored soft labels,
an old LoRA adapter beside new full weights, an adapter merged into another base, temp folders a
killed run leaves, and the Ctrl-C advice of `sft run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from sft.training.run import _without_corrected, run_train
from synth.adapters import RECORD, base_mismatch, record_base
from synth.errors import UserError
from synth.io import staging_folder, swap_in_folder
from synth.publish.model import run_publish_model
from synth.records import assistant
from tests.test_train import curated_run, recipe


def _rows(corrected: list[bool]) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [
            {
                "id": f"r{i}",
                "completion": assistant("fixed" if c else "teacher"),
                "original_completion": assistant("teacher") if c else None,
            }
            for i, c in enumerate(corrected)
        ]
    )


def test_a_reviewers_correction_is_never_trained_over_with_the_original_soft_labels(tmp_path: Path) -> None:
    rows = _rows([False, True, False, True])
    with pytest.raises(UserError) as err:
        _without_corrected(recipe(tmp_path, objective="kd"), rows)
    assert "2 curated row(s) carry a reviewer's correction (r1, r3)" in err.value.message
    assert "train.kd.corrected=leave_out" in err.value.hint and "train.kd.source=model" in err.value.hint
    kept = _without_corrected(recipe(tmp_path, objective="kd", kd={"corrected": "leave_out"}), rows)
    assert kept["id"] == ["r0", "r2"]
    untouched = _rows([False, False])
    assert _without_corrected(recipe(tmp_path, objective="kd"), untouched) is untouched


def test_an_adapter_knows_its_base(tmp_path: Path, smollm2_dir: Path) -> None:
    adapter, other = tmp_path / "adapter", tmp_path / "other"
    adapter.mkdir()
    other.mkdir()
    record_base(adapter, "smollm2", smollm2_dir)
    assert base_mismatch(adapter, smollm2_dir) is None
    config = json.loads((smollm2_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 15}))
    why = base_mismatch(adapter, other)
    assert why is not None and "'smollm2' (30 layers" in why and "(15 layers" in why
    # what does not change the weights does not count: a newer transformers or another dtype
    newer = {**config, "transformers_version": "9.9", "torch_dtype": "x", "a_new_default": 1}
    (other / "config.json").write_text(json.dumps(newer))
    assert base_mismatch(adapter, other) is None
    assert base_mismatch(tmp_path, other) is None  # an adapter from before the record: nothing to compare


def test_staging_folders_of_killed_runs_are_swept(tmp_path: Path) -> None:
    final = tmp_path / "pruned"
    final.mkdir()
    (final / "old").write_text("old")
    stale = [tmp_path / ".pruned.4242.tmp", tmp_path / ".pruned.old-77", tmp_path / ".pruned.train.tmp"]
    for s in stale:
        s.mkdir()
    (tmp_path / ".other.1.tmp").mkdir()  # another folder's staging is not ours to remove
    tmp = staging_folder(final)
    assert not any(s.exists() for s in stale) and (tmp_path / ".other.1.tmp").is_dir()
    (tmp / "new").write_text("new")
    swap_in_folder(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.1.tmp", "pruned"]


def test_ctrl_c_of_sft_run_says_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sft.training.run
    from sft.cli import app

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sft.training.run, "train_all", interrupted)
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "t"}))
    out = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 130
    assert "add --resume to the same command" in " ".join(out.output.split())


@pytest.mark.slow
def test_a_full_fine_tune_replaces_an_earlier_adapter_and_adapters_stay_on_their_base(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    run = curated_run(tmp_path)
    run_train(recipe(tmp_path, max_steps=1), run)  # LoRA
    final = run / "train" / "sft" / "final"
    assert (final / "adapter_config.json").is_file() and (final / RECORD).is_file()

    # publishing (or evaluating) that adapter with model.path pointing at another model is refused
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((smollm2_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 15}))
    moved = recipe(tmp_path, max_steps=1).model_copy(deep=True)
    moved.model.path = str(other)
    with pytest.raises(UserError) as err:
        run_publish_model(moved, run, "me/x", None, "sft", None, dry_run=True)
    assert "not on this model (15 layers" in err.value.message
    shutil.rmtree(other)

    s = run_train(recipe(tmp_path, max_steps=1, lora={"enabled": False}), run)
    names = {p.name for p in final.iterdir()}
    assert "model.safetensors" in names and not names & {"adapter_config.json", "adapter_model.safetensors", RECORD}
    assert not [p.name for p in final.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert s.rows_trained == 4


def test_training_flops_follow_what_is_trained() -> None:
    """6N per token for a full fine-tune, about 4N with LoRA (frozen weights get no gradient), plus the
    forward of a teacher run alongside."""
    from synth.throughput import matmul_gflops, training_flops_per_token

    assert training_flops_per_token(100, 100) == 600
    assert training_flops_per_token(100, 1) == 402
    assert training_flops_per_token(100, 100, teacher_params=50) == 700
    peak = matmul_gflops(tokens=64, repeats=3)
    assert 0 < peak["spread"][0] <= peak["median"] <= peak["spread"][1]

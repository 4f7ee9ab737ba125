"""The dtype 'auto' picks: bfloat16 where the hardware computes it natively, recorded in every generated
row, so that a run never mixes rows of two dtypes without saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synth import runtime
from synth.engines import build_engine, sampling_params, teacher_provenance
from synth.engines.hf import TransformersEngine
from synth.errors import UserError
from synth.generate import _check_same_teacher
from synth.recipe import load_recipe
from tests.conftest import ROOT, tiny_llama

RECIPE = ROOT / "recipes" / "concise-answers.yaml"


@pytest.mark.parametrize(
    ("caps", "fast"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False),  # oneDNN would emulate bf16
    ],
)
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, caps: dict, fast: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert runtime.bf16_is_fast("cpu") is fast
    assert runtime.pick_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)
    assert runtime.pick_dtype("float32", "cpu") == torch.float32  # a named dtype is kept whatever the CPU
    assert runtime.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert runtime.bf16_is_fast("mps") is False


def test_training_autocasts_to_bf16_where_it_is_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sft.training.run import _common_args

    recipe = load_recipe(RECIPE)
    for fast in (True, False):
        monkeypatch.setattr(runtime, "bf16_is_fast", lambda device, fast=fast: fast)
        assert _common_args(recipe, tmp_path, "cpu", {})["bf16"] is fast
    assert _common_args(recipe, tmp_path, "cpu", {"bf16": False})["bf16"] is False  # train.args.bf16 decides


def test_an_engine_names_the_dtype_its_weights_run_in(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = tiny_llama(len(tokenizer), 1).to(torch.bfloat16)
    engine = TransformersEngine.from_loaded(model, tokenizer, "tiny")
    assert engine.provenance(sampling_params(load_recipe(RECIPE)))["dtype"] == "bfloat16"


TEACHER = {"model": "m", "revision": None, "engine": "transformers", "sampling": {"n": 4}}


def test_rows_from_before_the_dtype_was_recorded_continue_only_in_float32(tmp_path: Path) -> None:
    old = [{"file": "shard-00000.parquet", "teacher": dict(TEACHER)}]
    # 'auto' was float32 on a CPU then: new rows continue with the old rows' value, one teacher per folder
    assert _check_same_teacher(old, TEACHER | {"dtype": "float32"}, tmp_path) == TEACHER
    with pytest.raises(UserError) as err:
        _check_same_teacher(old, TEACHER | {"dtype": "bfloat16"}, tmp_path)
    assert "set teacher.dtype to the one they were made in" in str(err.value)
    assert _check_same_teacher(old, TEACHER | {"dtype": "bfloat16"}, tmp_path, dtype_named=True) == TEACHER
    new = [{"file": "shard-00000.parquet", "teacher": TEACHER | {"dtype": "float32"}}]
    assert _check_same_teacher(new, TEACHER | {"dtype": "float32"}, tmp_path) == TEACHER | {"dtype": "float32"}
    with pytest.raises(UserError, match="another teacher or other sampling settings"):
        _check_same_teacher(new, TEACHER | {"dtype": "bfloat16"}, tmp_path, dtype_named=True)


def test_a_shard_keeps_the_dtype_and_a_server_teacher_reads_back_as_written(tmp_path: Path) -> None:
    from synth.io import atomic_write_parquet
    from synth.records import Completion, PromptItem, make_rows, prompt_id_for, rows_to_table
    from synth.shards import ShardSet

    msgs = [{"role": "user", "content": "hi"}]
    item = PromptItem(prompt_id_for(msgs, msgs), msgs, msgs, {})
    sampling = sampling_params(load_recipe(RECIPE)).as_dict()
    for name, teacher in (("local", {"dtype": "bfloat16"}), ("server", {})):
        value = {"model": "m", "revision": None, "engine": "x", "sampling": sampling} | teacher
        rows = make_rows(item, [Completion("hello", "stop", 1, 1)], value, "h")
        atomic_write_parquet(tmp_path / name / "shard-00000.parquet", rows_to_table(rows))
        assert ShardSet(tmp_path / name).teacher == value


@pytest.mark.slow
def test_the_recipe_level_provenance_is_the_engines(smollm2_dir: Path) -> None:
    """What `synth generate` compares with rows on disk before loading any model is what the loaded
    engine writes, dtype included."""
    recipe = load_recipe(RECIPE)
    engine = build_engine(recipe)
    written = engine.provenance(sampling_params(recipe))
    assert written == teacher_provenance(recipe)
    assert (
        written["dtype"]
        == runtime.dtype_name(engine.model.dtype)
        == runtime.dtype_name(runtime.pick_dtype("auto", "cpu"))
    )
    named = load_recipe(RECIPE, ["teacher.dtype=float32"])
    assert teacher_provenance(named)["dtype"] == "float32"

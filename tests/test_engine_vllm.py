"""The vLLM engine's checks that run before vLLM is imported; the engine itself is tested against the
real vLLM (its CPU build) in tests/vllm/, run by `make test-vllm`, which `make test` runs too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from synth.engines import build_engine
from synth.engines.vllm import request_seed
from synth.errors import UserError
from synth.recipe import load_recipe
from tests.conftest import RECIPE


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_vllm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    recipe = load_recipe(RECIPE, ["teacher.engine=vllm", f"model.path={model_dir}"])
    with pytest.raises(UserError, match="needs vLLM"):
        build_engine(recipe)


def test_engine_args_may_not_repeat_a_recipe_setting(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # the check comes first: no vLLM needed to see it
    recipe = load_recipe(
        RECIPE, ["teacher.engine=vllm", f"model.path={model_dir}", "teacher.vllm.engine_args={seed: 3, dtype: half}"]
    )
    with pytest.raises(UserError, match=r"teacher\.vllm\.engine_args repeats dtype, seed"):
        build_engine(recipe)


def test_data_parallel_size_points_to_ray_replicas() -> None:
    with pytest.raises(UserError, match=r"runtime\.executor: ray"):
        load_recipe(RECIPE, ["teacher.engine=vllm", "teacher.vllm.data_parallel_size=2"])
    # 1, the old default, is in every recipe.resolved.yaml written before: those still load
    assert load_recipe(RECIPE, ["teacher.vllm.data_parallel_size=1"]).teacher.vllm.tensor_parallel_size == 1


def test_request_seeds_differ_between_prompts_and_repeat_for_one() -> None:
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert request_seed(0, a) == request_seed(0, [dict(m) for m in a])
    assert len({request_seed(0, a), request_seed(0, b), request_seed(1, a)}) == 3
    assert all(0 <= request_seed(s, a) < 2**31 for s in range(50))

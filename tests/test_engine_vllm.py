"""The vLLM adapter's mapping, with a stand-in `vllm` module.

vLLM needs a GPU and cannot be installed here, so this is the one place the project uses a stand-in:
a hand-written module with vLLM's `LLM` / `SamplingParams` names and its output shapes (RequestOutput
with CompletionOutputs; logprobs as {token_id: Logprob(logprob, rank, decoded_token)}). The adapter
under it is kept thin; rows are built by the same `make_rows` as for the other engines.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from synth.engines import build_engine
from synth.engines.base import SamplingParams
from synth.errors import UserError
from synth.recipe import load_recipe
from synth.records import PromptItem, make_rows, rows_to_table
from tests.conftest import RECIPE


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, Logprob]] | None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class FakeLLM:
    kwargs: dict[str, Any]
    calls: list[tuple[Any, Any]] = field(default_factory=list)

    def chat(self, messages: list, sp: Any, use_tqdm: bool = True) -> list[RequestOutput]:
        self.calls.append((messages, sp))
        outs = []
        for m in messages:
            comps = [
                CompletionOutput(
                    f"réponse {i} à {m[-1]['content']}",
                    [10 + i, 11],
                    "stop" if i == 0 else "length",
                    [
                        {10 + i: Logprob(-0.5, 2, "ré"), 99: Logprob(-0.1, 1, "la")},
                        {11: Logprob(-0.2, 1, "ponse"), 98: Logprob(-2.0, 2, "x")},
                    ],
                )
                for i in range(sp.n)
            ]
            outs.append(RequestOutput(list(range(7)), comps))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.LLM = lambda **kw: FakeLLM(kw)  # type: ignore[attr-defined]
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_vllm_settings_and_outputs_map_like_every_engine(fake_vllm: types.ModuleType, tmp_path: Any) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe = load_recipe(
        RECIPE,
        [
            "teacher.engine=vllm",
            f"model.path={model}",
            "teacher.vllm.tensor_parallel_size=4",
            "teacher.vllm.data_parallel_size=2",
            "teacher.vllm.engine_args={enforce_eager: true}",
        ],
    )
    engine = build_engine(recipe)
    kw = engine.llm.kwargs
    assert (kw["tensor_parallel_size"], kw["data_parallel_size"], kw["enforce_eager"]) == (4, 2, True)
    params = SamplingParams(n=2, temperature=0.5, top_k=None, max_new_tokens=9, seed=3, logprobs=2)
    msgs = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    out = engine.generate(msgs, params)
    sp = engine.llm.calls[0][1]
    assert (sp.n, sp.max_tokens, sp.top_k, sp.logprobs, sp.seed) == (2, 9, -1, 2, 3)
    c = out[1][1]
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("réponse 1 à b", "length", 7, 2)
    assert c.logprobs[0].token == "ré" and c.logprobs[0].logprob == -0.5
    assert c.logprobs[0].top_tokens == ["la", "ré"]  # by rank
    item = PromptItem("p1", msgs[0], msgs[0])
    table = rows_to_table(make_rows(item, out[0], engine.provenance(params), "h"))
    assert table.num_rows == 2 and table.column("teacher")[0].as_py()["engine"] == "vllm"


def test_vllm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe = load_recipe(RECIPE, ["teacher.engine=vllm", f"model.path={model}"])
    with pytest.raises(UserError, match="needs vLLM"):
        build_engine(recipe)

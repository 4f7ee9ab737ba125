"""Teacher log-probabilities at generate time: one contract (`synth.records.step_problem`) for
`synth generate` and `sft run`. A completion whose log-probs break it is a failed row naming the prompt
and the fault (never stored silently, never an internal error); whatever is stored anyway (ids the
server's unknown vocabulary cannot rule out at generate) is reported and left out by `sft run`.

Hypothesis is not installed in this project's environment, so the malformed payloads come from a
seeded generator: every mutation kind, at random tokens of random-length answers, in several variants.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sft.objectives.kd import IDS, LOGPROBS, TOKENS
from synth.engines.base import Engine, SamplingParams
from synth.engines.openai import MalformedAnswer, to_completion
from synth.generate import MALFORMED_LOGPROBS, checked_logprobs, generate_shard
from synth.records import Completion, Messages, PromptItem, TokenLogprob, make_rows, rows_to_table
from tests.conftest import run_cli, shard_rows, write_jsonl

VOCAB = 1000  # the fake student's vocabulary: ids 0..999 decode to "t0".."t999"
K = 2
Payload = dict[str, Any]
Mutation = Callable[[Payload, random.Random], Payload]


class FakeTokenizer:
    """What `with_topk` reads of a tokenizer: its size, and the text of one id."""

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


def good_payload(rng: random.Random, steps: int | None = None) -> Payload:
    """A well-formed choice in llama.cpp's shape (ids and strings), with log-probs exact in float16."""
    out = []
    for _ in range(steps or rng.randint(1, 5)):
        ids = rng.sample(range(VOCAB), K)
        lps = [-0.5 - r - rng.randint(0, 8) / 8 for r in range(K)]
        top = [{"token": f"t{i}", "id": i, "logprob": lp} for i, lp in zip(ids, lps, strict=True)]
        out.append({**top[0], "top_logprobs": top})
    return {"content": "an answer", "logprobs": {"content": out}}


# --- the mutations: each makes a payload that breaks the contract -----------------------------------


def _block(value: Any) -> Mutation:
    return lambda p, rng: {**p, "logprobs": value}


def _without_logprobs(p: Payload, rng: random.Random) -> Payload:
    return {k: v for k, v in p.items() if k != "logprobs"}  # the server ignored `logprobs` entirely


def _at_step(change: Callable[[dict[str, Any], random.Random], Any]) -> Mutation:
    """A mutation of one random token's entry."""

    def mutate(p: Payload, rng: random.Random) -> Payload:
        steps = json.loads(json.dumps(p["logprobs"]["content"]))
        j = rng.randrange(len(steps))
        steps[j] = change(steps[j], rng)
        return {**p, "logprobs": {"content": steps}}

    return mutate


def _field(key: str, value: Any) -> Mutation:
    return _at_step(lambda t, rng: {**t, key: value})


def _dropped(key: str) -> Mutation:
    return _at_step(lambda t, rng: {k: v for k, v in t.items() if k != key})


def _alternative(key: str, value: Any) -> Mutation:
    """One random alternative's `key` set to `value`."""

    def change(t: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        top = [dict(x) for x in t["top_logprobs"]]
        top[rng.randrange(len(top))][key] = value
        return {**t, "top_logprobs": top}

    return _at_step(change)


def _all_alternatives(key: str, value: Callable[[int], Any]) -> Mutation:
    return _at_step(
        lambda t, rng: {**t, "top_logprobs": [{**x, key: value(r)} for r, x in enumerate(t["top_logprobs"])]}
    )


def _repeated_id(t: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    first = t["top_logprobs"][0]
    return {**t, "top_logprobs": [first, {**t["top_logprobs"][1], "id": first["id"]}]}


NAN, INF = float("nan"), float("inf")
HUGE = 10**400  # valid JSON, no float
SURROGATE = "\ud800"  # a JSON "\ud800" escape: decodes, but is no text

MUTATIONS: dict[str, Mutation] = {
    # the server ignored or mangled the whole block
    "no logprobs field (request ignored)": _without_logprobs,
    "logprobs null": _block(None),
    "logprobs a list": _block([]),
    "logprobs a string": _block("yes"),
    "logprobs a number": _block(7),
    "logprobs true": _block(True),
    "logprobs without content": _block({}),
    "logprobs.content null": _block({"content": None}),
    "logprobs.content a string": _block({"content": "x"}),
    "logprobs.content an object": _block({"content": {"0": {}}}),
    "logprobs.content empty for a non-empty answer": _block({"content": []}),
    # one token's entry
    "entry a number": _at_step(lambda t, rng: 3),
    "entry null": _at_step(lambda t, rng: None),
    "entry a list": _at_step(lambda t, rng: [t]),
    "token missing": _dropped("token"),
    "token a number": _field("token", 5),
    "token half a surrogate pair": _field("token", "a" + SURROGATE),
    "sampled log-prob NaN": _field("logprob", NAN),
    "sampled log-prob +inf": _field("logprob", INF),
    "sampled log-prob -inf": _field("logprob", -INF),
    "sampled log-prob positive": _field("logprob", 0.7),
    "sampled log-prob a string": _field("logprob", "-0.1"),
    "sampled log-prob null": _field("logprob", None),
    "sampled log-prob a bool": _field("logprob", True),
    "sampled log-prob a huge integer": _field("logprob", -HUGE),
    "sampled id a bool": _field("id", True),
    "sampled id negative": _field("id", -3),
    "sampled id past int32": _field("id", 2**35),
    "top_logprobs missing": _dropped("top_logprobs"),
    "top_logprobs null": _field("top_logprobs", None),
    "top_logprobs empty": _field("top_logprobs", []),
    "top_logprobs an object": _field("top_logprobs", {}),
    "top_logprobs a string": _field("top_logprobs", "x"),
    "top_logprobs numbers": _field("top_logprobs", [-0.5, -1.5]),
    "alternative without token": _alternative("token", None),
    "alternative token half a surrogate pair": _alternative("token", SURROGATE),
    "alternative log-prob NaN": _alternative("logprob", NAN),
    "alternative log-prob +inf": _alternative("logprob", INF),
    "alternative log-prob -inf": _alternative("logprob", -INF),
    "alternative log-prob positive": _alternative("logprob", 0.3),
    "alternative log-prob slightly positive": _alternative("logprob", 1e-3),
    "alternative log-prob a string": _alternative("logprob", "low"),
    "alternative log-prob null": _alternative("logprob", None),
    "alternative log-prob a bool": _alternative("logprob", False),
    "alternative log-prob a huge integer": _alternative("logprob", HUGE),
    "alternative id negative": _alternative("id", -1),
    "alternative id past int32": _alternative("id", 2**40),
    "alternative id past float": _alternative("id", HUGE),
    "alternative id outside the student's vocabulary": _alternative("id", VOCAB + 5),
    "the same id twice": _at_step(_repeated_id),
    "probabilities summing to 2": _all_alternatives("logprob", lambda r: -0.01),
    # a probability just above 1 whose sum stays within the float16 slack: only its sign shows it
    "one log-prob slightly positive, the rest tiny": _all_alternatives("logprob", lambda r: 0.004 if r == 0 else -9.0),
    "float ids and strings of no vocabulary entry": _at_step(
        lambda t, rng: {
            **t,
            "id": 1.5,
            "top_logprobs": [{**x, "id": 1.5, "token": f"zz{r}"} for r, x in enumerate(t["top_logprobs"])],
        }
    ),
}


def malformed_payloads(seed: int = 20260601, variants: int = 2) -> list[tuple[str, Payload]]:
    """Every mutation on `variants` random well-formed payloads (answer length, ids, token at fault)."""
    rng = random.Random(seed)
    return [
        (f"{name} #{v}", mutate(good_payload(rng), rng)) for name, mutate in MUTATIONS.items() for v in range(variants)
    ]


def good_payloads(seed: int = 7) -> list[tuple[str, Payload]]:
    rng = random.Random(seed)
    out = [(f"good #{v}", good_payload(rng)) for v in range(4)]
    tiny = good_payload(rng, steps=2)  # a probability 0 to any float: stored at float16's lowest, not -inf
    tiny["logprobs"]["content"][1]["top_logprobs"][1]["logprob"] = -1e6
    out.append(("log-prob below float16's range", tiny))
    return out


def _choice(payload: Payload) -> dict[str, Any]:
    """The choice a server sends for `payload`, through JSON as over HTTP (NaN and huge integers too)."""
    choice = {"message": {"role": "assistant", "content": payload.get("content", "an answer")}, "finish_reason": "stop"}
    if "logprobs" in payload:
        choice["logprobs"] = payload["logprobs"]
    return json.loads(json.dumps(choice))


def _left_out_by_sft(rows: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """(indices `sft run` leaves out, KD columns of the rows it keeps), from the rows as a shard stores them."""
    import datasets

    from sft.objectives.kd_data import with_topk

    out, dropped = with_topk(datasets.Dataset(rows_to_table(rows)), FakeTokenizer())
    return [i for i, _ in dropped], out.to_list()


ITEM = PromptItem("p-0001", [{"role": "user", "content": "q"}], [{"role": "user", "content": "q"}])


def _stage(payload: Payload) -> tuple[str, Completion | None]:
    """Where a payload stops: 'parse' (a malformed answer), 'generate' (the contract) or 'stored'."""
    try:
        completion = to_completion(_choice(payload), {"prompt_tokens": 3, "completion_tokens": None}, 1)
    except MalformedAnswer:
        return "parse", None
    checked = checked_logprobs(completion, ITEM.prompt_id, K, None)  # a server: vocabulary unknown
    if checked.error is not None:
        assert checked.error.startswith(f"{MALFORMED_LOGPROBS} for prompt {ITEM.prompt_id}: "), checked.error
        return "generate", checked
    return "stored", checked


def test_malformed_payloads_are_row_errors_or_left_out_by_sft_never_trained_on() -> None:
    """Every generated malformed payload, through the OpenAI engine's parsing and generate's check:
    a failed row, or (ids a server's vocabulary cannot rule out) stored and left out by `sft run`."""
    payloads = malformed_payloads()
    assert len(payloads) >= 100 and len({json.dumps(p) for _, p in payloads}) >= 80
    stages: dict[str, list[str]] = {"parse": [], "generate": [], "stored": []}
    stored_rows = []
    for name, payload in payloads:
        stage, completion = _stage(payload)
        stages[stage].append(name)
        if stage == "stored":
            assert completion is not None
            stored_rows += make_rows(ITEM, [completion], {"model": "m"}, "h")
    left_out, kept = _left_out_by_sft(stored_rows)
    assert kept == [] and left_out == list(range(len(stored_rows))), stages["stored"]
    # each way has its cases: the check at generate is not vacuous, nor is the one at sft
    assert len(stages["generate"]) >= 50 and len(stages["parse"]) >= 10, stages
    assert {n.split(" #")[0] for n in stages["stored"]} == {
        "alternative id outside the student's vocabulary",
        "float ids and strings of no vocabulary entry",
    }


def test_well_formed_payloads_pass_unchanged() -> None:
    payloads = good_payloads()
    rows = []
    for _, payload in payloads:
        stage, completion = _stage(payload)
        assert stage == "stored" and completion is not None and completion.error is None
        rows += make_rows(ITEM, [completion], {"model": "m"}, "h")
    left_out, kept = _left_out_by_sft(rows)
    assert left_out == [] and len(kept) == len(payloads)
    for (_, payload), row in zip(payloads, kept, strict=True):
        steps = payload["logprobs"]["content"]
        assert row[IDS] == [[x["id"] for x in s["top_logprobs"]] for s in steps]
        want = [[max(x["logprob"], -65504.0) for x in s["top_logprobs"]] for s in steps]
        assert row[LOGPROBS] == want
        assert row[TOKENS] == [s["id"] for s in steps]


# --- engines that know their vocabulary, and an engine that ignores the request ---------------------


class ScriptedEngine(Engine):
    """An engine answering every prompt with the same completion, over a vocabulary of `vocab` ids."""

    name = "scripted"

    def __init__(self, completion: Completion, vocab: int | None) -> None:
        super().__init__("scripted-model")
        self.completion, self._vocab = completion, vocab

    @property
    def vocab_size(self) -> int | None:
        return self._vocab

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: Any = None
    ) -> list[list[Completion]]:
        return [[self.completion] * params.n for _ in prompts]


def _step(ids: list[int], token_id: int | None = None) -> TokenLogprob:
    lps = [-0.5 - r for r in range(len(ids))]
    return TokenLogprob("a", lps[0], None, lps, ids[0] if token_id is None else token_id, ids)


@pytest.mark.parametrize(
    ("completion", "vocab", "says"),
    [
        (Completion("hi", "stop", logprobs=[_step([3, 150])]), 100, "token 0: an id outside the vocabulary (0..99)"),
        (Completion("hi", "stop", logprobs=[_step([3, 4], 100)]), 100, "token 0: an id outside the vocabulary"),
        (Completion("hi", "stop", logprobs=None), 100, "no log-probabilities, although generate.logprobs=2"),
        (Completion("hi", "stop", logprobs=[]), None, "no log-probabilities for a non-empty answer"),
        (Completion("hi", "stop", logprobs=[_step([3, 4]), _step([5, 5])]), None, "token 1: the same id twice"),
    ],
)
def test_generate_shard_turns_malformed_log_probs_into_a_row_error_naming_the_prompt(
    completion: Completion, vocab: int | None, says: str
) -> None:
    params = SamplingParams(n=2, logprobs=K)
    item = PromptItem("p-77", [{"role": "user", "content": "q"}], [{"role": "user", "content": "q"}])
    result = generate_shard(ScriptedEngine(completion, vocab), [item], params, {"model": "m"}, "h")
    rows = result.table.to_pylist()
    assert len(rows) == 2 and result.engine_failures == result.logprob_failures == 2
    for row in rows:
        assert row["error"].startswith(f"{MALFORMED_LOGPROBS} for prompt p-77: ") and says in row["error"], row["error"]
        assert row["logprobs"] is None and row["verdicts"][0]["passed"] is False


def test_generate_shard_keeps_good_log_probs_and_drops_unasked_ones() -> None:
    item = PromptItem("p-1", [{"role": "user", "content": "q"}], [{"role": "user", "content": "q"}])
    good = Completion("hi", "stop", logprobs=[_step([3, 4]), _step([0, 99])])
    rows = generate_shard(ScriptedEngine(good, 100), [item], SamplingParams(logprobs=K), {"model": "m"}, "h")
    row = rows.table.to_pylist()[0]
    assert row["error"] is None and [t["top_ids"] for t in row["logprobs"]] == [[3, 4], [0, 99]]
    # without generate.logprobs the manifest promises none: what an engine volunteers is not stored
    bad = Completion("hi", "stop", logprobs=[_step([3, 2**40])])
    rows = generate_shard(ScriptedEngine(bad, None), [item], SamplingParams(), {"model": "m"}, "h")
    row = rows.table.to_pylist()[0]
    assert row["error"] is None and row["logprobs"] is None


def test_an_empty_answer_may_have_no_log_prob_steps() -> None:
    """A server leaves the stop token out of `logprobs.content`: an empty answer has no steps, and is fine."""
    empty = checked_logprobs(Completion("", "stop", logprobs=[]), "p", K, None)
    assert empty.error is None


# --- end to end: a real misbehaving server, `synth generate`, `--retry-failed` ----------------------


@pytest.mark.slow
def test_generate_through_a_misbehaving_server_stores_no_malformed_log_probs(
    tmp_path: Path, misbehaving_server: Any
) -> None:
    """Every payload as a server's answer to `synth generate` (one prompt each): a failed row, or a row
    `sft run` leaves out; the good payloads and the server's normal answers are stored unchanged."""
    bad = malformed_payloads(variants=1)
    good = good_payloads()
    prompts = [{"id": f"bad {i}", "prompt": f"BAD PAYLOAD:{json.dumps(p)}"} for i, (_, p) in enumerate(bad)]
    prompts += [{"id": f"good {i}", "prompt": f"BAD PAYLOAD:{json.dumps(p)}"} for i, (_, p) in enumerate(good)]
    prompts += [{"id": "normal", "prompt": "Name a colour."}]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    recipe = {
        "name": "logprobs-contract",
        "teacher": {
            "engine": "openai",
            "openai": {
                "base_url": misbehaving_server.url("logprobs-in-prompt"),
                "model": "served-model",
                "max_retries": 1,
                "backoff_s": 0.01,
            },
        },
        "prompts": {"path": "prompts.jsonl", "id_column": "id"},
        "generate": {"n": 1, "max_new_tokens": 16, "prompts_per_shard": 16, "logprobs": K},
    }
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    run = tmp_path / "run"
    res = run_cli("synth", "generate", str(tmp_path / "recipe.yaml"), "--run-dir", str(run), timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert "malformed teacher log-probs" in res.stdout
    rows = {json.loads(r["meta"])["source_id"]: r for r in shard_rows(run)}
    assert len(rows) == len(prompts)
    stored = [r for k, r in rows.items() if k.startswith("bad") and r["error"] is None]
    for key, row in rows.items():
        if key.startswith("bad") and row["error"] and row["error"].startswith(MALFORMED_LOGPROBS):
            assert f"for prompt {row['prompt_id']}: " in row["error"], row["error"]
    left_out, _ = _left_out_by_sft(stored)
    assert len(stored) <= 2 and left_out == list(range(len(stored)))
    kept_rows = [rows[f"good {i}"] for i in range(len(good))] + [rows["normal"]]
    left_out, kept = _left_out_by_sft(kept_rows)
    assert left_out == [] and all(r["error"] is None for r in kept_rows)
    for (_, payload), row in zip(good, kept[: len(good)], strict=True):
        steps = payload["logprobs"]["content"]
        assert row[LOGPROBS] == [[max(x["logprob"], -65504.0) for x in s["top_logprobs"]] for s in steps]
    # the failed rows are generated again by --retry-failed, like any failed row (and fail again here:
    # every row asked of the teacher failing is exit 2, naming the prompt and the fault)
    failed = {r["prompt_id"] for r in rows.values() if r["error"]}
    again = run_cli(
        "synth", "generate", str(tmp_path / "recipe.yaml"), "--run-dir", str(run), "--retry-failed", timeout=300
    )
    assert re.search(rf"failed prompts retried\s*│\s*{len(failed)}\s*│", again.stdout), again.stdout
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert re.search(rf"{MALFORMED_LOGPROBS} for prompt [0-9a-f]{{16}}: ", again.stderr), again.stderr

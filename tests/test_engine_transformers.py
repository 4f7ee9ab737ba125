"""The transformers engine on the real SmolLM2-135M-Instruct: the engine contract (tests/engine_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.engines.hf import TransformersEngine
from tests import engine_contract

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> TransformersEngine:
    return TransformersEngine(str(smollm2_dir), "smollm2", batch_size=4)


def test_n_samples_per_prompt_in_input_order(engine: TransformersEngine) -> None:
    engine_contract.n_samples_in_input_order(engine, engine.tokenizer)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine: TransformersEngine) -> None:
    engine_contract.greedy_and_seeded_sampling_repeat(engine)


def test_too_long_prompt_is_reported_not_generated(engine: TransformersEngine) -> None:
    engine_contract.too_long_prompt_is_reported(engine, 8192)

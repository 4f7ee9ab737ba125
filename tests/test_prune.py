"""Depth pruning (sft/compression/prune.py): Block Influence, the choice of layers, the cut, and the saved folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft.compression.prune import (
    MARKER,
    block_distances,
    choose_block_to_drop,
    choose_layers_to_drop,
    layer_importance,
    prune_layers,
    prune_model,
)
from synth.errors import UserError

PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Explain in two sentences why the sky looks blue during the day."}],
    [{"role": "user", "content": "What is two plus two?"}],
    "Plain text works too, without a chat template.",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def tiny_llama(vocab_size: int, layers: int = 6, seed: int = 0, dropout: float = 0.0):
    """A random Llama small enough for unit tests; a larger init scale so every layer turns the stream."""
    from tests.conftest import tiny_llama as llama

    return llama(vocab_size, layers, seed, initializer_range=0.2, tie_word_embeddings=True, attention_dropout=dropout)


def make_identity(model, i: int) -> None:
    """Layer i adds nothing to the residual stream: its attention and MLP outputs are zero."""
    layer = model.model.layers[i]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.fixture
def teacher_dir(tmp_path: Path, tokenizer) -> Path:
    """A saved tiny teacher (with the SmolLM2 tokenizer) whose layer 3 is an identity."""
    model = tiny_llama(len(tokenizer))
    make_identity(model, 3)
    out = tmp_path / "teacher"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def greedy(model, tokenizer, n: int = 8) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)


# --- importance --------------------------------------------------------------------------------------


def test_identity_layer_has_zero_influence_and_is_dropped_first(tokenizer) -> None:
    model = tiny_llama(len(tokenizer))
    make_identity(model, 2)
    bi = layer_importance(model, tokenizer, PROMPTS, max_length=64, batch_size=3)
    assert len(bi) == 6
    assert abs(bi[2]) < 1e-5
    assert min(b for i, b in enumerate(bi) if i != 2) > 1e-3  # the others do turn the stream
    assert choose_layers_to_drop(bi, 1) == [2]


def test_last_layer_is_measured_before_the_final_norm(tokenizer) -> None:
    # hidden_states[-1] from transformers has the final RMSNorm applied; a per-channel norm weight
    # turns the vector, so an identity last layer would look important if that state were used.
    model = tiny_llama(len(tokenizer))
    make_identity(model, 5)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.1, 3.0, 32))
    bi = layer_importance(model, tokenizer, PROMPTS, max_length=64)
    assert abs(bi[5]) < 1e-5


def test_importance_is_deterministic_and_ignores_padding(tokenizer) -> None:
    model = tiny_llama(len(tokenizer), dropout=0.5)
    model.train()  # with dropout on: layer_importance must switch to eval itself, and restore the mode
    a = layer_importance(model, tokenizer, PROMPTS, max_length=64, batch_size=2)
    b = layer_importance(model, tokenizer, PROMPTS, max_length=64, batch_size=2)
    assert a == b
    assert model.training
    # one prompt per batch has no padding at all: padded batches must give the same mean
    c = layer_importance(model, tokenizer, PROMPTS, max_length=64, batch_size=1)
    assert c == pytest.approx(a, abs=1e-6)


def test_choose_layers_keeps_first_and_last_and_takes_the_lowest() -> None:
    bi = [0.0, 0.5, 0.1, 0.3, 0.1, 0.0]  # the ends look cheapest but must stay
    assert choose_layers_to_drop(bi, 2) == [2, 4]  # tie at 0.1: both; order by index
    assert choose_layers_to_drop(bi, 1) == [2]  # tie broken by the lower index
    assert choose_layers_to_drop(bi, 3) == [2, 3, 4]
    assert choose_layers_to_drop(bi, 2, keep_first=0, keep_last=0) == [0, 5]
    with pytest.raises(UserError, match="cannot drop 5 of 6"):
        choose_layers_to_drop(bi, 5)


def test_block_choice_is_contiguous_and_inside_the_ends(tokenizer) -> None:
    dist = [0.0, 0.4, 0.2, 0.3, 0.1]  # blocks of 2 in 6 layers; start 0 touches the first layer
    assert choose_block_to_drop(dist, 2) == [2, 3]
    assert choose_block_to_drop(dist, 2, keep_first=0) == [0, 1]
    model = tiny_llama(len(tokenizer))
    make_identity(model, 2)
    make_identity(model, 3)
    d = block_distances(model, tokenizer, PROMPTS, 2, max_length=64)
    assert len(d) == 5 and abs(d[2]) < 1e-3 and min(d[:2] + d[3:]) > 1e-2
    assert choose_block_to_drop(d, 2) == [2, 3]


# --- cutting -----------------------------------------------------------------------------------------


def test_prune_layers_fixes_config_and_cache_indices(tokenizer) -> None:
    model = tiny_llama(len(tokenizer))
    model.config.layer_types = ["full_attention"] * 6  # the per-layer list must follow the cut
    kept_layers = [model.model.layers[i] for i in (0, 2, 5)]
    prune_layers(model, [1, 3, 4])
    assert model.config.num_hidden_layers == 3 == len(model.model.layers)
    assert list(model.model.layers) == kept_layers
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert model.config.layer_types == ["full_attention"] * 3
    # generation with a KV cache matches a full recomputation at every step
    cached = greedy(model, tokenizer)
    ids = tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    seq = ids["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            nxt = model(input_ids=seq, use_cache=False).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    assert torch.equal(cached, seq)
    with pytest.raises(ValueError, match="distinct"):
        prune_layers(model, [1, 1])


# --- the saved folder ----------------------------------------------------------------------------------


def test_prune_model_writes_a_plain_transformers_folder(tmp_path: Path, teacher_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    s = prune_model(teacher_dir, out, PROMPTS, n_drop=2, max_length=64)
    assert 3 in s.dropped and 0 not in s.dropped and 5 not in s.dropped
    assert (s.layers_before, s.layers_after) == (6, 4) and s.params_after < s.params_before
    assert s.kept == [i for i in range(6) if i not in s.dropped]
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 4 == len(student.model.layers)
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2, 3]
    assert sum(p.numel() for p in student.parameters()) == s.params_after
    # the student's layers are the teacher's kept layers, weights unchanged
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    for new, old in enumerate(s.kept):
        a, b = student.model.layers[new].mlp.up_proj.weight, teacher.model.layers[old].mlp.up_proj.weight
        assert torch.equal(a, b)
    assert greedy(student, AutoTokenizer.from_pretrained(out)).shape[1] > 0
    record = json.loads((out / MARKER).read_text())
    assert record["dropped"] == s.dropped and record["importance"] == s.importance
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_prune_model_replaces_only_its_own_output(tmp_path: Path, teacher_dir: Path) -> None:
    out = tmp_path / "student"
    prune_model(teacher_dir, out, PROMPTS, n_drop=1, max_length=32)
    s = prune_model(teacher_dir, out, PROMPTS, keep_ratio=0.5, max_length=32)  # a rerun replaces it
    assert s.layers_after == 3 and json.loads((out / MARKER).read_text())["layers_after"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the old output is gone too
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a previous prune output") as err:
        prune_model(teacher_dir, other, PROMPTS, n_drop=1, max_length=32)
    assert err.value.hint and (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="cannot drop 5 of 6"):
        prune_model(teacher_dir, tmp_path / "x", PROMPTS, n_drop=5, max_length=32)
    assert not (tmp_path / "x").exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, teacher_dir: Path, monkeypatch) -> None:
    import sft.compression.prune

    def crash(tmp: Path, out: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sft.compression.prune, "swap_in_folder", crash)
    with pytest.raises(OSError, match="disk full"):
        prune_model(teacher_dir, tmp_path / "student", PROMPTS, n_drop=1, max_length=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


@pytest.mark.slow
def test_prune_smollm2_to_half_depth(tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [
        [{"role": "user", "content": q}]
        for q in [
            "Explain why the sky looks blue during the day.",
            "Give me three tips for falling asleep faster.",
            "What is the difference between weather and climate?",
            "Describe how a bicycle stays upright while moving.",
            "Write a short thank-you note to a neighbour.",
            "Suggest a simple breakfast that takes less than five minutes.",
            "Why do cats purr?",
            "How do I boil an egg?",
        ]
    ]
    s = prune_model(smollm2_dir, tmp_path / "half", prompts, n_drop=15, max_length=128)
    assert len(s.importance) == 30 and len(s.dropped) == 15 and 0 not in s.dropped and 29 not in s.dropped
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "half")
    assert student.config.num_hidden_layers == 15 == len(student.model.layers)
    assert sum(p.numel() for p in student.parameters()) == s.params_after < s.params_before
    tok = AutoTokenizer.from_pretrained(tmp_path / "half")
    prompt_len = len(tok.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_dict=True)["input_ids"])
    assert greedy(student, tok, n=12).shape[1] == prompt_len + 12
    with torch.no_grad():
        assert torch.isfinite(student(**tok("The sky is blue.", return_tensors="pt")).logits).all()
    # (its speed is measured in bench/prune.py, not asserted here: a loaded CI machine is no clock)
    assert s.reload_max_logit_difference is not None and s.reload_max_logit_difference < 1e-4


# --- calibration on the text, and architectures with per-layer config -----------------------------------


def test_calibration_measures_the_messages_text_not_the_template(tokenizer) -> None:
    """76% of a templated SmolLM2 prompt is markup and the default system prompt; only the answer (or,
    without one, the user's words) is measured."""
    from sft.compression.prune import _token_ids

    question = [{"role": "user", "content": "Why is the sky blue?"}]
    answered = [*question, {"role": "assistant", "content": "Because air scatters blue light most."}]
    for prompt, text in ((question, "Why is the sky blue?"), (answered, "Because air scatters blue light most.")):
        ids, measured = _token_ids(tokenizer, prompt, 512)
        assert len(ids) == len(measured) > 3 * sum(measured)
        assert tokenizer.decode([i for i, m in zip(ids, measured, strict=True) if m]) == text
    # words that also occur in SmolLM2's default system prompt ("You are a helpful AI assistant...")
    short = [{"role": "user", "content": "help"}]
    for prompt, text in ((short, "help"), ([*short, {"role": "assistant", "content": "a"}], "a")):
        ids, measured = _token_ids(tokenizer, prompt, 512)
        assert tokenizer.decode([i for i, m in zip(ids, measured, strict=True) if m]) == text
        assert measured.index(True) > len(ids) // 2  # its own place, after the system prompt
    ids, measured = _token_ids(tokenizer, "Plain text is measured whole.", 512)
    assert all(measured) and len(ids) > 3

    # and Block Influence averages over exactly those tokens
    from sft.compression.prune import _residual_states

    model = tiny_llama(len(tokenizer))
    ids, measured = _token_ids(tokenizer, answered, 512)
    with torch.no_grad():
        states = _residual_states(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    at = torch.tensor(measured)
    by_hand = [
        1 - torch.nn.functional.cosine_similarity(states[i][0, at], states[i + 1][0, at], dim=-1).mean().item()
        for i in range(6)
    ]
    assert layer_importance(model, tokenizer, [answered]) == pytest.approx(by_hand, abs=1e-5)


def _config(family: str, layers: int = 6) -> object:
    """Tiny configs of three families whose per-layer settings a cut must follow."""
    import transformers

    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": layers,
        "max_position_embeddings": 256,
        "initializer_range": 0.2,
        "tie_word_embeddings": True,
    }
    if family == "smollm3":  # NoPE on some layers, a per-layer list of 0/1
        # any two of layers 1-4 dropped leaves flags that differ from the list's first four
        return transformers.SmolLM3Config(**shape, no_rope_layers=[1, 1, 0, 0, 1, 1])
    if family == "qwen2":  # sliding window from a layer index on, per-layer layer_types
        return transformers.Qwen2Config(**shape, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    if family == "qwen2_moe":  # dense MLPs on listed layer indices, experts elsewhere
        return transformers.Qwen2MoeConfig(
            **shape, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=16, mlp_only_layers=[1, 4], decoder_sparse_step=1,
        )  # fmt: skip
    raise ValueError(family)


@pytest.mark.parametrize("family", ["smollm3", "qwen2", "qwen2_moe"])
def test_pruning_cuts_every_per_layer_setting_and_checks_the_reload(
    tmp_path: Path, tokenizer, family: str, monkeypatch
) -> None:
    """Each family's saved student computes what the pruned model did (prune_model checks it), its
    per-layer settings follow the kept layers, and a cut that missed one is refused, nothing written."""
    from transformers import AutoModelForCausalLM

    import sft.compression.prune

    config = _config(family)
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    before = {k: v for k, v in vars(teacher.config).items() if isinstance(v, list) and len(v) == 6}

    s = prune_model(folder, tmp_path / "student", PROMPTS, n_drop=2, max_length=64)
    assert s.reload_max_logit_difference is not None and s.reload_max_logit_difference < 1e-4
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    for key, values in before.items():
        assert getattr(student.config, key) == [values[i] for i in s.kept], key
        assert key in s.config_fields
    if family == "qwen2":
        assert student.config.max_window_layers == sum(1 for i in s.kept if i < 3)
    if family == "qwen2_moe":
        assert student.config.mlp_only_layers == [s.kept.index(i) for i in (1, 4) if i in s.kept]

    if family == "qwen2":
        return  # layer_types alone decides its attention, so the old cut was right for it

    # the old cut (layer_types only) is caught by the reload check and writes nothing
    def old_cut(config: object, kept: list[int], n: int) -> list[str]:
        config.num_hidden_layers = len(kept)
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = [config.layer_types[i] for i in kept]
        return ["layer_types"]

    monkeypatch.setattr(sft.compression.prune, "_cut_config", old_cut)
    with pytest.raises(UserError, match="computes differently once saved and loaded back"):
        prune_model(folder, tmp_path / "student2", PROMPTS, n_drop=2, max_length=64)
    assert not (tmp_path / "student2").exists()

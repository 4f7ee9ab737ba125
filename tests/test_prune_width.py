"""Width pruning (sft/compression/width.py): which channels and heads are kept, the cut, the saved folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft.compression.prune import MARKER, prune_model
from sft.compression.width import choose_width, prune_width, width_importance
from synth.errors import UserError
from tests.conftest import tiny_llama

VOCAB = 120


def model(**config):
    """hidden 32, intermediate 64, 4 query heads in 2 key-value groups of 2, head_dim 8."""
    return tiny_llama(VOCAB, 3, initializer_range=0.2, tie_word_embeddings=True, **config)


def batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0  # a padded row: its padding is not measured
    return [(ids, mask, mask.bool())]


def logits(m, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(input_ids=ids).logits


def test_keeping_every_unit_computes_exactly_what_the_model_did() -> None:
    m = model()
    imp = width_importance(m, batches())
    same = prune_width(m, choose_width(imp, None, None, None))
    ids = batches(1)[0][0]
    assert torch.equal(logits(same, ids), logits(m, ids))
    assert same.config.hidden_size == 32 and same.config.num_key_value_heads == 2


def test_a_silent_mlp_channel_is_cut_first_and_its_cut_changes_nothing() -> None:
    m = model()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.mlp.up_proj.weight[5].zero_()  # act(gate) * 0: channel 5 never reaches down_proj
    imp = width_importance(m, batches())
    assert all(int(torch.argmin(x)) == 5 and float(x[5]) == 0.0 for x in imp.mlp)
    choice = choose_width(imp, None, 63, None)
    assert all(5 not in kept and len(kept) == 63 for kept in choice.mlp)
    narrow = prune_width(m, choice)
    assert narrow.config.intermediate_size == 63
    ids = batches(1)[0][0]
    assert torch.allclose(logits(narrow, ids), logits(m, ids), atol=1e-5)


def test_a_silent_key_value_group_goes_with_all_its_query_heads() -> None:
    m = model()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.v_proj.weight[0:8].zero_()  # key-value head 0: query heads 0 and 1 output zero
    imp = width_importance(m, batches())
    assert all(float(g[0]) == 0.0 and float(g[1]) > 0 for g in imp.kv_groups)
    choice = choose_width(imp, None, None, 1)
    assert choice.kv_groups == [[1], [1], [1]]
    narrow = prune_width(m, choice)
    c = narrow.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size) == (2, 1, 8, 32)
    ids = batches(1)[0][0]
    assert torch.allclose(logits(narrow, ids), logits(m, ids), atol=1e-5)  # heads 2, 3 and kv head 1 kept


def test_a_silent_hidden_channel_is_cut_from_every_weight_that_touches_the_stream() -> None:
    m = model()
    with torch.no_grad():
        m.model.embed_tokens.weight[:, 7].zero_()  # tied: the LM head's row 7 too
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[7].zero_()
            layer.mlp.down_proj.weight[7].zero_()
    imp = width_importance(m, batches())
    assert int(torch.argmin(imp.hidden)) == 7 and float(imp.hidden[7]) == 0.0
    choice = choose_width(imp, 24, None, None)
    assert 7 not in choice.hidden and len(choice.hidden) == 24
    narrow = prune_width(m, choice)
    kept = torch.tensor(choice.hidden)
    assert torch.equal(narrow.model.embed_tokens.weight, m.model.embed_tokens.weight[:, kept])
    assert narrow.lm_head.weight.data_ptr() == narrow.model.embed_tokens.weight.data_ptr()  # still tied
    assert torch.equal(narrow.model.layers[1].mlp.down_proj.weight, m.model.layers[1].mlp.down_proj.weight[kept])
    assert torch.equal(
        narrow.model.layers[0].self_attn.q_proj.weight, m.model.layers[0].self_attn.q_proj.weight[:, kept]
    )
    assert torch.isfinite(logits(narrow, batches(1)[0][0])).all()


def test_sizes_out_of_range_and_unknown_architectures_are_refused() -> None:
    m = model()
    imp = width_importance(m, batches())
    with pytest.raises(UserError, match=r"prune\.kv_heads: 3 is not between 1 and the model's 2"):
        choose_width(imp, None, None, 3)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4))
    with pytest.raises(UserError, match="cannot width-prune GPT2LMHeadModel"):
        width_importance(gpt2, batches())


@pytest.fixture
def teacher_dir(tmp_path: Path, smollm2_dir: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    m = tiny_llama(len(tok), 6, initializer_range=0.2, tie_word_embeddings=True)
    m.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Explain in two sentences why the sky looks blue during the day."}],
    "Plain text works too.",
]


def test_depth_and_width_together_write_a_plain_folder_whose_sizes_agree(tmp_path: Path, teacher_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "student"
    s = prune_model(
        teacher_dir, out, PROMPTS, n_drop=2, max_length=32, hidden_size=16, intermediate_size=40, kv_heads=1
    )
    student = AutoModelForCausalLM.from_pretrained(out)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_key_value_heads) == (4, 16, 40, 1)
    assert (c.num_attention_heads, c.head_dim) == (2, 8)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    vocab = student.config.vocab_size
    per_layer = 16 * 2 * 8 * 2 + 16 * 1 * 8 * 2 + 3 * 16 * 40 + 2 * 16  # q, o; k, v; mlp; norms
    assert s.params_after == sum(p.numel() for p in student.parameters()) == vocab * 16 + 4 * per_layer + 16
    assert s.reload_max_logit_difference is not None and s.reload_max_logit_difference < 1e-4
    record = json.loads((out / MARKER).read_text())
    assert record["width"]["hidden_size"] == [32, 16] and record["width"]["num_key_value_heads"] == [2, 1]
    assert len(record["width"]["hidden_kept"]) == 16 and len(record["width"]["kv_groups_kept"]) == 4
    assert record["layers_after"] == 4

    only_width = prune_model(teacher_dir, tmp_path / "narrow", PROMPTS, max_length=32, intermediate_size=32)
    assert (
        only_width.dropped == [] and only_width.layers_after == 6 and only_width.width["intermediate_size"] == [64, 32]
    )
    with pytest.raises(UserError, match="nothing to remove"):
        prune_model(teacher_dir, tmp_path / "none", PROMPTS, max_length=32)


def test_the_recipe_takes_width_alone_or_with_depth() -> None:
    from pydantic import ValidationError

    from synth.specs import PruneSpec

    assert PruneSpec(out="x", hidden_size=256).drop is None
    assert PruneSpec(out="x", drop=3, kv_heads=2).kv_heads == 2
    with pytest.raises(ValidationError, match="give drop or keep_ratio"):
        PruneSpec(out="x")
    with pytest.raises(ValidationError, match="at most one of drop or keep_ratio"):
        PruneSpec(out="x", drop=3, keep_ratio=0.5)


@pytest.mark.slow
def test_smollm2_below_30_percent_of_its_parameters(tmp_path: Path, smollm2_dir: Path) -> None:
    """The shape the compression demo trains: 12 layers, hidden 384, 2 of 3 key-value groups, MLP 1024."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [[{"role": "user", "content": q}] for q in ["Why do cats purr?", "How do I boil an egg?"]]
    s = prune_model(
        smollm2_dir,
        tmp_path / "small",
        prompts,
        n_drop=18,
        max_length=64,
        hidden_size=384,
        intermediate_size=1024,
        kv_heads=2,
    )
    assert s.params_after / s.params_before <= 0.30
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert sum(p.numel() for p in student.parameters()) == s.params_after
    tok = AutoTokenizer.from_pretrained(tmp_path / "small")
    with torch.no_grad():
        assert torch.isfinite(student(**tok("The sky is blue.", return_tensors="pt")).logits).all()
    assert s.reload_max_logit_difference is not None and s.reload_max_logit_difference < 1e-3

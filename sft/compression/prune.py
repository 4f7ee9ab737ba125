"""Depth pruning: a smaller student made from the teacher by removing whole transformer layers.

Which layers go is measured, not guessed. ShortGPT's Block Influence (BI) of layer i is
1 - mean over tokens of cos(h_in_i, h_out_i): a layer that barely turns the residual stream adds
little, so removing it changes the model least. Minitron prunes depth the same way, then distils
the pruned student from the teacher to win back what was lost, which is what Distillery's `sft
train` does next. Because the residual stream is a sum, a block that adds nothing has BI 0.

`prune_model` writes an ordinary transformers folder: the pruned model is an ordinary
`LlamaForCausalLM` (or whichever architecture) with fewer layers, loaded with no Distillery code.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from synth.errors import UserError
from synth.io import staging_folder, swap_in_folder

Prompt = list[dict[str, Any]] | str  # chat messages (templated with the tokenizer) or plain text
SENTINEL = "\u2063distillery-calibration\u2063"  # marks where a message's text starts in the rendered template
RELOAD_TOLERANCE = 1e-3
"""Max |logit difference| allowed between the pruned model and its saved copy (float32: ~1e-5 seen)."""
MARKER = "prune.json"  # written into every prune output; its presence lets a rerun replace the folder
FORMAT = "distillery-prune/1"


# --- measuring ---------------------------------------------------------------------------------------


def _decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM laid out like Llama/Qwen/Mistral (`model.model.layers`)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(
            f"cannot prune {type(model).__name__}: it has no decoder layers at model.model.layers",
            "depth pruning supports Llama-style causal LMs (Llama, Qwen2, Mistral, SmolLM...)",
        )
    return layers


def _token_ids(tokenizer: Any, prompt: Prompt, max_length: int) -> tuple[list[int], list[bool]]:
    """Token ids of one calibration prompt, cut to `max_length`, and which of them are measured.

    Chat messages go through the chat template, as the model sees them in use (with the assistant
    header when the conversation ends on a user turn); the template already holds any BOS, so no
    special tokens are added a second time. Plain text gets the tokenizer's usual special tokens and
    every token is measured. In a chat only the tokens of the messages' own text are measured: the
    last assistant message's when there is one (what the model writes), else the users' (what it
    reads). The template's markup and a default system prompt it inserts are left out: they are the
    same in every prompt (76% of SmolLM2's calibration tokens were), and would decide which layers
    matter for text the model never writes.
    """
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])[:max_length]
        return ids, [True] * len(ids)
    generation = prompt[-1]["role"] != "assistant"
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=generation)
    rendered = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=generation)
    everything = list(rendered["input_ids"])
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # a slow tokenizer has no offsets: measure every token
        return everything[:max_length], [True] * min(len(everything), max_length)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    answers = [i for i, m in enumerate(prompt) if m["role"] == "assistant"]
    chosen = answers[-1:] or [i for i, m in enumerate(prompt) if m["role"] == "user"]
    spans = []
    for i in chosen:
        content = prompt[i].get("content")
        if not isinstance(content, str) or not content:
            continue
        # where message i's text starts: render it with a sentinel in its place (a plain search could
        # land in a default system prompt that happens to contain the same words)
        marked = [*prompt[:i], {**prompt[i], "content": SENTINEL}, *prompt[i + 1 :]]
        at = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation).find(SENTINEL)
        if at < 0 or text[at : at + len(content)] != content:  # a template that rewrites the text
            return everything[:max_length], [True] * min(len(everything), max_length)
        spans.append((at, at + len(content)))
    if ids != everything:  # the text does not tokenise back to the template's ids: measure every token
        return everything[:max_length], [True] * min(len(everything), max_length)
    mask = [any(a < end and b > start for start, end in spans) for a, b in offsets]
    return ids[:max_length], mask[:max_length]


def _batches(
    tokenizer: Any, prompts: Sequence[Prompt], max_length: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask, measured) batches in the prompts' own order.

    Padding is done here rather than by the tokenizer so that a tokenizer without a pad token works
    and the caller's tokenizer settings (padding side) are left alone. Right padding keeps every real
    token's position ids as they are unpadded; the padded positions are masked out of the average.
    """
    if not prompts:
        raise UserError("depth pruning needs calibration prompts, got none", "pass at least one prompt")
    if max_length < 1 or batch_size < 1:
        raise ValueError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}")
    rows = [_token_ids(tokenizer, p, max_length) for p in prompts]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        measured = torch.zeros(len(chunk), width, dtype=torch.bool)
        for i, (r, m) in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            measured[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        out.append((ids, mask, measured))
    return out


def _residual_states(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream before layer 0 and after every layer: L + 1 tensors, none normalised.

    `output_hidden_states=True` gives hidden_states[i] entering layer i and hidden_states[i + 1]
    leaving it, except that transformers replaces the last one with `last_hidden_state`, which has the
    final RMSNorm applied (LlamaModel.forward ends with `self.norm`, and `capture_outputs` ties
    hidden_states[-1] to it). RMSNorm's per-channel weight changes the direction of the vector, so a
    cosine against it would misjudge the last layer; its raw output is taken with a forward hook.
    """
    layers = _decoder_layers(model)
    caught: list[torch.Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output)

    handle = layers[-1].register_forward_hook(hook)
    try:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    states = list(out.hidden_states)
    if len(states) != len(layers) + 1 or len(caught) != 1:
        raise RuntimeError(f"expected {len(layers) + 1} hidden states and one last-layer output")
    states[-1] = caught[0]
    return states


def _mean_over_tokens(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    span: int,
    per_token: Callable[[torch.Tensor], torch.Tensor],
    max_length: int,
    batch_size: int,
) -> list[float]:
    """For every start s, the mean over measured tokens of per_token(cos(h_s, h_{s+span})).

    Every measured token of every prompt weighs the same (padding and template markup are left out,
    see `_token_ids`); sums are in float64 and
    the prompts are taken in their given order, in eval mode without gradients, so the same prompts
    give the same numbers on every run.
    """
    n_layers = len(_decoder_layers(model))
    if not 1 <= span <= n_layers:
        raise ValueError(f"span must be between 1 and {n_layers}, got {span}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout
    totals = torch.zeros(n_layers - span + 1, dtype=torch.float64)
    count = 0
    try:
        with torch.no_grad():
            for ids, mask, measured in _batches(tokenizer, prompts, max_length, batch_size):
                states = _residual_states(model, ids.to(device), mask.to(device))
                real = measured.to(device)
                for s in range(len(totals)):
                    a, b = states[s].float()[real], states[s + span].float()[real]
                    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
                    totals[s] += per_token(cos).double().sum().cpu()
                count += int(real.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("the calibration prompts have no text of their own to measure on", "use real prompts")
    return [float(t) / count for t in totals]


def layer_importance(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_length: int = 512, batch_size: int = 8
) -> list[float]:
    """Block Influence of every layer (ShortGPT): 1 - mean cos(h_in, h_out) over the prompts' tokens.

    0 means the layer leaves the residual stream's direction unchanged (removing it changes little);
    larger means the layer matters more. `prompts` are chat message lists or plain texts.
    """
    cos = _mean_over_tokens(model, tokenizer, prompts, 1, lambda c: c, max_length, batch_size)
    return [1.0 - c for c in cos]


def block_distances(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], n: int, max_length: int = 512, batch_size: int = 8
) -> list[float]:
    """Angular distance arccos(cos(h_s, h_{s+n})) / pi, token-averaged, for each block of n layers
    starting at s (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers").

    Where BI judges each layer alone, this judges n consecutive layers together: removing a block
    whose output points where its input did is what a contiguous cut needs, and layers that each
    look unimportant may matter together."""
    return _mean_over_tokens(model, tokenizer, prompts, n, lambda c: torch.arccos(c) / math.pi, max_length, batch_size)


# --- choosing ----------------------------------------------------------------------------------------


def _prunable(n_layers: int, n_drop: int, keep_first: int, keep_last: int) -> range:
    """The indices that may be dropped; an error if fewer than n_drop."""
    if n_drop < 0 or keep_first < 0 or keep_last < 0:
        raise ValueError(f"n_drop, keep_first and keep_last must be >= 0, got {n_drop}, {keep_first}, {keep_last}")
    allowed = range(keep_first, n_layers - keep_last)
    if n_drop > len(allowed):
        raise UserError(
            f"cannot drop {n_drop} of {n_layers} layers while keeping the first {keep_first} and last {keep_last}",
            f"drop at most {max(len(allowed), 0)} layers",
        )
    return allowed


def choose_layers_to_drop(
    importance: Sequence[float], n_drop: int, keep_first: int = 1, keep_last: int = 1
) -> list[int]:
    """The n_drop layers of lowest importance (ties: the lower index first), sorted ascending.

    The first and last layers are kept by default: ShortGPT and Gromov et al. both measure them as
    by far the most important (the first turns token embeddings into the residual representation,
    the last prepares it for the unembedding), and removing either one breaks the model.
    """
    allowed = _prunable(len(importance), n_drop, keep_first, keep_last)
    ranked = sorted(allowed, key=lambda i: (importance[i], i))
    return sorted(ranked[:n_drop])


def choose_block_to_drop(distances: Sequence[float], n_drop: int, keep_first: int = 1, keep_last: int = 1) -> list[int]:
    """The contiguous block of n_drop layers whose `block_distances` is smallest (ties: the earliest).

    `distances[s]` is the distance across layers s .. s + n_drop - 1, as `block_distances(..., n_drop)`
    returns; the block must lie within the layers `choose_layers_to_drop` would allow.
    """
    n_layers = len(distances) + n_drop - 1
    allowed = _prunable(n_layers, n_drop, keep_first, keep_last)
    if n_drop == 0:
        return []
    starts = range(allowed.start, allowed.stop - n_drop + 1)
    best = min(starts, key=lambda s: (distances[s], s))
    return list(range(best, best + n_drop))


# --- cutting -----------------------------------------------------------------------------------------


# Config fields that index layers rather than list one entry per layer (remapped, not cut).
LAYER_INDEX_LISTS = ("mlp_only_layers",)  # Qwen2-MoE / Qwen3-MoE: the layers with a dense MLP
LAYER_THRESHOLDS = ("max_window_layers", "first_k_dense_replace")  # "layers below this index are ..."
NOT_PER_LAYER = ("architectures",)


def _cut_config(config: Any, kept: list[int], n: int) -> list[str]:
    """Make every per-layer field of `config` follow the kept layers; returns the fields changed.

    A list with one entry per layer (`layer_types`, SmolLM3's `no_rope_layers`, ...) keeps the kept
    layers' entries; a list of layer indices or an index threshold is renumbered. Which fields an
    architecture has is not listed anywhere, so any list of length n is taken as per-layer; the
    reload check in `prune_model` catches a field this gets wrong.
    """
    new_index = {old: new for new, old in enumerate(kept)}
    changed = []
    for key, value in list(vars(config).items()):
        if key.startswith("_") or key in NOT_PER_LAYER or "token_id" in key:  # eos ids are not per layer
            continue
        if key in LAYER_INDEX_LISTS and isinstance(value, list | tuple):
            setattr(config, key, [new_index[i] for i in value if i in new_index])
        elif key in LAYER_THRESHOLDS and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, key, sum(1 for i in kept if i < value))
        elif isinstance(value, list | tuple) and len(value) == n:
            setattr(config, key, type(value)(value[i] for i in kept))
        else:
            continue
        changed.append(key)
    config.num_hidden_layers = len(kept)
    return changed


def prune_layers(model: Any, drop: Sequence[int]) -> list[str]:
    """Remove the layers `drop` (original indices) in place and make the model consistent again.

    Besides the ModuleList, these index layers and must follow: `config.num_hidden_layers` (the
    forward loop and the KV cache are sized from it), every attention module's `layer_idx` (the cache
    slot it reads and writes: a gap or a duplicate silently mixes two layers' keys during generation),
    and every per-layer field of the config (`_cut_config`). Returns the config fields changed.
    """
    layers = _decoder_layers(model)
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) != len(drop):
        raise ValueError(f"layers to drop must be distinct indices in 0..{n - 1}, got {list(drop)}")
    if len(drop) >= n:
        raise ValueError(f"cannot drop all {n} layers")
    gone = set(drop)
    kept = [i for i in range(n) if i not in gone]
    model.model.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for new, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    return _cut_config(model.config, kept, n)


def reload_difference(model: Any, folder: Path, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, list[str]]:
    """Max |logit difference| between `model` and the model loaded back from `folder`, and the weights
    the load did not fill or did not use: a saved model must compute what the pruned one in memory did."""
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    loaded, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    loaded = loaded.to(device).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            b = loaded(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    finally:
        model.train(was_training)
    real = mask.to(device).bool()
    unmatched = [f"{kind}: {k}" for kind in ("missing_keys", "unexpected_keys") for k in info.get(kind, [])]
    return float((a[real].float() - b[real].float()).abs().max()), unmatched


# --- the whole step ----------------------------------------------------------------------------------


@dataclass
class PruneSummary:
    """What `prune_model` did; also written as prune.json in the output folder."""

    teacher: str
    out_dir: str
    method: str  # "block_influence" (lowest-BI layers) or "block_distance" (one contiguous block)
    layers_before: int
    layers_after: int
    params_before: int
    params_after: int
    dropped: list[int]  # indices in the teacher
    kept: list[int]  # teacher index of each student layer, in order
    importance: list[float]  # BI per teacher layer
    block_distances: list[float] | None = None  # per start, for method "block_distance"
    calibration_prompts: int = 0
    max_length: int = 0
    config_fields: list[str] = field(default_factory=list)  # per-layer config fields cut or renumbered
    reload_max_logit_difference: float | None = None  # the saved folder against the pruned model in memory
    width: dict[str, Any] | None = None  # width pruning: sizes [before, after] and what was kept (see _width)
    format: str = field(default=FORMAT)


def _params(model: Any) -> int:
    """Parameter count; tied weights (embeddings shared with the LM head) count once."""
    return sum(p.numel() for p in model.parameters())


def _n_drop(n_layers: int, n_drop: int | None, keep_ratio: float | None) -> int:
    if n_drop is not None and keep_ratio is not None:
        raise ValueError("give at most one of n_drop and keep_ratio")
    if n_drop is None and keep_ratio is None:
        return 0
    if keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise UserError(f"keep_ratio must be in (0, 1], got {keep_ratio}", "e.g. keep_ratio=0.5 keeps half")
        return n_layers - max(1, round(n_layers * keep_ratio))
    assert n_drop is not None
    return n_drop


def _narrow(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_length: int, batch_size: int, sizes: tuple
) -> tuple[Any, dict[str, Any]]:
    """Width-prune `model` to `sizes` (hidden, intermediate, key-value groups; None keeps that size) and
    say what changed: each size [before, after], and the teacher's indices of what was kept."""
    from sft.compression.width import _shape, choose_width, prune_width, width_importance

    importance = width_importance(model, _batches(tokenizer, prompts, max_length, batch_size))
    choice = choose_width(importance, *sizes)
    before = _shape(model.config)
    model = prune_width(model, choice)
    after = _shape(model.config)
    names = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    record: dict[str, Any] = {n: [a, b] for n, a, b in zip(names, before, after, strict=True)}
    record["hidden_kept"] = choice.hidden
    record["kv_groups_kept"] = choice.kv_groups
    record["hidden_importance"] = [round(float(x), 6) for x in importance.hidden]
    return model, record


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but a previous prune output: out_dir may be a typo for something dear."""
    if not out.exists():
        return
    if not out.is_dir() or not (out / MARKER).is_file():
        raise UserError(
            f"{out} exists and is not a previous prune output (no {MARKER} in it); not overwriting it",
            "choose a new out_dir, or remove that one yourself if it is meant to go",
        )


def prune_model(
    teacher_dir: str | Path,
    out_dir: str | Path,
    prompts: Sequence[Prompt],
    n_drop: int | None = None,
    keep_ratio: float | None = None,
    *,
    method: str = "block_influence",
    keep_first: int = 1,
    keep_last: int = 1,
    max_length: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    kv_heads: int | None = None,
) -> PruneSummary:
    """Load the teacher, measure its layers on `prompts`, drop the least important, save the student.

    Depth: `n_drop` (layers to remove) or `keep_ratio` (fraction of layers to keep). Width
    (`sft.compression.width`, measured on the depth-pruned model, after the cut): the new
    `hidden_size`, `intermediate_size` and number of key-value groups `kv_heads`. At least one of
    them must prune something. `method`
    "block_influence" drops the lowest-BI layers wherever they are (ShortGPT); "block_distance" drops
    one contiguous block (Gromov et al.). The output is written to a temporary sibling folder and
    renamed into place, so out_dir is never half-written; an existing out_dir is replaced only if it
    is itself a prune output.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth.models import loading_model

    if method not in ("block_influence", "block_distance"):
        raise UserError(f"unknown pruning method {method!r}", "use 'block_influence' or 'block_distance'")
    out = Path(out_dir)
    _check_out_dir(out)
    with loading_model("prune.source", str(teacher_dir)):
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        model = AutoModelForCausalLM.from_pretrained(teacher_dir).to(device)
    n_layers = len(_decoder_layers(model))
    k = _n_drop(n_layers, n_drop, keep_ratio)
    narrower = any(v is not None for v in (hidden_size, intermediate_size, kv_heads))
    if k == 0 and not narrower:
        why = f"keep_ratio {keep_ratio} of {n_layers} layers removes none" if keep_ratio else "nothing to remove"
        raise UserError(f"prune: {why}", "give drop: N or a smaller keep_ratio, or a width (hidden_size, ...)")
    params_before = _params(model)
    if narrower:
        from sft.compression.width import _check_supported

        _check_supported(model)  # the clear error before minutes of measuring
    importance = layer_importance(model, tokenizer, prompts, max_length, batch_size) if k else []
    distances = None
    if method == "block_influence":
        drop = choose_layers_to_drop(importance, k, keep_first, keep_last) if k else []
    else:
        _prunable(n_layers, k, keep_first, keep_last)  # the clear error before a measurement that cannot fit
        distances = block_distances(model, tokenizer, prompts, max(k, 1), max_length, batch_size) if k else []
        drop = choose_block_to_drop(distances, k, keep_first, keep_last) if k else []
    config_fields = prune_layers(model, drop)
    width = None
    if narrower:
        sizes = (hidden_size, intermediate_size, kv_heads)
        model, width = _narrow(model, tokenizer, prompts, max_length, batch_size, sizes)
    summary = PruneSummary(
        teacher=str(teacher_dir),
        out_dir=str(out),
        method=method,
        layers_before=n_layers,
        layers_after=n_layers - len(drop),
        params_before=params_before,
        params_after=_params(model),
        dropped=drop,
        kept=[i for i in range(n_layers) if i not in set(drop)],
        importance=importance,
        block_distances=distances,
        calibration_prompts=len(prompts),
        max_length=max_length,
        config_fields=config_fields,
        width=width,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(out)  # also removes what a killed `sft prune` left
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ids, mask, _ = _batches(tokenizer, prompts[:batch_size], max_length, batch_size)[0]
        diff, unmatched = reload_difference(model, tmp, ids, mask)
        summary.reload_max_logit_difference = diff
        if unmatched or not diff <= RELOAD_TOLERANCE:
            why = "; ".join(unmatched[:3]) if unmatched else f"logits differ by up to {diff:.3g}"
            raise UserError(
                f"the pruned {type(model).__name__} computes differently once saved and loaded back ({why}); "
                f"not writing {out}",
                "its config has a per-layer setting Distillery does not cut: please report it with the config",
            )
        (tmp / MARKER).write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        _check_out_dir(out)  # again: something may have appeared there while we measured
        swap_in_folder(tmp, out)  # a crash leaves the old folder or the new one, never half of one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary

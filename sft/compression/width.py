"""Width pruning (Minitron): a narrower student made from the teacher by removing channels and heads.

Depth pruning (`sft.compression.prune`) removes whole layers; it cannot take a model below the share
of its parameters that are not in the layers. SmolLM2-135M keeps 28M of its 134.5M parameters in the
tied embedding matrix, so a student at 30% of the teacher has to be narrower, not only shallower.

Which channels go is measured on calibration text, as Minitron ("Compact Language Models via
Pruning and Knowledge Distillation", Muralidharan et al. 2024) does, from activations alone (no
gradients):

- **hidden (embedding) channels**: the mean |output| of every RMSNorm that feeds a block or the LM
  head (`input_layernorm`, `post_attention_layernorm`, the final `norm`), summed over the norms. A
  channel goes from the embeddings, every projection that reads or writes the residual stream, every
  norm and the (tied) LM head at once.
- **MLP channels**, per layer: the mean |input of down_proj| (act(gate(x)) * up(x)).
- **attention heads**, per layer: the mean L2 norm of each head's output (the input of o_proj, split
  into heads). Under grouped-query attention a key-value head serves a group of query heads, so whole
  groups are kept or removed together: a group's importance is the sum of its query heads'.

Every layer keeps the same number of MLP channels and key-value groups (a transformers config has one
`intermediate_size` and one `num_key_value_heads`), each layer its own choice of which. `head_dim`
is written into the config so that it no longer follows hidden_size / heads.

Removing channels changes what every RMSNorm divides by, so a width-pruned model computes differently
even when the channels it lost were silent; the distillation that follows recovers it (Minitron's
point is that it recovers far faster than training from scratch). The new model is built from its
config and loaded from the teacher's sliced weights, so it is an ordinary transformers model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from synth.errors import UserError

# the per-layer parameter names of a Llama-style decoder (Llama, Qwen2/3, Mistral, SmolLM): how each
# is sliced. "out" = rows (the weight's first dimension), "in" = columns; what the rows or columns are.
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_PER_LAYER: dict[str, dict[str, str]] = {
    "input_layernorm.weight": {"out": "hidden"},
    "post_attention_layernorm.weight": {"out": "hidden"},
    "self_attn.q_proj.weight": {"out": "q_heads", "in": "hidden"},
    "self_attn.q_proj.bias": {"out": "q_heads"},
    "self_attn.k_proj.weight": {"out": "kv_heads", "in": "hidden"},
    "self_attn.k_proj.bias": {"out": "kv_heads"},
    "self_attn.v_proj.weight": {"out": "kv_heads", "in": "hidden"},
    "self_attn.v_proj.bias": {"out": "kv_heads"},
    "self_attn.o_proj.weight": {"out": "hidden", "in": "q_heads"},
    "self_attn.o_proj.bias": {"out": "hidden"},
    "self_attn.q_norm.weight": {},  # Qwen3: per head_dim, unchanged
    "self_attn.k_norm.weight": {},
    "mlp.gate_proj.weight": {"out": "mlp", "in": "hidden"},
    "mlp.gate_proj.bias": {"out": "mlp"},
    "mlp.up_proj.weight": {"out": "mlp", "in": "hidden"},
    "mlp.up_proj.bias": {"out": "mlp"},
    "mlp.down_proj.weight": {"out": "hidden", "in": "mlp"},
    "mlp.down_proj.bias": {"out": "hidden"},
}
_GLOBAL: dict[str, dict[str, str]] = {
    "model.embed_tokens.weight": {"in": "hidden"},  # (vocab, hidden): the hidden channels are columns
    "model.norm.weight": {"out": "hidden"},
    "lm_head.weight": {"in": "hidden"},
    "lm_head.bias": {},
}


@dataclass
class WidthImportance:
    """Activation importance of every prunable unit, measured on calibration tokens."""

    hidden: torch.Tensor  # (hidden_size,)
    mlp: list[torch.Tensor]  # per layer, (intermediate_size,)
    kv_groups: list[torch.Tensor]  # per layer, (num_key_value_heads,): the sum over each group's query heads


@dataclass
class WidthChoice:
    """What a narrower model keeps, in the teacher's indices, each list sorted."""

    hidden: list[int]
    mlp: list[list[int]]  # per layer
    kv_groups: list[list[int]]  # per layer


def _shape(config: Any) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, query heads, key-value heads, head_dim) of a Llama-style config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.hidden_size, config.intermediate_size, heads, kv, head_dim


def _check_supported(model: Any) -> None:
    """Refuse, in one line, a model this module would slice wrongly: every parameter must be one it knows."""
    unknown = []
    for name, _ in model.named_parameters():
        m = _LAYER.match(name)
        known = (m is not None and m.group(2) in _PER_LAYER) or name in _GLOBAL
        if not known:
            unknown.append(name)
    config = model.config
    moe = any(getattr(config, k, None) for k in ("num_experts", "num_local_experts", "n_routed_experts"))
    if unknown or moe or not hasattr(config, "intermediate_size"):
        what = f"it has parameters width pruning does not know ({', '.join(unknown[:3])})" if unknown else "MoE"
        raise UserError(
            f"cannot width-prune {type(model).__name__}: {what}",
            "width pruning supports dense Llama-style decoders (Llama, Qwen2/3, Mistral, SmolLM); use depth pruning",
        )


def width_importance(model: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> WidthImportance:
    """Mean activation magnitudes over the measured tokens of `batches` ((ids, mask, measured) as
    `sft.compression.prune._batches` gives them), in eval mode without gradients, sums in float64."""
    _check_supported(model)
    hidden, inter, heads, kv, head_dim = _shape(model.config)
    layers = model.model.layers
    device = next(model.parameters()).device
    h_sum = torch.zeros(hidden, dtype=torch.float64)
    mlp_sum = [torch.zeros(inter, dtype=torch.float64) for _ in layers]
    head_sum = [torch.zeros(heads, dtype=torch.float64) for _ in layers]
    real: list[torch.Tensor] = []  # the current batch's measured mask, read by the hooks

    def norm_hook(_m: Any, _a: Any, out: torch.Tensor) -> None:
        h_sum.add_(out[real[0]].abs().double().sum(0).cpu())

    def mlp_hook(i: int) -> Any:
        def hook(_m: Any, args: tuple[torch.Tensor, ...]) -> None:
            mlp_sum[i].add_(args[0][real[0]].abs().double().sum(0).cpu())

        return hook

    def head_hook(i: int) -> Any:
        def hook(_m: Any, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0][real[0]]  # (tokens, heads * head_dim)
            head_sum[i].add_(x.double().view(-1, heads, head_dim).norm(dim=-1).sum(0).cpu())

        return hook

    handles = [model.model.norm.register_forward_hook(norm_hook)]
    for i, layer in enumerate(layers):
        handles.append(layer.input_layernorm.register_forward_hook(norm_hook))
        handles.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for ids, mask, measured in batches:
                real[:] = [measured.to(device)]
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                count += int(measured.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise UserError("the calibration prompts have no text of their own to measure on", "use real prompts")
    group = heads // kv
    return WidthImportance(
        hidden=h_sum / count,
        mlp=[m / count for m in mlp_sum],
        kv_groups=[(h / count).view(kv, group).sum(-1) for h in head_sum],
    )


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores (ties: the lower index), sorted ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def choose_width(
    importance: WidthImportance, hidden_size: int | None, intermediate_size: int | None, kv_heads: int | None
) -> WidthChoice:
    """The most important units to keep at the target sizes (None: keep every unit of that kind)."""
    sizes = {"hidden_size": (hidden_size, len(importance.hidden))}
    if importance.mlp:
        sizes["intermediate_size"] = (intermediate_size, len(importance.mlp[0]))
        sizes["kv_heads"] = (kv_heads, len(importance.kv_groups[0]))
    for name, (target, have) in sizes.items():
        if target is not None and not 1 <= target <= have:
            raise UserError(f"prune.{name}: {target} is not between 1 and the model's {have}", f"choose 1..{have}")
    return WidthChoice(
        hidden=_top(importance.hidden, hidden_size or len(importance.hidden)),
        mlp=[_top(m, intermediate_size or len(m)) for m in importance.mlp],
        kv_groups=[_top(g, kv_heads or len(g)) for g in importance.kv_groups],
    )


def _rows(kind: str, layer: int | None, choice: WidthChoice, group: int, head_dim: int) -> list[int]:
    """The indices along one weight dimension that `choice` keeps."""
    if kind == "hidden":
        return choice.hidden
    assert layer is not None, kind
    if kind == "mlp":
        return choice.mlp[layer]
    kv = choice.kv_groups[layer]
    heads = kv if kind == "kv_heads" else [g * group + r for g in kv for r in range(group)]
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def prune_width(model: Any, choice: WidthChoice) -> Any:
    """A new model of the same class with only the chosen channels and heads, weights sliced from `model`.

    Built from a copy of the config with the new sizes (head_dim written out) and loaded strictly from
    the sliced state dict, so every weight is accounted for; tied embeddings stay tied (the new model
    ties them at construction, so the LM head is the sliced embedding matrix).
    """
    _check_supported(model)
    _, _, heads, kv, head_dim = _shape(model.config)
    group = heads // kv
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.hidden_size = len(choice.hidden)
    config.intermediate_size = len(choice.mlp[0]) if choice.mlp else config.intermediate_size
    config.num_key_value_heads = len(choice.kv_groups[0]) if choice.kv_groups else kv
    config.num_attention_heads = config.num_key_value_heads * group
    config.head_dim = head_dim
    sliced = {}
    for name, weight in model.state_dict().items():
        m = _LAYER.match(name)
        layer, rule = (int(m.group(1)), _PER_LAYER.get(m.group(2))) if m else (None, _GLOBAL.get(name))
        if rule is None:
            raise UserError(f"cannot width-prune: unknown weight {name}", "use depth pruning for this model")
        w = weight
        if "out" in rule:
            w = w.index_select(0, torch.tensor(_rows(rule["out"], layer, choice, group, head_dim)))
        if "in" in rule:
            w = w.index_select(1, torch.tensor(_rows(rule["in"], layer, choice, group, head_dim)))
        sliced[name] = w.clone()
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    new = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = new.load_state_dict(sliced, strict=False)
    tied = {k for k in missing if k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"width pruning left weights unfilled {missing} or unused {unexpected}")
    return new.to(next(model.parameters()).device).train(model.training)

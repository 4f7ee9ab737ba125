"""The teacher's view for self-distillation: its own prompt (`teacher_prompt`) + the student's completion tokens.

Shared by `sft.objectives.gkd` (on-policy GKD) and `sft.objectives.kd` (off-policy KD); no TRL import, so
either can use it.
"""

from __future__ import annotations

from typing import Any

import torch

from sft.training.lengths import chat_ids


def teacher_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The teacher's view of the prompt, tokenised as a prompt awaiting the assistant's turn."""
    return chat_ids(tokenizer, messages, generation_prompt=True)


def teacher_view(
    ids: torch.Tensor, labels: torch.Tensor, prompt_ids: list[list[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
    """Teacher sequences (each row's teacher prompt + the student row's completion tokens), their mask,
    and (row, student position, row, teacher position) pairs of logits that predict the same token."""
    seqs, pairs = [], []
    for i, row_prompt in enumerate(prompt_ids):
        positions = (labels[i] != -100).nonzero().flatten().tolist()
        completion = ids[i, positions].tolist()
        seqs.append(list(row_prompt) + completion)
        for j, p in enumerate(positions):
            # student logits at p-1 and teacher logits at len(prompt)-1+j both predict completion[j]
            pairs.append((i, p - 1, i, len(row_prompt) - 1 + j))
    width = max(len(s) for s in seqs)
    device = ids.device
    t_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    t_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return t_ids, t_mask, pairs


def pair_indices(pairs: list[tuple[int, int, int, int]], device: Any) -> tuple[torch.Tensor, ...]:
    """`teacher_view`'s pairs as index tensors: (student rows, student positions, teacher rows, teacher
    positions), for gathering the logits of both sides that predict the same token."""
    return tuple(torch.tensor(x, device=device) for x in zip(*pairs, strict=True))

"""What `train.max_length` does to the curated rows, said before training instead of silently.

TRL cuts rows longer than `max_length` and drops, without a word, those left with nothing to train
on; GKD's collator fails mid-run on them instead. `length_report` counts both, the way TRL tokenizes
(chat template; the completion starts where prompt and prompt + completion diverge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.errors import UserError


@dataclass
class LengthReport:
    """Rows whose prompt + completion (tokenized with the chat template) exceed `max_length`."""

    field: str  # train.max_length, or train.args.max_length when that overrides it
    max_length: int
    rows: int
    longer: int  # rows longer than max_length: cut to it, or dropped
    dropped: int  # of those, rows left with nothing to train on, which TRL (or we, for GKD) leave out
    why_dropped: str = ""

    @property
    def truncated(self) -> int:
        return self.longer - self.dropped

    def sentence(self) -> str:
        text = (
            f"{self.longer} of {self.rows} rows longer than {self.field}={self.max_length} were truncated/dropped "
            f"({self.truncated} truncated, {self.dropped} dropped"
        )
        return text + (f": {self.why_dropped})" if self.dropped and self.why_dropped else ")")


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> list[int]:
    """Token ids of chat messages as TRL's SFT tokenises them (the chat template, special tokens in)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return list(out["input_ids"])


def _upper_bound(tokenizer: Any, messages: list[dict[str, Any]], overheads: dict[tuple[str, ...], int]) -> int:
    """At least as many tokens as the templated conversation has: the template's own tokens for these
    roles (computed once per role sequence) plus one per UTF-8 byte of content, since a byte-level
    tokenizer never spends more than one token on a byte."""
    roles = tuple(m["role"] for m in messages)
    if roles not in overheads:
        overheads[roles] = len(chat_ids(tokenizer, [{"role": r, "content": ""} for r in roles]))
    return overheads[roles] + sum(len(m["content"].encode("utf-8")) for m in messages)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def length_report(
    ds: Any, tokenizer: Any, objective: str, args: dict[str, Any], user_args: dict[str, Any]
) -> tuple[LengthReport | None, list[int]]:
    """Which rows `max_length` cuts, and which it leaves with nothing to train on (their indices).

    Each row is tokenized as TRL does (chat template; the completion starts where prompt and
    prompt + completion diverge). SFT keeps the first `max_length` tokens and drops a row whose
    prompt alone fills them (no completion token left: TRL filters it out silently). GKD's collator
    keeps the last `max_length` tokens and fails on a row whose completion alone fills them, so such
    rows are dropped here. All rows dropped is a UserError naming the field and the shortest length.
    """
    max_length = args.get("max_length")
    if not max_length or args.get("packing") or tokenizer.chat_template is None:  # no template: TRL's own
        return None, []
    name = "train.args.max_length" if "max_length" in user_args else "train.max_length"
    gkd = objective == "gkd"
    keep_end = args.get("truncation_mode") == "keep_end"
    masked_drop = args.get("completion_only_loss") is not False
    longer, dropped, prompts, completions, longest = 0, [], [], [], 0
    overheads: dict[tuple[str, ...], int] = {}
    for i, row in enumerate(ds.select_columns(["prompt", "completion"])):
        messages = row["prompt"] + row["completion"]
        if _upper_bound(tokenizer, messages, overheads) <= max_length:
            continue  # cannot be too long: no need to tokenize it (most rows, on a big set)
        full = chat_ids(tokenizer, messages)
        longest = max(longest, len(full))
        if len(full) <= max_length:
            continue
        longer += 1
        start = _common_prefix(chat_ids(tokenizer, row["prompt"], generation_prompt=True), full)
        prompts.append(start)
        completions.append(len(full) - start)
        # GKD: no prompt token left to generate from; SFT: no completion token left to learn
        unusable = len(full) - start >= max_length if gkd else not keep_end and masked_drop and start >= max_length
        if unusable:
            dropped.append(i)
    if longer == 0:
        return None, []
    if len(dropped) == len(ds):
        if gkd:
            raise UserError(
                f"{name}={max_length} leaves no row to train on: every completion alone is at least "
                f"{max_length} tokens (the shortest has {min(completions)}), and GKD needs part of the prompt",
                f"raise {name} above {min(completions)} plus room for the prompt (the longest row has {longest})",
            )
        raise UserError(
            f"{name}={max_length} leaves no row to train on: every prompt alone is at least {max_length} "
            f"tokens (the shortest prompt has {min(prompts)})",
            f"raise {name} above {min(prompts)} plus room for the answer (the longest row has {longest} tokens)",
        )
    why = "their completion alone fills max_length" if gkd else "their prompt alone fills max_length"
    return LengthReport(name, max_length, len(ds), longer, len(dropped), why), dropped

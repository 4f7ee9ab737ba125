"""Fidelity to the teacher: how close each model's next-token distribution is to the teacher's.

Behaviour rates say whether a student does what the teacher does; fidelity says how much of the
teacher's distribution it kept, which is what distillation (and compression) is about. On the
teacher's greedy answers to the held-out prompts, teacher-forced:

- `kl`: mean over answer tokens of KL(teacher ‖ model) over the full vocabulary, at temperature 1;
  the teacher reads its own view (`teacher_prompt`), the model the student's view, so for
  self-distillation this measures how much of the privileged context the student absorbed;
- `nll`: mean negative log-likelihood of the teacher's answer tokens under the model;
  `perplexity = exp(nll)`;
- `stop_nll`: the NLL of the teacher's end-of-turn token alone, after the answers it finished.

(The end-of-turn token is the one the chat template closes an assistant turn with.)

An answer the teacher finished (finish reason "stop") is scored with its end-of-turn token as its
last token: knowing when to stop is part of the
teacher's distribution, and "never stops" is the compressed students' commonest failure. Decoded text
alone drops that token, which made such a student look as close to the teacher as one that stops.

Both are averaged per prompt first, then over prompts (`kl_per_prompt`, `nll_per_prompt` keep the
per-prompt values in prompt order, so two models can be compared pairwise), with a bootstrap 95%
interval over prompts. The teacher's log-probabilities on its answers are computed once, in its own
pass, and written to a scratch file (`TeacherLogProbs`: float32, exact) that every other model's
KL reads, instead of running the teacher again per model; memory stays flat however many prompts.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.objectives.teacher_view import teacher_prompt_ids
from sft.training.lengths import chat_ids
from synth.records import Messages
from synth.stats import bootstrap_ci, mean


@dataclass
class TeacherAnswers:
    """The teacher's greedy answers and the two views of each held-out prompt."""

    teacher_prompts: list[Messages]
    student_prompts: list[Messages]
    answers: list[str]
    stopped: list[bool]  # the teacher finished the answer itself (not cut at the token limit)


STORE_LIMIT = 8 * 2**30
"""At most this many bytes of the teacher's log-probs on disk (108 answers of ~120 tokens over a 49k
vocabulary take 2.5 GB); beyond it the teacher is run again per model."""


@dataclass
class TeacherLogProbs:
    """The teacher's log-probabilities at each token of its answers, one [tokens, vocabulary] float32
    block per prompt in one file under `folder`, written and read with plain file I/O (not mapped:
    the process's memory stays that of one block; the page cache keeps what fits). Filled by the
    teacher's own fidelity pass; read by every other model whose answer tokens are the same ids
    (another chat template may end an answer with another token: then the teacher runs again)."""

    folder: Path
    blocks: dict[int, tuple[list[int], int]] = field(default_factory=dict)  # prompt -> (ids, row offset)
    vocab: int = 0

    @property
    def path(self) -> Path:
        return self.folder / "teacher-logprobs.f32"

    def allocate(self, answers: list[list[int]], vocab: int) -> bool:
        """Room for these answers' log-probs; False (nothing stored, the teacher runs per model as
        before) when they would take more than STORE_LIMIT bytes or half the free disk."""
        total = sum(len(ids) for ids in answers)
        size = 4 * total * vocab
        if size > min(STORE_LIMIT, shutil.disk_usage(self.folder).free // 2):
            return False
        offset = 0
        for i, ids in enumerate(answers):
            self.blocks[i] = (ids, offset)
            offset += len(ids)
        self.vocab = vocab
        with self.path.open("wb") as f:
            f.truncate(size)
        return True

    def put(self, prompt: int, lp: Any) -> None:
        if prompt not in self.blocks:
            return
        offset = self.blocks[prompt][1]
        with self.path.open("r+b") as f:
            f.seek(4 * offset * self.vocab)
            f.write(lp.float().cpu().numpy().tobytes())

    def get(self, prompt: int, ids: list[int]) -> Any | None:
        """The teacher's log-probs on these answer ids, or None when it has none for them."""
        import numpy as np
        import torch

        if prompt not in self.blocks or self.blocks[prompt][0] != ids:
            return None
        offset = self.blocks[prompt][1]
        block = np.fromfile(self.path, dtype=np.float32, count=len(ids) * self.vocab, offset=4 * offset * self.vocab)
        return torch.from_numpy(block.reshape(len(ids), self.vocab))


def answer_token_ids(
    tokenizer: Any, answer: str, stopped: bool, messages: Messages | None = None
) -> tuple[list[int], bool]:
    """The answer's tokens, and the end-of-turn token after an answer the teacher finished; and whether
    that token was appended (not when neither the template nor the tokenizer names one).

    The end-of-turn token is the one the chat template closes an assistant turn with, right after the
    answer's tokens (`<|im_end|>`, Gemma's `<end_of_turn>`, Llama 3's `<|eot_id|>`: not always the
    tokenizer's EOS); the EOS when the template cannot say.
    """
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not stopped:
        return ids, False
    stop = tokenizer.eos_token_id
    if messages is not None and getattr(tokenizer, "chat_template", None):
        try:
            prompt = chat_ids(tokenizer, messages, generation_prompt=True)
            full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": answer}])
        except (ValueError, TypeError, KeyError):  # a template that refuses this conversation
            full, prompt = [], []
        rest = full[len(prompt) :]
        if full[: len(prompt)] == prompt and rest[: len(ids)] == ids and len(rest) > len(ids):
            stop = rest[len(ids)]
    return (ids, False) if stop is None else ([*ids, stop], True)


LENGTH_BUCKET = 32


def _answer_log_probs(model: Any, tokenizer: Any, messages: Messages, answer_ids: list[int]) -> Any:
    """The model's log-probabilities (float32, [answer tokens, vocabulary]) at each answer position.

    The sequence is padded on the right to a multiple of LENGTH_BUCKET tokens: under causal attention
    the padding changes no earlier position, and a handful of shapes instead of one per prompt keeps
    oneDNN's per-shape caches small (in bf16 on a CPU each new length grew the process by ~10 MB)."""
    import torch

    prompt_ids = teacher_prompt_ids(tokenizer, messages)
    ids = prompt_ids + answer_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    ids += [pad] * (-len(ids) % LENGTH_BUCKET)
    logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    logits = logits[len(prompt_ids) - 1 : len(prompt_ids) + len(answer_ids) - 1].float()
    return torch.log_softmax(logits, dim=-1)


def measure(
    model: Any,
    tokenizer: Any,
    data: TeacherAnswers,
    teacher: Any | None,
    is_teacher: bool,
    store: TeacherLogProbs | None = None,
) -> dict[str, Any]:
    """Per-prompt KL and NLL of `model` on the teacher's answers, with means, intervals and top-1 agreement.

    `teacher` is the teacher's (model, tokenizer), or None when the teacher is not a local model (a
    server): then `kl` is None and only the NLL of the teacher's answers is measured. So it is when
    the two vocabularies differ (a KL over token ids needs the same ids on both sides). `store`: the
    teacher's pass fills it, the other models' passes read the teacher's log-probs from it.
    """
    import torch

    from synth.tokenizers import vocab_hash

    if teacher is not None and not is_teacher and vocab_hash(teacher[1]) != vocab_hash(tokenizer):
        teacher = None

    kl_pp: list[float | None] = []
    nll_pp: list[float | None] = []
    stop_pp: list[float | None] = []  # per prompt: None where the teacher did not finish its answer
    hits = total = 0
    answers = [
        answer_token_ids(tokenizer, answer, stopped, t_view)
        for t_view, answer, stopped in zip(data.teacher_prompts, data.answers, data.stopped, strict=True)
    ]
    if is_teacher and store is not None:
        store.allocate([ids for ids, _ in answers], model.get_output_embeddings().weight.shape[0])
    with torch.inference_mode():
        for i, (t_view, s_view, (answer_ids, stopped)) in enumerate(
            zip(data.teacher_prompts, data.student_prompts, answers, strict=True)
        ):
            if not answer_ids:
                kl_pp.append(None)
                nll_pp.append(None)
                stop_pp.append(None)
                continue
            view = t_view if is_teacher else s_view
            lp = _answer_log_probs(model, tokenizer, view, answer_ids)
            target = torch.tensor(answer_ids, device=lp.device)
            token_nll = -lp.gather(1, target[:, None])[:, 0]
            nll_pp.append(float(token_nll.mean()))
            stop_pp.append(float(token_nll[-1]) if stopped else None)
            if is_teacher and store is not None:
                store.put(i, lp)
            if teacher is not None and not is_teacher:
                t_lp = store.get(i, answer_ids) if store is not None else None
                if t_lp is None:
                    t_lp = _answer_log_probs(teacher[0], teacher[1], t_view, answer_ids)
                t_lp = t_lp.to(lp.device)
                kl_pp.append(float((t_lp.exp() * (t_lp - lp)).sum(-1).mean()))
            else:
                kl_pp.append(0.0 if is_teacher else None)
            hits += int((lp.argmax(-1) == target).sum())
            total += len(answer_ids)
    return summarise(kl_pp, nll_pp) | {
        "stop_nll": mean(stops := [x for x in stop_pp if x is not None]),
        "stop_nll_ci": bootstrap_ci(stops),
        "stop_nll_per_prompt": stop_pp,
        "params": sum(p.numel() for p in model.parameters()),
        "agreement_top1": hits / total if total else None,
    }


def summarise(kl_pp: list[float | None], nll_pp: list[float | None]) -> dict[str, Any]:
    """Means over prompts with bootstrap 95% intervals; prompts without an answer are left out."""
    kls = [x for x in kl_pp if x is not None]
    nlls = [x for x in nll_pp if x is not None]
    nll = mean(nlls)
    return {
        "kl": mean(kls),
        "kl_ci": bootstrap_ci(kls),
        "nll": nll,
        "nll_ci": bootstrap_ci(nlls),
        "perplexity": None if nll is None else math.exp(nll),
        "kl_per_prompt": kl_pp,
        "nll_per_prompt": nll_pp,
    }


def paired(a: list[float | None], b: list[float | None]) -> dict[str, Any] | None:
    """Mean of the per-prompt differences a − b over prompts both have, with a paired bootstrap 95% interval."""
    diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not diffs:
        return None
    return {"mean": mean(diffs), "ci": bootstrap_ci(diffs), "prompts": len(diffs)}

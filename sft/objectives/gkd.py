"""On-policy logit distillation where the teacher sees its own view of the prompt.

TRL's `GKDTrainer` runs the teacher on exactly the student's `input_ids`. For context distillation
(`teacher: self`) the teacher must instead see `teacher_prompt` (the privileged context) followed by
the same completion tokens. This is the smallest change that does it: a collator that also tokenises
each row's `teacher_prompt`, and a `compute_loss` that builds the teacher's sequences as
*teacher prompt + the student sequence's completion tokens* and compares the two models' logits at
the positions that predict those same tokens. Everything else (on-policy sampling with `lmbda`,
`seq_kd`, the generalized JSD with `beta`) is TRL's.

Why not TRL 1.16's `SDFTTrainer`, which also trains a model against its own weights seeing a
privileged context: it is on-policy only (every completion is sampled from the student), and it
builds the teacher's prompt by formatting a `privileged_context` column into the user's prompt with
a template. Distillery's teacher view is a system message, and GKD's `lmbda < 1` also trains on the
curated teacher completions; neither fits SDFT without changing what the teacher reads.

The same trainer distils a smaller student (pruned, or another size of the family) from a separate
teacher with the same tokenizer: the teacher then reads the row's `teacher_prompt` (the prompt itself
unless the recipe gives the teacher a system prompt) and scores every position of the student's own
samples over the full vocabulary. Three additions TRL's GKD does not have:

- **a schedule from off-policy to on-policy** (`lmbda_start` → `lmbda` over `ramp_steps`): a student
  that starts far from the teacher (a pruned one) samples little worth scoring in its first steps, so
  it first learns from the teacher's curated completions and takes its own samples more and more;
- **the hidden-state loss** of `sft.objectives.kd` beside the divergence (`hidden_weight`, `layer_map`),
  for a depth-pruned student whose layers map onto the teacher's;
- **the on-policy samples come from Distillery's decoding loop** (`synth.engines.decode`: finished
  rows leave the batch, exact top-k/top-p) instead of `model.generate`, falling back to TRL's method
  for a model the loop does not cover; the samples are drawn from the same distribution.
"""

from __future__ import annotations

from typing import Any

import torch
from trl.experimental.gkd import GKDTrainer
from trl.experimental.utils import DataCollatorForChatML

from sft.objectives.teacher_view import teacher_prompt_ids, teacher_view


class TeacherViewCollator:
    """TRL's ChatML collator for the student, plus the teacher's prompt ids for each row."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.student = DataCollatorForChatML(tokenizer=tokenizer, max_length=max_length)
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.student([{"messages": e["messages"]} for e in examples])
        batch["teacher_prompt_ids"] = [teacher_prompt_ids(self.tokenizer, e["teacher_prompt"]) for e in examples]
        return batch


def lmbda_at(step: int, start: float, end: float, ramp_steps: int) -> float:
    """The share of on-policy steps at optimizer step `step`: linear from `start` to `end` over the first
    `ramp_steps` steps, then `end`."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


class TeacherViewGKDTrainer(GKDTrainer):
    """GKD whose teacher (the student's own starting weights, or another model with its tokenizer)
    reads `teacher_prompt` + the same completion tokens as the student."""

    last_teacher_input_ids: torch.Tensor | None = None  # kept for tests: what the teacher saw
    decoded_with: str | None = None  # kept for tests: "decode loop" or "model.generate"

    def __init__(
        self,
        *args: Any,
        lmbda_start: float | None = None,
        ramp_steps: int = 0,
        hidden_weight: float = 0.0,
        layer_map: list[tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lmbda_end = self.lmbda
        self.lmbda_start = self.lmbda if lmbda_start is None else lmbda_start
        self.ramp_steps = ramp_steps
        self.hidden_weight, self.layer_map = hidden_weight, layer_map or []
        if hidden_weight and not self.layer_map:
            raise ValueError("hidden_weight needs a layer_map")

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.lmbda = lmbda_at(self.state.global_step, self.lmbda_start, self.lmbda_end, self.ramp_steps)
        return super().training_step(model, inputs, num_items_in_batch)

    def generate_on_policy_outputs(self, model, inputs, generation_config):
        """TRL's (ids, attention mask, labels) of prompt + the student's own sample, decoded with
        Distillery's loop: the same layout as TRL's staticmethod (left-padded prompts, completions
        right-padded, each up to and including its stop token, labels only on the completion)."""
        from synth.engines.decode import Unsupported, decode, supports

        # a PEFT model's adapters live inside its base model's layers: decode with the base model, whose
        # forward takes the cache argument the loop passes (PEFT's forwards it under a deprecated name)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        if supports(model) is not None:
            self.decoded_with = "model.generate"
            return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
        prompts, prompt_mask = inputs["prompts"], inputs["prompt_attention_mask"]
        rows = [p[m.bool()].tolist() for p, m in zip(prompts, prompt_mask, strict=True)]
        eos = generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else 0
        # one seed per row from torch's global stream, which the trainer seeds: a run repeats its samples
        seeds = torch.randint(0, 2**31 - 1, (len(rows),)).tolist()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = decode(
                    model,
                    rows,
                    n=1,
                    max_new_tokens=generation_config.max_new_tokens,
                    eos_ids=eos_ids,
                    pad_id=pad,
                    temperature=generation_config.temperature if generation_config.do_sample else 0.0,
                    top_p=generation_config.top_p if generation_config.top_p is not None else 1.0,
                    top_k=generation_config.top_k or None,
                    seeds=seeds,
                    max_rows=len(rows),
                )
        except Unsupported:
            self.decoded_with = "model.generate"
            return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
        finally:
            model.train(was_training)
        self.decoded_with = "decode loop"
        completions = [r[0].tokens for r in out]
        width = max((len(c) for c in completions), default=0)
        completion = torch.full((len(rows), width), pad, dtype=prompts.dtype, device=prompts.device)
        completion_mask = torch.zeros_like(completion)
        for i, c in enumerate(completions):
            completion[i, : len(c)] = torch.tensor(c, dtype=prompts.dtype)
            completion_mask[i, : len(c)] = 1
        ids = torch.cat([prompts, completion], dim=1)
        mask = torch.cat([prompt_mask.to(completion_mask.dtype), completion_mask], dim=1)
        labels = ids.clone()
        labels[mask == 0] = -100
        labels[:, : prompts.shape[1]] = -100
        return ids, mask, labels

    def teacher_batch(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
        """Teacher sequences, their mask, and (row, student position, row, teacher position) pairs."""
        return teacher_view(
            inputs["input_ids"], inputs["labels"], inputs["teacher_prompt_ids"], self.processing_class.pad_token_id
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hidden = bool(self.hidden_weight)
        student = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=hidden
        )
        t_ids, t_mask, pairs = self.teacher_batch(inputs)
        self.last_teacher_input_ids = t_ids.detach().cpu()
        self.teacher_model.eval()
        with torch.no_grad():
            teacher = self.teacher_model(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=hidden)
        rows_s, pos_s, rows_t, pos_t = (torch.tensor(x, device=t_ids.device) for x in zip(*pairs, strict=True))
        s = student.logits[rows_s, pos_s].unsqueeze(0)
        t = teacher.logits[rows_t, pos_t].unsqueeze(0)
        labels = torch.zeros(s.shape[:2], dtype=torch.long, device=s.device)  # every pair counts: mean per token
        # num_items_in_batch: the completion tokens of the whole accumulated batch, so that gradient
        # accumulation gives the same loss as one large batch (TRL's own compute_loss passes it too)
        loss = self.generalized_jsd_loss(
            student_logits=s, teacher_logits=t, labels=labels, beta=self.beta, num_items_in_batch=num_items_in_batch
        )
        if hidden:
            # as sft.objectives.kd: per token, the mean over layer pairs of the mean squared difference of
            # the two layers' outputs, averaged like the divergence (over the accumulated batch's tokens)
            total = s.new_zeros((), dtype=torch.float32)
            for s_layer, t_layer in self.layer_map:
                diff = (
                    student.hidden_states[s_layer + 1][rows_s, pos_s]
                    - teacher.hidden_states[t_layer + 1][rows_t, pos_t]
                )
                total = total + diff.float().pow(2).mean(-1).sum() / len(self.layer_map)
            tokens = num_items_in_batch if num_items_in_batch is not None else len(pairs)
            if isinstance(tokens, torch.Tensor):
                tokens = tokens.to(total.device)
            loss = loss + self.hidden_weight * total / tokens
        return (loss, student) if return_outputs else loss

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


class SelfDistillGKDTrainer(GKDTrainer):
    """GKD whose teacher reads `teacher_prompt` + the same completion tokens as the student."""

    last_teacher_input_ids: torch.Tensor | None = None  # kept for tests: what the teacher saw

    def teacher_batch(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
        """Teacher sequences, their mask, and (row, student position, row, teacher position) pairs."""
        return teacher_view(
            inputs["input_ids"], inputs["labels"], inputs["teacher_prompt_ids"], self.processing_class.pad_token_id
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        t_ids, t_mask, pairs = self.teacher_batch(inputs)
        self.last_teacher_input_ids = t_ids.detach().cpu()
        self.teacher_model.eval()
        with torch.no_grad():
            teacher_logits = self.teacher_model(input_ids=t_ids, attention_mask=t_mask).logits
        rows_s, pos_s, rows_t, pos_t = (torch.tensor(x, device=t_ids.device) for x in zip(*pairs, strict=True))
        s = student.logits[rows_s, pos_s].unsqueeze(0)
        t = teacher_logits[rows_t, pos_t].unsqueeze(0)
        labels = torch.zeros(s.shape[:2], dtype=torch.long, device=s.device)  # every pair counts: mean per token
        # num_items_in_batch: the completion tokens of the whole accumulated batch, so that gradient
        # accumulation gives the same loss as one large batch (TRL's own compute_loss passes it too)
        loss = self.generalized_jsd_loss(
            student_logits=s, teacher_logits=t, labels=labels, beta=self.beta, num_items_in_batch=num_items_in_batch
        )
        return (loss, student) if return_outputs else loss

"""Co-distillation (`train.objective: codistill`): two models trained at once, each taught by the other.

Each model's loss is its own cross-entropy on the curated completion plus w(step)·T²·D(other ‖ itself),
D the generalized JSD of `sft.objectives.kd_loss` against the other model's distribution at the same
completion token, detached (Anil et al. 2018, "Large scale distributed neural network training through
online distillation"; Zhang et al. 2018, Deep Mutual Learning). w ramps linearly from 0 to `weight`
over `warmup_steps`: early on neither model's predictions are worth copying.

The pair is the student and a partner with the same tokenizer:
- the teacher, trained together with the student: it reads the row's `teacher_prompt` (its privileged
  context) before the same completion tokens, as in self-distillation, and learns too;
- another student (another size, or the same model with another LoRA initialisation), reading the
  student's prompt.

Why not a TRL trainer: none trains two models. The nearest, TRL's self-distillation with a live or EMA
teacher, updates the teacher only as a copy of the student, never on its own loss. Here the partner is
a second model inside one `SFTTrainer` run: its trainable weights are extra parameter groups of the
Trainer's optimizer (same learning rate and schedule, its own gradient clipping), its trainable
weights are saved in every checkpoint (`partner.safetensors`, before trainer_state.json, so a killed
save leaves the checkpoint incomplete) and loaded back by `--resume`. One process only: the partner is
not wrapped for DDP/FSDP/DeepSpeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import SFTTrainer

from sft.objectives.kd import ROW, KDCollator, end_token_ids
from sft.objectives.kd_loss import dense_kd_loss
from sft.objectives.teacher_view import pair_indices, teacher_view

PARTNER_FILE = "partner.safetensors"


def weight_at(step: int, weight: float, warmup_steps: int) -> float:
    """The divergence weight at an optimizer step: 0 at step 0, rising linearly to `weight` at `warmup_steps`."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps)


class CodistillTrainer(SFTTrainer):
    """SFT's data preparation and loop for the student; a `partner` model trained beside it (see the
    module docstring). `partner_reads_teacher_prompt`: the partner reads each row's `teacher_prompt`
    (the teacher trained together with the student) instead of the student's prompt.

    Logs, per token: `ce_loss` and `kd_loss` (the student's), `partner_ce_loss`, `partner_kd_loss`, and
    `codistill_weight`.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by num_items_in_batch itself

    def __init__(
        self,
        *args: Any,
        partner: Any,
        weight: float = 1.0,
        warmup_steps: int = 0,
        temperature: float = 1.0,
        beta: float = 0.0,
        partner_reads_teacher_prompt: bool = False,
        **kwargs: Any,
    ) -> None:
        self.weight, self.warmup_steps = weight, warmup_steps
        self.temperature, self.beta = temperature, beta
        self.partner_view = partner_reads_teacher_prompt
        train = kwargs.get("train_dataset")
        if train is not None and hasattr(train, "add_column") and ROW not in train.column_names:
            kwargs["train_dataset"] = train.add_column(ROW, list(range(len(train))))
        if self.partner_view and train is not None and "teacher_prompt" not in train.column_names:
            raise ValueError("partner_reads_teacher_prompt needs a teacher_prompt column")
        super().__init__(*args, **kwargs)
        if self.args.padding_free or self.args.packing:
            raise ValueError("co-distillation needs one row per sequence: set padding_free=False and packing=False")
        if self.accelerator.num_processes > 1:
            raise ValueError("co-distillation runs in one process (the partner is not wrapped for DDP/FSDP/DeepSpeed)")
        if partner.get_input_embeddings().num_embeddings != self.model.get_input_embeddings().num_embeddings:
            raise ValueError("the partner's vocabulary differs from the student's: co-distillation compares logits")
        self.data_collator = KDCollator(
            pad_token_id=self._tokenizer.pad_token_id,
            end_token_ids=end_token_ids(self._tokenizer, self.model),
            max_length=self.args.max_length,
            tokenizer=self._tokenizer,
            pad_to_multiple_of=self.args.pad_to_multiple_of,
        )
        peft_config = kwargs.get("peft_config")
        if peft_config is not None:  # the partner gets its own adapter, drawn after the student's
            import copy

            from peft import get_peft_model

            partner = get_peft_model(partner, copy.deepcopy(peft_config))
        self.partner = partner.to(self.args.device)
        self.partner.train()
        self.add_callback(_ZeroPartnerGrads(self.partner))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "teacher_prompt", ROW]

    # -- the optimizer holds both models ------------------------------------------------------------

    def partner_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.partner.named_parameters() if p.requires_grad]

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer for the student, plus the partner's trainable weights as two more
        groups (with and without weight decay, as the Trainer splits them), before the scheduler is
        built, so the learning-rate schedule covers them."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            decay = set(self.get_decay_parameter_names(self.partner))
            params = self.partner_parameters()
            for names_decay, wd in ((True, self.args.weight_decay), (False, 0.0)):
                group = [p for n, p in params if (n in decay) == names_decay]
                if group:
                    optimizer.add_param_group({"params": group, "weight_decay": wd})
        return optimizer

    def _clip_grad_norm(self, model: Any) -> Any:
        """The student's gradients clipped (and their norm logged) as the Trainer does; the partner's
        clipped on their own, so neither model's step size depends on the other's gradients."""
        norm = super()._clip_grad_norm(model)
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.partner_parameters()], self.args.max_grad_norm)
        return norm

    # -- checkpoints carry the partner ---------------------------------------------------------------

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from safetensors.torch import save_file
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            tensors = {n: p.detach().cpu().contiguous() for n, p in self.partner_parameters()}
            save_file(tensors, str(folder / PARTNER_FILE))
        super()._save_checkpoint(model, trial)  # trainer_state.json last: a cut save stays incomplete

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / PARTNER_FILE
        if not path.is_file():
            raise ValueError(f"{resume_from_checkpoint} holds no {PARTNER_FILE}: not a co-distillation checkpoint")
        saved = load_file(str(path))
        mine = dict(self.partner_parameters())
        if set(saved) != set(mine):
            raise ValueError(f"{path}: its weights are not the partner's (another partner or LoRA setting)")
        with torch.no_grad():
            for name, tensor in saved.items():
                mine[name].copy_(tensor)

    # -- the loss ------------------------------------------------------------------------------------

    def _partner_logits(self, inputs: dict[str, Any], ce_mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The partner's logits at the completion positions, and the (rows, positions) of the student's
        logits that predict the same tokens."""
        ids, labels = inputs["input_ids"], inputs["labels"]
        if self.partner_view:
            t_ids, t_mask, pairs = teacher_view(ids, labels, inputs["teacher_prompt_ids"], self._tokenizer.pad_token_id)
            rows_s, pos_s, rows_t, pos_t = pair_indices(pairs, ids.device)
            out = self.partner(input_ids=t_ids, attention_mask=t_mask, use_cache=False)
            return out.logits[rows_t, pos_t], (rows_s, pos_s)
        out = self.partner(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False)
        rows_s, pos_s = ce_mask.nonzero(as_tuple=True)  # logits at t predict the token at t+1
        return out.logits[:, :-1][ce_mask], (rows_s, pos_s)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        ce_mask = inputs["labels"][:, 1:] != -100
        partner_logits, (rows, pos) = self._partner_logits(inputs, ce_mask)
        student_logits = outputs.logits[rows, pos]
        targets = inputs["labels"][rows, pos + 1]
        ce = F.cross_entropy(student_logits.float(), targets, reduction="sum")
        partner_ce = F.cross_entropy(partner_logits.float(), targets, reduction="sum")
        every = torch.ones((1, len(targets)), dtype=torch.bool, device=targets.device)
        kd, n = dense_kd_loss(student_logits[None], partner_logits.detach()[None], every, self.temperature, self.beta)
        partner_kd, _ = dense_kd_loss(
            partner_logits[None], student_logits.detach()[None], every, self.temperature, self.beta
        )
        w = weight_at(self.state.global_step, self.weight, self.warmup_steps) if model.training else self.weight
        if num_items_in_batch is not None:
            denom = num_items_in_batch
        else:  # as KDTrainer: each micro-batch's mean, divided by the number accumulated
            accumulated = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
            denom = n.clamp(min=1) * accumulated
        loss = (ce + w * kd + partner_ce + w * partner_kd) / denom
        count = n.clamp(min=1).float()
        metrics = self._metrics[mode]
        terms = {"ce_loss": ce, "kd_loss": kd, "partner_ce_loss": partner_ce, "partner_kd_loss": partner_kd}
        for key, value in terms.items():
            metrics[key].append((value.detach() / count).item())
        metrics["codistill_weight"].append(w)
        return (loss, outputs) if return_outputs else loss


class _ZeroPartnerGrads(TrainerCallback):
    """The Trainer zeroes the student's gradients after each optimizer step (`model.zero_grad()`), not
    the partner's: without this they would add up over every step."""

    def __init__(self, partner: Any) -> None:
        self.partner = partner

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.partner.zero_grad(set_to_none=True)


def save_partner(trainer: CodistillTrainer, tokenizer: Any, folder: Path) -> None:
    """The partner as a plain transformers model folder (a LoRA partner merged into its base), with the
    tokenizer: `sft eval` loads it as it loads any full student."""
    partner = trainer.partner
    if hasattr(partner, "merge_and_unload"):
        import copy

        partner = copy.deepcopy(partner).merge_and_unload()
    partner.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))

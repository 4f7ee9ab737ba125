"""The recipe's `train:` and `eval:` sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synth.specs import Strict


class LoraSpec(Strict):
    """PEFT LoRA adapter settings; `enabled: false` means a full fine-tune."""

    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainSpec(Strict):
    """How `sft run` trains the student on curated/kept.parquet."""

    objective: Literal["sft", "gkd"] = "sft"
    teacher: str = Field(
        "self",
        description="gkd only: 'self' (the student's initial weights on teacher_prompt) "
        "or another checkpoint with the same tokenizer",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)
    save_steps: int = Field(10, ge=1, description="a checkpoint every N steps (--resume continues from the last)")
    seed: int = Field(0, ge=0, lt=2**32)
    # gkd (TRL GKDTrainer) parameters
    lmbda: float = Field(0.5, ge=0, le=1, description="share of steps trained on the student's own samples")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD: 0 = forward KL, 1 = reverse KL")
    temperature: float = Field(0.9, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    seq_kd: bool = False
    args: dict[str, Any] = Field(default_factory=dict, description="passed to TRL's SFTConfig / GKDConfig as is")


class EvalSpec(Strict):
    """How `sft eval` compares base student, trained student(s) and teacher."""

    prompts: str = Field("data/heldout_prompts.jsonl", description="held-out prompts (prompt column)")
    prompt_column: str = "prompt"
    limit: int | None = Field(None, ge=1)
    behaviour_check: str | list[str] | None = Field(
        None, description="curate check(s) that define the behaviour; all must pass (default: curate.score)"
    )
    samples: int = Field(0, ge=0, le=64, description="sampled answers per prompt beside the greedy one (sample 0)")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.0, ge=0, description="sample 0's temperature (0 = greedy); samples use generate's")
    batch_size: int = Field(32, ge=1)
    objectives: list[str] = Field(default_factory=list, description="train folders to compare (default: all found)")

"""Recipe sections shared by several stages (models, engines, prompts, sampling).

Kept apart from `synth.recipe` so that stage-specific sections (e.g. `synth.curate.config`) can use
them without importing the whole recipe.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Base for recipe sections: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class RaySpec(Strict):
    """The Ray cluster `runtime.executor: ray` runs generate's and curate's workers on."""

    address: str | None = Field(
        None, description="cluster address (ray://host:10001 or host:6379); default $RAY_ADDRESS, else a local cluster"
    )
    replicas: int | None = Field(
        None, ge=1, le=4096, description="workers (engine replicas); default: as many as the cluster's CPUs/GPUs fit"
    )
    num_cpus: float = Field(1, gt=0, description="CPUs each worker reserves")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each worker reserves; default for generate: on a cluster with GPUs, the vLLM "
        "tensor-parallel size or 1 for a transformers teacher; 0 for curate (set it for a GPU judge)",
    )
    max_restarts: int = Field(3, ge=0, le=100, description="times a killed worker is restarted (its shard is redone)")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster started when no address is set")
    env: list[str] = Field(
        default_factory=list,
        description="names of environment variables the driver passes to every worker (values never logged); "
        "the teacher's and judges' api_key_env, HF_TOKEN and thread settings are passed when set",
    )
    start_timeout_s: float = Field(
        900, gt=0, description="seconds for every worker to be placed and load its model, else a one-line error"
    )
    shard_timeout_s: float = Field(
        3600, gt=0, description="seconds one shard may take on a worker, then it is restarted and the shard redone"
    )
    shards_in_flight: int = Field(
        2,
        ge=1,
        le=64,
        description="shards sent to each worker at once: the next waits on the worker while one runs, so it "
        "never idles while the driver writes; a vLLM or server teacher runs them together (one batch)",
    )


class RuntimeSpec(Strict):
    """Where and how models run: this machine's device and threads, and the executor that spreads the work."""

    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads; on a busy 2-core box 1 can beat 2")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    executor: Literal["local", "ray"] = Field(
        "local", description="'ray': generate's shards and curate's row checks run on a pool of Ray workers"
    )
    ray: RaySpec = Field(default_factory=RaySpec)

    @model_validator(mode="after")
    def _address_needs_ray(self) -> RuntimeSpec:
        """A cluster address with the local executor would run locally without a word: say so instead."""
        if self.ray.address and self.executor != "ray":
            raise ValueError(
                f"runtime.ray.address is {self.ray.address!r} but runtime.executor is {self.executor!r}: "
                "set runtime.executor: ray to use that cluster, or remove the address"
            )
        return self


class ModelSpec(Strict):
    """The student model."""

    path: str = Field("smollm2", description="'smollm2' = the embedded SmolLM2-135M-Instruct, else a folder")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="sft run: pretrained = the weights at model.path; random = a model of the same shape with "
        "fresh random weights (seeded by train.seed), the from-scratch baseline a distilled student is compared "
        "with (trains into train/<arm>-scratch/ unless train.name says otherwise)",
    )


class OpenAISettings(Strict):
    """How to reach an OpenAI-compatible server. The API key comes from the environment only."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = Field(None, description="model name sent to the server (default: teacher.path)")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable with the key")
    concurrency: int = Field(8, ge=1, le=1024)
    max_retries: int = Field(5, ge=0, le=100)
    timeout_s: float = Field(120.0, gt=0)
    backoff_s: float = Field(1.0, ge=0, le=600)

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str) -> str:
        """A key pasted here would be copied into the resolved recipe and the Hub card (a name is not
        a secret): refuse anything that does not look like a variable's name, without echoing it."""
        from synth.redact import is_variable_name

        if not is_variable_name(value):
            raise ValueError(
                "not an environment variable name (letters, digits and _, e.g. OPENAI_API_KEY); the key itself "
                "never goes in a recipe: export it in a variable and name that variable here"
            )
        return value


class VLLMSettings(Strict):
    """Settings for vLLM's offline engine (one `vllm.LLM` per worker; GPU, or vLLM's CPU build)."""

    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(
        1, ge=1, description="pipeline stages; a replica uses tensor_parallel_size x this many GPUs (over nodes on Ray)"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    engine_args: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM as they are")

    @model_validator(mode="before")
    @classmethod
    def _no_data_parallel(cls, data: Any) -> Any:
        """`vllm.LLM` refuses data_parallel_size > 1 outside its external launcher: replicas are Ray workers."""
        if not isinstance(data, dict) or "data_parallel_size" not in data:
            return data
        if data["data_parallel_size"] == 1:  # the old default, in every recipe.resolved.yaml written before
            return {k: v for k, v in data.items() if k != "data_parallel_size"}
        raise ValueError(
            "data_parallel_size is not a vllm.LLM setting here: remove it; several engine replicas are Ray "
            "workers (runtime.executor: ray, runtime.ray.replicas)"
        )


class TeacherSpec(Strict):
    """The model that writes the completions, and the view of the prompt it gets."""

    path: str = Field("self", description="'self' = the student's own initial weights, else a model")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    engine: Literal["transformers", "openai", "vllm"] = "transformers"
    system_prompt: str | None = Field(None, description="privileged context: only the teacher sees it")
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class PromptsSpec(Strict):
    """Where the prompts come from and which columns hold them."""

    path: str | None = Field(None, description="local .jsonl/.json/.parquet/.csv file")
    dataset: str | None = Field(None, description="a name for datasets.load_dataset, instead of a path")
    dataset_config: str | None = None
    split: str = "train"
    prompt_column: str = "prompt"
    messages_column: str | None = Field(None, description="a column of chat messages instead of a string")
    id_column: str | None = Field("id", description="source ids kept in meta, used when present")
    system_prompt: str | None = Field(None, description="system prompt the student sees (both views)")
    meta_columns: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)


class SynthesizeSpec(Strict):
    """`synth prompts`: new user prompts written by the teacher itself (Magpie), filtered and written as
    a prompts file for `prompts.path`."""

    out: str = Field(..., description="the JSONL prompts file to write (under the folder you run in)")
    n: int = Field(200, ge=1, description="prompts to keep")
    candidates: int = Field(1000, ge=1, description="at most this many sampled before stopping short of n")
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=8, description="a prompt cut here is rejected (an unfinished request)")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(80, ge=1)
    system_prompt: str | None = Field(None, description="the system turn before the user's (default: the template's)")
    eval_sets: list[str] | None = Field(
        None, description="prompt files (column prompt) no kept prompt may overlap (default: eval.prompts)"
    )
    decontaminate_ngram: int = Field(13, ge=3, le=50, description="as curate's decontaminate check")
    seed: int = Field(0, ge=0, lt=2**31)
    batch_size: int = Field(64, ge=1, description="candidates sampled together")


class GenerateSpec(Strict):
    """Sampling parameters and batching for `synth generate`."""

    n: int = Field(4, ge=1, le=256, description="samples per prompt")
    temperature: float = Field(0.7, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    logprobs: int | None = Field(None, ge=1, le=20, description="keep the teacher's top-k logprobs")
    batch_size: int = Field(64, ge=1, description="sequences per forward pass (transformers engine)")
    prompts_per_shard: int = Field(32, ge=1, description="prompts per parquet shard (the unit of resume)")


# --- the recipe's `train:` and `eval:` sections (read by `sft`; here so that synth never imports sft) ---


class LoraSpec(Strict):
    """PEFT LoRA adapter settings; `enabled: false` means a full fine-tune."""

    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class KDSpec(Strict):
    """Soft-label distillation (`train.objective: kd`): loss = alpha·CE + (1 − alpha)·T²·D(teacher_T ‖ student_T).
    `temperature` and `beta` also set T and D for `codistill`."""

    source: Literal["stored", "model"] = Field(
        "stored",
        description="stored: the top-k log-probabilities `synth generate` recorded (generate.logprobs); "
        "model: train.teacher run alongside, full vocabulary",
    )
    alpha: float = Field(0.0, ge=0, le=1, description="weight of the hard-label cross-entropy")
    temperature: float = Field(
        1.0, gt=0, le=20, description="T: both distributions softened by T, the loss scaled by T² (1-4 is usual)"
    )
    beta: float = Field(0.0, ge=0, le=1, description="D: 0 = forward KL, 1 = reverse KL, between: generalized JSD")
    tail: bool = Field(True, description="stored: the mass outside the top-k as one extra bucket")
    cross_tokenizer: Literal["auto", "off"] = Field(
        "auto",
        description="stored: soft labels of a teacher whose tokenizer is not the student's; auto: aligned by text "
        "(KL on the teacher's top-k mapped to the student's tokens where one token matches one, ULD on sorted "
        "probabilities where the tokenisers split the text differently); off: refuse them",
    )
    corrected: Literal["refuse", "leave_out"] = Field(
        "refuse",
        description="stored: rows a reviewer corrected (synth review pull) have soft labels for the teacher's "
        "original answer, not the correction; refuse: stop and say so; leave_out: train without those rows",
    )
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="model (and train.objective=gkd): weight of a hidden-state loss between each student layer and "
        "the teacher layer it maps onto (a pruned student's prune.json says which; else the same layer count is "
        "required; the hidden sizes must agree, so not for a width-pruned student)",
    )


class CodistillSpec(Strict):
    """Co-distillation (`train.objective: codistill`): the student and a partner trained at once, each with
    loss = CE + w·T²·D(other ‖ itself) (T and D: train.kd.temperature and train.kd.beta)."""

    partner: str = Field(
        "teacher",
        description="teacher: train.teacher ('self' = the student's initial weights) reading teacher_prompt, "
        "trained together with the student; or another model with the student's tokenizer, a second student "
        "reading the student's prompt ('self': another copy of the student, with its own LoRA adapter)",
    )
    weight: float = Field(1.0, ge=0, description="w: weight of the divergence to the other model")
    warmup_steps: int = Field(
        0, ge=0, description="w rises linearly from 0 over these first steps (early predictions are not worth copying)"
    )


class TrainSpec(Strict):
    """How `sft run` trains the student on curated/kept.parquet."""

    objective: Literal["sft", "gkd", "kd", "codistill"] = "sft"
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="the arm's folder under train/ and its name in `sft eval` (default: the objective's: sft, "
        "gkd, kd-stored, kd-model, codistill (its partner: codistill-partner); with model.init=random, that + "
        "'-scratch'): arms that differ in something else than the objective (another student, a schedule) "
        "need their own",
    )
    teacher: str = Field(
        "self",
        description="gkd and kd with source model: 'self' (the student's initial weights on teacher_prompt) "
        "or another model with the same tokenizer",
    )
    kd: KDSpec = Field(default_factory=KDSpec)
    codistill: CodistillSpec = Field(default_factory=CodistillSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)
    save_steps: int = Field(10, ge=1, description="a checkpoint every N steps (--resume continues from the last)")
    seed: int = Field(0, ge=0, lt=2**32)
    targets: Literal["text", "stored"] = Field(
        "text",
        description="text: the completion tokenised with the chat template, loss at every completion token "
        "(the template's closing tokens too); stored: the teacher's sampled token ids (generate.logprobs), "
        "loss only where the teacher generated, so sft and kd with stored labels learn the same tokens",
    )
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(
        None,
        min_length=1,
        description="train one model per seed, each in train/<arm>/seed-<s>/ (replaces seed); `sft eval` "
        "then reports each arm over its seeds, with intervals over seeds and prompts",
    )
    # gkd (TRL GKDTrainer) parameters
    lmbda: float = Field(0.5, ge=0, le=1, description="share of steps trained on the student's own samples")
    lmbda_start: float | None = Field(
        None,
        ge=0,
        le=1,
        description="gkd schedule: lmbda at step 0, moving linearly to lmbda over lmbda_ramp_steps (e.g. 0 → 1: "
        "the teacher's curated answers first, the student's own samples once it writes something worth scoring)",
    )
    lmbda_ramp_steps: int = Field(0, ge=0, description="gkd schedule: steps over which lmbda_start moves to lmbda")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD: 0 = forward KL, 1 = reverse KL")
    temperature: float = Field(0.9, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    seq_kd: bool = False
    args: dict[str, Any] = Field(default_factory=dict, description="passed to TRL's SFTConfig / GKDConfig as is")

    @property
    def folder(self) -> str:
        """The output folder under train/ (and the name `sft eval` shows): `name`, else the objective's
        (kd runs say their source)."""
        if self.name is not None:
            return self.name
        return f"kd-{self.kd.source}" if self.objective == "kd" else self.objective

    @property
    def partner_folder(self) -> str:
        """co-distillation: the arm the partner is saved as (train/<folder>-partner)."""
        return f"{self.folder}-partner"

    def runs(self) -> list[tuple[int, str]]:
        """(seed, folder under train/) of every model `sft run` trains: one, or one per `seeds` entry."""
        if self.seeds is None:
            return [(self.seed, self.folder)]
        return [(s, f"{self.folder}/seed-{s}") for s in self.seeds]

    @model_validator(mode="after")
    def _ramp_has_steps(self) -> TrainSpec:
        if self.lmbda_start is not None and self.lmbda_ramp_steps == 0:
            raise ValueError("train.lmbda_start needs train.lmbda_ramp_steps > 0 (the steps to move to train.lmbda)")
        return self

    @model_validator(mode="after")
    def _distinct_seeds(self) -> TrainSpec:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds repeats a seed: {self.seeds}")
        return self


class PruneSpec(Strict):
    """`sft prune`: a smaller student made from a model by removing its least important layers (depth)
    and/or its least active channels and heads (width)."""

    source: str = Field("self", description="the model to prune: 'self' = teacher.path (else model.path), or a model")
    out: str = Field(..., description="the folder to write (a plain transformers model); name it in model.path")
    drop: int | None = Field(None, ge=1, description="layers to remove")
    keep_ratio: float | None = Field(None, gt=0, lt=1, description="or: the share of layers to keep")
    method: Literal["block_influence", "block_distance"] = Field(
        "block_influence",
        description="block_influence: the layers that change the hidden state least (ShortGPT); "
        "block_distance: one contiguous block (angular distance)",
    )
    hidden_size: int | None = Field(
        None, ge=1, description="width: the hidden (embedding) channels to keep, the most active ones (Minitron)"
    )
    intermediate_size: int | None = Field(None, ge=1, description="width: MLP channels to keep in every layer")
    kv_heads: int | None = Field(
        None, ge=1, description="width: key-value head groups to keep in every layer (their query heads follow)"
    )
    calibration: PromptsSpec = Field(default_factory=PromptsSpec, description="prompts the importance is measured on")
    max_length: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _one_size(self) -> PruneSpec:
        if self.drop is not None and self.keep_ratio is not None:
            raise ValueError("give at most one of drop or keep_ratio")
        width = (self.hidden_size, self.intermediate_size, self.kv_heads)
        if self.drop is None and self.keep_ratio is None and all(v is None for v in width):
            raise ValueError("give drop or keep_ratio (depth), or hidden_size, intermediate_size, kv_heads (width)")
        return self


class BenchmarksSpec(Strict):
    """Standard benchmarks beside the behaviour eval: lm-evaluation-harness tasks run on every model
    `sft eval` loads with transformers (its `hf` model type), so that a compressed student can be stated
    as "N% smaller at M% loss" the way papers do. Each task's first metric is reported per model with an
    interval over examples (and seeds), and paired between models on the same examples."""

    tasks: list[str] = Field(
        min_length=1,
        description="lm-eval task names (arc_easy, hellaswag, piqa, winogrande: their data comes from the Hub) "
        "or paths to a task YAML in lm-eval's format (relative to the recipe; its data_files relative to it)",
    )
    limit: int | None = Field(None, ge=1, description="examples per task (default: all)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: each task's own)")
    batch_size: int = Field(8, ge=1)
    chat_template: bool = Field(False, description="wrap each example in the model's chat template")

    @model_validator(mode="before")
    @classmethod
    def _tasks_only(cls, data: Any) -> Any:
        """`eval.benchmarks: [arc_easy, piqa]` is short for `eval.benchmarks: {tasks: [arc_easy, piqa]}`."""
        return {"tasks": data} if isinstance(data, list) else data


class EvalSpec(Strict):
    """How `sft eval` compares base student, trained student(s) and teacher."""

    prompts: str = Field("data/heldout_prompts.jsonl", description="held-out prompts (prompt column)")
    prompt_column: str | None = Field(
        None, description="the held-out file's prompt column (default: prompts.prompt_column, the training prompts')"
    )
    limit: int | None = Field(None, ge=1)
    behaviour_check: str | list[str] | None = Field(
        None, description="curate check(s) that define the behaviour; all must pass (default: curate.score)"
    )
    samples: int = Field(0, ge=0, le=64, description="sampled answers per prompt beside the greedy one (sample 0)")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.0, ge=0, description="sample 0's temperature (0 = greedy); samples use generate's")
    batch_size: int = Field(64, ge=1, description="sequences per forward pass (transformers engine)")
    objectives: list[str] = Field(default_factory=list, description="train folders to compare (default: all found)")
    benchmarks: BenchmarksSpec | None = Field(None, description="lm-evaluation-harness tasks on every model")

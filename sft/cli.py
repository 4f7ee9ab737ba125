"""`sft`: the training side of Distillery (student training and before/after evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from synth.cli_common import recipe_command, run_app
from synth.recipe import PATHS_RULE, Recipe
from synth.tables import key_values, summary_table

app = typer.Typer(
    name="sft",
    help=(
        "Train a student on a run's curated data with TRL, and compare it with the teacher.\n\n"
        "Reads the `train:` and `eval:` sections of the same recipe that `synth` used, and writes "
        "runs/RECIPE_NAME/train/ and runs/RECIPE_NAME/eval/.\n\n" + PATHS_RULE
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@recipe_command(
    app,
    interrupted="add --resume to the same command to continue from the last checkpoint (without it, "
    "training starts again from step 0).",
)
def run(
    recipe: Recipe,
    run_dir: Path,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in RUN_DIR/train/."),
) -> None:
    """Train the student (hard labels, soft labels or on-policy distillation) on RUN_DIR/curated/kept.parquet.

    `train.objective=sft` runs TRL's SFTTrainer on the curated answers (loss on the completion
    only); `train.objective=kd` adds the teacher's probabilities (soft labels): the top-k
    log-probabilities `synth generate` stored (`train.kd.source=stored`; a teacher with another
    tokenizer is aligned to the student's tokens by text) or a teacher model run alongside
    (`train.kd.source=model`); `train.objective=gkd` runs TRL's GKDTrainer with the teacher (by
    default the student's own initial weights) reading `teacher_prompt`, the privileged view;
    `train.objective=codistill` trains the student and its teacher (or a second student) together,
    each taught by the other, and saves the partner as RUN_DIR/train/codistill-partner/. LoRA by
    default (`train.lora.enabled=false` for a full fine-tune). Writes
    RUN_DIR/train/OBJECTIVE/ (kd: kd-stored or kd-model): checkpoints,
    `final/` (adapter or model + tokenizer), `log.json`; with `train.seeds=[0,1,2]`, one such folder
    per seed, RUN_DIR/train/OBJECTIVE/seed-S/, for comparisons with intervals over seeds. Several processes:
    `accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m sft.cli run RECIPE`.
    """
    from sft.training.run import train_all

    summaries = train_all(recipe, run_dir, resume=resume)
    for s in summaries:
        skipped = [("skipped (incomplete)", ", ".join(s.skipped_checkpoints))] if s.skipped_checkpoints else []
        rows = [
            ("objective", s.objective),
            ("curated rows", s.rows),
            ("rows trained", s.rows_trained),
            ("max_length", s.lengths.sentence() if s.lengths else "no row truncated or dropped"),
            ("resumed_from", s.resumed_from or "-"),
            *skipped,
            ("steps (total)", s.steps),
            ("steps this run", s.steps_run),
            ("time", f"{s.seconds:.1f} s"),
            ("seconds per step", _step_time(s.seconds_per_step, s.throughput)),
            ("trained tokens/s", _rate(s.throughput)),
            ("first / last logged loss", f"{s.first_loss or 0:.4f} / {s.last_loss or 0:.4f}"),
            ("saved", s.out_dir / "final"),
        ]
        Console().print(key_values(f"sft run: {s.out_dir}", rows))


def _step_time(mean: float, throughput: dict) -> str:
    """`11.4 (median 11.2 [10.9-12.0] after the first step)`: the mean includes saves and warm-up."""
    clock = throughput.get("step_seconds")
    if not clock or clock["steps"] < 2:
        return f"{mean:.1f}"
    lo, hi = clock["spread"]
    return f"{mean:.1f} (median {clock['median']:.1f} [{lo:.1f}-{hi:.1f}] after the first step)"


def _rate(throughput: dict) -> str:
    """`412 tokens/s (MFU 18% of 41 GFLOP/s, float32 matmul measured now)`, or what is known of it."""
    if not throughput.get("tokens_per_s"):
        return "-"
    text = f"{throughput['tokens_per_s']:.0f} ({throughput['tokens']:,} tokens)"
    if throughput.get("mfu") is not None:
        dtype = throughput.get("peak_dtype", "float32")
        text += f"; MFU {throughput['mfu']:.0%} of {throughput['peak_gflops']:.0f} GFLOP/s ({dtype} matmul, now)"
    return text


@recipe_command(app, "eval", interrupted="an eval starts over: run the same command again.")
def evaluate(recipe: Recipe, run_dir: Path, recipe_dir: Path) -> None:
    """Compare teacher, base student and trained student(s) on the held-out prompts: gains AND losses.

    Each model answers `eval.prompts` (students: the student's view; teacher: the teacher's view,
    through `teacher.engine`): one greedy answer per prompt, plus `eval.samples` sampled ones.
    Leads with four rates per model, each with a bootstrap 95% interval over prompts: behaviour
    (every `eval.behaviour_check` passes), clean (every other curate check passes, but `truncated`), joint (both)
    and relevance (prompt↔answer embedding similarity, English answers, `relevance` extra); beside
    them the empty rate and, over non-empty answers, finished (not cut at eval.max_new_tokens) and
    loop-free. Prints a WARNING, and marks the student "regressed", when a trained student's
    clean, loop-free, non-empty or relevance rate falls below 0.9× the base student's, and a WARNING
    naming any model whose answers are mostly empty or mostly one text (a student's one text that is
    the teacher's own most common answer aside). Fidelity to the teacher, per model:
    KL(teacher ‖ model) and perplexity on the teacher's greedy answers (teacher-forced, bootstrap intervals, paired
    differences between students), parameter count and greedy tokens/s. With `eval.benchmarks`, each
    model's lm-evaluation-harness scores, paired between models on the same examples. Writes RUN_DIR/eval/:
    answers.parquet (every answer with its verdicts), report.json, report.md and report.png.
    """
    from sft.evaluation.report import BENCHMARK_HEADER, HEADLINE, benchmark_rows, headline_rows
    from sft.evaluation.run import run_eval

    rep = run_eval(recipe, run_dir, recipe_dir=recipe_dir, console=Console(stderr=True))
    t = summary_table(
        f"sft eval: {rep['prompts']} held-out prompts × {rep['samples_per_prompt']} answer(s); "
        f"rates [95% CI]; behaviour = {' + '.join(rep['behaviour_checks'])}",
        HEADLINE,
        headline_rows(rep),
        left={"verdict"},
        style=lambda row: "bold red" if row[-1] == "regressed" else None,
        no_wrap=True,
    )
    console = Console()
    if not console.is_terminal:  # a log file or pipe: keep each interval on one line
        console = Console(width=260)
    console.print(t)
    if rows := benchmark_rows(rep):
        console.print(summary_table("benchmarks (lm-eval) [95% CI]", BENCHMARK_HEADER, rows, left={"task", "metric"}))
    if rep.get("benchmarks_note"):
        console.print(rep["benchmarks_note"], highlight=False)
    for w in rep["warnings"]:
        console.print(f"[bold red]{w}[/]", highlight=False)
    console.print(f"answers, report and picture: {run_dir / 'eval'}/", highlight=False)


WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@recipe_command(app, "prune", interrupted="pruning starts over: run the same command again.")
def prune(recipe: Recipe, run_dir: Path, recipe_dir: Path) -> None:
    """Make a smaller student by removing the teacher's least important layers and channels.

    Reads the recipe's `prune:` section: the model to prune (`source`, default the teacher), how many
    layers to drop (`drop` or `keep_ratio`), and calibration prompts. Each layer's importance is its
    Block Influence on those prompts (1 − cosine similarity of the hidden state entering and leaving
    it, ShortGPT/Minitron style); the least important go, never the first or the last. Writes a
    plain transformers model folder to `prune.out` (with prune.json: what was dropped and every
    layer's importance) for `model.path` to name; `sft run` with `train.objective=kd` then recovers
    it from the teacher's probabilities.

    Width (`hidden_size`, `intermediate_size`, `kv_heads`), after the depth cut: the hidden channels,
    MLP channels and key-value head groups least active on the calibration prompts go (Minitron); the
    way below ~60% of the parameters when the embeddings are a large share of them.
    """
    from sft.compression.prune import prune_model
    from synth.errors import UserError
    from synth.models import resolve_model
    from synth.prompts import load_prompts
    from synth.recipe import teacher_path
    from synth.runtime import check_device

    spec = recipe.prune
    if spec is None:
        raise UserError(
            "the recipe has no prune: section", "add prune: {out: FOLDER, drop: N}; see recipes/compress-smollm2.yaml"
        )
    source = teacher_path(recipe) if spec.source == "self" else spec.source
    source_dir = resolve_model(source)[0]
    if Path(spec.out).expanduser().resolve() == Path(source_dir).resolve():
        raise UserError(f"prune.out {spec.out!r} is the model being pruned", "write the student to another folder")
    items, _ = load_prompts(spec.calibration, recipe.teacher, recipe_dir, field="prune.calibration.path")
    prompts = [it.prompt for it in items if it.error is None]
    if not prompts:
        raise UserError("prune.calibration: no usable prompt", "point prune.calibration.path at a prompts file")
    s = prune_model(
        source_dir,
        spec.out,
        prompts,
        n_drop=spec.drop,
        keep_ratio=spec.keep_ratio,
        method=spec.method,
        max_length=spec.max_length,
        device=check_device(recipe.runtime.device),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        kv_heads=spec.kv_heads,
    )
    width = [(k, f"{a} → {b}") for k, (a, b) in ((k, (s.width or {}).get(k, (0, 0))) for k in WIDTH_FIELDS) if a != b]
    rows = [
        ("source", source),
        ("layers", f"{s.layers_before} → {s.layers_after}"),
        *width,
        ("parameters", f"{s.params_before / 1e6:.1f}M → {s.params_after / 1e6:.1f}M"),
        ("dropped layers", ", ".join(map(str, s.dropped)) or "-"),
        ("calibration prompts", s.calibration_prompts),
        ("per-layer config cut", ", ".join(s.config_fields) or "-"),
        ("reloaded, max logit diff", f"{s.reload_max_logit_difference:.1e}"),
        ("saved", s.out_dir),
    ]
    Console().print(key_values(f"sft prune ({s.method})", rows))


@recipe_command(app, "publish", recipe_help="The YAML recipe whose trained student to publish.", runtime=False)
def publish(
    recipe: Recipe,
    run_dir: Path,
    repo_id: str = typer.Option(None, "--repo-id", help="Model repo ORG/NAME (default: publish.model_repo_id)."),
    private: bool = typer.Option(None, "--private/--public", help="Repo visibility (default: publish.private)."),
    objective: str = typer.Option(
        None,
        "--objective",
        help="Which trained student: sft, gkd, kd-stored, kd-model, codistill, codistill-partner (or any arm "
        "under RUN_DIR/train/), or ARM/seed-S for one seed of "
        "train.seeds (default: the recipe's).",
    ),
    dataset: str = typer.Option(None, "--dataset", help="Dataset repo the card links (default: publish.repo_id)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write RUN_DIR/publish/model/, the exact upload."),
) -> None:
    """Push RUN_DIR/train/OBJECTIVE/final (LoRA adapter or full model) to the Hugging Face Hub.

    Adds a model card linking the base model, the dataset, the objective and the eval report
    (RUN_DIR/eval/report.json). The token comes from $HF_TOKEN or `hf auth login`, never from the
    recipe; $HF_ENDPOINT points at another Hub.
    """
    from synth.publish.dataset import summary_table as publish_table
    from synth.publish.model import run_publish_model

    s = run_publish_model(recipe, run_dir, repo_id, private, objective, dataset, dry_run)
    Console().print(publish_table(s))


def main() -> None:
    """Console-script entry point."""
    run_app(app, "sft")


if __name__ == "__main__":
    main()

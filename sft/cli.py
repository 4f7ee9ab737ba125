"""`sft`: the training side of Distillery (student training and before/after evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer

from synth.cli_common import OVERRIDES_HELP, guarded, load, run_dir_for

app = typer.Typer(
    name="sft",
    help=(
        "Train a student on a run's curated data with TRL, and compare it with the teacher.\n\n"
        "Reads the `train:` and `eval:` sections of the same recipe that `synth` used, and writes "
        "runs/RECIPE_NAME/train/ and runs/RECIPE_NAME/eval/."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="The YAML recipe."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in RUN_DIR/train/."),
    run_dir: Path = typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME."),
) -> None:
    """Train the student (SFT, or on-policy logit distillation) on RUN_DIR/curated/kept.parquet.

    `train.objective=sft` runs TRL's SFTTrainer on the curated answers (loss on the completion
    only); `train.objective=gkd` runs TRL's GKDTrainer with the teacher (by default the student's own
    initial weights) reading `teacher_prompt`, the privileged view. LoRA by default
    (`train.lora.enabled=false` for a full fine-tune). Writes RUN_DIR/train/OBJECTIVE/: checkpoints,
    `final/` (adapter or model + tokenizer), `log.json`. Several processes:
    `accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m sft.cli run RECIPE`.
    """

    def body() -> None:
        from rich.console import Console
        from rich.table import Table

        from sft.train import run_train
        from synth import runtime

        r = load(recipe, overrides)
        runtime.configure(r.runtime)
        s = run_train(r, run_dir_for(r, run_dir), resume=resume)
        t = Table(title=f"sft run: {s.out_dir}")
        t.add_column("what")
        t.add_column("value", justify="right")
        for k, v in [
            ("objective", s.objective),
            ("curated rows", str(s.rows)),
            ("steps (total)", str(s.steps)),
            ("steps this run", str(s.steps_run)),
            ("time", f"{s.seconds:.1f} s"),
            ("seconds per step", f"{s.seconds_per_step:.1f}"),
            ("first / last logged loss", f"{s.first_loss or 0:.4f} / {s.last_loss or 0:.4f}"),
            ("saved", str(s.out_dir / "final")),
        ]:
            t.add_row(k, v)
        Console().print(t)

    guarded(body)


@app.command("eval")
def evaluate(
    recipe: Path = typer.Argument(..., help="The YAML recipe."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    run_dir: Path = typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME."),
) -> None:
    """Compare base student, trained student and teacher on the held-out prompts.

    Each model answers `eval.prompts` (students: the student's view; teacher: the teacher's view).
    Reports the compliance rate of `eval.behaviour_check` (a curate check by name), every other
    curate check's pass rate, the LLM-judge mean score if configured, and top-1 agreement with the
    teacher. Writes RUN_DIR/eval/report.json and report.md.
    """

    def body() -> None:
        from rich.console import Console
        from rich.table import Table

        from sft.evaluate import run_eval
        from synth import runtime

        r = load(recipe, overrides)
        runtime.configure(r.runtime)
        rep = run_eval(r, run_dir_for(r, run_dir), recipe_dir=recipe.parent)
        t = Table(title=f"sft eval: {rep['prompts']} held-out prompts, behaviour check {rep['behaviour_check']!r}")
        for col in ("model", "compliance", "x teacher", "top-1 agreement", "seconds"):
            t.add_column(col, justify="left" if col == "model" else "right")
        for name, rate in rep["compliance"].items():
            agree = rep["agreement_top1_with_teacher"].get(name)
            t.add_row(
                name,
                f"{rate:.3f}",
                f"{rep['ratio_to_teacher'][name]:.2f}",
                "-" if agree is None else f"{agree:.3f}",
                str(rep["seconds"][name]),
            )
        Console().print(t)

    guarded(body)


@app.command("publish")
def publish(
    recipe: Path = typer.Argument(..., help="The YAML recipe whose trained student to publish."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    repo_id: str = typer.Option(None, "--repo-id", help="Model repo ORG/NAME (default: publish.model_repo_id)."),
    private: bool = typer.Option(None, "--private/--public", help="Repo visibility (default: publish.private)."),
    objective: str = typer.Option(
        None, "--objective", help="Which trained student: sft or gkd (default: train.objective)."
    ),
    dataset: str = typer.Option(None, "--dataset", help="Dataset repo the card links (default: publish.repo_id)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write RUN_DIR/publish/model/, the exact upload."),
    run_dir: Path = typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME in this folder."),
) -> None:
    """Push RUN_DIR/train/OBJECTIVE/final (LoRA adapter or full model) to the Hugging Face Hub.

    Adds a model card linking the base model, the dataset, the objective and the eval report
    (RUN_DIR/eval/report.json). The token comes from $HF_TOKEN or `hf auth login`, never from the
    recipe; $HF_ENDPOINT points at another Hub.
    """

    def body() -> None:
        from rich.console import Console

        from synth.publish.dataset import summary_table
        from synth.publish.model import run_publish_model

        r = load(recipe, overrides)
        s = run_publish_model(r, run_dir_for(r, run_dir), repo_id, private, objective, dataset, dry_run)
        Console().print(summary_table(s))

    guarded(body)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""`sft`: the training side of Distillery (student training and before/after evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer

from synth.cli_common import OVERRIDES_HELP, guarded, load, run_app, run_dir_for

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
        rows = [
            ("objective", s.objective),
            ("curated rows", str(s.rows)),
            ("rows trained", str(s.rows_trained)),
            ("max_length", s.lengths.sentence() if s.lengths else "no row truncated or dropped"),
            ("resumed_from", s.resumed_from or "-"),
            ("steps (total)", str(s.steps)),
            ("steps this run", str(s.steps_run)),
            ("time", f"{s.seconds:.1f} s"),
            ("seconds per step", f"{s.seconds_per_step:.1f}"),
            ("first / last logged loss", f"{s.first_loss or 0:.4f} / {s.last_loss or 0:.4f}"),
            ("saved", str(s.out_dir / "final")),
        ]
        if s.skipped_checkpoints:
            rows.insert(5, ("skipped (incomplete)", ", ".join(s.skipped_checkpoints)))
        for k, v in rows:
            t.add_row(k, v)
        Console().print(t)

    guarded(body)


@app.command("eval")
def evaluate(
    recipe: Path = typer.Argument(..., help="The YAML recipe."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    run_dir: Path = typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME."),
) -> None:
    """Compare teacher, base student and trained student(s) on the held-out prompts: gains AND losses.

    Each model answers `eval.prompts` (students: the student's view; teacher: the teacher's view,
    through `teacher.engine`): one greedy answer per prompt, plus `eval.samples` sampled ones.
    Leads with four rates per model, each with a bootstrap 95% interval over prompts: behaviour
    (every `eval.behaviour_check` passes), clean (every other curate check passes), joint (both)
    and relevance (prompt↔answer embedding similarity, English answers, `relevance` extra). Prints a
    WARNING, and marks the student "regressed", when a trained student's clean or relevance rate
    falls below 0.9× the base student's. Writes RUN_DIR/eval/: answers.parquet (every answer with
    its verdicts), report.json, report.md and report.png.
    """

    def body() -> None:
        from rich.console import Console
        from rich.table import Table

        from sft.eval_report import HEADLINE, headline_rows
        from sft.evaluate import run_eval
        from synth import runtime

        r = load(recipe, overrides)
        runtime.configure(r.runtime)
        rep = run_eval(r, run_dir_for(r, run_dir), recipe_dir=recipe.parent, console=Console(stderr=True))
        t = Table(
            title=f"sft eval: {rep['prompts']} held-out prompts × {rep['samples_per_prompt']} answer(s); "
            f"rates [95% CI]; behaviour = {' + '.join(rep['behaviour_checks'])}"
        )
        for col in HEADLINE:
            t.add_column(col, justify="left" if col in ("model", "verdict") else "right", no_wrap=True)
        for row in headline_rows(rep):
            t.add_row(*row, style="bold red" if row[-1] == "regressed" else None)
        console = Console()
        if not console.is_terminal:  # a log file or pipe: keep each interval on one line
            console = Console(width=220)
        console.print(t)
        for w in rep["warnings"]:
            console.print(f"[bold red]{w}[/]", highlight=False)
        console.print(f"answers, report and picture: {run_dir_for(r, run_dir) / 'eval'}/", highlight=False)

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
    run_app(app, "sft")


if __name__ == "__main__":
    main()

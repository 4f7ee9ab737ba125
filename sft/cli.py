"""`sft`: the training side of Distillery (student training and before/after evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer

from synth.cli_common import OVERRIDES_HELP, guarded, load
from synth.errors import UserError

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
    """Train the student (SFT, or on-policy logit distillation) on RUN_DIR/curated/kept.parquet."""

    def body() -> None:
        load(recipe, overrides)
        raise UserError("`sft run` is not part of this release yet: the training stage is still being built")

    guarded(body)


@app.command("eval")
def evaluate(
    recipe: Path = typer.Argument(..., help="The YAML recipe."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    run_dir: Path = typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME."),
) -> None:
    """Compare base student, trained student and teacher on the held-out prompts."""

    def body() -> None:
        load(recipe, overrides)
        raise UserError("`sft eval` is not part of this release yet: the evaluation stage is still being built")

    guarded(body)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""What both command-line programs share: recipe loading and error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from synth.errors import UserError
from synth.recipe import Recipe, load_recipe

T = TypeVar("T")
err_console = Console(stderr=True)

OVERRIDES_HELP = (
    "Overrides in the recipe's own field paths, e.g. `generate.n=4 prompts.path=my.jsonl "
    "teacher.engine=openai`. Values are read as YAML (numbers, true/false, null)."
)


def run_dir_for(recipe: Recipe, run_dir: Path | None) -> Path:
    """`runs/RECIPE_NAME` under the working folder unless --run-dir says otherwise."""
    return run_dir if run_dir is not None else Path("runs") / recipe.name


def load(recipe_path: Path, overrides: list[str] | None) -> Recipe:
    return load_recipe(recipe_path, overrides or [])


def guarded(body: Callable[[], T]) -> T:
    """Run a command body; user mistakes and Ctrl-C end with a message, never a traceback."""
    try:
        return body()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(
            "\n[bold yellow]interrupted.[/] Everything already written is complete and kept; "
            "run the same command again to continue where it stopped."
        )
        sys.exit(130)

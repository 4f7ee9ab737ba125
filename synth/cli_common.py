"""What both command-line programs share: recipe loading and error reporting."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape

from synth.errors import UserError, first_line
from synth.recipe import Recipe, load_recipe
from synth.redact import excerpt, scrub

T = TypeVar("T")
err_console = Console(stderr=True)

OVERRIDES_HELP = (
    "Overrides in the recipe's own field paths, e.g. `generate.n=4 prompts.path=my.jsonl "
    "teacher.engine=openai`. Values are read as YAML (numbers, true/false, null)."
)


def run_dir_for(recipe: Recipe, run_dir: Path | None) -> Path:
    """`runs/RECIPE_NAME` under the working folder unless --run-dir says otherwise."""
    path = run_dir if run_dir is not None else Path("runs") / recipe.name
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(
                f"--run-dir {path}: {p} is a file, not a folder",
                "give a folder (it is created if missing), e.g. --run-dir runs/my-run",
            )
    return path


RESUMES = "run the same command again to continue where it stopped."


def load(recipe_path: Path, overrides: list[str] | None) -> Recipe:
    return load_recipe(recipe_path, overrides or [])


def recipe_command(
    app: Any,
    name: str | None = None,
    *,
    recipe_help: str = "The YAML recipe.",
    runtime: bool = True,
    interrupted: str = RESUMES,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `fn(recipe: Recipe, run_dir: Path, [recipe_dir: Path,] **options)` as a command of `app`.

    Every command takes the same RECIPE argument, `a.b=x` overrides and `--run-dir`, loads and
    validates the recipe, applies its `runtime:` section (threads, seed) when the command computes
    (`runtime=False` for commands that only move files), and turns errors into one line
    (`guarded`; `interrupted` is what its Ctrl-C line tells the user to do). The command's own
    options are `fn`'s keyword parameters, declared as Typer options;
    its docstring is the command's help.
    """
    import functools
    import inspect

    import typer

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())
        wants_dir = any(p.name == "recipe_dir" for p in own)
        options = [p for p in own if p.name not in ("recipe", "run_dir", "recipe_dir")]
        shared = [
            inspect.Parameter(
                "recipe",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=Path,
                default=typer.Argument(..., help=recipe_help),
            ),
            inspect.Parameter(
                "overrides",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=list[str],
                default=typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
            ),
        ]
        run_dir_option = inspect.Parameter(
            "run_dir",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Path,
            default=typer.Option(None, "--run-dir", help="The run folder. Default: runs/RECIPE_NAME in this folder."),
        )

        @functools.wraps(fn)
        def command(recipe: Path, overrides: list[str] | None, run_dir: Path | None, **kwargs: Any) -> None:
            def body() -> None:
                r = load(recipe, overrides)
                if runtime:
                    from synth import runtime as machine

                    machine.configure(r.runtime)
                extra = {"recipe_dir": recipe.parent} if wants_dir else {}
                fn(r, run_dir_for(r, run_dir), **extra, **kwargs)

            guarded(body, interrupted)

        params = [*shared, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in options), run_dir_option]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the signature above, not fn's
        app.command(name)(command)
        return command

    return register


# OSErrors that the user's machine causes and the user can fix: exit 2 with the path, not a traceback.
_USER_OS_ERRORS = {
    errno.ENOSPC: "free some disk space and run the same command again; complete files were kept",
    errno.EDQUOT: "free some disk space and run the same command again; complete files were kept",
    errno.EFBIG: "the file size limit (ulimit -f) or free disk space ran out; raise it and run the command again",
    errno.EACCES: "check the permissions of that path, or choose another --run-dir",
    errno.EPERM: "check the permissions of that path, or choose another --run-dir",
    errno.EROFS: "that file system is read-only; choose another --run-dir",
    errno.EISDIR: "that path is a folder where a file is expected; rename or remove it",
    errno.ENOTDIR: "a part of that path is a file where a folder is expected",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOENT: "check the path: a folder in it does not exist or cannot be created there",
    errno.EEXIST: "a file is in the way where a folder is needed; move it or choose another --run-dir",
}


def _print_error(message: str, hint: str | None) -> None:
    """One line on stderr: what is wrong, where, and what to do; secrets scrubbed, control characters
    (a server's newlines, ANSI escapes) flattened, whatever the message carries."""
    text = excerpt(message, 4000)
    if hint:
        text = f"{text} (fix: {excerpt(hint, 1000)})"
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def guarded(body: Callable[[], T], interrupted: str = RESUMES) -> T:
    """Run a command body; user mistakes and Ctrl-C end with one line, never a traceback.

    A `UserError` exits 2. So does an OSError the machine caused (disk full, permissions, a
    file where a folder belongs), naming the path. Anything else is a bug in Distillery: one line
    saying so, the traceback in a log file for the bug report, exit 1.
    """
    try:
        return body()
    except UserError as exc:
        _print_error(exc.message, exc.hint)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            _internal_error(exc)
        where = exc.filename or "a file"
        _print_error(f"{where}: {exc.strerror or exc}", _USER_OS_ERRORS[exc.errno])
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(
            f"\n[bold yellow]interrupted.[/] Everything already written is complete and kept; {interrupted}"
        )
        sys.exit(130)
    except Exception as exc:
        _internal_error(exc)


def _internal_error(exc: BaseException) -> NoReturn:
    """Report a bug in one line and keep the (scrubbed) traceback in a file for the report."""
    import tempfile
    import traceback

    trace = scrub("".join(traceback.format_exception(exc))) or ""
    try:
        fd, name = tempfile.mkstemp(prefix="distillery-error-", suffix=".log")  # never follows a planted link
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(trace)
        where = f"details in {name}"
    except OSError:
        where = "no details could be written"
    first = first_line(exc)
    _print_error(
        f"internal error {type(exc).__name__}: {first} ({where})",
        "this is a bug in Distillery, not in your input; please report it with that file",
    )
    sys.exit(1)


def run_app(app: Any, program: str) -> None:
    """Run a Typer app so that command-line mistakes, too, end in one `error:` line and exit 2.

    Click (vendored by Typer as a private module) prints usage errors as a multi-line box; here they
    get the same one line as every other mistake, with the --help to read. Its exceptions are
    recognised by their interface (`format_message`, `exit_code`), not by importing private classes.
    """
    import typer

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            _internal_error(exc)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `synth` alone: Typer has shown the help already
            sys.exit(2)
        where = ctx.command_path if ctx is not None else program
        _print_error(f"{where}: {exc.format_message()}", f"see `{where} --help`")
        sys.exit(exc.exit_code or 2)
    sys.exit(code if isinstance(code, int) else 0)

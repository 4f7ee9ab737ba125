"""`synth`: the data side of Distillery (generate, curate, review, publish)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from synth import __version__, tables
from synth.cli_common import recipe_command, run_app
from synth.errors import UserError
from synth.recipe import PATHS_RULE, Recipe

app = typer.Typer(
    name="synth",
    help=(
        "Make synthetic instruction data from a teacher model, driven by one YAML recipe.\n\n"
        "Each stage reads its section of the recipe and writes into runs/RECIPE_NAME/. "
        "Start with `synth probe recipes/concise-answers.yaml` (does the teacher show the behaviour?), then "
        "`synth generate recipes/concise-answers.yaml --limit 4`.\n\n" + PATHS_RULE
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distillery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Distillery's data tools."""


@recipe_command(app, recipe_help="The YAML recipe, e.g. recipes/concise-answers.yaml.")
def generate(
    recipe: Recipe,
    run_dir: Path,
    recipe_dir: Path,
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N prompts (after dropping repeats)."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Generate again the prompts whose rows failed (e.g. the server gave up)."
    ),
) -> None:
    """Sample `generate.n` teacher completions for every prompt.

    Writes parquet shards to RUN_DIR/generations/ (readable with
    `datasets.load_dataset("parquet", data_files=...)`), a `_manifest.json`, and
    RUN_DIR/recipe.resolved.yaml with the recipe's hash. Stopped runs (Ctrl-C, a crash, kill -9)
    resume: run the same command again and only the missing prompts are generated.

    On a Ray cluster: `runtime.executor=ray` (a local cluster, or the one at `runtime.ray.address` /
    $RAY_ADDRESS), one teacher replica per worker; see the README, "Running on a cluster".
    """
    from synth.generate import run_generate, summary_table

    summary = run_generate(recipe, run_dir, recipe_dir=recipe_dir, limit=limit, retry_failed=retry_failed)
    Console().print(summary_table(summary))
    if summary.all_failed:
        raise UserError(
            f"every one of the {summary.engine_rows} rows asked of the teacher failed; the first error: "
            f"{summary.first_error}",
            "fix the cause it names (the server's URL, the model name, the key; a server whose log-probs "
            "are malformed), then run the same command with --retry-failed; the failed rows are kept with "
            "their reasons",
        )


@recipe_command(
    app,
    recipe_help="The YAML recipe to try, e.g. recipes/concise-answers.yaml.",
    interrupted="a probe starts over: run the same command again.",
)
def probe(
    recipe: Recipe,
    run_dir: Path,
    recipe_dir: Path,
    prompts: int = typer.Option(
        16, "--prompts", min=1, help="Sample the first N prompts of the recipe, in file order, once each."
    ),
) -> None:
    """Learn in a couple of minutes whether the teacher shows the recipe's behaviour, before a long
    `synth generate`.

    Samples the recipe's own teacher (its engine and `generate` settings, one sample per prompt) on
    the first N prompts, runs every check in `curate.checks` on each answer, each check on its own, and
    prints each check's pass rate with a 95% interval, the behaviour rate (`eval.behaviour_check`, else
    `curate.score`), the share of answers cut at `generate.max_new_tokens` and how many curate would
    keep; then three answers to read, and what to change when the behaviour is rare.

    Nothing is written where `synth generate` or `synth curate` look (no generations/, no curated/,
    no recipe.resolved.yaml): the answers and rates go to RUN_DIR/probe/ (answers.parquet,
    report.json), replaced by the next probe. Runs in this process, whatever `runtime.executor` says.
    """
    from synth.probe import print_probe, run_probe

    print_probe(run_probe(recipe, run_dir, recipe_dir=recipe_dir, prompts=prompts), Console())


@recipe_command(
    app,
    "prompts",
    recipe_help="The YAML recipe with a synthesize: section.",
    interrupted="nothing was written: run the same command again.",
)
def prompts(recipe: Recipe, run_dir: Path, recipe_dir: Path) -> None:
    """Write new user prompts with the teacher itself (Magpie), for more teacher data.

    Reads the recipe's `synthesize:` section. The teacher (a local transformers model) is given only
    the opening of a user turn of its chat template and writes the user's message; each candidate is
    kept unless it was cut at `synthesize.max_new_tokens`, is outside the word bounds, holds template
    markup, duplicates another candidate or a prompt of `prompts.path`, or shares a word n-gram with
    the eval prompts (`synthesize.eval_sets`, default `eval.prompts`). Writes the kept prompts to
    `synthesize.out` (JSONL: id, prompt, source) and prints what was rejected and why; point
    `prompts.path` at that file for `synth generate` and every later stage.
    """
    from synth.magpie import synthesize_prompts
    from synth.prompts import iter_source, resolve_path
    from synth.tables import key_values

    spec = recipe.synthesize
    if spec is None:
        raise UserError(
            "the recipe has no synthesize: section",
            "add synthesize: {out: data/magpie.jsonl, n: 200}; see README, 'synth prompts'",
        )
    out = Path(spec.out).expanduser()
    evals = spec.eval_sets if spec.eval_sets is not None else [recipe.eval.prompts]
    field = "synthesize.eval_sets" if spec.eval_sets is not None else "eval.prompts"
    eval_paths = [resolve_path(p, recipe_dir, field) for p in evals]
    known: list[str] = []
    if recipe.prompts.path:
        source = resolve_path(recipe.prompts.path, recipe_dir)
        if source.resolve() != out.resolve():  # the file being replaced is no reason to reject its prompts again
            column = recipe.prompts.prompt_column
            known = [str(r[column]) for _, r in iter_source(recipe.prompts, recipe_dir) if r.get(column)]
    s = synthesize_prompts(recipe, recipe_dir, out, eval_paths, known)
    rows = [
        ("teacher", s.teacher),
        ("candidates sampled", s.candidates),
        ("kept", f"{s.kept} of {spec.n} wanted"),
        *[(f"rejected: {why}", n) for why, n in s.rejected.most_common()],
        ("tokens/s", f"{s.tokens / max(s.seconds, 1e-9):.1f} ({s.tokens} tokens in {s.seconds:.0f} s)"),
        ("written", str(out)),
    ]
    console = Console()
    console.print(key_values("synth prompts (Magpie)", rows))
    for text in s.examples:
        console.print(f"  - {text}", highlight=False, markup=False)
    if s.kept < spec.n:
        console.print(
            f"only {s.kept} of {spec.n} kept within synthesize.candidates={spec.candidates}: raise it, or relax "
            "the filters the table names",
            highlight=False,
        )


@recipe_command(
    app,
    recipe_help="The YAML recipe whose generations to curate.",
    interrupted="curate starts over: run the same command again (the last complete curated/ is untouched).",
)
def curate(recipe: Recipe, run_dir: Path, recipe_dir: Path) -> None:
    """Filter, deduplicate, decontaminate, judge and select the generations.

    Runs the checks listed in the recipe's `curate.checks`, in order, on RUN_DIR/generations/ and
    writes RUN_DIR/curated/: `kept.parquet` (training-ready: TRL's prompt-completion format with all
    provenance), `rejected.parquet` (every other row, with `rejected_by` and `reason`), and
    `report.json` / `report.md` (counts per check, kept per prompt, score histograms, examples).
    With `runtime.executor=ray` the row checks run on Ray workers, with the same output.
    """
    from synth.curate.stage import run_curate, summary_table

    Console().print(summary_table(run_curate(recipe, run_dir, recipe_dir=recipe_dir)))


@recipe_command(app, recipe_help="The YAML recipe whose data to publish.", runtime=False)
def publish(
    recipe: Recipe,
    run_dir: Path,
    repo_id: str = typer.Option(None, "--repo-id", help="Dataset repo ORG/NAME (default: publish.repo_id)."),
    private: bool = typer.Option(None, "--private/--public", help="Repo visibility (default: publish.private)."),
    what: str = typer.Option(
        None, "--what", help="curated | generations | rejected | all (default: publish.what, i.e. curated)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write RUN_DIR/publish/dataset/, the exact upload."),
) -> None:
    """Push the run's data to the Hugging Face Hub as a dataset with a provenance card.

    One config per set (`curated`, the default, `rejected`, `generations`), each a `train` split in
    parquet, pushed with `datasets`. The card records the teacher, engine, sampling, curate checks
    and counts, review counts and the resolved recipe. The token comes from $HF_TOKEN or
    `hf auth login`, never from the recipe; $HF_ENDPOINT points at another Hub.
    """
    from synth.publish.dataset import run_publish_dataset, summary_table

    if what is not None and what not in ("curated", "generations", "rejected", "all"):
        raise UserError(f"--what {what!r} is not one of curated, generations, rejected, all")
    s = run_publish_dataset(recipe, run_dir, repo_id, private, what, dry_run)  # type: ignore[arg-type]
    Console().print(summary_table(s))


review_app = typer.Typer(
    help=(
        "Human review in Argilla: `push` curated rows as records, `pull` reviewers' verdicts back into "
        "the curated set.\n\nConnects to $ARGILLA_API_URL (or the recipe's `review.api_url`) with "
        "$ARGILLA_API_KEY; the key is never read from or written to a recipe."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(review_app, name="review")


@recipe_command(review_app, "push", recipe_help="The YAML recipe whose curated set to review.", runtime=False)
def review_push(
    recipe: Recipe,
    run_dir: Path,
    sample: int = typer.Option(
        None, "--sample", min=1, help="Push only N kept rows (a seeded sample); with --eval, N prompts."
    ),
    rejected: int = typer.Option(
        None, "--rejected", min=0, help="Also push N rejected rows (default: review.rejected_sample)."
    ),
    workspace: str = typer.Option(None, "--workspace", help="Argilla workspace (default: review.workspace)."),
    eval_answers: bool = typer.Option(
        False, "--eval", help="Push `sft eval`'s answers for blind side-by-side preference instead."
    ),
) -> None:
    """Log curated rows to the run's Argilla dataset (created on first push).

    Records carry the row id, so pushing again updates them and keeps reviewers' responses. The
    automatic decision and the ranking check's score arrive as suggestions. Writes
    RUN_DIR/review/push.json and pushed.parquet.

    With `--eval`: one record per held-out prompt of RUN_DIR/eval/answers.parquet, showing every
    model's greedy answer (teacher, base student, trained students) in a shuffled order with no
    model names, and the question "which answer is best?" (or tie), in the dataset
    `<review.dataset or recipe name>-eval`. `--sample N` pushes N prompts.
    """
    from synth.review.stage import run_push, summary_table

    if eval_answers:
        from synth.review.compare import run_push_eval

        c = run_push_eval(recipe, run_dir, workspace=workspace, sample=sample)
        Console().print(
            f"pushed {c['records']} blind comparisons of {c['models']} models to Argilla dataset "
            f"{c['dataset']} at {c['api_url']} in {c['seconds']} s",
            highlight=False,
        )
        return
    s = run_push(recipe, run_dir, workspace=workspace, sample=sample, rejected_sample=rejected)
    Console().print(summary_table(s))


@recipe_command(review_app, "pull", recipe_help="The YAML recipe whose review to pull.", runtime=False)
def review_pull(
    recipe: Recipe,
    run_dir: Path,
    eval_answers: bool = typer.Option(
        False, "--eval", help="Pull the blind side-by-side choices on `sft eval`'s answers as win rates."
    ),
) -> None:
    """Apply reviewers' submitted responses to the curated set.

    Discarded rows move to rejected.parquet (reason `human: discard`), corrected completions replace
    the original (kept in `original_completion`), ratings become a `human` verdict; rows nobody
    reviewed keep curate's decision. Safe to run again. Writes RUN_DIR/review/responses.parquet and
    report.json / report.md.

    With `--eval`: each submitted "best answer" choice is mapped back to its model; win rates (share
    of a model's comparisons it won, with 95% intervals) go into RUN_DIR/eval/report.json and
    report.md.
    """
    from synth.review.stage import run_pull, summary_table

    if not eval_answers:
        Console().print(summary_table(run_pull(recipe, run_dir)))
        return
    from synth.review.compare import run_pull_eval
    from synth.stats import with_interval

    c = run_pull_eval(recipe, run_dir)
    rates = [(m, with_interval(w["rate"], w["ci"]), w["n"]) for m, w in c["win_rates"].items()]
    title = f"synth review pull --eval: {c['choices']} choices from {c['dataset']}"
    Console().print(tables.summary_table(title, ("model", "win rate [95% CI]", "comparisons"), rates))


def main() -> None:
    """Console-script entry point."""
    run_app(app, "synth")


if __name__ == "__main__":
    main()

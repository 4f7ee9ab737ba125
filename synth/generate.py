"""`synth generate`: sample `n` teacher completions per prompt into parquet shards, resumably.

The shard files are the source of truth. Each shard holds whole prompts (all their samples) and is
written atomically, so after a crash or `kill -9` every shard on disk is complete; a re-run reads
the prompt ids already present and generates only the rest. Row ids are deterministic, so a prompt
is never written twice. The manifest is rebuilt from the shards on every run.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from synth.cluster import Worker, refuse_stray_address
from synth.engines import (
    Engine,
    SamplingParams,
    build_engine,
    runs_calls_together,
    sampling_params,
    teacher_provenance,
)
from synth.engines.base import ProgressFn
from synth.errors import UserError, first_line
from synth.io import atomic_write_parquet, atomic_write_text, read_parquet, sweep_temp_files
from synth.progress import PlainProgress, progress
from synth.prompts import load_prompts, teacher_view
from synth.recipe import Recipe, dump_resolved, teacher_path
from synth.records import SCHEMA, Completion, PromptItem, logprobs_problem, make_rows, rows_to_table
from synth.shards import MANIFEST, WRITER_LOCK, ShardSet, only_writer, shard_index
from synth.tables import key_values

SEPARATE_RUN = "use another --run-dir, or delete that generations folder to start over"
SCAN_ONLY = ("prompt_ids", "teacher", "prompt", "teacher_prompt")  # scan state, not manifest entries
MALFORMED_LOGPROBS = "malformed teacher log-probabilities"  # how such a failed row's error begins


@dataclass
class GenerateSummary:
    """What one `synth generate` run did, for the summary table and for tests."""

    run_dir: Path
    prompts_total: int = 0
    prompts_skipped: int = 0
    repeats_dropped: int = 0
    prompts_retried: int = 0
    rows_written: int = 0
    rows_total: int = 0
    failures: int = 0
    engine_rows: int = 0  # rows of prompts sent to the engine (not rejected up front as empty or too long)
    engine_failures: int = 0
    logprob_failures: int = 0  # of the failures: malformed teacher log-probabilities
    first_error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    shards_written: list[str] = field(default_factory=list)
    workers: int = 0  # Ray workers (engine replicas); 0 for the local executor
    shards_redone: int = 0  # shards dispatched again because their Ray worker died

    @property
    def all_failed(self) -> bool:
        """Every row the engine was asked for failed: a setup problem (wrong URL, model name), not bad luck.

        Prompts rejected before generation (empty, too long) do not count: they are the data's problem,
        reported in the summary, and no server setting would fix them.
        """
        return self.engine_rows > 0 and self.engine_failures == self.engine_rows

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def scan_shards(gen_dir: Path, console: Console | None = None) -> list[dict[str, Any]]:
    """Read the small columns of every complete shard: the state a re-run resumes from.

    Rows repeated in another file (a copied shard) count once; `console` gets the warning.
    """
    shards = []
    shard_set = ShardSet(gen_dir)
    if console is not None and (warning := shard_set.warning()):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for path, t in shard_set.tables(["prompt_id", "error", "completion_tokens"]):
        first = shard_set.first_row(path, ["prompt", "teacher_prompt"]) or {}
        shards.append(
            {
                "file": path.name,
                "rows": t.num_rows,
                "prompt_ids": set(t.column("prompt_id").to_pylist()),
                "failures": t.num_rows - t.column("error").null_count,
                "completion_tokens": pc.sum(t.column("completion_tokens")).as_py() or 0,
                "teacher": shard_set.teacher if t.num_rows else None,  # ShardSet refuses a second teacher
                "prompt": first.get("prompt"),
                "teacher_prompt": first.get("teacher_prompt"),
            }
        )
    return shards


def write_manifest(
    gen_dir: Path,
    recipe: Recipe,
    recipe_hash: str,
    teacher: dict[str, Any],
    shards: list[dict[str, Any]],
    prompts_in_source: int,
) -> None:
    """Rewrite `_manifest.json` atomically from the shards on disk."""
    done = set().union(*(s["prompt_ids"] for s in shards)) if shards else set()
    manifest = {
        "recipe": recipe.name,
        "recipe_hash": recipe_hash,
        "teacher": teacher,
        "context": teacher_context(recipe),
        "logprobs": logprob_info(recipe),
        "rows": sum(s["rows"] for s in shards),
        "prompts": len(done),
        "prompts_in_source": prompts_in_source,
        "complete": len(done) >= prompts_in_source,
        "failures": sum(s["failures"] for s in shards),
        "shards": [{k: v for k, v in s.items() if k not in SCAN_ONLY} for s in shards],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(gen_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _check_same_teacher(
    shards: list[dict[str, Any]], teacher: dict[str, Any], gen_dir: Path, dtype_named: bool = False
) -> dict[str, Any]:
    """Refuse to mix rows from another teacher or other sampling parameters in one run folder; return
    the `teacher` value new rows get.

    Rows written before the provenance recorded the dtype match when the dtype is float32 ('auto' on
    a CPU then) or named in the recipe (`dtype_named`: the user says what they were made in); new
    rows then get the old rows' value, so the folder keeps one teacher."""
    for s in shards:
        stored = s["teacher"]
        if stored is None or stored == teacher:
            continue
        legacy = "dtype" not in stored and stored == _without_dtype(teacher)
        if legacy and (dtype_named or teacher.get("dtype") == "float32"):
            return stored
        hint = SEPARATE_RUN
        if legacy:
            hint = (
                "these rows were written before Distillery recorded the teacher's dtype: set teacher.dtype to the "
                f"one they were made in (float32 on a CPU, bfloat16 on most GPUs) to continue them, or {SEPARATE_RUN}"
            )
        raise UserError(
            f"{gen_dir} already holds rows from another teacher or other sampling settings "
            f"({s['file']}: {json.dumps(stored)}; now: {json.dumps(teacher)})",
            hint,
        )
    return teacher


def _without_dtype(teacher: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in teacher.items() if k != "dtype"}


LOGPROB_MODES = {
    "transformers": "raw: the model's log-softmax at temperature 1, before top-k/top-p; token ids exact",
    "vllm": "vLLM's logprobs (raw by default: temperature 1, before sampling filters); token ids exact",
    "openai": "as the server reports them; token ids exact where the server gives them (llama.cpp), "
    "else token strings mapped with the tokenizer by `sft run`",
}


@functools.cache
def _tokenizer_of(path: str) -> dict[str, Any] | None:
    from synth import tokenizers
    from synth.models import resolve_model

    tokenizer = tokenizers.load_local(path)
    return None if tokenizer is None else tokenizers.describe(tokenizer, resolve_model(path)[1])


def logprob_info(recipe: Recipe) -> dict[str, Any] | None:
    """What stored log-probabilities mean: k, the sampling temperature, the mode, and the tokenizer
    whose ids they use (None for a server whose model has no local tokenizer)."""
    k = recipe.generate.logprobs
    if not k:
        return None
    path = teacher_path(recipe)
    return {
        "k": k,
        "temperature": recipe.generate.temperature,
        "mode": LOGPROB_MODES[recipe.teacher.engine],
        "includes_stop_token": recipe.teacher.engine != "openai",
        "tokenizer": _tokenizer_of(path),
    }


def teacher_context(recipe: Recipe) -> dict[str, Any]:
    """The recipe fields that shape what the teacher read besides the prompts themselves."""
    return {
        "teacher.system_prompt": recipe.teacher.system_prompt,
        "prompts.system_prompt": recipe.prompts.system_prompt,
    }


def _check_same_context(shards: list[dict[str, Any]], recipe: Recipe, gen_dir: Path) -> None:
    """Refuse to mix rows generated with another teacher context (system prompts) in one run folder.

    Two sources: the manifest's record of the context (written before the first new shard of every
    run), and the rows themselves (the stored teacher view must be what the current
    `teacher.system_prompt` builds from the stored student view). A `prompts.system_prompt` change
    in a folder whose manifest predates this record cannot be seen in the rows.
    """
    now = teacher_context(recipe)
    try:
        before = json.loads((gen_dir / MANIFEST).read_text(encoding="utf-8")).get("context") or {}
    except (OSError, ValueError, AttributeError):
        before = {}
    if not shards or not isinstance(before, dict):  # a manifest left behind with no rows binds nothing
        before = {}
    for key, value in before.items():
        if key in now and now[key] != value:
            raise UserError(
                f"{gen_dir} holds rows generated with {key}={value!r}; the recipe now says {now[key]!r}",
                SEPARATE_RUN,
            )
    for s in shards:
        if s["prompt"] is not None and teacher_view(s["prompt"], recipe.teacher) != s["teacher_prompt"]:
            seen = json.dumps((s["teacher_prompt"] or [{}])[0], ensure_ascii=False)[:160]
            raise UserError(
                f"{gen_dir / s['file']} holds rows whose teacher saw another context ({seen}) "
                "than teacher.system_prompt gives now",
                SEPARATE_RUN,
            )


def drop_failed_prompts(gen_dir: Path) -> int:
    """Remove every row of prompts that have a failed row, so the normal resume generates them again.

    Each shard is rewritten atomically without those prompts (or deleted when nothing is left). A
    crash half-way leaves some prompts missing, never a prompt twice, and a re-run fills them in.
    """
    dropped: set[str] = set()
    for path in ShardSet(gen_dir).paths:
        table = read_parquet(path, "a generation shard", SCHEMA.names)
        failed = pc.unique(pc.filter(table["prompt_id"], pc.is_valid(table["error"]))).to_pylist()
        if not failed:
            continue
        dropped.update(failed)
        kept = table.filter(pc.invert(pc.is_in(table["prompt_id"], value_set=pa.array(failed, pa.string()))))
        if kept.num_rows:
            atomic_write_parquet(path, kept)
        else:
            path.unlink()
    return len(dropped)


@dataclass
class ShardResult:
    """One shard's rows and what the summary needs to know about them (a worker's return value)."""

    table: pa.Table
    engine_rows: int  # rows of prompts sent to the engine (the others were rejected up front)
    engine_failures: int
    first_error: str | None
    logprob_failures: int = 0  # rows failed because the teacher's log-probabilities broke the contract


def generate_shard(
    engine: Engine,
    chunk: list[PromptItem],
    params: SamplingParams,
    teacher: dict[str, Any],
    recipe_hash: str,
    on_progress: ProgressFn | None = None,
) -> ShardResult:
    """The rows of one shard: prompts the engine rejects up front (empty, too long) get a failed row
    with the reason, the rest are generated. The same function runs in-process and on a Ray worker."""
    for item in chunk:
        if item.error is None:
            item.error = engine.check_prompt(item.teacher_prompt, params)
    gen = [it for it in chunk if it.error is None]
    outputs = engine.generate([it.teacher_prompt for it in gen], params, on_progress) if gen else []
    by_id = {
        it.prompt_id: [checked_logprobs(c, it.prompt_id, params.logprobs, engine.vocab_size) for c in comps]
        for it, comps in zip(gen, outputs, strict=True)
    }
    rows: list[dict[str, Any]] = []
    for it in chunk:
        rows += make_rows(
            it, by_id.get(it.prompt_id) or [Completion.failed(it.error or "not generated")], teacher, recipe_hash
        )
    sent = [r for r in rows if r["prompt_id"] in by_id]
    return ShardResult(
        rows_to_table(rows),
        engine_rows=len(sent),
        engine_failures=sum(r["error"] is not None for r in sent),
        first_error=next((r["error"] for r in sent if r["error"]), None),
        logprob_failures=sum((r["error"] or "").startswith(MALFORMED_LOGPROBS) for r in sent),
    )


def checked_logprobs(c: Completion, prompt_id: str, k: int | None, vocab_size: int | None) -> Completion:
    """The completion, or a failed one naming the prompt and the fault when its log-probabilities break
    the stored top-k contract (`synth.records.logprobs_problem`).

    Stored, a NaN, positive or out-of-range log-prob would be trained on by `sft run` as a soft label,
    and an id past int32 would stop the whole shard at writing; as a failed row it is counted, shown,
    and generated again by `--retry-failed`. Without `generate.logprobs` the manifest promises none,
    so what a server volunteers is not stored."""
    if c.error is not None:
        return c
    if not k:
        return c if c.logprobs is None else replace(c, logprobs=None)
    if problem := logprobs_problem(c, k, vocab_size):
        return Completion.failed(f"{MALFORMED_LOGPROBS} for prompt {prompt_id}: {problem}")
    return c


def run_generate(
    recipe: Recipe,
    run_dir: Path,
    recipe_dir: Path | None = None,
    limit: int | None = None,
    console: Console | None = None,
    engine: Engine | None = None,
    retry_failed: bool = False,
) -> GenerateSummary:
    """Generate the missing rows of a run; see the module docstring for the resume contract.

    With `retry_failed`, prompts whose rows failed (server gave up, timeouts, too-long prompts) are
    generated again; otherwise a failed row counts as done, with its reason kept.
    """
    refuse_stray_address(recipe.runtime)
    console = console or Console(stderr=True)
    gen_dir = run_dir / "generations"
    gen_dir.mkdir(parents=True, exist_ok=True)
    with only_writer(
        gen_dir / WRITER_LOCK,
        f"another `synth generate` is writing {gen_dir} right now",
        "wait for it to finish (or stop it), or use another --run-dir",
    ):
        return _run_generate(recipe, run_dir, gen_dir, recipe_dir, limit, console, engine, retry_failed)


def _run_generate(
    recipe: Recipe,
    run_dir: Path,
    gen_dir: Path,
    recipe_dir: Path | None,
    limit: int | None,
    console: Console,
    engine: Engine | None,
    retry_failed: bool,
) -> GenerateSummary:
    """`run_generate` holding the run folder's lock."""
    sweep_temp_files(gen_dir)
    recipe_hash = dump_resolved(recipe, run_dir / "recipe.resolved.yaml")
    items, repeats = load_prompts(recipe.prompts, recipe.teacher, recipe_dir, limit)
    params = sampling_params(recipe)
    shards = scan_shards(gen_dir, console)
    teacher = engine.provenance(params) if engine else teacher_provenance(recipe)
    teacher = _check_same_teacher(shards, teacher, gen_dir, dtype_named=recipe.teacher.dtype != "auto")
    _check_same_context(shards, recipe, gen_dir)
    # the context is on disk before the first new shard, so a run killed at any point still binds it
    write_manifest(gen_dir, recipe, recipe_hash, teacher, shards, len(items))
    retried = drop_failed_prompts(gen_dir) if retry_failed else 0
    if retried:
        shards = scan_shards(gen_dir)
    done = set().union(*(s["prompt_ids"] for s in shards)) if shards else set()
    todo = [it for it in items if it.prompt_id not in done]
    summary = GenerateSummary(
        run_dir,
        prompts_total=len(items),
        prompts_skipped=len(items) - len(todo),
        repeats_dropped=repeats,
        prompts_retried=retried,
    )
    if engine is not None and recipe.runtime.executor == "ray":
        raise UserError(
            "an engine object cannot be sent to Ray workers: they build the recipe's own engine",
            "leave `engine` out with runtime.executor=ray, or use the local executor",
        )
    start = time.perf_counter()
    try:
        if todo:
            _generate_shards(recipe, todo, engine, params, teacher, recipe_hash, gen_dir, shards, summary, console)
    finally:
        # Also after Ctrl-C: the manifest always describes the complete shards on disk.
        shards = scan_shards(gen_dir)
        summary.seconds = time.perf_counter() - start
        summary.rows_total = sum(s["rows"] for s in shards)
        write_manifest(gen_dir, recipe, recipe_hash, teacher, shards, len(items))
    return summary


def _generate_shards(
    recipe: Recipe,
    todo: list[PromptItem],
    engine: Engine | None,
    params: SamplingParams,
    teacher: dict[str, Any],
    recipe_hash: str,
    gen_dir: Path,
    shards: list[dict[str, Any]],
    summary: GenerateSummary,
    console: Console,
) -> None:
    """Cut `todo` into shards and have the executor generate them; each is written, complete, by this
    process alone (atomically), whichever executor computed it."""
    # Longest first: similar lengths share a shard, and a too-large batch fails early. Only the prompts
    # of this run are ordered: --limit took the file's first N (load_prompts), so a rerun with a larger
    # limit extends the same prompts.
    todo = sorted(todo, key=lambda it: -sum(len(m["content"]) for m in it.teacher_prompt))
    per_shard = recipe.generate.prompts_per_shard
    chunks = [todo[i : i + per_shard] for i in range(0, len(todo), per_shard)]
    first = 1 + max((i for s in shards if (i := shard_index(s["file"])) is not None), default=-1)
    names = [f"shard-{first + i:05d}.parquet" for i in range(len(chunks))]
    with progress_bar(console) as bar:
        task = bar.add_task("generating", total=len(todo) * params.n, tokens=0)

        def on_progress(rows: int, tokens: int) -> None:
            bar.update(task, advance=rows, tokens=bar.tasks[task].fields["tokens"] + tokens)

        def write(name: str, chunk: list[PromptItem], result: ShardResult, reported: int) -> None:
            table = result.table
            atomic_write_parquet(gen_dir / name, table)
            tokens = pc.sum(table["completion_tokens"]).as_py() or 0
            # a prompt rejected up front (empty, too long) has one failed row, not n
            bar.update(task, total=bar.tasks[task].total - (len(chunk) * params.n - table.num_rows))
            on_progress(table.num_rows - reported, 0 if reported else tokens)
            summary.shards_written.append(name)
            summary.rows_written += table.num_rows
            summary.failures += table.num_rows - table["error"].null_count
            summary.engine_rows += result.engine_rows
            summary.engine_failures += result.engine_failures
            summary.logprob_failures += result.logprob_failures
            summary.first_error = summary.first_error or result.first_error
            first_samples = pc.equal(table["sample_index"], 0)
            summary.prompt_tokens += pc.sum(pc.filter(table["prompt_tokens"], first_samples)).as_py() or 0
            summary.completion_tokens += tokens

        if recipe.runtime.executor == "ray":
            _on_ray(recipe, chunks, names, params, teacher, recipe_hash, summary, write, console)
            return
        engine = engine or build_engine(recipe)
        for chunk, name in zip(chunks, names, strict=True):
            reported = 0

            def counted(rows: int, tokens: int) -> None:
                nonlocal reported
                reported += rows
                on_progress(rows, tokens)

            result = generate_shard(engine, chunk, params, teacher, recipe_hash, counted)
            write(name, chunk, result, reported)


class GenerateWorker(Worker):
    """One teacher engine replica on a Ray worker: the model loads once, then shard after shard.

    An exception from the engine that is not a UserError (vLLM rejecting a setting, a chat template
    that raises, a dead engine) fails that shard's rows, each with the reason, so the run goes on and
    `--retry-failed` regenerates them; an engine that died is built again for the next shard (the
    actor itself is alive, so Ray would never restart it)."""

    def build(self, recipe: Recipe) -> Engine:
        self.recipe = recipe
        self.rebuilding = threading.Lock()  # shards in flight together may see one engine die at once
        return build_engine(recipe)

    def shard(self, job: tuple[list[PromptItem], SamplingParams, dict[str, Any], str]) -> ShardResult:
        with self.rebuilding:  # a shard that starts while a dead engine is rebuilt waits for the new one
            engine = self.tool
        try:
            return generate_shard(engine, *job)
        except UserError:
            raise
        except Exception as exc:  # any engine failure becomes the shard's row errors
            reason = f"the teacher engine on a Ray worker raised {type(exc).__name__}: {first_line(exc, 300)}"
            if engine_died(exc):
                with self.rebuilding:
                    if self.tool is engine:  # not yet rebuilt by another shard that saw it die
                        engine.close()
                        self.tool = build_engine(self.recipe)
                reason += " (the engine was built again)"
            return failed_shard(*job, reason)


def over_nodes(recipe: Recipe) -> Recipe:
    """The recipe a worker whose replica spans nodes builds its engine from: vLLM with its Ray executor
    (`distributed_executor_backend: ray`), which starts the tensor/pipeline-parallel workers in the
    worker's placement group; its default, one process per GPU on the worker's own node, cannot."""
    if recipe.teacher.engine != "vllm" or "distributed_executor_backend" in recipe.teacher.vllm.engine_args:
        return recipe
    vllm = recipe.teacher.vllm.model_copy(
        update={"engine_args": {**recipe.teacher.vllm.engine_args, "distributed_executor_backend": "ray"}}
    )
    return recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"vllm": vllm})})


def engine_died(exc: BaseException) -> bool:
    """The engine cannot serve again (vLLM's EngineDeadError, a CUDA error), as opposed to one request
    it refused."""
    return type(exc).__name__ == "EngineDeadError" or "CUDA error" in str(exc)


def failed_shard(
    chunk: list[PromptItem], params: SamplingParams, teacher: dict[str, Any], recipe_hash: str, reason: str
) -> ShardResult:
    """A shard whose every prompt has one failed row with `reason` (what a prompt rejected up front gets)."""
    rows = [r for it in chunk for r in make_rows(it, [Completion.failed(reason)], teacher, recipe_hash)]
    return ShardResult(rows_to_table(rows), engine_rows=len(rows), engine_failures=len(rows), first_error=reason)


def _on_ray(
    recipe: Recipe,
    chunks: list[list[PromptItem]],
    names: list[str],
    params: SamplingParams,
    teacher: dict[str, Any],
    recipe_hash: str,
    summary: GenerateSummary,
    write: Callable[[str, list[PromptItem], ShardResult, int], None],
    console: Console,
) -> None:
    """The shards on a pool of Ray workers, one engine replica each; this process writes every file."""
    from synth.cluster import (
        ActorPool,
        loopback_warning,
        node_resources,
        ray_session,
        replica_bundles,
        replica_count,
        spans_nodes,
        worker_gpus,
        worker_runtime_env,
    )

    spec = recipe.runtime.ray
    with ray_session(spec) as ray:
        vllm = recipe.teacher.vllm
        nodes = node_resources(ray)
        cluster_gpus = sum(n.get("GPU", 0) for n in nodes)
        gpus = worker_gpus(
            recipe.runtime, recipe.teacher.engine, vllm.tensor_parallel_size * vllm.pipeline_parallel_size, cluster_gpus
        )
        span = recipe.teacher.engine == "vllm"  # vLLM's Ray executor places the model's shards over nodes
        replicas = replica_count(spec, nodes, gpus, len(chunks), span)
        bundles = None
        if span and gpus and spans_nodes(nodes, gpus):
            bundles = replica_bundles(spec, gpus)
            recipe = over_nodes(recipe)
        if warning := loopback_warning(recipe, len(nodes)):
            console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        together = spec.shards_in_flight if runs_calls_together(recipe.teacher.engine) else 1
        pool = ActorPool(
            ray,
            GenerateWorker,
            (os.getcwd(), recipe),
            replicas,
            spec.num_cpus,
            gpus,
            spec,
            worker_runtime_env(recipe),
            together,
            bundles,
        )
        summary.workers = replicas
        try:
            jobs = [(chunk, params, teacher, recipe_hash) for chunk in chunks]
            describe = lambda i: f"shard {names[i]} ({len(chunks[i])} prompts)"  # noqa: E731
            for i, result in pool.map("shard", len(jobs), jobs.__getitem__, describe):
                write(names[i], chunks[i], result, 0)
        finally:
            summary.shards_redone = pool.redone
            pool.close()


def progress_bar(console: Console) -> Progress | PlainProgress:
    """Rows done of total, completion tokens/s, elapsed and ETA (generate, and eval's answering): a live
    bar on a terminal, a plain line every $DISTILLERY_PROGRESS_SECONDS in a log (`synth.progress`)."""
    return progress(console, unit="rows")


def summary_table(s: GenerateSummary) -> Table:
    """The table printed at the end of `synth generate`."""
    retried = [("failed prompts retried", s.prompts_retried)] if s.prompts_retried else []
    ray = [("Ray workers", s.workers), ("shards redone (worker died)", s.shards_redone)] if s.workers else []
    return key_values(
        f"synth generate: {s.run_dir / 'generations'}",
        [
            ("prompts in source", s.prompts_total),
            ("prompts already done (resumed)", s.prompts_skipped),
            ("repeated prompts dropped", s.repeats_dropped),
            *retried,
            ("rows written now", s.rows_written),
            ("rows in run", s.rows_total),
            ("failed rows (with reason)", s.failures),
            *([("  of them: malformed teacher log-probs", s.logprob_failures)] if s.logprob_failures else []),
            ("prompt tokens", f"{s.prompt_tokens:,}"),
            ("completion tokens", f"{s.completion_tokens:,}"),
            ("time", f"{s.seconds:,.1f} s"),
            ("completion tokens/s", f"{s.tokens_per_s:,.1f}"),
            *ray,
        ],
    )

"""`sft eval`: teacher, base student and trained student(s) side by side on held-out prompts.

Every model answers the held-out prompts through the engine interface generation uses: the teacher
with the recipe's teacher engine (transformers, an OpenAI-compatible server or vLLM, with its
revision and dtype) on the teacher's view, the students with transformers on the student's view.
Each prompt gets one greedy answer (sample 0) and `eval.samples` more at the generation temperature.

Every answer is kept in eval/answers.parquet with its real finish reason, token count and each
check's verdict, because a rate is only as good as the answers behind it: `behaviour` (every
behaviour check passed) and `clean` (every other curate row check passed, decontamination aside),
their conjunction, relevance (embedding similarity, English answers) and word-level degeneration
measures are then aggregated with bootstrap intervals in sft/evaluation/report.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from sft.evaluation.benchmarks import Scores, check_tasks, run_benchmarks
from sft.evaluation.cache import EvalCache, cache_key, folder_fingerprint
from sft.evaluation.fidelity import TeacherAnswers, TeacherLogProbs, measure
from sft.evaluation.quality import answer_measures
from sft.evaluation.report import build_report, write_outputs
from sft.evaluation.speed import read_speed
from sft.training.checkpoints import weights_problem
from synth import embeddings
from synth.adapters import base_mismatch
from synth.curate.base import Context, RowCheck
from synth.curate.checks.relevance import RelevanceCheck, RelevanceFilter
from synth.engines import build_engine_for, sampling_params
from synth.engines.base import Engine, ProgressFn
from synth.engines.hf import TransformersEngine
from synth.errors import UserError
from synth.generate import progress_bar
from synth.io import staging_folder, swap_in_folder
from synth.models import loading_model, resolve_model
from synth.prompts import load_prompts
from synth.recipe import Recipe, behaviour_checks, objective_overrides
from synth.records import Messages, PromptItem, assistant
from synth.runtime import check_device, dtype_name, pick_dtype
from synth.specs import EvalSpec, PromptsSpec


@dataclass
class EvalModel:
    """One model under evaluation: its arm, its training seed (None: not one of several), how to build
    its engine, and the view it reads."""

    arm: str
    engine: Callable[[], Engine]
    teacher_view: bool
    seed: int | None = None
    folder: Path | None = None  # the model folder, where there is one (bench/speed.py measures folders)

    @property
    def name(self) -> str:
        return self.arm if self.seed is None else f"{self.arm}/seed-{self.seed}"


def arm_models(run_dir: Path, arm: str, seeds: list[int] | None = None) -> list[tuple[int | None, Path]]:
    """(seed, final folder) of each trained model of an arm, in seed order.

    With `seeds` (the recipe's `train.seeds`): train/<arm>/seed-<s>/final for exactly those, so that
    neither an older single run nor seeds of an earlier list are mixed in. Without: train/<arm>/final,
    else every train/<arm>/seed-<s>/final there is.
    """
    base = run_dir / "train" / arm
    if seeds is not None:
        return [(s, base / f"seed-{s}" / "final") for s in sorted(seeds)]
    if (base / "final").is_dir():
        return [(None, base / "final")]
    found = [p for p in base.glob("seed-*/final") if p.is_dir() and p.parent.name.removeprefix("seed-").isdigit()]
    return sorted((int(p.parent.name.removeprefix("seed-")), p) for p in found)


def trained_arms(run_dir: Path) -> list[str]:
    """Every arm under run_dir/train/ with a final model, single or per seed."""
    train = run_dir / "train"
    single = {p.parent.name for p in train.glob("*/final")}
    seeded = {p.parent.parent.name for p in train.glob("*/seed-*/final")}
    return sorted(single | seeded)


def _checks(recipe: Recipe, recipe_dir: Path | None) -> tuple[list[str], list[RowCheck]]:
    """The behaviour check names and every curate row check to apply to answers (set up once)."""
    specs = [c for c in recipe.curate.checks if c.per_row and c.in_eval]
    names = behaviour_checks(recipe, {c.label for c in specs})
    checks = []
    for spec in specs:
        check = spec.runner(spec)
        check.setup(Context(recipe, recipe_dir))
        checks.append(check)
    return names, checks


def _student_engine(final: Path, base: str, recipe: Recipe) -> TransformersEngine:
    """A trained student: a full model folder, or a LoRA adapter merged into its base; in the dtype and
    on the device the base student runs in (model.dtype, runtime.device), so that what differs between
    the two is the training, not the arithmetic."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(recipe.runtime.device)
    dtype = pick_dtype(recipe.model.dtype, device)
    with loading_model("trained student", str(final), f"run `sft run` again to rewrite {final}"):
        tokenizer = AutoTokenizer.from_pretrained(final)
        if (final / "adapter_config.json").is_file():
            from peft import PeftModel

            # merged in float32, then cast: the adapter's small update is not rounded twice
            base_model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
            model = PeftModel.from_pretrained(base_model, final).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(final, dtype="float32")
    model = model.to(device=device, dtype=dtype)
    return TransformersEngine.from_loaded(model, tokenizer, str(final), batch_size=recipe.eval.batch_size)


def _models(recipe: Recipe, run_dir: Path) -> list[EvalModel]:
    """Teacher, base student, then each trained student; engines are built when their turn comes."""
    ev = recipe.eval
    objectives = ev.objectives or trained_arms(run_dir)
    finals: dict[str, list[tuple[int | None, Path]]] = {}
    for obj in objectives:
        finals[obj] = arm_models(run_dir, obj, recipe.train.seeds)
        if not finals[obj]:
            final = run_dir / "train" / obj / "final"
            raise UserError(f"no trained model at {final}", f"run `sft run` with {objective_overrides(obj)}")
        for _, final in finals[obj]:
            if not final.is_dir():
                raise UserError(
                    f"no trained model at {final} (train.seeds: {recipe.train.seeds})",
                    f"run `sft run` with {objective_overrides(obj)}",
                )
            if problem := weights_problem(final):  # before minutes of answering with the other models
                raise UserError(
                    f"{final}: not a complete model or adapter: {problem}", f"run `sft run` again for {obj}"
                )
            if (final / "adapter_config.json").is_file() and (
                wrong := base_mismatch(final, Path(resolve_model(recipe.model.path)[0]))
            ):
                raise UserError(
                    f"model.path={recipe.model.path!r}: {wrong}",
                    f"set model.path back to the model {obj} was trained on, or run `sft run` again for {obj}",
                )
    m = recipe.model

    def base() -> Engine:
        load_path, model_id = resolve_model(m.path)
        return TransformersEngine(
            load_path,
            model_id,
            m.revision,
            dtype=m.dtype,
            device=recipe.runtime.device,
            batch_size=ev.batch_size,
            field="model.path",
        )

    t = recipe.teacher
    local_teacher = t.engine == "transformers" and not t.revision
    teacher_folder = _folder(m.path if t.path == "self" else t.path) if local_teacher else None
    models = [
        EvalModel(
            "teacher",
            lambda: build_engine_for(recipe.teacher, recipe, ev.batch_size, recipe.generate.seed),
            True,
            folder=teacher_folder,
        ),
        EvalModel("base_student", base, False, folder=None if m.revision else _folder(m.path)),
    ]
    for obj in objectives:
        for seed, final in finals[obj]:
            engine = lambda f=final: _student_engine(f, resolve_model(m.path)[0], recipe)  # noqa: E731
            models.append(EvalModel(obj, engine, False, seed, final))
    return models


def _folder(path: str) -> Path | None:
    """The local folder a model path names (the embedded model's converted folder), None for a hub id."""
    load_path = Path(resolve_model(path)[0])
    return load_path if load_path.is_dir() else None


def _arm_settings(run_dir: Path, arm: str, seeds: list[int] | None = None) -> dict[str, Any] | None:
    """What an arm was trained with, flattened (`train.learning_rate`: 1e-4, ...), from its resolved
    recipe and log, for naming what differs between two compared arms."""
    import yaml

    models = arm_models(run_dir, arm, seeds)
    if not models:
        return None
    folder = models[0][1].parent
    try:
        resolved = yaml.safe_load((folder / "recipe.resolved.yaml").read_text(encoding="utf-8")) or {}
        log = json.loads((folder / "log.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None  # unknown: never reported as "nothing differed"
    train = dict(resolved.get("train") or {})
    objective = train.get("objective")
    kd = dict(train.pop("kd", None) or {})
    model = resolved.get("model") or {}
    flat: dict[str, Any] = {"model.path": model.get("path"), "model.init": model.get("init", "pretrained")}
    gkd_only = ("lmbda", "lmbda_start", "lmbda_ramp_steps", "beta", "temperature", "max_new_tokens", "seq_kd")
    codistill = dict(train.pop("codistill", None) or {})
    with_teacher = objective == "codistill" and codistill.get("partner", "teacher") == "teacher"
    for key, value in train.items():
        if key in ("objective", "seed", "seeds", "name") or (key in gkd_only and objective != "gkd"):
            continue
        if key == "teacher" and not (objective == "gkd" or kd.get("source") == "model" or with_teacher):
            continue
        flat[f"train.{key}"] = value
    if objective == "kd":
        flat |= {f"train.kd.{k}": v for k, v in kd.items() if k != "source"}
    if objective == "codistill":
        flat |= {f"train.codistill.{k}": v for k, v in codistill.items()}
        flat |= {f"train.kd.{k}": kd.get(k) for k in ("temperature", "beta")}
    # what the trained model read: the prompt, but for the teacher trained together (codistill's partner)
    flat["reads"] = "teacher_prompt" if with_teacher and arm.split("/")[0].endswith("-partner") else "prompt"
    # what the student is taught to reproduce: the same rows can give different tokens and positions;
    # another tokenizer's soft labels (cross_tokenizer) sit on the student's own tokens of the text
    first = log[0] if log and isinstance(log[0], dict) else {}
    kd_stored = objective == "kd" and kd.get("source") == "stored" and not first.get("cross_tokenizer")
    stored_rows = train.get("targets") == "stored" or kd_stored
    at_stored = train.get("targets") == "stored" or (kd_stored and not kd.get("alpha"))
    flat["targets"] = (
        ("the teacher's sampled token ids" if stored_rows else "the completion text, tokenised again")
        + (", loss where the teacher generated" if at_stored else ", loss at every completion token and the "
           "template's closing tokens")
    )  # fmt: skip
    flat.pop("train.targets", None)  # said by `targets`
    flat["rows trained"] = first.get("rows_trained")
    flat["steps"] = max((e.get("step", 0) for e in log if isinstance(e, dict)), default=None)
    flat["seeds"] = len(models)
    return flat


def arm_differences(run_dir: Path, arms: list[str], seeds: list[int] | None = None) -> dict[str, list[str] | None]:
    """For every pair of trained arms ("a - b"), each setting that differs besides the objective itself
    (None when an arm's recipe or log cannot be read): a comparison is only about the method when
    the list is empty."""
    settings = {arm: _arm_settings(run_dir, arm, seeds) for arm in dict.fromkeys(arms)}
    names = list(settings)
    out: dict[str, list[str] | None] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = settings[a], settings[b]
            if sa is None or sb is None:
                out[f"{a} - {b}"] = None
                continue
            # a setting only one arm's method has (kd's temperature, a teacher) is the method, not a difference
            keys = [k for k in dict.fromkeys([*sa, *sb]) if k in sa and k in sb]
            out[f"{a} - {b}"] = [f"{k}: {sa[k]!r} vs {sb[k]!r}" for k in keys if sa[k] != sb[k]]
    return out


RESERVED_ARMS = ("teacher", "base_student")
"""The eval's own models: an arm of that name would be pooled with them."""


def check_distinct(recipe: Recipe) -> None:
    """Refuse an eval setting that lists one arm, check or task twice (an arm listed twice was answered,
    judged and pooled twice; a task listed twice ran twice and was kept once), or an arm named like
    the eval's own models; before anything loads."""
    ev = recipe.eval
    behaviour = ev.behaviour_check
    lists = {
        "eval.objectives": list(ev.objectives or []),
        "eval.behaviour_check": [behaviour] if isinstance(behaviour, str) else list(behaviour or []),
        "eval.benchmarks.tasks": list(ev.benchmarks.tasks) if ev.benchmarks else [],
    }
    for field, values in lists.items():
        first: dict[str, int] = {}
        for i, v in enumerate(values):
            if v in first:
                raise UserError(
                    f"{field}[{i}]: {v!r} is listed twice (first at {field}[{first[v]}])",
                    f"list each entry of {field} once",
                )
            first[v] = i
    reserved = [(i, o) for i, o in enumerate(lists["eval.objectives"]) if o in RESERVED_ARMS]
    if reserved:
        i, o = reserved[0]
        raise UserError(
            f"eval.objectives[{i}]: {o!r} is the name of the eval's own {o.replace('_', ' ')}, not a trained arm",
            "list only arms under RUN_DIR/train/ (sft, gkd, kd-stored, kd-model, ...)",
        )


def eval_prompts(recipe: Recipe, recipe_dir: Path | None) -> tuple[list[PromptItem], list[str]]:
    """The held-out prompts, each once, and a note for each kind left out: exact repeats (the same
    student and teacher view: answering one twice would count it twice in every rate and interval) and
    empty prompts. A UserError when none is left. The prompt column is `eval.prompt_column`; unset, it
    is `prompts.prompt_column` for a held-out file of the user's (shaped like their prompts), and
    "prompt" for the shipped one."""
    ev = recipe.eval
    shipped = ev.prompts == EvalSpec.model_fields["prompts"].default
    column = ev.prompt_column or ("prompt" if shipped else recipe.prompts.prompt_column)
    spec = PromptsSpec(path=ev.prompts, prompt_column=column, system_prompt=recipe.prompts.system_prompt)
    try:
        items, repeated = load_prompts(spec, recipe.teacher, recipe_dir, ev.limit, field="eval.prompts")
    except UserError as exc:
        if f"no column {column!r}" not in exc.message:
            raise
        raise UserError(exc.message, "set eval.prompt_column=NAME: the held-out file's prompt column") from None
    kept = [it for it in items if it.error is None]
    notes = []
    if repeated:
        notes.append(f"eval.prompts: {repeated} exact duplicate prompt(s) dropped; each prompt is answered once")
    if len(kept) < len(items):
        notes.append(f"eval.prompts: {len(items) - len(kept)} empty prompt(s) left out")
    if not kept:
        raise UserError(f"eval.prompts: no prompt to answer in {ev.prompts}", "give it at least one non-empty prompt")
    return kept, notes


def _answer(
    engine: Engine, prompts: list[Messages], recipe: Recipe, on_progress: ProgressFn | None = None
) -> tuple[list[list[Any]], float | None]:
    """Per prompt: the greedy answer (sample 0), then `eval.samples` answers at the generation temperature.

    Also the greedy answers' tokens/s (every model answers the same prompts with the same batch size,
    so this is the side-by-side generation speed).
    """
    ev = recipe.eval
    generation = replace(sampling_params(recipe), max_new_tokens=ev.max_new_tokens, logprobs=None)
    greedy = replace(generation, n=1, temperature=ev.temperature)
    t0 = time.perf_counter()
    out = [list(c) for c in engine.generate(prompts, greedy, on_progress)]
    elapsed = time.perf_counter() - t0
    tokens = sum(c[0].completion_tokens or 0 for c in out)
    if ev.samples:
        sampled = replace(generation, n=ev.samples)
        for comps, more in zip(out, engine.generate(prompts, sampled, on_progress), strict=True):
            comps.extend(more)
    return out, (tokens / elapsed if elapsed > 0 and tokens else None)


def _rows(
    m: EvalModel, items: list[PromptItem], prompts: list[Messages], comps: list[list[Any]]
) -> list[dict[str, Any]]:
    """One row per prompt × sample: `completion` in the pipeline's shape for the curate checks, `answer` as text."""
    rows = []
    for it, view, cs in zip(items, prompts, comps, strict=True):
        for i, c in enumerate(cs):
            rows.append(
                {
                    "id": f"{m.name}:{it.prompt_id}:{i}",
                    "model": m.arm,
                    "seed": m.seed,
                    "prompt_id": it.prompt_id,
                    "sample_index": i,
                    "prompt": it.prompt,
                    "seen_prompt": view,
                    "completion": assistant(c.text),
                    "answer": c.text,
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "error": c.error,
                    "meta": json.dumps(it.meta, ensure_ascii=False, sort_keys=True),
                }
            )
    return rows


def _judge(rows: list[dict[str, Any]], checks: list[RowCheck], behaviour: list[str]) -> None:
    """Add every check's verdict to each row, then `behaviour`, `clean` and the quality measures."""
    ok = [r for r in rows if r["error"] is None]
    for r in rows:
        r["verdicts"] = []
    for check in checks:
        for r, v in zip(ok, check.run(ok) if ok else [], strict=True):
            r["verdicts"].append({"name": check.name, "passed": v.passed, "score": v.score, "reason": v.reason})
    # the token-budget check says whether an answer finished, which `finished` reports; left in "clean",
    # it would fail every long fluent answer and make a base student that writes long an easy bar
    budget = {c.name for c in checks if getattr(c.spec, "type", None) == "truncated"}
    for r in rows:
        failed = {v["name"] for v in r["verdicts"] if not v["passed"]}
        r["behaviour"] = r["error"] is None and not failed.intersection(behaviour)
        r["clean"] = r["error"] is None and not (failed - set(behaviour) - budget)
        r.update(answer_measures(r["answer"], r["finish_reason"], r["error"]))  # empty, finished, loop_free, ...
        r["english"] = False
        r["relevance"] = r["teacher_similarity"] = None
        for key in [k for k in r if k.startswith("_")]:
            del r[key]  # the checks' per-row caches


def _relevance(rows: list[dict[str, Any]]) -> None:
    """Prompt↔answer similarity (the `relevance` check's score: English answers only) and answer↔teacher."""
    if not embeddings.available():
        return
    check = RelevanceFilter(RelevanceCheck(type="relevance"))
    for r, v in zip(rows, check.run(rows), strict=True):
        r["relevance"] = v.score
        r["english"] = v.score is not None
    eng = [r for r in rows if r["english"]]
    teacher = {(r["prompt_id"], r["sample_index"]): r for r in rows if r["model"] == "teacher"}
    pairs = [(r, teacher.get((r["prompt_id"], r["sample_index"]))) for r in eng if r["model"] != "teacher"]
    pairs = [(r, t) for r, t in pairs if t is not None and t["english"]]
    sims = embeddings.similarity([r["answer"] for r, _ in pairs], [t["answer"] for _, t in pairs])
    for (r, _), s in zip(pairs, sims, strict=True):
        r["teacher_similarity"] = s


def _cache_keys(recipe: Recipe, models: list[EvalModel], items: list[PromptItem]) -> dict[str, str]:
    """The cache keys of the teacher and the base student (sft/evaluation/cache.py), where both are
    local model folders; none when the teacher is not. The base student's is completed with the
    teacher's answers of this eval, which its fidelity is measured on."""
    ev = recipe.eval
    by_name = {m.name: m for m in models}
    teacher, base = by_name["teacher"], by_name["base_student"]
    if teacher.folder is None:
        return {}
    device = check_device(recipe.runtime.device)
    common = {
        "eval": {k: getattr(ev, k) for k in ("max_new_tokens", "temperature", "samples", "batch_size")},
        "sampling": sampling_params(recipe).as_dict(),
        "device": recipe.runtime.device,
        # 'auto' resolves per machine (bf16 on some CPUs): the dtypes the answers were computed in
        "dtypes": [dtype_name(pick_dtype(s.dtype, device)) for s in (recipe.teacher, recipe.model)],
        "model": recipe.model.model_dump(mode="json"),
    }
    keys = {
        "teacher": cache_key(
            common
            | {
                "arm": "teacher",
                "teacher": recipe.teacher.model_dump(mode="json"),
                "files": folder_fingerprint(teacher.folder),
                "prompts": [it.teacher_prompt for it in items],
            }
        )
    }
    if base.folder is not None:
        keys["base_student"] = cache_key(
            common
            | {
                "arm": "base_student",
                "files": folder_fingerprint(base.folder),
                "prompts": [it.prompt for it in items],
            }
        )
    return keys


def _speed_folders(models: list[EvalModel]) -> dict[str, list[Path]]:
    """Per arm, its model folders in seed order: where bench/speed.py's measurements are looked up."""
    out: dict[str, list[Path]] = {}
    for m in models:
        if m.folder is not None:
            out.setdefault(m.arm, []).append(m.folder)
    return out


def run_eval(
    recipe: Recipe, run_dir: Path, recipe_dir: Path | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Answer, judge and report; writes run_dir/eval/{answers.parquet, report.json, report.md, report.png}."""
    ev = recipe.eval
    check_distinct(recipe)
    console = console or Console(stderr=True)
    items, notes = eval_prompts(recipe, recipe_dir)
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    behaviour, checks = _checks(recipe, recipe_dir)
    models = _models(recipe, run_dir)
    tasks = check_tasks(ev.benchmarks, recipe_dir) if ev.benchmarks else None
    scores: Scores = {}
    unbenchmarked: list[str] = []
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    fidelity: dict[str, list[tuple[int | None, dict[str, Any]]]] = {}  # per arm, per seed
    answers: TeacherAnswers | None = None
    teacher_engine: TransformersEngine | None = None  # kept loaded for the KL of the other models
    student_prompts = [it.prompt for it in items]
    scratch = staging_folder(run_dir / "eval-scratch")  # a killed eval's is swept by the next
    store = TeacherLogProbs(scratch)
    cache = EvalCache(run_dir)
    keys = {} if tasks else _cache_keys(recipe, models, items)
    try:
        for m in models:
            t0 = time.perf_counter()
            key = keys.get(m.name)
            if key is not None and m.name != "teacher":  # its fidelity is measured on these very answers
                key = cache_key({"key": key, "teacher_answers": answers and [answers.answers, answers.stopped]})
            hit = cache.load(m.arm, key)
            prompts = [it.teacher_prompt for it in items] if m.teacher_view else student_prompts
            if hit is not None and hit["fidelity"] is not None:  # the base student: nothing to compute
                rows += _rows(m, items, prompts, hit["comps"])
                fidelity.setdefault(m.arm, []).append((m.seed, hit["fidelity"]))
                console.print(f"{m.name}: answers and fidelity of an earlier eval of this run reused", highlight=False)
                seconds[m.arm] = round(time.perf_counter() - t0, 1)
                continue
            engine = m.engine()
            try:
                if hit is not None:
                    comps, tokens_per_s = hit["comps"], hit["tokens_per_s"]
                    console.print(f"{m.name}: answers of an earlier eval of this run reused", highlight=False)
                else:
                    with progress_bar(console) as bar:
                        task = bar.add_task(m.name, total=len(items) * (1 + ev.samples), tokens=0)

                        def advance(rows: int, tokens: int, bar: Any = bar, task: Any = task) -> None:
                            bar.update(task, advance=rows, tokens=bar.tasks[task].fields["tokens"] + tokens)

                        comps, tokens_per_s = _answer(engine, prompts, recipe, advance)
                answered = time.perf_counter()
                rows += _rows(m, items, prompts, comps)
                if m.name == "teacher":
                    answers = TeacherAnswers(
                        [it.teacher_prompt for it in items],
                        student_prompts,
                        [c[0].text for c in comps],
                        [c[0].finish_reason == "stop" for c in comps],
                    )
                    if isinstance(engine, TransformersEngine):
                        teacher_engine = engine
                measured = None
                if isinstance(engine, TransformersEngine) and answers is not None:
                    teacher = None if teacher_engine is None else (teacher_engine.model, teacher_engine.tokenizer)
                    measured = measure(engine.model, engine.tokenizer, answers, teacher, m.name == "teacher", store)
                    measured |= {"tokens_per_s": tokens_per_s}
                    fidelity.setdefault(m.arm, []).append((m.seed, measured))
                    spent = f"answered in {answered - t0:.0f} s, fidelity in {time.perf_counter() - answered:.0f} s"
                    console.print(f"{m.name}: {spent}", highlight=False)
                # the teacher's fidelity is measured each time: its pass fills `store` for the others' KL
                cache.save(m.arm, key, comps, tokens_per_s, None if m.name == "teacher" else measured)
                if tasks and ev.benchmarks and isinstance(engine, TransformersEngine):
                    console.print(f"benchmarks: {m.name} on {', '.join(ev.benchmarks.tasks)}")
                    found = run_benchmarks(engine.model, engine.tokenizer, tasks, ev.benchmarks)
                    scores.setdefault(m.arm, []).append((m.seed, found))
                elif tasks:
                    unbenchmarked.append(m.name)
            finally:
                if engine is not teacher_engine:
                    engine.close()
                del engine
            seconds[m.arm] = round(seconds.get(m.arm, 0.0) + time.perf_counter() - t0, 1)
        _judge(rows, checks, behaviour)
    finally:
        if teacher_engine is not None:
            teacher_engine.close()
        for check in checks:
            check.close()
        shutil.rmtree(scratch, ignore_errors=True)
    _relevance(rows)
    threshold = next((c.min_similarity for c in recipe.curate.checks if c.type == "relevance"), None)
    report = build_report(
        rows,
        list(dict.fromkeys(m.arm for m in models)),
        behaviour=behaviour,
        prompts=len(items),
        samples=ev.samples,
        relevance_threshold=threshold,
        relevance_measured=embeddings.available(),
        judges=[c.name for c in checks if c.spec.judge],
        fidelity=fidelity,
        seconds=seconds,
        benchmarks=scores,
        benchmarks_note=(
            f"Not run on {', '.join(unbenchmarked)}: lm-eval's hf model type needs a model loaded with "
            "transformers, and this one is served (run lm-eval's local-completions model against its server)."
            if unbenchmarked
            else None
        ),
        speed=read_speed(run_dir, _speed_folders(models)),
        differences=arm_differences(run_dir, [m.arm for m in models if m.arm not in RESERVED_ARMS], recipe.train.seeds),
        notes=notes,
    )
    _write_as_one_set(run_dir / "eval", report, rows)
    return report


def _write_as_one_set(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The four eval files, written beside `out` and swapped in together: a kill half-way leaves the last
    complete eval, never a new answers.parquet beside an old report.json."""
    tmp = staging_folder(out)
    try:
        write_outputs(tmp, report, rows)
        swap_in_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

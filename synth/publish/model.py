"""`sft publish`: the trained student (LoRA adapter or full model) as a Hub model repo with a model card.

The folder uploaded is `runs/<name>/publish/model/`: `train/<objective>/final/` without
`training_args.bin` (a pickle of the trainer's arguments, which can hold a hub token), with the
adapter's `base_model_name_or_path` set to the base model's Hub id instead of a local cache path,
and our README. It is written on every run; `--dry-run` stops there. One `upload_folder` commit.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from synth.adapters import RECORD, base_mismatch
from synth.errors import UserError
from synth.io import read_json
from synth.models import resolve_model
from synth.publish import cards
from synth.publish.dataset import PublishSummary
from synth.publish.hub import authenticated_api, check_repo_id, hub_errors, import_hub, model_id
from synth.recipe import Recipe, objective_overrides

LEFT_OUT = {"training_args.bin", "README.md", RECORD}  # RECORD names a local path


def base_model_id(recipe: Recipe) -> str:
    """The base model's Hub id (the embedded model's is its upstream id)."""
    path = recipe.model.path
    if "/" in path and not Path(path).expanduser().exists():
        return path
    return model_id(resolve_model(path)[1])


def run_publish_model(
    recipe: Recipe,
    run_dir: Path,
    repo_id: str | None,
    private: bool | None,
    objective: str | None,
    dataset: str | None,
    dry_run: bool,
) -> PublishSummary:
    """Stage, then (unless dry_run) upload the final model or adapter with its card."""
    spec = recipe.publish
    repo_id = check_repo_id(repo_id or spec.model_repo_id, "model_repo_id")
    private = spec.private if private is None else private
    objective = objective or recipe.train.folder
    final = run_dir / "train" / objective / "final"
    if not final.is_dir():
        found = (p.parent.name for p in (run_dir / "train" / objective).glob("seed-*/final"))
        seeded = sorted((n for n in found if n.removeprefix("seed-").isdigit()), key=lambda n: int(n[5:]))
        if seeded:  # train.seeds: one model per seed; the user picks which to publish
            raise UserError(
                f"{objective} was trained with several seeds ({', '.join(seeded)}): which one to publish?",
                f"pass --objective {objective}/{seeded[0]} (or another seed)",
            )
        arm = objective.split("/seed-")[0]
        raise UserError(f"no trained model in {final}", f"run `sft run` with {objective_overrides(arm)} first")
    hub = import_hub()
    api = None if dry_run else authenticated_api()
    start = time.perf_counter()
    adapter = (final / "adapter_config.json").is_file()
    if adapter and (wrong := base_mismatch(final, Path(resolve_model(recipe.model.path)[0]))):
        raise UserError(
            f"model.path={recipe.model.path!r}: {wrong}; its card would name the wrong base model",
            f"set model.path back to the model {objective} was trained on",
        )
    base = base_model_id(recipe)
    folder = run_dir / "publish" / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(final, folder, ignore=lambda _d, names: [n for n in names if n in LEFT_OUT])
    if adapter:
        cfg_path = folder / "adapter_config.json"
        cfg = read_json(cfg_path, "the adapter config", f"run `sft run` again to rewrite {final}")
        cfg["base_model_name_or_path"] = base
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    dataset = dataset or spec.repo_id
    card = cards.merged_card(
        hub.ModelCard,
        None,
        cards.model_metadata(recipe, base, adapter, dataset),
        cards.model_body(recipe, run_dir, repo_id, base, adapter, dataset),
    )
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    summary = PublishSummary(repo_id, None, folder, files, private, dry_run)
    if not dry_run:
        with hub_errors(api.endpoint, f"publishing {repo_id}"):
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                commit_message=f"Distillery: {objective} {'adapter' if adapter else 'model'} of {base}",
            )
        summary.url = str(url)
    summary.seconds = time.perf_counter() - start
    return summary

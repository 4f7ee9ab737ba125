"""`synth publish`: the run's data as a Hub dataset, one config per set, with a provenance card.

Each chosen set (curated, rejected, generations) is one config with a `train` split, pushed with
`datasets.Dataset.push_to_hub` (parquet under `<config>/`); `curated` is the default config, so
`load_dataset(repo_id)` gives the training set. The card is pushed last and merged with the
`dataset_info` / `configs` that push_to_hub wrote.

Every run (dry or not) first writes the folder that is uploaded to `runs/<name>/publish/dataset/`:
the parquet shards written by the same `Dataset.shard(...).to_parquet` call push_to_hub makes, and
the README with the same card, whose `dataset_info` / `configs` come from `datasets`' own
`DatasetInfosDict` / `MetadataConfigs`. With `--dry-run` nothing else happens.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.table import Table

from synth import tables
from synth.errors import UserError
from synth.io import read_parquet
from synth.publish import cards
from synth.publish.config import What
from synth.publish.hub import authenticated_api, check_repo_id, hub_errors, import_hub
from synth.recipe import Recipe
from synth.records import KEPT_SCHEMA, REJECTED_SCHEMA
from synth.shards import ShardSet

MAX_SHARD_BYTES = 500 * 1024 * 1024  # datasets' default max_shard_size
SPLIT = "train"


@dataclass
class PublishSummary:
    """What a publish did (printed as a table)."""

    repo_id: str
    url: str | None
    folder: Path
    configs: dict[str, int] = field(default_factory=dict)
    private: bool = False
    dry_run: bool = False
    seconds: float = 0.0


def _sources(run_dir: Path, what: What) -> dict[str, list[Path]]:
    chosen = ["curated", "rejected", "generations"] if what == "all" else [what]
    files = {
        "curated": [run_dir / "curated" / "kept.parquet"],
        "rejected": [run_dir / "curated" / "rejected.parquet"],
        "generations": sorted((run_dir / "generations").glob("shard-*.parquet")),
    }
    for name in chosen:
        if not files[name] or not all(p.is_file() for p in files[name]):
            stage = "synth generate" if name == "generations" else "synth curate"
            raise UserError(f"nothing to publish for {name!r}: {run_dir} has no {name} data", f"run `{stage}` first")
    return {name: files[name] for name in chosen}


def _dataset(name: str, paths: list[Path]) -> Any:
    """One set as a `datasets.Dataset`; the generations are read through ShardSet (each row once)."""
    import datasets

    if name == "generations":
        table = ShardSet(paths[0].parent).table()
    else:
        schema = KEPT_SCHEMA if name == "curated" else REJECTED_SCHEMA
        need = ["id", "prompt", "completion"]
        table = pa.concat_tables([read_parquet(p, f"the {name} set", require=need, schema=schema) for p in paths])
    return datasets.Dataset(table)


def _num_shards(ds: Any) -> int:
    return max(1, math.ceil(ds.data.nbytes / MAX_SHARD_BYTES))


def _teacher(datasets_: dict[str, Any]) -> dict[str, Any]:
    for ds in datasets_.values():
        if len(ds):
            return ds[0]["teacher"]
    raise UserError("every chosen set is empty: nothing to publish")


def _stage(folder: Path, datasets_: dict[str, Any], card_text: str) -> None:
    """Write the upload folder: `<config>/train-0000i-of-0000n.parquet` + README.md."""
    shutil.rmtree(folder, ignore_errors=True)
    for config, ds in datasets_.items():
        n = _num_shards(ds)
        (folder / config).mkdir(parents=True)
        for i in range(n):
            ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(
                str(folder / config / f"{SPLIT}-{i:05d}-of-{n:05d}.parquet")
            )
    (folder / "README.md").write_text(card_text, encoding="utf-8")


def _local_card_data(datasets_: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`dataset_info` and `configs` as push_to_hub writes them, made with datasets' own classes."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    infos, configs = {}, {}
    for config, ds in datasets_.items():
        uploaded = sum(p.stat().st_size for p in (folder / config).glob("*.parquet"))
        split = SplitInfo(name=SPLIT, num_bytes=ds.data.nbytes, num_examples=len(ds), dataset_name=None)
        info = DatasetInfo(
            config_name=config,
            features=ds.features,
            splits=SplitDict(),
            download_size=uploaded,
            dataset_size=ds.data.nbytes,
        )
        info.splits.add(split)
        info.size_in_bytes = uploaded + ds.data.nbytes
        infos[config] = info
        configs[config] = {"data_files": [{"split": SPLIT, "path": f"{config}/{SPLIT}-*"}]}
        if config == next(iter(datasets_)):
            configs[config]["default"] = True
    data = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(data)
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data.to_dict()


def run_publish_dataset(
    recipe: Recipe, run_dir: Path, repo_id: str | None, private: bool | None, what: What | None, dry_run: bool
) -> PublishSummary:
    """Stage, then (unless dry_run) push the chosen sets and the card; see the module docstring."""
    spec = recipe.publish
    repo_id = check_repo_id(repo_id or spec.repo_id, "repo_id")
    private = spec.private if private is None else private
    sources = _sources(run_dir, what or spec.what)
    hub = import_hub()
    api = None if dry_run else authenticated_api()  # fail on a bad token before any work
    start = time.perf_counter()
    datasets_ = {name: _dataset(name, paths) for name, paths in sources.items()}
    teacher = _teacher(datasets_)
    counts = {name: len(ds) for name, ds in datasets_.items()}
    metadata = cards.dataset_metadata(recipe, teacher, sum(counts.values()))
    body = cards.dataset_body(recipe, run_dir, repo_id, teacher, counts)
    folder = run_dir / "publish" / "dataset"
    _stage(folder, datasets_, "")
    local = cards.merged_card(hub.DatasetCard, None, {**_local_card_data(datasets_, folder), **metadata}, body)
    (folder / "README.md").write_text(str(local), encoding="utf-8")
    summary = PublishSummary(repo_id, None, folder, counts, private, dry_run)
    if dry_run:
        summary.seconds = time.perf_counter() - start
        return summary
    with hub_errors(api.endpoint, f"publishing {repo_id}"):
        url = _push(hub, api, repo_id, private, datasets_, metadata, body)
    summary.url = str(url)
    summary.seconds = time.perf_counter() - start
    return summary


def _push(
    hub: Any, api: Any, repo_id: str, private: bool, datasets_: dict[str, Any], metadata: dict[str, Any], body: str
) -> str:
    """Create the repo, push each set as a config, then the card; returns the repo URL."""
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    for i, (config, ds) in enumerate(datasets_.items()):
        ds.push_to_hub(
            repo_id,
            config_name=config,
            split=SPLIT,
            set_default=i == 0,
            private=private,
            num_shards=_num_shards(ds),
            commit_message=f"Distillery: {config} ({len(ds)} rows)",
        )
    existing = None
    with contextlib.suppress(hub.errors.EntryNotFoundError):  # push_to_hub writes one; be safe anyway
        existing = hub.DatasetCard.load(repo_id, repo_type="dataset").content
    card = cards.merged_card(hub.DatasetCard, existing, metadata, body)
    card.push_to_hub(repo_id, repo_type="dataset", commit_message="Distillery: dataset card with provenance")
    return str(url)


def summary_table(s: PublishSummary) -> Table:
    """The table printed at the end of `synth publish` / `sft publish`."""
    where = "dry run, nothing uploaded" if s.dry_run else f"published to {s.url}"
    return tables.summary_table(
        f"{s.repo_id} ({'private' if s.private else 'public'})",
        ("config / file", "rows / bytes"),
        [*s.configs.items(), tables.SECTION, ("seconds", f"{s.seconds:.1f}")],
        caption=f"{where}; folder {s.folder}",
    )

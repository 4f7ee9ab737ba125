"""Reading a run's generation shards: the one place that finds them, checks them and de-duplicates.

Every stage that reads `generations/shard-*.parquet` goes through `ShardSet`, so all of them agree on
what the run holds. A file that is not a shard (corrupt, or parquet written by something else) stops
the stage with its name. A row id that appears in two files (a shard copied under another name, a
stale copy restored from a backup) is used once, from the first file (`synth generate`'s own names
first, then name order), and the stage says which files repeat which; nothing is lost and nothing
is counted twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from synth.errors import UserError
from synth.io import read_parquet
from synth.records import SCHEMA

SHARD_GLOB = "shard-*.parquet"
_INDEX = re.compile(r"^shard-(\d+)")
_CANONICAL = re.compile(r"^shard-\d{5}\.parquet$")


def shard_index(name: str) -> int | None:
    """The number in `shard-00012.parquet`, or None for a file named otherwise (e.g. a copy)."""
    m = _INDEX.match(name)
    return int(m.group(1)) if m else None


class ShardSet:
    """The complete shards of a run, each row id once."""

    def __init__(self, gen_dir: Path) -> None:
        self.gen_dir = gen_dir
        # Shards named as `synth generate` names them come first, so a copy is what gets set aside.
        self.paths = sorted(gen_dir.glob(SHARD_GLOB), key=lambda p: (not _CANONICAL.match(p.name), p.name))
        self._keep: dict[Path, list[bool] | None] = {}  # None: every row is kept
        self.repeats: dict[str, tuple[int, list[str]]] = {}  # file -> (rows repeated, files holding the originals)
        first_file: dict[str, str] = {}
        self.teacher: dict[str, object] | None = None  # the one teacher every shard's rows share
        teacher_file = ""
        hint = "it was not written by `synth generate` (or was edited); move it out of the generations folder"
        for path in self.paths:
            head = self._read(path, ["id", "prompt_id", "teacher"])
            ids = head.column("id").to_pylist()
            if head.column("id").null_count or head.column("prompt_id").null_count:
                raise UserError(f"{path}: not a generation shard: rows without an id or prompt_id", hint)
            teachers = {json.dumps(t, sort_keys=True) for t in head.column("teacher").to_pylist()}
            if "null" in teachers:
                raise UserError(f"{path}: not a generation shard: rows without a teacher", hint)
            if self.teacher is None and teachers:
                self.teacher, teacher_file = json.loads(min(teachers)), path.name
            if teachers - {json.dumps(self.teacher, sort_keys=True)}:
                raise UserError(
                    f"{path} holds rows of another teacher or other sampling settings than {teacher_file}",
                    "one run folder holds one teacher's rows: move that shard to its own run folder",
                )
            keep, seen = [], set()
            for i in ids:
                keep.append(i not in first_file and i not in seen)
                seen.add(i)
            if all(keep):
                self._keep[path] = None
            else:
                origins = sorted({first_file.get(i, path.name) for i, k in zip(ids, keep, strict=True) if not k})
                self.repeats[path.name] = (keep.count(False), origins)
                self._keep[path] = keep
            for i in ids:
                first_file.setdefault(i, path.name)

    def _read(self, path: Path, columns: list[str] | None) -> pa.Table:
        hint = "it was not written by `synth generate`; move it out of the generations folder"
        table = read_parquet(path, "a generation shard", columns or SCHEMA.names, hint, schema=SCHEMA)
        return table.select(columns or SCHEMA.names)

    def tables(self, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
        """Each shard's rows that no earlier shard holds, with `columns` (default: all, in SCHEMA order)."""
        for path in self.paths:
            table = self._read(path, columns)
            keep = self._keep[path]
            yield path, table if keep is None else table.filter(pa.array(keep, pa.bool_()))

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows at once (each id once), for small runs and publishing."""
        parts = [t for _, t in self.tables(columns)]
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table()

    def warning(self) -> str | None:
        """One line naming the files that repeat rows of other files, or None."""
        if not self.repeats:
            return None
        parts = [f"{name} repeats {n} row(s) of {', '.join(origins)}" for name, (n, origins) in self.repeats.items()]
        return (
            f"{self.gen_dir}: {'; '.join(parts)}: each row is used once; "
            "delete the copies to silence this (a shard copied under another name?)"
        )

"""Reading a run's generation shards: the one place that finds them, checks them and de-duplicates.

Every stage that reads `generations/shard-*.parquet` goes through `ShardSet`, so all of them agree on
what the run holds. A file that is not a shard (corrupt, or parquet written by something else) stops
the stage with its name. A row id that appears in two files (a shard copied under another name, a
stale copy restored from a backup) is used once, from the first file (`synth generate`'s own names
first, then name order), and the stage says which files repeat which; nothing is lost and nothing
is counted twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from synth.errors import UserError
from synth.io import read_parquet
from synth.records import SCHEMA, stored_teacher

MANIFEST = "_manifest.json"  # generations/_manifest.json: what the shards hold, rewritten after each
WRITER_LOCK = ".generate.lock"  # held by the one `synth generate` writing a generations folder


@contextmanager
def only_writer(lock_file: Path, busy: str, hint: str) -> Iterator[None]:
    """Hold the lock at `lock_file` for the block, or fail at once with `busy` (another process of the
    same stage writes the same folder: two would overwrite or delete each other's work)."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(busy, hint) from None
    try:
        yield
    finally:
        lock.release()


SHARD_GLOB = "shard-*.parquet"
FOREIGN_HINT = "it was not written by `synth generate` (or was edited); move it out of the generations folder"
_INDEX = re.compile(r"^shard-(\d+)")
_CANONICAL = re.compile(r"^shard-\d{5}\.parquet$")


def shard_index(name: str) -> int | None:
    """The number in `shard-00012.parquet`, or None for a file named otherwise (e.g. a copy)."""
    m = _INDEX.match(name)
    return int(m.group(1)) if m else None


def _one_teacher(table: pa.Table, path: Path) -> dict[str, object] | None:
    """The teacher all rows of one shard share (None for an empty shard), found in Arrow, not per row."""
    column = table.column("teacher")
    if column.null_count:
        raise UserError(f"{path}: not a generation shard: rows without a teacher", FOREIGN_HINT)
    if table.num_rows == 0:
        return None
    flat = table.select(["teacher"]).flatten().flatten()
    if flat.group_by(flat.column_names).aggregate([]).num_rows > 1:
        raise UserError(f"{path} mixes rows of several teachers or sampling settings", FOREIGN_HINT)
    return stored_teacher(column[0].as_py())


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
        for path in self.paths:
            head = self._read(path, ["id", "prompt_id", "teacher"])
            ids = head.column("id").to_pylist()
            if head.column("id").null_count or head.column("prompt_id").null_count:
                raise UserError(f"{path}: not a generation shard: rows without an id or prompt_id", FOREIGN_HINT)
            teacher = _one_teacher(head, path)
            if self.teacher is None and teacher is not None:
                self.teacher, teacher_file = teacher, path.name
            if teacher is not None and teacher != self.teacher:
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
        table = read_parquet(path, "a generation shard", columns or SCHEMA.names, FOREIGN_HINT, schema=SCHEMA)
        return table.select(columns or SCHEMA.names)

    def first_row(self, path: Path, columns: list[str]) -> dict[str, object] | None:
        """The first row of one shard (only `columns`), read without loading the rest of the file."""
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1, columns=columns):
            if batch.num_rows:
                return batch.to_pylist()[0]
        return None

    def rows(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        """One shard's rows that no earlier shard holds, with `columns` (default: all, in SCHEMA order)."""
        table = self._read(path, columns)
        keep = self._keep[path]
        return table if keep is None else table.filter(pa.array(keep, pa.bool_()))

    def tables(self, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
        """`rows` of each shard in turn."""
        for path in self.paths:
            yield path, self.rows(path, columns)

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows at once (each id once), for small runs and publishing."""
        parts = [t for _, t in self.tables(columns)]
        if parts:
            return pa.concat_tables(parts)
        return pa.schema([SCHEMA.field(c) for c in columns or SCHEMA.names]).empty_table()

    def warning(self) -> str | None:
        """One line naming the files that repeat rows of other files, or None."""
        if not self.repeats:
            return None
        parts = [f"{name} repeats {n} row(s) of {', '.join(origins)}" for name, (n, origins) in self.repeats.items()]
        return (
            f"{self.gen_dir}: {'; '.join(parts)}: each row is used once; "
            "delete the copies to silence this (a shard copied under another name?)"
        )

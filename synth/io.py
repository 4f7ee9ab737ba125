"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a re-run after `kill -9`) therefore sees either the old file or the complete new one,
never a half-written file. Temp files start with '.' and end in '.tmp' so they are never mistaken
for output and can be swept away on the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import UserError, first_line


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` and move the result to `path` only once it is complete and on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        # pyarrow's write errors carry no file name, and ours would name the temp file: name the target
        if exc.errno is not None and (exc.filename is None or str(exc.filename) == str(tmp)):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Write a parquet file atomically."""
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def staging_folder(final: Path, tag: str | None = None) -> Path:
    """An empty hidden folder beside `final` to write its next version into (then `swap_in_folder`).

    Staging and swap-out folders that a killed run left for the same `final` (any process id) are
    removed first: nobody else reads them, and otherwise every killed run would leave one more.
    `tag` replaces the process id in the name where several processes write one folder (accelerate)."""
    import shutil

    for stale in [*final.parent.glob(f".{final.name}.*.tmp"), *final.parent.glob(f".{final.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.{tag or os.getpid()}.tmp"
    tmp.mkdir(parents=True)
    return tmp


def swap_in_folder(tmp: Path, final: Path) -> None:
    """Replace the folder `final` by `tmp` with renames only, so `final` is never half-written; `tmp`'s
    files are flushed to disk first (fsync), so that after a power loss the renamed folder does not
    hold empty or partial files."""
    import shutil

    fsync_tree(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (what a rename then publishes is on disk)."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files left by a killed writer; return how many were removed."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


FOREIGN = "it was not written by Distillery; move it out of the run folder"


def read_parquet(
    path: Path,
    what: str,
    columns: list[str] | None = None,
    hint: str | None = None,
    require: list[str] | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Read a parquet file the pipeline expects; a corrupt or foreign file is a UserError naming it.

    `what` says what the file should be ("a generation shard", "the curated set"), `columns` the
    columns to read (default: all), `require` columns that must exist besides them, and `schema`
    the types the columns it names must have (cast): a parquet file written by something else fails
    here, with the file name and what is wrong, instead of deep inside a stage.
    """
    path = Path(path)
    try:
        found = pq.read_schema(path)
        missing = [c for c in [*(columns or []), *(require or [])] if c not in found.names]
        if missing:
            raise UserError(
                f"{path}: not {what}: no column {', '.join(map(repr, missing))}",
                hint or FOREIGN,
            )
        table = pq.read_table(path, columns=columns)
    except UserError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise UserError(
            f"{path}: cannot read {what}: {first_line(exc, 200)}",
            hint or "the file is damaged or not parquet; remove it (or restore it) and run the command again",
        ) from None
    if schema is None:
        return table
    wanted = pa.schema([schema.field(n) if n in schema.names else table.schema.field(n) for n in table.column_names])
    try:
        return table.cast(wanted)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise UserError(
            f"{path}: not {what}: its columns have other types ({first_line(exc, 160)})",
            hint or FOREIGN,
        ) from None


def read_json(path: Path, what: str, hint: str) -> Any:
    """Read a JSON file the pipeline wrote; a damaged one is a UserError naming it and what to do."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too-long ints
        raise UserError(f"{path}: {what} is damaged ({first_line(exc, 120)})", hint) from None

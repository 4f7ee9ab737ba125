"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a re-run after `kill -9`) therefore sees either the old file or the complete new one,
never a half-written file. Temp files start with '.' and end in '.tmp' so they are never mistaken
for output and can be swept away on the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Write a parquet file atomically."""
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files left by a killed writer; return how many were removed."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed

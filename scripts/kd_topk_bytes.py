"""Bytes per completion token of stored teacher top-k (int32 ids + float16 log-probs) in parquet.

Realistic values: ids from a Zipf-like vocabulary draw (49152 tokens), log-probs of a peaked softmax.
Usage: python scripts/kd_topk_bytes.py [tokens]
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def table(k: int, rows: int, tokens_per_row: int, rng: np.random.Generator) -> pa.Table:
    n = rows * tokens_per_row
    ids = np.minimum(rng.zipf(1.3, size=(n, k)), 49151).astype(np.int32)
    logits = rng.standard_normal((n, k)) * 3
    logits[:, 0] += 6  # peaked: top-1 near 1
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True) + 0.01)
    lp = -np.sort(-lp, axis=1).astype(np.float16)
    offsets = np.arange(0, n + 1, tokens_per_row, dtype=np.int32)
    inner = lambda flat, t: pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), t), k)  # noqa: E731
    return pa.table(
        {
            "teacher_topk_ids": pa.ListArray.from_arrays(offsets, inner(ids, pa.int32())),
            "teacher_topk_logprobs": pa.ListArray.from_arrays(offsets, inner(lp, pa.float16())),
        }
    )


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rng = np.random.default_rng(0)
    for k in (8, 20):
        t = table(k, tokens // 400, 400, rng)
        for compression in ("zstd", "snappy", "none"):
            buf = io.BytesIO()
            pq.write_table(t, buf, compression=compression)
            print(f"k={k:2d} {compression:6s}: {buf.tell() / tokens:6.1f} bytes/token (raw {k * 6} bytes/token)")


if __name__ == "__main__":
    main()

"""Exact and near-duplicate detection over the rows that passed the row checks.

Rows are added shard by shard (only a hash or a MinHash signature is kept in memory, never the
text), duplicates are joined into clusters, and at the end each cluster keeps its best-ranked member
(highest score, then lowest sample index, then first seen). Near duplicates use datasketch's
MinHash LSH on word shingles; similarity is transitive inside a cluster (A~B and B~C join A, B, C).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from synth.curate.base import CheckSpec, Row, Verdict, completion_words, runs
from synth.records import completion_text

NONWORD = re.compile(r"\W+", re.UNICODE)
RankKey = Callable[[str], tuple[float, int, int]]


class UnionFind:
    """Clusters of row ids."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def clusters(self, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in ids:
            out.setdefault(self.find(i), []).append(i)
        return out


class GroupCheck:
    """Base of dedup checks: `keys` of each shard's rows (anywhere), `insert` them in order (on the
    driver), then `resolve` once."""

    kind = "duplicate"

    def __init__(self, spec: object) -> None:
        self.spec = spec
        self.name: str = spec.label  # type: ignore[attr-defined]
        self.uf = UnionFind()
        self.ids: list[str] = []

    def keys(self, rows: list[Row]) -> Any:
        """What `insert` needs of these rows (hashes, signatures): computed per shard, in-process or on a
        Ray worker, without the index."""
        raise NotImplementedError

    def insert(self, ids: list[str], keys: Any) -> None:
        """Add rows (their ids, with what `keys` computed) to the index, in the order the run reads them."""
        raise NotImplementedError

    def resolve(self, alive: set[str], rank: RankKey) -> dict[str, Verdict]:
        """Verdicts for every alive row seen: the best of each cluster passes, the rest fail."""
        verdicts: dict[str, Verdict] = {}
        for members in self.uf.clusters([i for i in self.ids if i in alive]).values():
            members.sort(key=rank)
            keeper = members[0]
            verdicts[keeper] = Verdict(True, reason="")
            for other in members[1:]:
                verdicts[other] = Verdict(False, reason=f"{self.kind} of {keeper} (kept: ranked higher)")
        return verdicts


class ExactDedupCheck(CheckSpec):
    type: Literal["exact_dedup"]
    in_eval = False  # about the training set as a whole, not one answer


@runs(ExactDedupCheck)
class ExactDedup(GroupCheck):
    """Same text after lower-casing and dropping punctuation and spacing."""

    kind = "exact duplicate"

    def __init__(self, spec: object) -> None:
        super().__init__(spec)
        self.first: dict[bytes, str] = {}

    def keys(self, rows: list[Row]) -> list[bytes]:
        return [
            hashlib.blake2b(NONWORD.sub(" ", completion_text(r).lower()).strip().encode(), digest_size=16).digest()
            for r in rows
        ]

    def insert(self, ids: list[str], keys: list[bytes]) -> None:
        for row_id, key in zip(ids, keys, strict=True):
            self.ids.append(row_id)
            if key in self.first:
                self.uf.union(self.first[key], row_id)
            else:
                self.first[key] = row_id


class _WordHash(dict):
    """word -> crc32, filled on first sight; `map(d.__getitem__, words)` then runs at C speed."""

    def __missing__(self, word: str) -> int:
        value = self[word] = zlib.crc32(word.encode())
        return value


class NearDedupCheck(CheckSpec):
    type: Literal["near_dedup"]
    in_eval = False  # about the training set as a whole, not one answer
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard similarity that makes a duplicate")
    ngram: int = Field(3, ge=1, le=20, description="word shingle size")
    num_perm: int = Field(128, ge=16, le=1024)


@runs(NearDedupCheck)
class NearDedup(GroupCheck):
    """MinHash LSH over word n-gram shingles, with datasketch's MinHash scheme and LSH index.

    Signatures for a whole shard are computed at once in numpy with datasketch's own permutations and
    mixing function (its `affine32` scheme: `fmix(h) * a + b` per permutation, minimum over shingles),
    which is what `MinHash.update_batch` computes one row at a time; a test pins the two equal. Rows
    go into a `MinHashLSH`; rows sharing any LSH bucket form a cluster when the run resolves.
    """

    kind = "near-duplicate"
    CHUNK_SHINGLES = 200_000  # bounds the [shingles x num_perm] work array (~100 MB at 128 permutations)

    def __init__(self, spec: object) -> None:
        super().__init__(spec)
        num_perm = spec.num_perm  # type: ignore[attr-defined]
        from datasketch import MinHash, MinHashLSH  # here: it imports scipy (0.4 s), every recipe load would pay

        self.lsh = MinHashLSH(threshold=spec.threshold, num_perm=num_perm)  # type: ignore[attr-defined]
        self.template = MinHash(num_perm=num_perm, seed=1)
        self.a, self.b = (p.reshape(1, -1) for p in self.template.permutations)
        self.word_hash = _WordHash()

    def _shingle_hashes(self, rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every row's word n-grams, flattened, with each row's shingle count."""
        n = self.spec.ngram  # type: ignore[attr-defined]
        lookup = self.word_hash.__getitem__
        ids: list[int] = []
        starts = np.empty(len(rows), dtype=np.int64)
        counts = np.empty(len(rows), dtype=np.int64)
        for i, r in enumerate(rows):
            toks = completion_words(r)
            starts[i] = len(ids)
            ids.extend(map(lookup, toks))
            if len(toks) < n:
                ids.extend([0] * (n - len(toks)))  # a short text is one (padded) shingle
            counts[i] = max(1, len(toks) - n + 1)
        flat = np.array(ids + [0] * n, dtype=np.uint32)
        combined = flat[: len(ids)].copy()
        for k in range(1, n):  # order-sensitive mix of the n words starting at each position
            combined = combined * np.uint32(0x9E3779B1) + flat[k : len(ids) + k]
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        positions = np.arange(int(counts.sum())) + np.repeat(starts - first, counts)
        return combined[positions], counts

    def _signatures(self, rows: list[Row]) -> np.ndarray:
        hashes, counts = self._shingle_hashes(rows)
        from datasketch.minhash import _fmix

        mixed = _fmix(hashes.reshape(1, -1), 32)
        a, b = self.a.reshape(-1, 1), self.b.reshape(-1, 1)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        out = np.empty((len(rows), a.shape[0]), dtype=np.uint32)
        row = 0
        while row < len(rows):  # chunks of rows whose shingles fit the work array
            end = int(np.searchsorted(offsets, offsets[row] + self.CHUNK_SHINGLES, side="right")) - 1
            end = min(max(end, row + 1), len(rows))
            lo, hi = offsets[row], offsets[end]
            permuted = mixed[:, lo:hi] * a + b  # [num_perm, shingles]: the reduction runs along memory
            out[row:end] = np.minimum.reduceat(permuted, offsets[row:end] - lo, axis=1).T
            row = end
        return out

    def keys(self, rows: list[Row]) -> np.ndarray:
        """The rows' MinHash signatures, [rows, num_perm] uint32."""
        if not rows:
            return np.empty((0, len(self.template.permutations[0])), dtype=np.uint32)
        return self._signatures(rows)

    def insert(self, ids: list[str], keys: np.ndarray) -> None:
        from datasketch import MinHash

        perms = self.template.permutations
        for row_id, hv in zip(ids, keys, strict=True):
            m = MinHash(seed=1, hashvalues=hv, permutations=perms, scheme="affine32")
            self.lsh.insert(row_id, m, check_duplication=False)
            self.ids.append(row_id)

    def resolve(self, alive: set[str], rank: RankKey) -> dict[str, Verdict]:
        for table in self.lsh.hashtables:
            for bucket in table.keys():  # noqa: SIM118 - a datasketch storage, not a dict
                members = list(table.get(bucket))
                for other in members[1:]:
                    self.uf.union(members[0], other)
        return super().resolve(alive, rank)

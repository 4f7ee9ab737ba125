"""Exact and near-duplicate detection over the rows that passed the row checks.

Rows are added shard by shard (only a hash or a MinHash signature is kept in memory, never the
text), duplicates are joined into clusters, and at the end each cluster keeps its best-ranked member
(highest score, then lowest sample index, then first seen). Near duplicates use datasketch's
MinHash LSH on word shingles; similarity is transitive inside a cluster (A~B and B~C join A, B, C).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from datasketch import MinHash, MinHashLSH

from synth.curate.base import Row, Verdict, words

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
    """Base of dedup checks: `add` rows as they stream, then `resolve` once."""

    kind = "duplicate"

    def __init__(self, spec: object) -> None:
        self.spec = spec
        self.name: str = spec.label  # type: ignore[attr-defined]
        self.uf = UnionFind()
        self.ids: list[str] = []

    def add(self, rows: list[Row]) -> None:
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


class ExactDedup(GroupCheck):
    """Same text after lower-casing and dropping punctuation and spacing."""

    kind = "exact duplicate"

    def __init__(self, spec: object) -> None:
        super().__init__(spec)
        self.first: dict[bytes, str] = {}

    def add(self, rows: list[Row]) -> None:
        for r in rows:
            key = hashlib.blake2b(NONWORD.sub(" ", r["completion"].lower()).strip().encode(), digest_size=16).digest()
            self.ids.append(r["id"])
            if key in self.first:
                self.uf.union(self.first[key], r["id"])
            else:
                self.first[key] = r["id"]


class NearDedup(GroupCheck):
    """MinHash LSH over word n-gram shingles (datasketch)."""

    kind = "near-duplicate"

    def __init__(self, spec: object) -> None:
        super().__init__(spec)
        self.lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm)  # type: ignore[attr-defined]

    def add(self, rows: list[Row]) -> None:
        n = self.spec.ngram  # type: ignore[attr-defined]
        shingles = []
        for r in rows:
            toks = words(r["completion"])
            grams = {" ".join(toks[i : i + n]).encode() for i in range(max(1, len(toks) - n + 1))}
            shingles.append(grams or {b""})
        for r, m in zip(rows, MinHash.bulk(shingles, num_perm=self.spec.num_perm), strict=True):  # type: ignore[attr-defined]
            for other in self.lsh.query(m):
                self.uf.union(other, r["id"])
            self.lsh.insert(r["id"], m, check_duplication=False)
            self.ids.append(r["id"])

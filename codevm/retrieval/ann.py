"""One embedder's vectors in an HNSW index (usearch), kept beside the database.

- Keys: a vector is stored under its row number; `hashes[row]` is the content hash of the
  chunks it belongs to (vectors are keyed by content in the database, see vectors.py).
  Removed rows keep an empty hash.
- Search: HNSW with cosine distance, vectors in f16 (see bench/ann.py for recall against
  exact search per storage type). Below EXACT_BELOW vectors usearch compares every vector
  instead (exact, and as fast at that size). A search restricted to some hashes (the
  search filters) compares those vectors exactly when they are few, and otherwise asks
  the graph for more and keeps the allowed ones.
- Files: `<database>.vectors/<model>-<dimension>.<generation>.usearch` and `.hashes.npy`,
  named by `<model>-<dimension>.json` (written last, atomically; older generations are
  then removed). The database stays the truth: on load the index is compared with the
  database's hashes and the difference is added or removed, so a crash (or files from
  another database, or a corrupt file) costs at most a rebuild, never a wrong answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
else:
    from codevm.lazy import numpy as np


log = logging.getLogger("codevm.embeddings")

DTYPE = "f16"  # recall as f32 (bench/ann.py), 56% of its memory; i8: 5 points less
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 512  # recall@10 on real vectors: 64 -> 0.90, 256 -> 0.977, 512 -> 0.99 (1.5 ms)
EXACT_BELOW = 20_000  # vectors: under this count every vector is compared
EXACT_ALLOWED = 20_000  # a filtered search compares its allowed vectors exactly up to this
HASH_BYTES = 32


class AnnIndex:
    """The vectors of one embedder: add, remove, nearest, save and load."""

    def __init__(self, dimension: int, name: str, directory: Path | None):
        from usearch.index import Index  # ~60 ms to import: only when vectors are used

        self.dimension = dimension
        self.name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{dimension}"
        self.directory = directory
        self.lock = threading.Lock()
        self.index = Index(ndim=dimension, metric="cos", dtype=DTYPE, connectivity=CONNECTIVITY,
                           expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        self.hashes = np.zeros(0, dtype=f"S{HASH_BYTES}")
        self.n = 0  # rows used (removed ones included)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (hashes, rows) by hash
        self.changed = False  # since the last save

    @property
    def count(self) -> int:
        return len(self.index)

    # -- changes ----------------------------------------------------------------------
    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Add vectors of hashes the index does not hold yet (others are skipped)."""
        with self.lock:
            held = self._rows(hashes)
            fresh = [i for i, row in enumerate(held) if row < 0]
            if not fresh:
                return
            rows = np.arange(self.n, self.n + len(fresh), dtype=np.uint64)
            if self.n + len(fresh) > len(self.hashes):
                grown = np.zeros(max(self.n + len(fresh), len(self.hashes) * 3 // 2, 1024),
                                 dtype=self.hashes.dtype)
                grown[: self.n] = self.hashes[: self.n]
                self.hashes = grown
            added = np.array([hashes[i].encode() for i in fresh], dtype=self.hashes.dtype)
            self.hashes[self.n : self.n + len(fresh)] = added
            self.index.add(rows, np.ascontiguousarray(vectors[fresh], dtype=np.float32),
                           threads=_threads())
            self.n += len(fresh)
            self.changed = True
            if self._sorted is not None:  # merged in: sorting all again cost 90 ms a batch at 283k
                keys, order = self._sorted
                by_hash = np.argsort(added, kind="stable")
                at = np.searchsorted(keys, added[by_hash])
                self._sorted = (np.insert(keys, at, added[by_hash]),
                                np.insert(order, at, rows.astype(np.int64)[by_hash]))

    def remove(self, hashes: list[str]) -> int:
        with self.lock:
            rows = sorted({int(r) for r in self._rows(hashes) if r >= 0})
            if rows:
                self.index.remove(np.array(rows, dtype=np.uint64))
                self.hashes[rows] = b""
                self._sorted, self.changed = None, True
            return len(rows)

    def _rows(self, hashes: list[str]) -> np.ndarray:
        """The row of each hash, -1 where it is not held (call with the lock held)."""
        if self.n == 0 or not hashes:
            return np.full(len(hashes), -1, dtype=np.int64)
        if self._sorted is None:
            order = np.argsort(self.hashes[: self.n], kind="stable")
            self._sorted = (self.hashes[: self.n][order], order)
        keys, order = self._sorted
        wanted = np.array([h.encode() for h in hashes], dtype=keys.dtype)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = (keys[at] == wanted) & (wanted != b"")
        return np.where(found, order[at], -1).astype(np.int64)

    # -- search -----------------------------------------------------------------------
    def nearest(self, vector: np.ndarray, k: int, allowed: list[str] | None = None) -> list[tuple[str, float]]:
        """(hash, cosine) of the k most similar vectors (of the `allowed` hashes), best first."""
        query = np.asarray(vector, dtype=np.float32)
        with self.lock:
            if len(self.index) == 0 or k <= 0:
                return []
            if allowed is None:
                return [(self.hashes[r].decode(), s) for r, s in self._search(query, k)]
            rows = self._rows(allowed)
            rows = np.unique(rows[rows >= 0])
            if len(rows) > EXACT_ALLOWED:  # many allowed: the graph's best, widened by their rarity
                keep = set(rows.tolist())
                wider = min(len(self.index), k * max(2, int(4 * len(self.index) / len(rows))))
                found = [(r, s) for r, s in self._search(query, wider) if r in keep][:k]
                if len(found) >= k:
                    return [(self.hashes[r].decode(), s) for r, s in found]
            return self._compare(query, rows, k)

    def _search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self.index))
        matches = self.index.search(query, k, threads=1, exact=len(self.index) < EXACT_BELOW)
        return [(int(key), 1.0 - float(d)) for key, d in zip(matches.keys, matches.distances, strict=True)]

    def _compare(self, query: np.ndarray, rows: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The given rows compared one by one (their vectors read back from the index, a
        block at a time)."""
        unit = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), EXACT_ALLOWED):
            part = rows[start : start + EXACT_ALLOWED].astype(np.uint64)
            data = np.asarray(self.index.get(part, dtype="f32"), dtype=np.float32)
            data = data.reshape(len(part), self.dimension)
            norms = np.linalg.norm(data, axis=1)
            scores[start : start + len(part)] = (data @ unit) / np.where(norms > 0, norms, 1.0)
        k = min(k, len(rows))
        if k <= 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.hashes[int(rows[i])].decode(), float(scores[i])) for i in best]

    # -- files ------------------------------------------------------------------------
    def save(self) -> None:
        """Write the index if it changed (new files first, then the pointer, atomically)."""
        if self.directory is None:
            return
        with self.lock:
            if not self.changed:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            pointer = self.directory / f"{self.name}.json"
            generation = _read_pointer(pointer).get("generation", 0) + 1
            stem = self.directory / f"{self.name}.{generation}"
            self.index.save(str(stem) + ".usearch")
            np.save(str(stem) + ".hashes.npy", self.hashes[: self.n])
            tmp = pointer.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"generation": generation, "rows": self.n,
                                       "count": len(self.index), "dtype": DTYPE}))
            os.replace(tmp, pointer)
            self.changed = False
        for old in self.directory.glob(f"{glob_escape(self.name)}.*"):
            parts = old.name[len(self.name) + 1 :].split(".", 1)
            if parts[0].isdigit() and int(parts[0]) != generation:
                old.unlink(missing_ok=True)

    def load(self) -> bool:
        """Read the saved index; False (and empty) when there is none that can be used."""
        if self.directory is None:
            return False
        meta = _read_pointer(self.directory / f"{self.name}.json")
        if not meta or meta.get("dtype") != DTYPE:
            return False
        stem = self.directory / f"{self.name}.{meta['generation']}"
        try:
            self.index.load(str(stem) + ".usearch")
            hashes = np.load(str(stem) + ".hashes.npy", allow_pickle=False)
            if (self.index.ndim != self.dimension or len(hashes) != meta["rows"]
                    or len(self.index) != meta["count"] or hashes.dtype != self.hashes.dtype):
                raise ValueError("the files do not match their description")
        except Exception as e:  # noqa: BLE001 - any unreadable file means a rebuild
            log.warning("the vector index %s cannot be read (%s): it is built again", stem, e)
            self.index.reset()
            return False
        self.hashes, self.n, self._sorted, self.changed = hashes, len(hashes), None, False
        return True

    def discard(self) -> None:
        """Forget every vector, in memory and on disk (the embedder's vectors were reset)."""
        with self.lock:
            self.index.reset()
            self.hashes, self.n, self._sorted, self.changed = self.hashes[:0], 0, None, False
            if self.directory is not None:
                for old in self.directory.glob(f"{glob_escape(self.name)}.*"):
                    old.unlink(missing_ok=True)

    def held(self) -> np.ndarray:
        """The hashes held (bytes)."""
        with self.lock:
            live = self.hashes[: self.n]
            return live[live != b""]


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", name)


def _read_pointer(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("generation"), int) else {}
    except (OSError, ValueError):
        return {}


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))

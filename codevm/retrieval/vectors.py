"""Dense vectors: the embedder's vectors in the database, the background embedding of
chunks and the ranking by cosine similarity.

- Storage: vectors are keyed by (embedder, content hash), so moved or unchanged code is
  never embedded twice. Each dimension has its table, `embeddings_<n>` with a FLOAT[n]
  column; `embedding_models` records each embedder's dimension.
- Ranking: an HNSW index (usearch, ann.py) of the embedder's vectors, saved beside the
  database and brought in line with it when loaded; small projects are compared exactly.
  Ranking in SQL took 190 ms on the standard library's 72k chunks; a matrix product in
  memory took 7 ms but 1.5 GB at 1M chunks (bench/ann.py has the HNSW figures).
- Work: after lexical indexing, a background thread embeds the chunks that have no vector,
  in batches that are each one transaction (a crash loses at most the batch under way).
  Search uses whatever is embedded meanwhile, and `progress()` says how far along it is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb

from codevm.api import EmbeddingProgress
from codevm.config import Settings
from codevm.db.store import Store, first_row, vectors_directory
from codevm.errors import EmbeddingUnavailable
from codevm.retrieval.ann import AnnIndex
from codevm.retrieval.embedders import Embedder, LocalEmbedder, make_embedder
from codevm.retrieval.sql import chunk_filters

if TYPE_CHECKING:
    import numpy as np
else:
    from codevm.lazy import numpy as np

log = logging.getLogger("codevm.embeddings")

PENDING_BLOCK = 1024  # chunk texts read per query of what is left to embed
QUERY_CACHE = 64  # recent query vectors kept (the pager and search often ask the same)
PRIORITY_KINDS = ("function", "method", "class")  # embedded first: what questions are about
SAVE_SECONDS = 60.0  # a long embedding run saves its vector index this often
RECONCILE_BLOCK = 10_000  # vectors read from the database per query when loading


def _table(dimension: int) -> str:
    return f"embeddings_{int(dimension)}"


class Vectors:
    """The project's embedder, its vectors in the store, and the background worker."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.auto = settings.embedder.strip().lower() == "auto"
        self.embedder = make_embedder(settings)
        self.batch = max(1, settings.embed_batch)
        self.state = "off" if self.embedder is None else "waiting"
        self.message = "" if self.embedder else "no embedder configured (setting `embedder`)"
        self._available: bool | None = None  # for "auto": whether Ollama has the model
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._saved = 0  # batches of vectors committed (and deleted) by this process
        self._counted: tuple[tuple, tuple[int, int]] | None = None
        self._ann: AnnIndex | None = None  # loaded by the first ranking or embedding run
        self._ann_lock = threading.Lock()
        self._saved_at = time.monotonic()
        self._run_lock = threading.Lock()  # one embedding run at a time
        self._thread: threading.Thread | None = None
        self._again = threading.Event()  # more to do since the running pass started
        self._stop = threading.Event()
        if self.embedder is not None:
            row = store.cursor().execute("SELECT dimension FROM embedding_models WHERE model = ?",
                                         [self.embedder.key]).fetchone()
            if row:
                self.embedder.dimension = row[0]

    @property
    def running(self) -> bool:
        return self._run_lock.locked() or (self._thread is not None and self._thread.is_alive())

    @property
    def key(self) -> str:
        return self.embedder.key if self.embedder else ""

    def _usable(self, recheck: bool = False) -> bool:
        """Whether the embedder may be asked; "auto" asks Ollama once whether it has it."""
        if self.embedder is None:
            return False
        if self.auto and (self._available is None or (recheck and not self._available)):
            missing = self.embedder.missing()  # type: ignore[attr-defined]
            self._available = not missing
            if missing:
                self.state, self.message = "off", missing
        return not self.auto or bool(self._available)

    # -- background work --------------------------------------------------------------
    def kick(self) -> None:
        """Embed what has no vector yet, in a background thread (new work joins a run)."""
        if self.embedder is None or self._stop.is_set():
            return
        self._again.set()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._background, name="codevm-embed",
                                            daemon=True)
            self._thread.start()

    def _background(self) -> None:
        _lower_priority()
        while self._again.is_set() and not self._stop.is_set():
            self._again.clear()
            try:
                if self._usable(recheck=True):
                    self.embed(stop=self._stop)
            except EmbeddingUnavailable as e:
                log.warning("%s", e)
                return
            except Exception:  # noqa: BLE001 - the service goes on without vectors
                log.exception("embedding failed")
                self.state, self.message = "unavailable", "embedding failed: see .codevm/service.log"
                return

    def close(self, timeout: float = 60.0) -> None:
        """Stop the background work after the batch under way (it is committed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._save_index()

    def embed(self, progress: Callable[[EmbeddingProgress], None] | None = None,
              stop: threading.Event | None = None) -> int:
        """Embed every chunk that has no vector yet; returns how many texts were embedded.

        Raises EmbeddingUnavailable when the embedder cannot work (the reason is kept for
        `progress()` as well)."""
        embedder = self.embedder
        if embedder is None:
            raise EmbeddingUnavailable(
                "no embedder is configured: set `embedder` to ollama or local "
                "(CODEVM_EMBEDDER, or [tool.codevm] in pyproject.toml)")
        if self.auto and not self._usable(recheck=True):
            raise EmbeddingUnavailable(self.message)
        with self._run_lock:
            self.state, self.message = "running", ""
            done = 0
            try:
                while not (stop and stop.is_set()):
                    pending = self._pending()
                    if not pending:
                        break
                    for start in range(0, len(pending), self.batch):
                        if stop and stop.is_set():
                            break
                        part = pending[start : start + self.batch]
                        vectors = embedder.documents([text for _, text in part])
                        if embedder.dimension and self._ann is None:  # added to as they come
                            self._index(embedder.dimension)
                        self._save(embedder, [h for h, _ in part], vectors)
                        done += len(part)
                        if progress:
                            progress(self.progress())
                if done >= PENDING_BLOCK:  # edits leave few orphans: not worth a count each
                    self._prune(embedder)
                self._save_index()
            except EmbeddingUnavailable as e:
                self.state, self.message = "unavailable", str(e)
                raise
            self.state = "waiting" if stop and stop.is_set() else "done"
            return done

    def _pending(self) -> list[tuple[str, str]]:
        """(hash, text) of chunks without a vector, definitions first."""
        con = self.store.cursor()
        try:
            dimension = self.embedder.dimension if self.embedder else None
            missing = "" if dimension is None else (
                f"WHERE NOT EXISTS (SELECT 1 FROM {_table(dimension)} e "
                "WHERE e.model = $m AND e.hash = c.hash)")
            kinds = ", ".join(f"'{k}'" for k in PRIORITY_KINDS)
            return con.execute(
                f"SELECT hash, any_value(text) FROM chunks c {missing} GROUP BY hash "
                f"ORDER BY bool_or(kind IN ({kinds})) DESC, hash LIMIT $n",
                {"n": PENDING_BLOCK, **({"m": self.key} if missing else {})}).fetchall()
        finally:
            con.close()

    def _save(self, embedder: Embedder, hashes: list[str], vectors: np.ndarray) -> None:
        dimension = int(vectors.shape[1])
        column = np.empty(len(hashes), dtype=object)
        column[:] = list(vectors)
        batch = {"hash": np.array(hashes, dtype=object), "vec": column}
        with self.store.lock:
            with self.store.transaction() as con:
                con.execute(f"CREATE TABLE IF NOT EXISTS {_table(dimension)} "
                            f"(model VARCHAR, hash VARCHAR, vec FLOAT[{dimension}])")
                con.execute("INSERT INTO embedding_models SELECT $m, $d, current_localtimestamp() "
                            "WHERE NOT EXISTS (SELECT 1 FROM embedding_models WHERE model = $m)",
                            {"m": embedder.key, "d": dimension})
                con.register("embedding_batch", batch)
                con.execute(f"INSERT INTO {_table(dimension)} SELECT $m, b.hash, "
                            f"b.vec::FLOAT[{dimension}] FROM embedding_batch b "
                            f"ANTI JOIN {_table(dimension)} e ON e.model = $m AND e.hash = b.hash",
                            {"m": embedder.key})
            self._saved += 1
            with self._ann_lock:  # an index being loaded now must not miss them
                if self._ann is not None and self._ann.dimension == dimension:
                    self._ann.add(hashes, vectors)
        if time.monotonic() - self._saved_at > SAVE_SECONDS:
            self._save_index()

    def _prune(self, embedder: Embedder) -> None:
        """Drop the vectors of code that is gone once they outnumber the live ones (until
        then they are kept: code that comes back, as on a branch switch, is not embedded
        again)."""
        if embedder.dimension is None:
            return
        table = _table(embedder.dimension)
        with self.store.lock:
            con = self.store.cursor()
            try:
                stored, live = first_row(
                    con, f"SELECT count(*), count(*) FILTER (WHERE hash IN (SELECT hash FROM chunks)) "
                    f"FROM {table} WHERE model = ?", [embedder.key])
                if stored - live > max(live, 10_000):
                    gone = [r[0] for r in con.execute(
                        f"DELETE FROM {table} WHERE model = ? AND hash NOT IN "
                        "(SELECT hash FROM chunks) RETURNING hash", [embedder.key]).fetchall()]
                    self._saved += 1
                    with self._ann_lock:
                        if self._ann is not None:
                            self._ann.remove(gone)
            finally:
                con.close()

    def reset(self) -> int:
        """Delete this embedder's vectors (after a model change of the same name)."""
        if self.embedder is None:
            return 0
        with self._run_lock, self.store.lock:
            con = self.store.cursor()
            try:
                row = con.execute("SELECT dimension FROM embedding_models WHERE model = ?",
                                  [self.key]).fetchone()
                removed = 0
                if row:
                    removed = first_row(con, f"DELETE FROM {_table(row[0])} WHERE model = ?",
                                        [self.key])[0]
                    con.execute("DELETE FROM embedding_models WHERE model = ?", [self.key])
                self._saved += 1
                with self._ann_lock:
                    if self._ann is not None:
                        self._ann.discard()
                    self._ann = None
                self.embedder.dimension = None
                with self._queries_lock:
                    self._queries.clear()
                return removed
            finally:
                con.close()

    # -- progress and queries ---------------------------------------------------------
    def _counts(self, dimension: int | None) -> tuple[int, int]:
        """(chunks with a vector, chunks): counted again only after the index or the
        vectors changed (search asks on every call)."""
        version = (self.store.generation, self._saved, dimension)
        if self._counted is not None and self._counted[0] == version:
            return self._counted[1]
        con = self.store.cursor()
        try:
            total = first_row(con, "SELECT count(*) FROM chunks")[0]
            embedded = 0
            if dimension:
                embedded = first_row(
                    con, f"SELECT count(*) FROM chunks c SEMI JOIN {_table(dimension)} e "
                    "ON e.model = $m AND e.hash = c.hash", {"m": self.key})[0]
        except duckdb.CatalogException:  # the table is created with the first vectors
            embedded = 0
        finally:
            con.close()
        self._counted = (version, (embedded, total))
        return embedded, total

    def progress(self) -> EmbeddingProgress:
        self._usable()  # "auto": whether Ollama has the model, asked once
        dimension = self.embedder.dimension if self.embedder else None
        embedded, total = self._counts(dimension)
        running = self.running  # a run under way, or the thread about to start one
        state = self.state
        if state == "done" and embedded < total and not running:
            state = "waiting"
        return EmbeddingProgress(self.key, dimension or 0, embedded, total, running, state,
                                 self.message)

    def query_vector(self, text: str) -> np.ndarray | None:
        """The query's vector, or None when the embedder cannot make one now."""
        if self.embedder is None or self.embedder.dimension is None or not self._usable():
            return None
        with self._queries_lock:
            cached = self._queries.get(text)
            if cached is not None:
                self._queries.move_to_end(text)
                return cached
        try:
            vector = self.embedder.query(text)
        except EmbeddingUnavailable as e:
            if self.state != "running":
                self.state, self.message = "unavailable", str(e)
            return None
        with self._queries_lock:
            self._queries[text] = vector
            while len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def rank(self, con: duckdb.DuckDBPyConnection, query: str, depth: int,
             language: str | None = None, path_glob: str | None = None,
             kind: str | None = None) -> list[tuple[int, float]]:
        """The `depth` chunks most similar to the query: (chunk id, cosine), best first."""
        vector = self.query_vector(query)
        if vector is None:
            return []
        index = self._index(len(vector), con)
        where, params = chunk_filters(language, path_glob, kind)
        allowed = None
        if params:  # the hashes of the chunks that pass the search filters
            allowed = [r[0] for r in con.execute(
                f"SELECT DISTINCT hash FROM chunks c WHERE {where}", params).fetchall()]
        # a few more than asked: some vectors belong to code that is gone
        best = index.nearest(vector, 2 * depth + 20, allowed)
        if not best:
            return []
        score = dict(best)
        rows = con.execute(f"SELECT c.id, c.hash FROM chunks c WHERE c.hash IN "
                           f"(SELECT unnest($h)) AND {where}", {**params, "h": list(score)}).fetchall()
        ranked = sorted(((cid, score[h]) for cid, h in rows), key=lambda r: (-r[1], r[0]))
        return ranked[:depth]

    def preload(self) -> None:
        """Load the in-process model and read the vectors into memory now (the service
        does, so that searches don't wait for them)."""
        dimension = self.embedder.dimension if self.embedder else None
        if dimension and isinstance(self.embedder, LocalEmbedder):
            try:
                self.embedder.load()
            except EmbeddingUnavailable:
                pass  # embed() and progress() tell why when they run into it
        if dimension:
            self._index(dimension)

    def _index(self, dimension: int, con: duckdb.DuckDBPyConnection | None = None) -> AnnIndex:
        """The embedder's vector index: loaded from its files once per process and brought
        in line with the database (built from it when there are no usable files)."""
        with self._ann_lock:
            if self._ann is None or self._ann.dimension != dimension:
                cursor = self.store.cursor() if con is None else con
                try:
                    self._ann = self._loaded(cursor, dimension)
                finally:
                    if con is None:
                        cursor.close()
            return self._ann

    def _loaded(self, con: duckdb.DuckDBPyConnection, dimension: int) -> AnnIndex:
        index = AnnIndex(dimension, self.key, vectors_directory(self.store.path))
        index.load()
        try:
            stored = con.execute(f"SELECT hash FROM {_table(dimension)} WHERE model = ?",
                                 [self.key]).fetchnumpy()["hash"]
        except duckdb.CatalogException:
            stored = np.array([], dtype=object)  # no vectors yet
        stored_bytes = np.array([h.encode() for h in stored], dtype=index.hashes.dtype)
        held = index.held()
        gone = np.setdiff1d(held, stored_bytes, assume_unique=True)
        missing = np.setdiff1d(stored_bytes, held, assume_unique=True)
        if len(gone):
            index.remove([h.decode() for h in gone])
        if len(missing) > RECONCILE_BLOCK:
            print(f"codevm: building the vector index of {self.store.path.name} "
                  f"({len(missing)} vectors) ...", file=sys.stderr, flush=True)
        for start in range(0, len(missing), RECONCILE_BLOCK):
            part = [h.decode() for h in missing[start : start + RECONCILE_BLOCK]]
            data = con.execute(f"SELECT hash, vec FROM {_table(dimension)} WHERE model = $m "
                               "AND hash IN (SELECT unnest($h))", {"m": self.key, "h": part}).fetchnumpy()
            if len(data["hash"]):
                index.add(list(data["hash"]), np.stack(list(data["vec"])).astype(np.float32))
        if len(gone) or len(missing):
            self._save_index(index)
        return index

    def _save_index(self, index: AnnIndex | None = None) -> None:
        """Write the vector index beside the database (the database keeps every vector:
        a crash before this costs only the time to add them again on the next load)."""
        index = index or self._ann
        self._saved_at = time.monotonic()
        if index is None:
            return
        try:
            index.save()
        except OSError as e:
            log.warning("cannot save the vector index: %s", e)


def _lower_priority() -> None:
    """Background embedding yields the CPU to searches and edits (Linux: per thread)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass

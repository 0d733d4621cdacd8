"""The lexical index: BM25 over each chunk's code-aware terms, in tantivy, beside the database.

DuckDB holds what the index is made from (each chunk's text, docstring, path and the names
it defines); this directory (`<database>.lexical`) holds tantivy's index of them, and can
always be made again from the database. A chunk is one document: its id, path, language
and kind (for deletion and the search filters) and its index text (`index_text`: its
terms, each as often as its weighted count, split on spaces). The parsing workers make
that text and the batch hands it to tantivy; the database does not keep it (it took half
of what a cold index of u-boot's chunks cost in DuckDB, and 70 MB), and a rebuild or a
catch-up makes it again.

Crash consistency between the two stores (DuckDB is committed first, then tantivy):
- every index batch bumps `lexical_generation` in DuckDB's meta and lists the paths it
  changed in `lexical_pending`, in the batch's own transaction;
- tantivy's commit carries the same generation (and the id of the database it belongs to)
  in a meta document, so the two are committed with what they describe;
- on open, and before each batch, `reconcile` compares them: a tantivy index behind the
  database re-indexes the pending paths from the database; a missing, unreadable or
  foreign one (another database's, or ahead of this one) is rebuilt whole.
A kill -9 between the two commits therefore loses nothing: the next process catches up.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import tantivy

from codevm.indexers.identifiers import index_text

if TYPE_CHECKING:
    import numpy as np
else:
    from codevm.lazy import numpy as np

TOKENIZER = "codevm_terms"
MAX_TERM_CHARS = 255  # a longer term is not indexed (nor can a query find it)
HEAP_BYTES = 64 << 20
WRITER_THREADS = 1
META = "generation"
REBUILD_BATCH = 5_000
# chunks: a rebuild of more makes their index text in worker processes, a batch each, while
# this one feeds tantivy (u-boot's 283k: 19-21 s in one process on an idle machine)
PARALLEL_REBUILD = 50_000
NAMED_READ = 2_000  # chunks read for an exact-name lookup (sorted by id, then cut)



# a chunk's id, path, language, kind, text, the names it calls, name and qualified name
Row = tuple[int, str, str, str, str, str, str, str]
DEFINITION_KINDS = ("function", "method", "class")  # chunks that define their name


def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_unsigned_field("id", stored=False, indexed=True, fast=True)
    b.add_text_field("path", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("language", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("kind", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("body", stored=False, tokenizer_name=TOKENIZER, index_option="freq")
    b.add_text_field("calls", stored=False, tokenizer_name=TOKENIZER, index_option="basic")
    b.add_text_field("defines", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("owner", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("names", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("meta", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_unsigned_field("generation", stored=True)
    b.add_text_field("database", stored=True, tokenizer_name="raw", index_option="basic")
    return b.build()


SCHEMA = _schema()


class ChunkPaths:
    """Each chunk's path and kind by id, in memory (numpy arrays indexed by id, a few MB
    for u-boot's 283k chunks): every search needs them for a few hundred candidates, and
    reading them from DuckDB took 4-15 ms a time at that scale. Filled from the database
    on first use, then kept up with each committed batch; ids of chunks that are gone are
    left (no search returns them)."""

    def __init__(self, load: Callable[[], Iterable[tuple[int, str, str]]]):
        self._load = load
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.loaded = False
        # id -> path number + 1 (0: unknown), id -> kind number: replaced together, in one
        # assignment, so that a search in another thread never holds one without the other
        # (None until the first chunk: a run that changes nothing does not import numpy,
        # 0.12 s of a no-change re-index)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._paths: list[str] = []
        self._path_ids: dict[str, int] = {}
        self._kinds: list[str] = []
        self._kind_ids: dict[str, int] = {}

    def get(self, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """id -> (path, kind) of the known chunks among `ids`."""
        if not self.loaded:
            with self.lock:
                if not self.loaded:
                    self._add(self._load())
                    self.loaded = True
        if self._arrays is None:
            return {}
        (path, kind), paths, kinds = self._arrays, self._paths, self._kinds
        out = {}
        for cid in ids:
            if 0 <= cid < len(path) and (p := int(path[cid])):
                out[cid] = (paths[p - 1], kinds[int(kind[cid])])
        return out

    def add(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """Chunks committed to the database."""
        with self.lock:
            if self.loaded:  # else: read from the database, where they are, when first needed
                self._add(rows)

    def reset(self) -> None:
        """Forget every chunk: they are read from the database when a search next needs
        them (an index run that no search meets, a cold `codevm index`, never reads them:
        keeping them up with its batches cost u-boot's 0.8 s of CPU)."""
        with self.lock:
            self._clear()

    def _add(self, rows: Iterable[tuple[int, str, str]]) -> None:
        rows = list(rows)
        if not rows:
            return
        old_path, old_kind = self._arrays or (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int16))
        top = max(r[0] for r in rows)
        if top >= len(old_path):
            size = max(top + 1, int(len(old_path) * 1.5))
            path, kind = np.zeros(size, dtype=np.int32), np.zeros(size, dtype=np.int16)
            path[: len(old_path)], kind[: len(old_kind)] = old_path, old_kind
        else:
            path, kind = old_path.copy(), old_kind.copy()  # readers keep the arrays they hold
        for cid, p, k in rows:
            if (pid := self._path_ids.get(p)) is None:
                pid = self._path_ids[p] = len(self._paths)
                self._paths.append(p)
            if (kid := self._kind_ids.get(k or "")) is None:
                kid = self._kind_ids[k or ""] = len(self._kinds)
                self._kinds.append(k or "")
            path[cid], kind[cid] = pid + 1, kid
        self._arrays = (path, kind)


class LexicalIndex:
    """The tantivy index of one database. Searches run in any thread, each on the last
    committed state; writes come from the one process that owns the database, under its
    write lock. `chunks` holds what a search needs of each chunk besides."""

    def __init__(self, directory: Path, chunks: ChunkPaths):
        self.directory = directory
        self.chunks = chunks
        self.index = self._open()
        self._writer: tantivy.IndexWriter | None = None
        self.lock = threading.Lock()

    def _open(self) -> tantivy.Index:
        try:
            if self.directory.is_dir() and tantivy.Index.exists(str(self.directory)):
                index = tantivy.Index.open(str(self.directory))
                if index.schema == SCHEMA:
                    return self._register(index)
        except (OSError, ValueError, RuntimeError) as e:  # unreadable: made again from the database
            print(f"codevm: the search index {self.directory} cannot be read ({e}); rebuilding it",
                  file=sys.stderr)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._register(tantivy.Index(SCHEMA, path=str(self.directory)))

    def reopen_if_gone(self) -> None:
        """A fresh, empty index when its folder was deleted under this process (its
        commits fail from then on): the reconcile that follows rebuilds it."""
        if not self.directory.is_dir():
            with self.lock:
                self._writer = None
                self.index = self._open()

    @staticmethod
    def _register(index: tantivy.Index) -> tantivy.Index:
        index.register_tokenizer(TOKENIZER, tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace())
                                 .filter(tantivy.Filter.remove_long(MAX_TERM_CHARS)).build())
        index.config_reader(reload_policy="Manual")
        return index

    # -- reading -------------------------------------------------------------------------
    @staticmethod
    def _meta(searcher: tantivy.Searcher) -> list:
        """The hit of the meta document (none in an empty index)."""
        return searcher.search(tantivy.Query.term_query(SCHEMA, "meta", META), 1).hits

    def state(self) -> tuple[int, str]:
        """(generation, database id) of the last commit; (0, '') for an empty index."""
        searcher = self.index.searcher()
        hits = self._meta(searcher)
        if not hits:
            return 0, ""
        doc = searcher.doc(hits[0][1])
        return int(doc.get_first("generation") or 0), str(doc.get_first("database") or "")

    def search(self, terms: dict[str, float], limit: int, language: str | None = None,
               kind: str | None = None, paths: list[str] | None = None,
               every: bool = False) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of the best `limit` chunks for weighted `terms`, best first
        (ties by id), within the filters (`every`: only chunks that hold every term)."""
        occur = tantivy.Occur.Must if every else tantivy.Occur.Should
        wanted = [(occur, tantivy.Query.boost_query(
            tantivy.Query.term_query(SCHEMA, "body", t, index_option="freq"), float(w)))
            for t, w in terms.items() if t and len(t) <= MAX_TERM_CHARS]
        if not wanted or limit < 1 or paths == []:
            return []
        query = tantivy.Query.boolean_query(wanted)
        must = [tantivy.Query.term_query(SCHEMA, f, v) for f, v in (("language", language), ("kind", kind)) if v]
        if paths is not None:
            must.append(tantivy.Query.term_set_query(SCHEMA, "path", paths))
        if must:
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query)]
                                                + [(tantivy.Occur.Must, q) for q in must])
        with self._reading():
            searcher = self.index.searcher()
            hits = searcher.search(query, limit, count=False).hits
            ids = searcher.fast_field_values("id", [address for _, address in hits]) if hits else []
        if not hits:
            return []
        out = [(int(cid), round(float(score), 5)) for (score, _), cid in zip(hits, ids, strict=True)
               if cid is not None]
        out.sort(key=lambda r: (-r[1], r[0]))
        return out

    def holders(self, field: str, values: Iterable[str], most: int) -> dict[str, list[int]]:
        """value -> ids of the chunks whose `field` ("calls", "defines", "names") holds it,
        for the values that at most `most` chunks hold (one held more widely says little,
        and is not read): each is a term lookup, whatever the size of the index."""
        out: dict[str, list[int]] = {}
        with self._reading():
            searcher = self.index.searcher()
            for value in values:
                if not value or len(value) > MAX_TERM_CHARS or not searcher.doc_freq(field, value):
                    continue
                hits = searcher.search(tantivy.Query.term_query(SCHEMA, field, value), most + 1,
                                       count=False).hits  # unlike doc_freq, without deleted chunks
                if 0 < len(hits) <= most:
                    out[value] = self._ids(searcher, hits)
        return out

    def named(self, names: Iterable[str], most: int, language: str | None = None,
              kind: str | None = None, paths: list[str] | None = None) -> list[int]:
        """Ids of the chunks named or qualified-named one of `names` (within the filters),
        up to `most`, the lowest ids first."""
        names = [n for n in names if n and len(n) <= MAX_TERM_CHARS]
        if not names or paths == []:
            return []
        must = [tantivy.Query.term_set_query(SCHEMA, "names", names)]
        must += [tantivy.Query.term_query(SCHEMA, f, v) for f, v in (("language", language), ("kind", kind)) if v]
        if paths is not None:
            must.append(tantivy.Query.term_set_query(SCHEMA, "path", paths))
        query = tantivy.Query.boolean_query([(tantivy.Occur.Must, q) for q in must])
        with self._reading():
            searcher = self.index.searcher()
            return self._ids(searcher, searcher.search(query, NAMED_READ, count=False).hits)[:most]

    def name_counts(self, names: Iterable[str]) -> dict[str, int]:
        """name -> how many chunks are named or qualified-named it (deleted ones included
        until a merge drops them), for the names the index holds."""
        with self._reading():
            searcher = self.index.searcher()
            counts = {n: searcher.doc_freq("names", n) for n in names if n and len(n) <= MAX_TERM_CHARS}
        return {n: c for n, c in counts.items() if c}

    def in_file(self, path: str, field: str, values: Iterable[str], most: int) -> list[int]:
        """Ids of up to `most` chunks of the file `path` whose `field` holds any of `values`."""
        values = [v for v in values if v and len(v) <= MAX_TERM_CHARS]
        if not values:
            return []
        query = tantivy.Query.boolean_query([
            (tantivy.Occur.Must, tantivy.Query.term_query(SCHEMA, "path", path)),
            (tantivy.Occur.Must, tantivy.Query.term_set_query(SCHEMA, field, values))])
        with self._reading():
            searcher = self.index.searcher()
            return self._ids(searcher, searcher.search(query, most, count=False).hits)

    def in_files(self, field: str, pairs: Iterable[tuple[str, str]], most: int) -> list[int]:
        """Ids of the chunks of each (path, value) pair whose `field` holds the value, up to
        `most` a pair: one search for them all."""
        pairs = [(p, v) for p, v in pairs if v and len(v) <= MAX_TERM_CHARS]
        if not pairs:
            return []
        query = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.boolean_query([
            (tantivy.Occur.Must, tantivy.Query.term_query(SCHEMA, "path", path)),
            (tantivy.Occur.Must, tantivy.Query.term_query(SCHEMA, field, value))])) for path, value in pairs])
        with self._reading():
            searcher = self.index.searcher()
            return self._ids(searcher, searcher.search(query, most * len(pairs), count=False).hits)

    @staticmethod
    def _ids(searcher: tantivy.Searcher, hits: list) -> list[int]:
        ids = searcher.fast_field_values("id", [address for _, address in hits]) if hits else []
        return sorted(int(cid) for cid in ids if cid is not None)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A panic inside tantivy while reading becomes an error that says what to do."""
        try:
            yield
        except BaseException as e:
            if type(e).__name__ != "PanicException":
                raise
            raise RuntimeError(f"the search index {self.directory} cannot be read ({_first_line(e)}): "
                               "restart codevm (`codevm stop`) to make it again") from None

    def documents(self) -> int:
        """How many chunks the index holds (its meta document aside)."""
        return self._documents(self.index.searcher())

    def _documents(self, searcher: tantivy.Searcher) -> int:
        return int(searcher.num_docs) - len(self._meta(searcher))

    def deleted(self) -> tuple[int, int]:
        """(chunks deleted but still held, chunks held): tantivy's term counts keep a
        deleted document until a merge drops it, and every chunk has a language term."""
        searcher = self.index.searcher()
        held = sum(int(n) for _, n in searcher.terms_with_prefix("language", ""))
        return max(0, held - self._documents(searcher)), held

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file()) if self.directory.is_dir() else 0

    # -- writing -------------------------------------------------------------------------
    def writer(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self.index.writer(HEAP_BYTES, WRITER_THREADS)
        return self._writer

    def apply(self, paths: Iterable[str] | None, batches: Iterable[Iterable[Row]], generation: int,
              database: str, commit: bool = True) -> None:
        """Replace the documents of `paths` (None: every document) with the rows of
        `batches`, and commit them with the database's generation (`commit` False: later,
        with `commit`; searches see them from then on, and a failure before it loses every
        change since the last commit)."""
        with self.lock:
            writer = self.writer()
            try:
                if paths is None:
                    writer.delete_all_documents()
                    self.chunks.reset()
                for path in paths or ():
                    writer.delete_documents_by_term("path", path)
                for rows in batches:
                    rows = list(rows)
                    self._add(writer, rows)
                    self.chunks.add((r[0], r[1], r[3]) for r in rows)
                if commit:
                    self._commit(writer, generation, database)
            except BaseException as e:
                self._failed(writer, e)
                raise
        if commit:
            self.index.reload()

    def commit(self, generation: int, database: str) -> None:
        """Commit what `apply(..., commit=False)` added, as of the database's `generation`."""
        with self.lock:
            writer = self.writer()
            try:
                self._commit(writer, generation, database)
            except BaseException as e:
                self._failed(writer, e)
                raise
        self.index.reload()

    def _failed(self, writer: tantivy.IndexWriter, error: BaseException) -> None:
        """Drop what a failed write added since the last commit, and the writer with it (a
        fresh one takes tantivy's lock next time). A panic inside tantivy (pyo3's
        PanicException, a BaseException that `except Exception` lets through, e.g. when its
        folder was deleted) becomes an error that says what happens next."""
        self._writer = None
        try:
            writer.rollback()
        except BaseException:  # noqa: BLE001 - a broken writer may fail its rollback too
            pass
        if type(error).__name__ == "PanicException":
            raise RuntimeError(f"the search index {self.directory} failed ({_first_line(error)}); it is made again "
                               "from the database with the next change or start") from None

    @staticmethod
    def _add(writer: tantivy.IndexWriter, rows: Iterable[Row]) -> None:
        add, from_dict = writer.add_document, tantivy.Document.from_dict
        for cid, path, language, kind, text, calls, name, qualified in rows:
            # every chunk has a language term (`deleted` counts them); a field with nothing
            # to say is left out, not indexed as an empty term no lookup asks for
            doc = {"id": cid, "path": path, "language": language or "", "kind": kind or "", "body": text}
            if calls:
                doc["calls"] = calls
            # the name a function, method or class defines; a method's top-level class
            # names longer than a term can be are not indexed (nor can a lookup ask for them)
            if kind in DEFINITION_KINDS and 0 < len(name) <= MAX_TERM_CHARS:
                doc["defines"] = name
            if kind == "method" and 0 < len(owner := qualified.split(".")[0]) <= MAX_TERM_CHARS:
                doc["owner"] = owner
            if names := [n for n in dict.fromkeys((name, qualified)) if 0 < len(n) <= MAX_TERM_CHARS]:
                doc["names"] = names
            add(from_dict(doc, SCHEMA))

    @staticmethod
    def _commit(writer: tantivy.IndexWriter, generation: int, database: str) -> None:
        writer.delete_documents_by_term("meta", META)
        writer.add_document(tantivy.Document.from_dict(
            {"meta": META, "generation": generation, "database": database}, SCHEMA))
        writer.commit()

    def close(self) -> None:
        with self.lock:
            self._writer = None  # dropping the writer releases tantivy's lock file


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


# -- the database's side ---------------------------------------------------------------------
def database_state(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    """(lexical generation, database id) as committed in DuckDB; the id is made once."""
    meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                            "('lexical_generation', 'lexical_database')").fetchall())
    return int(meta.get("lexical_generation") or 0), meta.get("lexical_database") or ""


def new_database_id() -> str:
    return uuid.uuid4().hex


_SOURCE_SQL = ("SELECT id, path, language, kind, coalesce(text, ''), coalesce(nullif(names, ''), qualified_name, ''), "
               "coalesce(docstring, ''), calls, coalesce(name, ''), coalesce(qualified_name, '') FROM chunks WHERE ")
_worker_memo: dict[str, str] = {}  # a rebuild worker's memo of names' terms, gone with the process


def _index_texts(sources: list[tuple[str, str, str, str]]) -> list[str]:
    """In a rebuild's worker process: the index text of each (path, text, names, docstring)."""
    return [index_text(path, text, names, doc, _worker_memo) for path, text, names, doc in sources]


def chunk_rows(con: duckdb.DuckDBPyConnection, where: str = "TRUE", params: object = None,
               batch: int | None = None, workers: int = 1) -> Iterator[list[Row]]:
    """The lexical index's rows (Row) of the chunks `where` holds, in batches: each
    chunk's index text made again from what the database keeps (with a memo of names'
    terms for this call: a rebuild's would otherwise stay in the service, up to 70 MB).
    `workers` > 1: made in that many worker processes, batch by batch, while the caller
    takes the batches before (in order)."""
    batch = batch or REBUILD_BATCH
    cursor = con.execute(_SOURCE_SQL + where, params)

    def rows_of(rows: list[tuple], texts: Iterable[str]) -> list[Row]:
        return [(cid, path, language, kind, lex, calls, name, qualified)
                for (cid, path, language, kind, _, _, _, calls, name, qualified), lex in zip(rows, texts)]

    if workers <= 1:
        memo: dict[str, str] = {}
        while rows := cursor.fetchmany(batch):
            yield rows_of(rows, (index_text(r[1], r[4], r[5], r[6], memo) for r in rows))
        return
    # spawn, not fork: this process holds a DuckDB connection and threads
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque = deque()  # (rows, their texts to come), two a worker at most

        def submit() -> bool:
            rows = cursor.fetchmany(batch)
            if rows:
                sources = [(r[1], r[4], r[5], r[6]) for r in rows]
                pending.append((rows, pool.apply_async(_index_texts, (sources,))))
            return bool(rows)

        more = True
        while more and len(pending) < 2 * workers:
            more = submit()
        while pending:
            rows, texts = pending.popleft()
            if more:
                more = submit()
            yield rows_of(rows, texts.get())


def rebuild_workers(chunks: int, workers: int = 0) -> int:
    """Worker processes for a rebuild of `chunks` chunks: one is this process, for few;
    else the `workers` setting (0: one per core), at most 4 (this process feeding tantivy
    is the limit past 2, and each holds two batches of text)."""
    return min(workers or os.cpu_count() or 1, 4) if chunks > PARALLEL_REBUILD else 1


def stage_rows(con: duckdb.DuckDBPyConnection) -> list[Row]:
    """The lexical index's rows of an index batch's chunks, with the text the workers made."""
    return con.execute("SELECT id, path, language, kind, lex, calls, coalesce(name, ''), "
                       "coalesce(qualified_name, '') FROM stage_chunks").fetchall()


__all__ = ["LexicalIndex", "ChunkPaths", "Row", "database_state", "new_database_id", "chunk_rows", "stage_rows",
           "rebuild_workers", "REBUILD_BATCH"]

"""The lexical index: BM25 over each chunk's code-aware terms, in tantivy, beside the database.

DuckDB holds what the index is made from (each chunk's weighted terms, `chunks.terms`);
this directory (`<database>.lexical`) holds tantivy's index of them, and can always be made
again from the database. A chunk is one document: its id, path, language and kind (for
deletion and the search filters) and its terms, each repeated its weighted count (names,
docstrings and paths were weighted by the parsing workers), split on spaces.

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

import shutil
import sys
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import tantivy

TOKENIZER = "codevm_terms"
MAX_TERM_CHARS = 255  # a longer term is not indexed (nor can a query find it)
HEAP_BYTES = 64 << 20
WRITER_THREADS = 2
META = "generation"
REBUILD_BATCH = 5_000

# each chunk's terms ("term:count term:count") as the text tantivy indexes: every term
# repeated its count (DuckDB does this in parallel, in C++)
LEX_SQL = ("array_to_string(list_transform(string_split({col}, ' '), lambda p: repeat(split_part(p, ':', 1) || ' ', "
           "coalesce(TRY_CAST(split_part(p, ':', 2) AS INTEGER), 0))), '')")


Row = tuple[int, str, str, str, str]  # a chunk's id, path, language, kind and indexed text


def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_unsigned_field("id", stored=False, indexed=True, fast=True)
    b.add_text_field("path", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("language", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("kind", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("body", stored=False, tokenizer_name=TOKENIZER, index_option="freq")
    b.add_text_field("meta", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_unsigned_field("generation", stored=True)
    b.add_text_field("database", stored=True, tokenizer_name="raw", index_option="basic")
    return b.build()


SCHEMA = _schema()


class LexicalIndex:
    """The tantivy index of one database. Searches run in any thread, each on the last
    committed state; writes come from the one process that owns the database, under its
    write lock."""

    def __init__(self, directory: Path):
        self.directory = directory
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

    @staticmethod
    def _register(index: tantivy.Index) -> tantivy.Index:
        index.register_tokenizer(TOKENIZER, tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace())
                                 .filter(tantivy.Filter.remove_long(MAX_TERM_CHARS)).build())
        index.config_reader(reload_policy="Manual")
        return index

    # -- reading -------------------------------------------------------------------------
    def state(self) -> tuple[int, str]:
        """(generation, database id) of the last commit; (0, '') for an empty index."""
        searcher = self.index.searcher()
        hits = searcher.search(tantivy.Query.term_query(SCHEMA, "meta", META), 1).hits
        if not hits:
            return 0, ""
        doc = searcher.doc(hits[0][1])
        return int(doc.get_first("generation") or 0), str(doc.get_first("database") or "")

    def search(self, terms: dict[str, float], limit: int, language: str | None = None,
               kind: str | None = None, paths: list[str] | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of the best `limit` chunks for weighted `terms`, best first
        (ties by id), within the filters."""
        wanted = [(tantivy.Occur.Should, tantivy.Query.boost_query(
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
        searcher = self.index.searcher()
        hits = searcher.search(query, limit, count=False).hits
        if not hits:
            return []
        ids = searcher.fast_field_values("id", [address for _, address in hits])
        out = [(int(cid), round(float(score), 5)) for (score, _), cid in zip(hits, ids, strict=True)
               if cid is not None]
        out.sort(key=lambda r: (-r[1], r[0]))
        return out

    def documents(self) -> int:
        """How many chunks the index holds (its meta document aside)."""
        searcher = self.index.searcher()
        meta = searcher.search(tantivy.Query.term_query(SCHEMA, "meta", META), 1).hits
        return int(searcher.num_docs) - len(meta)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file()) if self.directory.is_dir() else 0

    # -- writing -------------------------------------------------------------------------
    def writer(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self.index.writer(HEAP_BYTES, WRITER_THREADS)
        return self._writer

    def apply(self, paths: Iterable[str] | None, batches: Iterable[Iterable[Row]], generation: int,
              database: str) -> None:
        """Replace the documents of `paths` (None: every document) with the rows of
        `batches`, and commit them with the database's generation."""
        with self.lock:
            writer = self.writer()
            try:
                if paths is None:
                    writer.delete_all_documents()
                for path in paths or ():
                    writer.delete_documents_by_term("path", path)
                for rows in batches:
                    self._add(writer, rows)
                self._commit(writer, generation, database)
            except BaseException:
                writer.rollback()
                raise
        self.index.reload()

    @staticmethod
    def _add(writer: tantivy.IndexWriter, rows: Iterable[Row]) -> None:
        add, from_dict = writer.add_document, tantivy.Document.from_dict
        for cid, path, language, kind, text in rows:
            add(from_dict({"id": cid, "path": path, "language": language or "", "kind": kind or "",
                           "body": text}, SCHEMA))

    @staticmethod
    def _commit(writer: tantivy.IndexWriter, generation: int, database: str) -> None:
        writer.delete_documents_by_term("meta", META)
        writer.add_document(tantivy.Document.from_dict(
            {"meta": META, "generation": generation, "database": database}, SCHEMA))
        writer.commit()

    def close(self) -> None:
        with self.lock:
            self._writer = None  # dropping the writer releases tantivy's lock file


# -- the database's side ---------------------------------------------------------------------
def database_state(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    """(lexical generation, database id) as committed in DuckDB; the id is made once."""
    meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                            "('lexical_generation', 'lexical_database')").fetchall())
    return int(meta.get("lexical_generation") or 0), meta.get("lexical_database") or ""


def new_database_id() -> str:
    return uuid.uuid4().hex


def chunk_rows(con: duckdb.DuckDBPyConnection, source: str, where: str = "TRUE",
               params: object = None) -> duckdb.DuckDBPyConnection:
    """A cursor over (id, path, language, kind, text) of the chunks in `source`."""
    return con.execute(f"SELECT id, path, language, kind, {LEX_SQL.format(col='terms')} FROM {source} "
                       f"WHERE {where}", params)


__all__ = ["LexicalIndex", "Row", "database_state", "new_database_id", "chunk_rows", "REBUILD_BATCH"]

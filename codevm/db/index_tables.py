"""The index's tables: loading the parsing workers' rows in batches, one transaction each,
and reading what the index holds.

Every change of the index is one transaction (a batch of files), so a crash or kill -9
leaves the last committed state and the next run carries on from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb

from codevm.db.store import Store, first_row

# Postings are kept sorted by term so that a query reads a few row groups (zone maps);
# rows appended since the last sort, and those of replaced chunks (left behind by updates
# and skipped by the join with chunks), are cleaned up when they pass this share.
UNSORTED_SHARE = 0.1
UNSORTED_MIN_ROWS = 100_000
CHECK_EVERY_CHUNKS = 1_000  # counting the postings costs a few ms: not on every edit

_FILE_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "size": "BIGINT", "mtime_ns": "BIGINT",
    "hash": "VARCHAR", "status": "VARCHAR", "reason": "VARCHAR", "n_chunks": "INTEGER",
    "extractor": "VARCHAR", "changed": "BOOLEAN",
}
_CHUNK_COLUMNS = {
    "path": "VARCHAR", "ord": "INTEGER", "language": "VARCHAR", "kind": "VARCHAR",
    "name": "VARCHAR", "qualified_name": "VARCHAR", "start_line": "INTEGER",
    "end_line": "INTEGER", "signature": "VARCHAR", "docstring": "VARCHAR", "text": "VARCHAR",
    "hash": "VARCHAR", "tokens": "INTEGER", "terms": "VARCHAR", "n_terms": "INTEGER",
}
_SYMBOL_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "qualified_name": "VARCHAR",
    "kind": "VARCHAR", "start_line": "INTEGER", "end_line": "INTEGER", "signature": "VARCHAR",
}
_REF_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "kind": "VARCHAR",
    "line": "INTEGER", "caller": "VARCHAR",
}


# the workers' TSV files: no quoting, and an empty field is '' (no field is ever NULL)
_TSV = "delim='\t', header=false, quote='', escape='', nullstr='\\N'"


def _columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


def _nonempty(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p) and os.path.getsize(p) > 0]


# A batch of at most this many bytes of chunk rows (a few hundred chunks) resolves its
# terms against the in-memory dictionary; a bigger one joins with the terms table in SQL
# (a scan that pays off).
SMALL_BATCH_BYTES = 1 << 20


class IndexTables:
    """The index's rows (files, chunks, symbols, refs, postings): bulk loading from the
    parsing workers' files, one transaction per batch, and the counts `status` reports."""

    def __init__(self, store: Store):
        self.store = store
        # chunks loaded since compaction was last considered: start high so that the first
        # run of each process looks at what earlier processes appended
        self.loaded_since_check = CHECK_EVERY_CHUNKS

    def known_files(self, paths: list[str] | None = None) -> dict[str, tuple[int, int, str, str, str]]:
        """path -> (size, mtime_ns, hash, extractor, status), of every file or of `paths`."""
        sql = "SELECT path, size, mtime_ns, hash, extractor, status FROM files"
        if paths is None:
            rows = self.store.cursor().execute(sql).fetchall()
        else:
            rows = self.store.cursor().execute(sql + " WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                                               [paths]).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    # -- loading -----------------------------------------------------------------------
    def load_batch(self, files: list[str], chunks: list[str], symbols: list[str],
                   refs: list[str], deleted: list[str], skipped: list[tuple[str, str]],
                   meta: dict[str, str] | None = None) -> None:
        """Replace the rows of every file in the batch, in one transaction.

        `files`/`chunks` are NDJSON files and `symbols`/`refs` TSV files written by
        workers; `deleted` are paths gone from disk; `skipped` are (path, reason) found by
        the walk without reading the file; `meta` keys are set in the same transaction.
        """
        store = self.store
        try:
            with store.transaction() as con:
                self._load(con, _nonempty(files), _nonempty(chunks), _nonempty(symbols),
                           _nonempty(refs), deleted, skipped)
                for key, value in (meta or {}).items():
                    store.set_meta(key, value, con)
        except BaseException:
            store.terms.rollback()
            raise
        store.terms.commit()
        store.generation += 1

    def _load(self, con: duckdb.DuckDBPyConnection, files: list[str], chunks: list[str],
              symbols: list[str], refs: list[str], deleted: list[str],
              skipped: list[tuple[str, str]]) -> None:
        if files:
            con.execute("CREATE OR REPLACE TEMP TABLE stage_files AS SELECT * FROM read_json(?, "
                        f"format='newline_delimited', columns={_columns_sql(_FILE_COLUMNS)})",
                        [files])
        else:
            cols = ", ".join(f"{k} {v}" for k, v in _FILE_COLUMNS.items())
            con.execute(f"CREATE OR REPLACE TEMP TABLE stage_files ({cols})")
        if deleted:
            con.execute("INSERT INTO stage_files (path, status, changed) "
                        "SELECT unnest(?::VARCHAR[]), 'deleted', true", [deleted])
        if skipped:
            con.execute("INSERT INTO stage_files (path, status, reason, changed, size, mtime_ns) "
                        "SELECT unnest(?::VARCHAR[]), 'skipped', unnest(?::VARCHAR[]), true, 0, 0",
                        [[p for p, _ in skipped], [r for _, r in skipped]])
        # rows of changed files go; files whose content did not change keep their chunks
        gone = "(SELECT path FROM stage_files WHERE changed)"
        # postings of the chunks that go stay until the next compaction (see UNSORTED_SHARE):
        # deleting them here would scan the whole table, which is sorted by term
        con.execute(f"INSERT INTO dead_chunks SELECT id FROM chunks WHERE path IN {gone}")
        for table in ("chunks", "symbols", "refs"):
            con.execute(f"DELETE FROM {table} WHERE path IN {gone}")
        con.execute("DELETE FROM files WHERE path IN (SELECT path FROM stage_files)")
        con.execute("""
            INSERT INTO files SELECT path, language, size, mtime_ns, hash, status, reason,
                n_chunks, extractor, current_timestamp
            FROM stage_files WHERE status NOT IN ('deleted', 'vanished')""")
        if chunks:
            self._load_chunks(con, chunks)
        for table, files_, columns in (("symbols", symbols, _SYMBOL_COLUMNS), ("refs", refs, _REF_COLUMNS)):
            if files_:  # the path column is a JSON string: a tab, newline or \\N in a name is data
                rest = ", ".join(c for c in columns if c != "path")
                con.execute(f"INSERT INTO {table} SELECT json_extract_string(path, '$'), {rest} "
                            f"FROM read_csv(?, {_TSV}, columns={_columns_sql(columns)})", [files_])

    def _load_chunks(self, con: duckdb.DuckDBPyConnection, chunks: list[str]) -> None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE stage_chunks AS SELECT nextval('chunk_ids') AS id, * "
            f"FROM read_json(?, format='newline_delimited', columns={_columns_sql(_CHUNK_COLUMNS)})",
            [chunks])
        con.execute("""
            CREATE OR REPLACE TEMP TABLE stage_terms AS
            SELECT id AS chunk_id, split_part(pair, ':', 1) AS term,
                   CAST(split_part(pair, ':', 2) AS INTEGER) AS tf, n_terms
            FROM (SELECT id, n_terms, unnest(string_split(terms, ' ')) AS pair FROM stage_chunks)
            WHERE pair <> ''""")
        if sum(os.path.getsize(c) for c in chunks) <= SMALL_BATCH_BYTES:
            self._postings_in_memory(con)
        else:
            self._postings_in_sql(con)
        con.execute("""
            INSERT INTO chunks
            SELECT id, path, ord, language, kind, name, qualified_name, start_line, end_line,
                   signature, docstring, text, hash, tokens, n_terms
            FROM stage_chunks""")

    def _postings_in_memory(self, con: duckdb.DuckDBPyConnection) -> None:
        rows = con.execute("SELECT chunk_id, term, tf, n_terms FROM stage_terms").fetchall()
        self.loaded_since_check += len({r[0] for r in rows})
        distinct = list({r[1] for r in rows})
        ids = self.store.terms.ids(con, distinct)
        new = [t for t in distinct if t not in ids]
        if new:
            added = con.execute("INSERT INTO terms SELECT nextval('term_ids'), unnest(?::VARCHAR[]) "
                                "RETURNING id, term", [new]).fetchall()
            self.store.terms.add(added)
            ids.update((term, tid) for tid, term in added)
        con.execute("INSERT INTO postings SELECT unnest(?::INTEGER[]), unnest(?::BIGINT[]), "
                    "unnest(?::INTEGER[]), unnest(?::INTEGER[])",
                    [[ids[r[1]] for r in rows], [r[0] for r in rows], [r[2] for r in rows],
                     [r[3] for r in rows]])

    def _postings_in_sql(self, con: duckdb.DuckDBPyConnection) -> None:
        self.loaded_since_check += first_row(con, "SELECT count(*) FROM stage_chunks")[0]
        new_terms = """
            INSERT INTO terms SELECT nextval('term_ids'), term FROM (
                SELECT DISTINCT s.term FROM stage_terms s ANTI JOIN terms t ON t.term = s.term)"""
        if self.store.terms.loaded:  # keep the dictionary complete
            self.store.terms.add(con.execute(new_terms + " RETURNING id, term").fetchall())
        else:
            con.execute(new_terms)
        con.execute("""
            INSERT INTO postings
            SELECT t.id, s.chunk_id, s.tf, s.n_terms FROM stage_terms s JOIN terms t USING (term)""")

    def compact_postings(self, force: bool = False) -> bool:
        """Re-sort postings by term and drop those of chunks that are gone, when worth it."""
        if not force and self.loaded_since_check < CHECK_EVERY_CHUNKS:
            return False
        with self.store.lock:
            self.loaded_since_check = 0
            con = self.store.cursor()
            total = first_row(con, "SELECT count(*) FROM postings")[0]
            row = con.execute("SELECT value FROM meta WHERE key = 'postings_sorted_rows'").fetchone()
            unsorted = total - (int(row[0]) if row else 0)
            if not force and unsorted <= max(UNSORTED_MIN_ROWS, UNSORTED_SHARE * total):
                return False
            with self.store.transaction() as con:
                con.execute("""
                    CREATE TABLE postings_sorted AS
                    SELECT p.* FROM postings p SEMI JOIN chunks c ON c.id = p.chunk_id
                    ORDER BY p.term_id, p.chunk_id""")
                con.execute("DROP TABLE postings")
                con.execute("ALTER TABLE postings_sorted RENAME TO postings")
                con.execute("DELETE FROM dead_chunks")
                kept = first_row(con, "SELECT count(*) FROM postings")[0]
                self.store.set_meta("postings_sorted_rows", str(kept), con)
            return True

    # -- what the index holds ------------------------------------------------------------
    def has_files(self) -> bool:
        """Whether an index run has committed anything (a first run under way included)."""
        return self.store.get_meta("last_indexed_at") is not None or bool(
            first_row(self.store.cursor(), "SELECT count(*) FROM files")[0])

    def skipped(self, limit: int) -> list[tuple[str, str]]:
        return self.store.cursor().execute(
            "SELECT path, reason FROM files WHERE status = 'skipped' ORDER BY path LIMIT ?", [limit]).fetchall()

    def counts(self) -> IndexCounts:
        con = self.store.cursor()

        def one(sql: str) -> int:
            return int(first_row(con, sql)[0])

        db = self.store.path
        return IndexCounts(
            database_bytes=sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()),
            files=one("SELECT count(*) FROM files WHERE status = 'indexed'"),
            chunks=one("SELECT count(*) FROM chunks"),
            symbols=one("SELECT count(*) FROM symbols"),
            refs=one("SELECT count(*) FROM refs"),
            languages=dict(con.execute(
                "SELECT language, count(*) FROM files WHERE status = 'indexed' "
                "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()),
            skipped=dict(con.execute(
                "SELECT regexp_replace(reason, ' \\(.*$', ''), count(*) FROM files "
                "WHERE status = 'skipped' GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()),
            errors=[f"{p}: {r}" for p, r in con.execute(
                "SELECT path, reason FROM files WHERE status = 'error' ORDER BY path LIMIT 50"
            ).fetchall()],
            last_indexed_at=self.store.get_meta("last_indexed_at"),
            last_updated_at=self.store.get_meta("last_updated_at"))


@dataclass
class IndexCounts:
    database_bytes: int
    files: int
    chunks: int
    symbols: int
    refs: int
    languages: dict[str, int]
    skipped: dict[str, int]
    errors: list[str]
    last_indexed_at: str | None
    last_updated_at: str | None

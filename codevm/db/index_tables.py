"""The index's tables: loading the parsing workers' rows in batches, one transaction each,
and reading what the index holds.

Every change of the index is one transaction (a batch of files), so a crash or kill -9
leaves the last committed state and the next run carries on from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from codevm.db.lexical import database_state, stage_rows
from codevm.db.store import Store, first_row, vectors_directory

_FILE_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "size": "BIGINT", "mtime_ns": "BIGINT",
    "hash": "VARCHAR", "status": "VARCHAR", "reason": "VARCHAR", "n_chunks": "INTEGER",
    "extractor": "VARCHAR", "changed": "BOOLEAN",
}
_CHUNK_COLUMNS = {
    "path": "VARCHAR", "ord": "INTEGER", "language": "VARCHAR", "kind": "VARCHAR",
    "name": "VARCHAR", "qualified_name": "VARCHAR", "start_line": "INTEGER",
    "end_line": "INTEGER", "signature": "VARCHAR", "docstring": "VARCHAR", "text": "VARCHAR",
    "hash": "VARCHAR", "tokens": "INTEGER", "calls": "VARCHAR",
    "names": "VARCHAR", "lex": "VARCHAR",  # lex: the lexical index's text, not kept
}
_SYMBOL_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "qualified_name": "VARCHAR",
    "kind": "VARCHAR", "start_line": "INTEGER", "end_line": "INTEGER", "signature": "VARCHAR",
}
_REF_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "kind": "VARCHAR",
    "line": "INTEGER", "caller": "VARCHAR",
}


# the workers' TSV files: no quoting, and an empty field is '' (no field is ever NULL); no
# sniffing of each file (3 ms a batch of tens of files)
_TSV = "delim='\t', header=false, quote='', escape='', nullstr='\\N', auto_detect=false"


def _columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


def _ndjson_sql(columns: dict[str, str]) -> str:
    """The rows of a list of NDJSON files (the parameter), typed: read as JSON objects and
    transformed, 3x faster than `read_json` for a batch's tens of small files, which
    pays for each file it opens (0.35 ms) what this pays for the batch."""
    return f"SELECT unnest(json_transform(json, '{json.dumps(columns)}')) FROM read_ndjson_objects(?)"


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0


def _nonempty(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p) and os.path.getsize(p) > 0]


class IndexTables:
    """The index's rows (files, chunks, symbols, refs, and the lexical index made of the
    chunks): bulk loading from the parsing workers' files, one transaction per batch, and
    the counts `status` reports."""

    def __init__(self, store: Store):
        self.store = store

    def known_files(self, paths: list[str] | None = None,
                    under: list[str] | None = None) -> dict[str, tuple[int, int, str, str, str]]:
        """path -> (size, mtime_ns, hash, extractor, status), of every file, of `paths`, or of
        the files that are or lie under one of `under`."""
        sql = "SELECT path, size, mtime_ns, hash, extractor, status FROM files"
        if paths is not None:
            rows = self.store.cursor().execute(sql + " WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                                               [paths]).fetchall()
        elif under is not None:
            rows = self.store.cursor().execute(
                sql + " f SEMI JOIN (SELECT unnest(?::VARCHAR[]) AS p) q "
                "ON f.path = q.p OR starts_with(f.path, q.p || '/')", [under]).fetchall()
        else:
            rows = self.store.cursor().execute(sql).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    # -- loading -----------------------------------------------------------------------
    def load_batch(self, files: list[str], chunks: list[str], symbols: list[str],
                   refs: list[str], deleted: list[str], skipped: list[tuple[str, str]],
                   meta: dict[str, str] | None = None, defer_lexical: bool = False) -> None:
        """Replace the rows of every file in the batch, in one transaction.

        `files`/`chunks` are NDJSON files and `symbols`/`refs` TSV files written by
        workers; `deleted` are paths gone from disk; `skipped` are (path, reason) found by
        the walk without reading the file; `meta` keys are set in the same transaction.
        `defer_lexical`: tantivy commits the batch later (`Store.flush_lexical`).
        """
        store = self.store
        with store.lock:
            # a search index whose folder was deleted (a user's clean-up) is made again
            # first, so that the batch does not fail on the lost folder's writer lock
            if store.lexical_behind or not store.lexical.directory.is_dir():
                store.reconcile_lexical()
            chunks = _nonempty(chunks)
            with store.transaction() as con:
                self._load(con, _nonempty(files), chunks, _nonempty(symbols), _nonempty(refs), deleted, skipped)
                for key, value in (meta or {}).items():
                    store.set_meta(key, value, con)
                # the batch for tantivy, with its generation (see codevm/db/lexical.py); a
                # batch that changes no file (a run that found nothing new) has none
                paths = [r[0] for r in con.execute("SELECT path FROM stage_files WHERE changed").fetchall()]
                generation, database = database_state(con)
                if paths:
                    con.execute("DELETE FROM lexical_pending WHERE generation <= ?", [store.lexical_committed])
                    generation += 1
                    store.set_meta("lexical_generation", str(generation), con)
                    con.execute("INSERT INTO lexical_pending SELECT ?, unnest(?::VARCHAR[])", [generation, paths])
                rows = stage_rows(con) if chunks else []
            store.generation += 1
            if paths:
                store.commit_lexical(paths, rows, generation, database, defer=defer_lexical)

    def _load(self, con: duckdb.DuckDBPyConnection, files: list[str], chunks: list[str],
              symbols: list[str], refs: list[str], deleted: list[str],
              skipped: list[tuple[str, str]]) -> None:
        if files:
            con.execute(f"CREATE OR REPLACE TEMP TABLE stage_files AS {_ndjson_sql(_FILE_COLUMNS)}", [files])
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
        # rows of changed files go; files whose content did not change keep their chunks.
        # Only files the index knew can have rows: a batch of new files (a cold index) skips
        # the deletes, each a scan of its table that grew with the index (u-boot's refs:
        # 814k rows; the batches of its cold index cost 1.36x more at the end than at first)
        known = first_row(con, "SELECT count(*) FROM stage_files s SEMI JOIN files f ON f.path = s.path")[0]
        if known:
            gone = "(SELECT path FROM stage_files WHERE changed)"
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
            f"FROM ({_ndjson_sql(_CHUNK_COLUMNS)})", [chunks])
        columns = ", ".join(["id", *(c for c in _CHUNK_COLUMNS if c != "lex")])
        con.execute(f"INSERT INTO chunks ({columns}) SELECT {columns} FROM stage_chunks")

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
            database_bytes=sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
            + self.store.lexical.size_bytes() + _folder_bytes(vectors_directory(db)),
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

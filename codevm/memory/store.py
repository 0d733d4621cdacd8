"""The project's DuckDB file: schema, numbered migrations and bulk loading of index rows.

Every change of the index is one transaction (a batch of files), so a crash or kill -9
leaves the last committed state and the next run carries on from it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb

from codevm.errors import IndexBusy
from codevm.indexers.tokens import expand_identifier


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE meta (key VARCHAR, value VARCHAR);
        CREATE TABLE files (
            path VARCHAR, language VARCHAR, size BIGINT, mtime_ns BIGINT, hash VARCHAR,
            status VARCHAR, reason VARCHAR, n_chunks INTEGER, extractor VARCHAR,
            indexed_at TIMESTAMPTZ);
        CREATE SEQUENCE chunk_ids START 1;
        CREATE TABLE chunks (
            id BIGINT, path VARCHAR, ord INTEGER, language VARCHAR, kind VARCHAR, name VARCHAR,
            qualified_name VARCHAR, start_line INTEGER, end_line INTEGER, signature VARCHAR,
            docstring VARCHAR, text VARCHAR, hash VARCHAR, tokens INTEGER, n_terms INTEGER);
        CREATE SEQUENCE term_ids START 1;
        CREATE TABLE terms (id INTEGER, term VARCHAR);
        -- identifier -> its terms; an identifier with no term (a stopword) maps to NULL
        CREATE TABLE ident_terms (ident VARCHAR, term_id INTEGER);
        CREATE TABLE postings (term_id INTEGER, chunk_id BIGINT, tf INTEGER);
        CREATE TABLE symbols (
            path VARCHAR, language VARCHAR, name VARCHAR, qualified_name VARCHAR, kind VARCHAR,
            start_line INTEGER, end_line INTEGER, signature VARCHAR);
        CREATE TABLE refs (
            path VARCHAR, language VARCHAR, name VARCHAR, kind VARCHAR, line INTEGER,
            caller VARCHAR);
    """)


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [m001_initial]

_FILE_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "size": "BIGINT", "mtime_ns": "BIGINT",
    "hash": "VARCHAR", "status": "VARCHAR", "reason": "VARCHAR", "n_chunks": "INTEGER",
    "extractor": "VARCHAR", "changed": "BOOLEAN",
}
_CHUNK_COLUMNS = {
    "path": "VARCHAR", "ord": "INTEGER", "language": "VARCHAR", "kind": "VARCHAR",
    "name": "VARCHAR", "qualified_name": "VARCHAR", "start_line": "INTEGER",
    "end_line": "INTEGER", "signature": "VARCHAR", "docstring": "VARCHAR", "text": "VARCHAR",
    "hash": "VARCHAR", "tokens": "INTEGER", "idents": "VARCHAR",
}
_SYMBOL_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "qualified_name": "VARCHAR",
    "kind": "VARCHAR", "start_line": "INTEGER", "end_line": "INTEGER", "signature": "VARCHAR",
}
_REF_COLUMNS = {
    "path": "VARCHAR", "language": "VARCHAR", "name": "VARCHAR", "kind": "VARCHAR",
    "line": "INTEGER", "caller": "VARCHAR",
}


def _columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


def _nonempty(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p) and os.path.getsize(p) > 0]


class Store:
    """One project's database. Not thread-safe: each thread uses `cursor()`."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise IndexBusy(
                    f"the index {path} is in use by another codevm process; "
                    "stop it or run this command through it"
                ) from None
            raise
        self.lock = threading.RLock()
        if not read_only:
            self._migrate()

    def close(self) -> None:
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def _migrate(self) -> None:
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS migrations (id INTEGER, name VARCHAR, "
                    "applied_at TIMESTAMPTZ DEFAULT current_timestamp)")
        done = {row[0] for row in con.execute("SELECT id FROM migrations").fetchall()}
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            con.execute("BEGIN")
            try:
                migration(con)
                con.execute("INSERT INTO migrations (id, name) VALUES (?, ?)",
                            [number, migration.__name__])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # -- meta ------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.cursor().execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str, con: duckdb.DuckDBPyConnection | None = None) -> None:
        c = con or self.cursor()
        c.execute("DELETE FROM meta WHERE key = ?", [key])
        c.execute("INSERT INTO meta VALUES (?, ?)", [key, value])

    def known_files(self) -> dict[str, tuple[int, int, str, str, str]]:
        """path -> (size, mtime_ns, hash, extractor, status)."""
        rows = self.cursor().execute(
            "SELECT path, size, mtime_ns, hash, extractor, status FROM files").fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    # -- loading -----------------------------------------------------------------------
    def load_batch(self, files: list[str], chunks: list[str], symbols: list[str],
                   refs: list[str], deleted: list[str], skipped: list[tuple[str, str]]) -> None:
        """Replace the rows of every file in the batch, in one transaction.

        `files`/`chunks` are NDJSON files and `symbols`/`refs` TSV files written by
        workers; `deleted` are paths gone from disk; `skipped` are (path, reason) found by
        the walk without reading the file.
        """
        with self.lock:
            con = self.cursor()
            con.execute("BEGIN")
            try:
                self._load(con, _nonempty(files), _nonempty(chunks), _nonempty(symbols),
                           _nonempty(refs), deleted, skipped)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    def _load(self, con: duckdb.DuckDBPyConnection, files: list[str], chunks: list[str],
              symbols: list[str], refs: list[str], deleted: list[str],
              skipped: list[tuple[str, str]]) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in _FILE_COLUMNS.items())
        con.execute(f"CREATE OR REPLACE TEMP TABLE stage_files ({cols})")
        if files:
            con.execute("INSERT INTO stage_files SELECT * FROM read_json(?, "
                        f"format='newline_delimited', columns={_columns_sql(_FILE_COLUMNS)})",
                        [files])
        if deleted:
            con.execute("INSERT INTO stage_files (path, status, changed) "
                        "SELECT unnest(?::VARCHAR[]), 'deleted', true", [deleted])
        if skipped:
            con.execute("INSERT INTO stage_files (path, status, reason, changed, size, mtime_ns) "
                        "SELECT unnest(?::VARCHAR[]), 'skipped', unnest(?::VARCHAR[]), true, 0, 0",
                        [[p for p, _ in skipped], [r for _, r in skipped]])
        # rows of changed files go; files whose content did not change keep their chunks
        con.execute("CREATE OR REPLACE TEMP TABLE gone AS "
                    "SELECT DISTINCT path FROM stage_files WHERE changed")
        con.execute("DELETE FROM postings WHERE chunk_id IN "
                    "(SELECT id FROM chunks WHERE path IN (SELECT path FROM gone))")
        for table in ("chunks", "symbols", "refs"):
            con.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM gone)")
        con.execute("DELETE FROM files WHERE path IN (SELECT path FROM stage_files)")
        con.execute("""
            INSERT INTO files SELECT path, language, size, mtime_ns, hash, status, reason,
                n_chunks, extractor, current_timestamp
            FROM stage_files WHERE status NOT IN ('deleted', 'vanished')""")
        if chunks:
            self._load_chunks(con, chunks)
        if symbols:
            con.execute("INSERT INTO symbols SELECT * FROM read_csv(?, delim='\t', header=false, "
                        f"quote='', escape='', columns={_columns_sql(_SYMBOL_COLUMNS)})", [symbols])
        if refs:
            con.execute("INSERT INTO refs SELECT * FROM read_csv(?, delim='\t', header=false, "
                        f"quote='', escape='', columns={_columns_sql(_REF_COLUMNS)})", [refs])

    def _load_chunks(self, con: duckdb.DuckDBPyConnection, chunks: list[str]) -> None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE stage_chunks AS SELECT nextval('chunk_ids') AS id, * "
            f"FROM read_json(?, format='newline_delimited', columns={_columns_sql(_CHUNK_COLUMNS)})",
            [chunks])
        con.execute("""
            CREATE OR REPLACE TEMP TABLE stage_idents AS
            SELECT id AS chunk_id, split_part(pair, ':', 1) AS ident,
                   CAST(split_part(pair, ':', 2) AS INTEGER) AS n
            FROM (SELECT id, unnest(string_split(idents, ' ')) AS pair FROM stage_chunks)
            WHERE pair <> ''""")
        new = [r[0] for r in con.execute(
            "SELECT DISTINCT s.ident FROM stage_idents s ANTI JOIN ident_terms i ON i.ident = s.ident"
        ).fetchall()]
        if new:
            self._add_identifiers(con, new)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE stage_postings AS
            SELECT s.chunk_id, it.term_id, CAST(sum(s.n) AS INTEGER) AS tf
            FROM stage_idents s JOIN ident_terms it USING (ident)
            WHERE it.term_id IS NOT NULL
            GROUP BY ALL""")
        con.execute("""
            INSERT INTO chunks
            SELECT c.id, c.path, c.ord, c.language, c.kind, c.name, c.qualified_name,
                   c.start_line, c.end_line, c.signature, c.docstring, c.text, c.hash, c.tokens,
                   coalesce(l.n_terms, 0)
            FROM stage_chunks c LEFT JOIN (
                SELECT chunk_id, CAST(sum(tf) AS INTEGER) AS n_terms FROM stage_postings GROUP BY 1
            ) l ON l.chunk_id = c.id""")
        con.execute("INSERT INTO postings SELECT term_id, chunk_id, tf FROM stage_postings")

    def _add_identifiers(self, con: duckdb.DuckDBPyConnection, idents: list[str]) -> None:
        """Expand identifiers never seen before into terms (whole + parts)."""
        lines: list[str] = []
        for ident in idents:
            terms = expand_identifier(ident)
            lines.extend(f"{ident}\t{term}\n" for term in terms) if terms else lines.append(f"{ident}\t\n")
        pairs = self.path.parent / f"pairs-{os.getpid()}-{threading.get_ident()}.tsv"
        pairs.write_text("".join(lines), encoding="utf-8")
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE stage_pairs AS SELECT * FROM read_csv(?, "
                        "delim='\t', header=false, quote='', escape='', "
                        "columns={'ident': 'VARCHAR', 'term': 'VARCHAR'})", [str(pairs)])
        finally:
            pairs.unlink(missing_ok=True)
        con.execute("""
            INSERT INTO terms SELECT nextval('term_ids'), term FROM (
                SELECT DISTINCT p.term FROM stage_pairs p ANTI JOIN terms t ON t.term = p.term
                WHERE p.term IS NOT NULL)""")
        con.execute("""
            INSERT INTO ident_terms
            SELECT p.ident, t.id FROM stage_pairs p LEFT JOIN terms t ON t.term = p.term""")

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


def m002_search_indexes(con: duckdb.DuckDBPyConnection) -> None:
    # search reads the winning chunks by id: through this index in ~1 ms, by a scan in ~15
    con.execute("CREATE INDEX chunks_id ON chunks (id)")


def m003_terms_from_workers(con: duckdb.DuckDBPyConnection) -> None:
    # parsing processes now expand identifiers into terms: the identifier map is unused
    con.execute("DROP TABLE ident_terms")


def m004_postings_carry_lengths(con: duckdb.DuckDBPyConnection) -> None:
    # search ranks from the postings alone: each carries its chunk's length, and the
    # chunks replaced since the last compaction are listed in dead_chunks
    con.execute("""
        CREATE TABLE postings_new AS
        SELECT p.term_id, p.chunk_id, p.tf, c.n_terms FROM postings p
        JOIN chunks c ON c.id = p.chunk_id ORDER BY p.term_id, p.chunk_id""")
    con.execute("DROP TABLE postings")
    con.execute("ALTER TABLE postings_new RENAME TO postings")
    con.execute("DELETE FROM meta WHERE key = 'postings_sorted_rows'")
    con.execute("INSERT INTO meta SELECT 'postings_sorted_rows', count(*)::VARCHAR FROM postings")
    con.execute("CREATE TABLE dead_chunks (id BIGINT)")
    # exact symbol matches are looked up by name
    con.execute("CREATE INDEX chunks_name ON chunks (name)")
    con.execute("CREATE INDEX chunks_qualified_name ON chunks (qualified_name)")


def m005_memory(con: duckdb.DuckDBPyConnection) -> None:
    # local time, as users read it (TIMESTAMPTZ would need pytz on the Python side)
    con.execute("""
        -- core memory: always in main context, size-capped
        CREATE TABLE core_blocks (
            label VARCHAR PRIMARY KEY, value VARCHAR, char_limit INTEGER,
            updated_at TIMESTAMP);
        -- archival notes; an anchor (path, symbol, hash of that code) makes a note stale
        -- when its code changes
        CREATE SEQUENCE note_ids START 1;
        CREATE TABLE notes (
            id BIGINT PRIMARY KEY, text VARCHAR, tags VARCHAR[], source VARCHAR,
            path VARCHAR, symbol VARCHAR, anchor_hash VARCHAR, stale BOOLEAN,
            created_at TIMESTAMP, updated_at TIMESTAMP);
        -- recall storage: every message of every session
        CREATE TABLE sessions (
            id VARCHAR PRIMARY KEY, title VARCHAR, summary VARCHAR,
            created_at TIMESTAMP, updated_at TIMESTAMP);
        CREATE SEQUENCE message_ids START 1;
        CREATE TABLE messages (
            id BIGINT PRIMARY KEY, session_id VARCHAR, role VARCHAR, content VARCHAR,
            tool_calls VARCHAR, tool_name VARCHAR, tokens INTEGER, in_context BOOLEAN,
            created_at TIMESTAMP);
    """)


def m006_embeddings(con: duckdb.DuckDBPyConnection) -> None:
    # dense vectors live in one table per dimension, embeddings_<n> (model, hash,
    # vec FLOAT[n]), created with an embedder's first vectors: a model's dimension is known
    # only once it answers. This table records each embedder's dimension.
    con.execute("""
        CREATE TABLE embedding_models (
            model VARCHAR PRIMARY KEY, dimension INTEGER, created_at TIMESTAMP)""")


def m007_empty_strings_in_references(con: duckdb.DuckDBPyConnection) -> None:
    # empty fields of the workers' TSV files were read as NULL (a module-level call's
    # caller, a symbol without signature), where the API promises ''
    for table, columns in (("symbols", ("name", "qualified_name", "kind", "signature")),
                           ("refs", ("name", "kind", "caller"))):
        for column in columns:
            con.execute(f"UPDATE {table} SET {column} = '' WHERE {column} IS NULL")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    m001_initial, m002_search_indexes, m003_terms_from_workers, m004_postings_carry_lengths,
    m005_memory, m006_embeddings, m007_empty_strings_in_references]

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


class TermDictionary:
    """term -> id, kept in memory: looking terms up in SQL scans the whole table.

    Complete once loaded: terms are only ever added, and only through the one Store that
    holds the database's write lock, which records what it adds (committed only).
    """

    def __init__(self) -> None:
        self.map: dict[str, int] = {}
        self.loaded = False
        self.pending: dict[str, int] = {}  # added by the open transaction

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.loaded:
            self.map = dict(con.execute("SELECT term, id FROM terms").fetchall())
            self.loaded = True

    def ids(self, con: duckdb.DuckDBPyConnection, terms: list[str]) -> dict[str, int]:
        self.load(con)
        get = self.map.get
        return {t: i for t in terms if (i := get(t, self.pending.get(t))) is not None}

    def find(self, con: duckdb.DuckDBPyConnection, terms: list[str]) -> dict[str, int]:
        """Ids of a few committed terms: from memory once loaded, else in one SQL lookup
        (a fresh process answers its first searches while the dictionary loads)."""
        if self.loaded:
            get = self.map.get
            return {t: i for t in terms if (i := get(t)) is not None}
        return dict(con.execute("SELECT term, id FROM terms WHERE term IN (SELECT unnest($t))",
                                {"t": terms}).fetchall())

    def add(self, rows: list[tuple[int, str]]) -> None:
        self.pending.update((term, tid) for tid, term in rows)

    def commit(self) -> None:
        self.map.update(self.pending)
        self.pending = {}

    def rollback(self) -> None:
        self.pending = {}


class Store:
    """One project's database. Not thread-safe: each thread uses `cursor()`."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path))
            # committed batches are safe in the write-ahead log; folding it into the file
            # once per run (see checkpoint) beats doing it every few batches
            self.con.execute("SET checkpoint_threshold = '256MB'")
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise IndexBusy(
                    f"the index {path} is in use by another codevm process; "
                    "stop it or run this command through it"
                ) from None
            raise
        self.lock = threading.RLock()
        self.terms = TermDictionary()
        self.generation = 0  # counts the index batches committed by this process
        # chunks loaded since compaction was last considered: start high so that the first
        # run of each process looks at what earlier processes appended
        self.loaded_since_check = CHECK_EVERY_CHUNKS
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
                   refs: list[str], deleted: list[str], skipped: list[tuple[str, str]],
                   meta: dict[str, str] | None = None) -> None:
        """Replace the rows of every file in the batch, in one transaction.

        `files`/`chunks` are NDJSON files and `symbols`/`refs` TSV files written by
        workers; `deleted` are paths gone from disk; `skipped` are (path, reason) found by
        the walk without reading the file; `meta` keys are set in the same transaction.
        """
        with self.lock:
            con = self.cursor()
            con.execute("BEGIN")
            try:
                self._load(con, _nonempty(files), _nonempty(chunks), _nonempty(symbols),
                           _nonempty(refs), deleted, skipped)
                for key, value in (meta or {}).items():
                    self.set_meta(key, value, con)
                con.execute("COMMIT")
                self.terms.commit()
                self.generation += 1
            except BaseException:
                self.terms.rollback()
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

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
        if symbols:
            con.execute(f"INSERT INTO symbols SELECT * FROM read_csv(?, {_TSV}, "
                        f"columns={_columns_sql(_SYMBOL_COLUMNS)})", [symbols])
        if refs:
            con.execute(f"INSERT INTO refs SELECT * FROM read_csv(?, {_TSV}, "
                        f"columns={_columns_sql(_REF_COLUMNS)})", [refs])

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
        ids = self.terms.ids(con, distinct)
        new = [t for t in distinct if t not in ids]
        if new:
            added = con.execute("INSERT INTO terms SELECT nextval('term_ids'), unnest(?::VARCHAR[]) "
                                "RETURNING id, term", [new]).fetchall()
            self.terms.add(added)
            ids.update((term, tid) for tid, term in added)
        con.execute("INSERT INTO postings SELECT unnest(?::INTEGER[]), unnest(?::BIGINT[]), "
                    "unnest(?::INTEGER[]), unnest(?::INTEGER[])",
                    [[ids[r[1]] for r in rows], [r[0] for r in rows], [r[2] for r in rows],
                     [r[3] for r in rows]])

    def _postings_in_sql(self, con: duckdb.DuckDBPyConnection) -> None:
        self.loaded_since_check += con.execute("SELECT count(*) FROM stage_chunks").fetchone()[0]
        new_terms = """
            INSERT INTO terms SELECT nextval('term_ids'), term FROM (
                SELECT DISTINCT s.term FROM stage_terms s ANTI JOIN terms t ON t.term = s.term)"""
        if self.terms.loaded:  # keep the dictionary complete
            self.terms.add(con.execute(new_terms + " RETURNING id, term").fetchall())
        else:
            con.execute(new_terms)
        con.execute("""
            INSERT INTO postings
            SELECT t.id, s.chunk_id, s.tf, s.n_terms FROM stage_terms s JOIN terms t USING (term)""")

    def checkpoint(self) -> None:
        with self.lock:
            self.cursor().execute("CHECKPOINT")

    def compact_postings(self, force: bool = False) -> bool:
        """Re-sort postings by term and drop those of chunks that are gone, when worth it."""
        if not force and self.loaded_since_check < CHECK_EVERY_CHUNKS:
            return False
        with self.lock:
            self.loaded_since_check = 0
            con = self.cursor()
            try:
                total = con.execute("SELECT count(*) FROM postings").fetchone()[0]
                row = con.execute("SELECT value FROM meta WHERE key = 'postings_sorted_rows'"
                                  ).fetchone()
                unsorted = total - (int(row[0]) if row else 0)
                if not force and unsorted <= max(UNSORTED_MIN_ROWS, UNSORTED_SHARE * total):
                    return False
                con.execute("BEGIN")
                try:
                    con.execute("""
                        CREATE TABLE postings_sorted AS
                        SELECT p.* FROM postings p SEMI JOIN chunks c ON c.id = p.chunk_id
                        ORDER BY p.term_id, p.chunk_id""")
                    con.execute("DROP TABLE postings")
                    con.execute("ALTER TABLE postings_sorted RENAME TO postings")
                    con.execute("DELETE FROM dead_chunks")
                    kept = con.execute("SELECT count(*) FROM postings").fetchone()[0]
                    self.set_meta("postings_sorted_rows", str(kept), con)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                return True
            finally:
                con.close()

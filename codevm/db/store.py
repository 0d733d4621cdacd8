"""The project's DuckDB file: the connection, its write lock, transactions and meta values.

One process owns the file (see codevm/service); inside it, each thread reads through its
own `cursor()` and every write goes through `transaction()`, under one lock.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb

from codevm.db import migrations
from codevm.db.lexical import (
    REBUILD_BATCH,
    ChunkPaths,
    LexicalIndex,
    Row,
    chunk_rows,
    database_state,
    new_database_id,
    rebuild_workers,
)
from codevm.errors import IndexBusy, IndexUnreadable
from codevm.project import owner_only

MEMORY_LIMIT = "512MB"
# deleted chunks tantivy may hold before its index is made again (Lucene's merge policy
# allows 33% by default); see Store.compact_lexical
COMPACT_SHARE = 0.25


def unreadable(path: Path, error: Exception) -> IndexUnreadable:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return IndexUnreadable(
        f"the index {path} cannot be read ({first}): `codevm index --rebuild` makes a new one and "
        "keeps the notes, core memory and conversations it can still read (the old file is kept aside)")


class Store:
    """One project's database. Not thread-safe: each thread uses `cursor()`."""

    def __init__(self, path: Path, workers: int = 0):
        self.path = path
        self.workers = workers  # processes that may make a rebuild's text (the `workers` setting)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path))
            owner_only(path.parent)
            owner_only(path)
            # committed batches are safe in the write-ahead log; folding it into the file
            # once per run (see checkpoint) beats doing it every few batches
            self.con.execute("SET checkpoint_threshold = '256MB'")
            # DuckDB draws a progress bar on stdout for a query over 2 s on this connection
            # (a migration's copy of u-boot's chunks): stdout is the LSP and MCP channel
            self.con.execute("SET enable_progress_bar = false")
            # DuckDB's default (80% of RAM) let a cold index of u-boot reach 1,060 MB of RSS,
            # against 625 MB under a 400 MB limit at the same CPU time; bigger work spills
            self.con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise IndexBusy(
                    f"the index {path} is in use by another codevm process; "
                    "stop it or run this command through it"
                ) from None
            raise unreadable(path, e) from None
        except duckdb.Error as e:
            raise unreadable(path, e) from None
        self.lock = threading.RLock()
        self.generation = 0  # counts the index batches committed by this process
        try:
            migrations.apply(self.con)
        except duckdb.Error as e:
            self.con.close()
            raise unreadable(path, e) from None
        self.lexical = LexicalIndex(lexical_directory(path), ChunkPaths(
            lambda: self.cursor().execute("SELECT id, path, kind FROM chunks").fetchall()))
        self.lexical_behind = True
        self.lexical_committed = 0  # the generation tantivy has committed
        self.lexical_uncommitted: tuple[int, str] | None = None  # added, to commit
        try:
            self.reconcile_lexical()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.lexical.close()
        self.con.close()

    # -- the lexical index beside the database (see codevm/db/lexical.py) -----------------
    def reconcile_lexical(self) -> None:
        """Bring tantivy's index up to the database's last committed batch: the paths of
        the batches it missed, or everything when it is not this database's index."""
        with self.lock:
            self.lexical.reopen_if_gone()
            con = self.cursor()
            generation, database = database_state(con)
            if not database:
                database = new_database_id()
                with self.transaction() as tx:
                    self.set_meta("lexical_database", database, tx)
            at, of = self.lexical.state()
            if of == database and at == generation:
                pass
            elif of == database and at < generation:
                paths = [r[0] for r in con.execute("SELECT DISTINCT path FROM lexical_pending "
                                                   "WHERE generation > ? ORDER BY 1", [at]).fetchall()]
                batches = chunk_rows(con, "path IN (SELECT unnest($paths::VARCHAR[]))", {"paths": paths})
                self.lexical.apply(paths, batches, generation, database)
            else:
                self._rebuild_lexical(con, generation, database)
            if first_row(con, "SELECT count(*) FROM lexical_pending")[0]:  # no write on a clean open
                with self.transaction() as tx:
                    tx.execute("DELETE FROM lexical_pending WHERE generation <= ?", [generation])
            self.lexical_behind = False
            self.lexical_committed, self.lexical_uncommitted = generation, None

    def _rebuild_lexical(self, con: duckdb.DuckDBPyConnection, generation: int, database: str,
                         doing: str = "building", why: str = "") -> None:
        """Make tantivy's index again from every chunk of the database (searches see the
        old one until it commits)."""
        n = first_row(con, "SELECT count(*) FROM chunks")[0]
        if n > REBUILD_BATCH:
            print(f"codevm: {doing} the search index of {self.path.name} from the database "
                  f"({n:,} chunks{why})", file=sys.stderr)
        self.lexical.apply(None, chunk_rows(con, workers=rebuild_workers(n, self.workers)), generation, database)

    def compact_lexical(self) -> None:
        """Rebuild tantivy's index when deleted chunks are more than COMPACT_SHARE of what
        it holds. tantivy keeps a changed file's old chunks, marked deleted, until a merge
        of their segment, and its BM25 counts them (document frequencies, number of
        documents, lengths); tantivy-py cannot ask for a merge. Its merge policy drops the
        old chunks of an edited file from the small segments of the saves before, but not
        from the big segments of the first index: the indexes of the benchmark's
        repositories, checked out commit after commit, held 28-64% deleted chunks and ranked
        unlike a fresh index of the same code. Checked after each tantivy commit (a term
        list and a count); due after a checkout or pull that changed a quarter of them."""
        with self.lock:
            if self.lexical_behind or self.lexical_uncommitted is not None:
                return
            deleted, held = self.lexical.deleted()
            if not deleted or deleted <= COMPACT_SHARE * held:
                return
            con = self.cursor()
            generation, database = database_state(con)
            if self.lexical.state() == (generation, database):  # else the next reconcile comes first
                self._rebuild_lexical(con, generation, database, "compacting",
                                      f"; {deleted:,} of the {held:,} it held were deleted")

    def commit_lexical(self, paths: list[str], rows: list[Row], generation: int, database: str,
                       defer: bool = False) -> None:
        """After the database committed batch `generation`: the same change in tantivy
        (on failure, the next batch or the next process catches up). `defer`: added now,
        committed by `flush_lexical` (a bulk run's batches; a crash in between loses
        nothing: the database lists their paths until tantivy commits them)."""
        self.lexical_behind = True
        self.lexical.apply(paths, [rows], generation, database, commit=not defer)
        self.lexical_behind = False
        if defer:
            self.lexical_uncommitted = (generation, database)
        else:
            self.lexical_committed, self.lexical_uncommitted = generation, None
            self.compact_lexical()

    def flush_lexical(self, compact: bool = True) -> None:
        """Commit the deferred batches to tantivy (nothing when a failure dropped them:
        the next batch or process catches up); `compact`: then compact it if due."""
        with self.lock:
            if self.lexical_uncommitted is not None and not self.lexical_behind:
                generation, database = self.lexical_uncommitted
                self.lexical_behind = True
                self.lexical.commit(generation, database)
                self.lexical_behind = False
                self.lexical_committed, self.lexical_uncommitted = generation, None
        if compact:
            self.compact_lexical()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside one transaction, under the write lock: committed when the block
        ends, rolled back if it raises."""
        with self.lock:
            con = self.cursor()
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    def finish_bulk(self) -> None:
        """The end of a long index run: tantivy's last commit and DuckDB's checkpoint (the
        write-ahead log folded into the file), at the same time: each mostly waits on its
        own native code and files (0.5 and 1.1 s, one after the other, at the end of a
        cold index of u-boot, with the parsing processes idle)."""
        from concurrent.futures import ThreadPoolExecutor

        # the pool is left (its thread joined) before the checkpoint's cursor is closed
        with self.lock, self.cursor() as cursor, ThreadPoolExecutor(1, "codevm-checkpoint") as pool:
            checkpoint = pool.submit(cursor.execute, "CHECKPOINT")
            self.flush_lexical(compact=False)
            checkpoint.result()  # its error, if any, raised here
        self.compact_lexical()  # may read the database: after its checkpoint

    @contextmanager
    def bulk_threads(self) -> Iterator[None]:
        """DuckDB's threads while parsing processes take every core (a long index run):
        one less than the cores. On 2 cores a cold index of u-boot took 2 s less CPU in
        this process (17.4-18.1 s against 19.5-20.1) with one thread than with DuckDB's
        default of one per core, which only contends with the workers; with more cores
        this process is the slower side, and DuckDB keeps the rest."""
        cores = os.cpu_count() or 1
        if cores < 2:
            yield
            return
        self.con.execute(f"SET threads = {cores - 1}")
        try:
            yield
        finally:
            with suppress(duckdb.Error):  # a closed or broken connection keeps its error
                self.con.execute("RESET threads")

    # -- meta ------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.cursor().execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str, con: duckdb.DuckDBPyConnection | None = None) -> None:
        c = con or self.cursor()
        c.execute("DELETE FROM meta WHERE key = ?", [key])
        c.execute("INSERT INTO meta VALUES (?, ?)", [key, value])


def lexical_directory(database: Path) -> Path:
    return database.with_name(database.name + ".lexical")


def vectors_directory(database: Path) -> Path:
    """Where the vector index (retrieval/ann.py) is kept."""
    return database.with_name(database.name + ".vectors")


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, INSERT ... RETURNING)."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise RuntimeError(f"the query returned no row: {sql.strip()[:80]}")
    return row

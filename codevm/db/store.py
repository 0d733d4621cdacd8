"""The project's DuckDB file: the connection, its write lock, transactions and meta values.

One process owns the file (see codevm/service); inside it, each thread reads through its
own `cursor()` and every write goes through `transaction()`, under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from codevm.db import migrations
from codevm.db.terms import TermDictionary
from codevm.errors import IndexBusy, IndexUnreadable
from codevm.project import owner_only


def unreadable(path: Path, error: Exception) -> IndexUnreadable:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return IndexUnreadable(
        f"the index {path} cannot be read ({first}): `codevm index --rebuild` makes a new one and "
        "keeps the notes, core memory and conversations it can still read (the old file is kept aside)")


class Store:
    """One project's database. Not thread-safe: each thread uses `cursor()`."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path))
            owner_only(path.parent)
            owner_only(path)
            # committed batches are safe in the write-ahead log; folding it into the file
            # once per run (see checkpoint) beats doing it every few batches
            self.con.execute("SET checkpoint_threshold = '256MB'")
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
        self.terms = TermDictionary()
        self.generation = 0  # counts the index batches committed by this process
        try:
            migrations.apply(self.con)
        except duckdb.Error as e:
            self.con.close()
            raise unreadable(path, e) from None

    def close(self) -> None:
        self.con.close()

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

    def checkpoint(self) -> None:
        with self.lock:
            self.cursor().execute("CHECKPOINT")

    # -- meta ------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.cursor().execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str, con: duckdb.DuckDBPyConnection | None = None) -> None:
        c = con or self.cursor()
        c.execute("DELETE FROM meta WHERE key = ?", [key])
        c.execute("INSERT INTO meta VALUES (?, ?)", [key, value])


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, INSERT ... RETURNING)."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise RuntimeError(f"the query returned no row: {sql.strip()[:80]}")
    return row

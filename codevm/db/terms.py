"""The term dictionary of the lexical index, cached in the process that writes it."""

from __future__ import annotations

import duckdb


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

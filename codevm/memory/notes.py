"""Archival memory: notes, optionally anchored to code (stale when that code changes)."""

from __future__ import annotations

import duckdb

from codevm.api import Note
from codevm.db.store import Store, first_row
from codevm.errors import InvalidArgument
from codevm.memory.matching import iso, match_params, match_sql

NOTE_SOURCES = ("user", "agent", "mcp", "lsp")
MAX_NOTE_CHARS = 8000
MAX_TAGS = 20


class Notes:
    def __init__(self, store: Store):
        self.store = store
        # whether any anchored note is not stale yet (this process is the only writer)
        self._live_anchors: bool | None = None

    def _anchor_hash(self, con: duckdb.DuckDBPyConnection, path: str, symbol: str | None) -> str | None:
        if symbol:
            row = con.execute(
                "SELECT string_agg(hash, ',' ORDER BY ord) FROM chunks "
                "WHERE path = ? AND (qualified_name = ? OR name = ?)", [path, symbol, symbol]).fetchone()
        else:
            row = con.execute("SELECT hash FROM files WHERE path = ?", [path]).fetchone()
        return row[0] if row else None

    def insert(self, text: str, tags: list[str] | None = None, source: str = "user",
               path: str | None = None, symbol: str | None = None) -> Note:
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise InvalidArgument("a note needs some text")
        if len(text) > MAX_NOTE_CHARS:
            raise InvalidArgument(f"a note holds at most {MAX_NOTE_CHARS} characters, got {len(text)}")
        if source not in NOTE_SOURCES:
            raise InvalidArgument(f"unknown note source {source!r}")
        tags = sorted({t.strip() for t in (tags or []) if t and t.strip()})[:MAX_TAGS]
        if symbol and not path:
            raise InvalidArgument("a note anchored to a symbol needs the symbol's path too")
        with self.store.lock:
            con = self.store.cursor()
            anchor = self._anchor_hash(con, path, symbol) if path else None
            if path and anchor is None:
                what = f"symbol {symbol!r} in {path}" if symbol else path
                raise InvalidArgument(f"{what} is not in the index; check the name or re-index")
            row = first_row(
                con, "INSERT INTO notes VALUES (nextval('note_ids'), ?, ?, ?, ?, ?, ?, false, "
                "current_localtimestamp(), current_localtimestamp()) RETURNING id, created_at",
                [text, tags, source, path, symbol, anchor])
            if path:
                self._live_anchors = True
        return Note(row[0], text, tags, source, path, symbol, False, iso(row[1]), iso(row[1]))

    _COLUMNS = "id, text, tags, source, path, symbol, stale, created_at, updated_at"

    def _note(self, row: tuple) -> Note:
        return Note(row[0], row[1], list(row[2] or []), row[3], row[4], row[5], bool(row[6]),
                    iso(row[7]), iso(row[8]))

    def get(self, note_id: int) -> Note:
        row = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM notes WHERE id = ?", [note_id]).fetchone()
        if row is None:
            raise InvalidArgument(f"no note with id {note_id}")
        return self._note(row)

    def search(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]:
        terms, params = match_params(query)
        if not terms:
            return []
        params["k"] = max(1, min(k, 100))
        where = "score > 0"
        if tag:
            where += " AND list_contains(tags, $tag)"
            params["tag"] = tag
        score = match_sql("text || ' ' || array_to_string(tags, ' ') || ' ' || coalesce(symbol, '') "
                           "|| ' ' || coalesce(path, '')", terms)
        rows = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM (SELECT *, {score} AS score FROM notes) "
            f"WHERE {where} ORDER BY score DESC, stale, updated_at DESC LIMIT $k", params).fetchall()
        return [self._note(r) for r in rows]

    def list(self, path: str | None = None, symbol: str | None = None, limit: int = 100) -> list[Note]:
        clauses, params = ["TRUE"], []
        if path:
            clauses.append("path = ?")
            params.append(path)
        if symbol:
            clauses.append("(symbol = ? OR symbol LIKE '%.' || ?)")
            params += [symbol, symbol]
        rows = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM notes WHERE {' AND '.join(clauses)} "
            f"ORDER BY updated_at DESC, id DESC LIMIT {max(1, min(limit, 1000))}", params).fetchall()
        return [self._note(r) for r in rows]

    def forget(self, note_id: int) -> Note:
        note = self.get(note_id)
        with self.store.lock:
            self.store.cursor().execute("DELETE FROM notes WHERE id = ?", [note_id])
        return note

    def mark_stale(self) -> int:
        """Mark anchored notes whose code changed (or vanished) since they were written."""
        if self._live_anchors is None:
            self._live_anchors = bool(first_row(
                self.store.cursor(), "SELECT count(*) FROM notes WHERE NOT stale AND path IS NOT NULL")[0])
        if not self._live_anchors:
            return 0  # nothing to check: no query on every edit
        with self.store.lock:
            con = self.store.cursor()
            rows = con.execute("""
                UPDATE notes SET stale = true, updated_at = current_localtimestamp()
                WHERE NOT stale AND path IS NOT NULL AND anchor_hash IS DISTINCT FROM (
                    CASE WHEN symbol IS NULL
                    THEN (SELECT f.hash FROM files f WHERE f.path = notes.path)
                    ELSE (SELECT string_agg(c.hash, ',' ORDER BY c.ord) FROM chunks c
                          WHERE c.path = notes.path
                            AND (c.qualified_name = notes.symbol OR c.name = notes.symbol))
                    END)
                RETURNING id""").fetchall()
        return len(rows)

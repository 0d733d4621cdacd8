"""What the engine remembers besides the code: core memory blocks, archival notes and
recall storage (every message of every session). All of it lives in the project's
DuckDB file, next to the index, and survives restarts.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import duckdb

from codevm.errors import InvalidArgument
from codevm.indexers.tokens import IDENTIFIER, expand_identifier
from codevm.memory.store import Store
from codevm.api import CORE_BLOCKS, CoreBlock, MessageRecord, Note, SessionInfo

NOTE_SOURCES = ("user", "agent", "mcp", "lsp")
MAX_NOTE_CHARS = 8000
MAX_TAGS = 20


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def text_terms(query: str) -> list[str]:
    """Lowercase terms of a query, as the code index splits identifiers."""
    terms: list[str] = []
    for ident in IDENTIFIER.findall(query):
        for term in expand_identifier(ident):
            if term not in terms:
                terms.append(term)
    return terms[:32]


def _match_sql(column: str, terms: list[str]) -> str:
    # contains(), not LIKE: '_' is a wildcard there and identifiers are full of them
    return " + ".join(f"contains(lower({column}), $t{i})::INTEGER" for i in range(len(terms))) or "0"


def _match_params(query: str) -> tuple[list[str], dict[str, object]]:
    if not query or not query.strip():
        raise InvalidArgument("the search query is empty")
    terms = text_terms(query)
    return terms, {f"t{i}": t for i, t in enumerate(terms)}










class CoreMemory:
    def __init__(self, store: Store):
        self.store = store

    def blocks(self) -> list[CoreBlock]:
        stored = dict(self.store.cursor().execute(
            "SELECT label, value FROM core_blocks").fetchall())
        return [CoreBlock(label, stored.get(label) or "", limit, description)
                for label, (limit, description) in CORE_BLOCKS.items()]

    def get(self, label: str) -> CoreBlock:
        for block in self.blocks():
            if block.label == label:
                return block
        raise InvalidArgument(f"unknown core memory block {label!r}; "
                              f"blocks are: {', '.join(CORE_BLOCKS)}")

    def update(self, label: str, text: str, mode: str = "replace", old: str | None = None) -> CoreBlock:
        """mode: replace (the whole block, or `old` by `text`) or append."""
        block = self.get(label)
        if mode == "append":
            value = f"{block.value}\n{text}".strip("\n") if block.value else text
        elif mode == "replace":
            if old:
                if old not in block.value:
                    raise InvalidArgument(f"the text to replace is not in the {label!r} block")
                value = block.value.replace(old, text, 1)
            else:
                value = text
        else:
            raise InvalidArgument(f"mode must be 'replace' or 'append', got {mode!r}")
        if len(value) > block.limit:
            raise InvalidArgument(
                f"the {label!r} block would hold {len(value)} characters, over its limit of "
                f"{block.limit}: shorten it, or move details to archival notes")
        with self.store.lock:
            self.store.cursor().execute(
                "INSERT OR REPLACE INTO core_blocks VALUES (?, ?, ?, current_localtimestamp())",
                [label, value, block.limit])
        block.value = value
        return block


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
            row = con.execute(
                "INSERT INTO notes VALUES (nextval('note_ids'), ?, ?, ?, ?, ?, ?, false, "
                "current_localtimestamp(), current_localtimestamp()) RETURNING id, created_at",
                [text, tags, source, path, symbol, anchor]).fetchone()
            if path:
                self._live_anchors = True
        return Note(row[0], text, tags, source, path, symbol, False, _iso(row[1]), _iso(row[1]))

    _COLUMNS = "id, text, tags, source, path, symbol, stale, created_at, updated_at"

    def _note(self, row: tuple) -> Note:
        return Note(row[0], row[1], list(row[2] or []), row[3], row[4], row[5], bool(row[6]),
                    _iso(row[7]), _iso(row[8]))

    def get(self, note_id: int) -> Note:
        row = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM notes WHERE id = ?", [note_id]).fetchone()
        if row is None:
            raise InvalidArgument(f"no note with id {note_id}")
        return self._note(row)

    def search(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]:
        terms, params = _match_params(query)
        if not terms:
            return []
        params["k"] = max(1, min(k, 100))
        where = "score > 0"
        if tag:
            where += " AND list_contains(tags, $tag)"
            params["tag"] = tag
        score = _match_sql("text || ' ' || array_to_string(tags, ' ') || ' ' || coalesce(symbol, '') "
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
            self._live_anchors = bool(self.store.cursor().execute(
                "SELECT count(*) FROM notes WHERE NOT stale AND path IS NOT NULL").fetchone()[0])
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


class Recall:
    """Sessions and their messages; evicted messages stay here, findable."""

    def __init__(self, store: Store):
        self.store = store

    def new_session(self, title: str = "") -> SessionInfo:
        sid = uuid.uuid4().hex[:12]
        with self.store.lock:
            row = self.store.cursor().execute(
                "INSERT INTO sessions VALUES (?, ?, '', current_localtimestamp(), current_localtimestamp()) "
                "RETURNING created_at", [sid, title[:200]]).fetchone()
        return SessionInfo(sid, title[:200], _iso(row[0]), _iso(row[0]), 0)

    _SESSIONS = ("SELECT s.id, s.title, s.created_at, s.updated_at, "
                 "(SELECT count(*) FROM messages m WHERE m.session_id = s.id), s.summary "
                 "FROM sessions s ")

    def _sessions(self, where: str, params: list) -> list[SessionInfo]:
        rows = self.store.cursor().execute(self._SESSIONS + where, params).fetchall()
        return [SessionInfo(r[0], r[1], _iso(r[2]), _iso(r[3]), r[4], r[5] or "") for r in rows]

    def session(self, session_id: str) -> SessionInfo:
        found = self._sessions("WHERE s.id = ?", [session_id])
        if not found:
            raise InvalidArgument(f"no session {session_id!r}; `codevm memory sessions` lists them")
        return found[0]

    def sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self._sessions("ORDER BY s.updated_at DESC LIMIT ?", [limit])

    def latest(self) -> SessionInfo | None:
        found = self.sessions(1)
        return found[0] if found else None

    def add(self, session_id: str, role: str, content: str, tool_calls: list[dict] | None = None,
            tool_name: str = "", tokens: int = 0) -> MessageRecord:
        with self.store.lock:
            con = self.store.cursor()
            con.execute("BEGIN")
            try:
                row = con.execute(
                    "INSERT INTO messages VALUES (nextval('message_ids'), ?, ?, ?, ?, ?, ?, true, "
                    "current_localtimestamp()) RETURNING id, created_at",
                    [session_id, role, content, json.dumps(tool_calls or []), tool_name, tokens]
                ).fetchone()
                con.execute("UPDATE sessions SET updated_at = current_localtimestamp(), "
                            "title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END "
                            "WHERE id = ?", [role, content[:80], session_id])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return MessageRecord(row[0], session_id, role, content, _iso(row[1]), tool_name,
                             tool_calls or [], True)

    _COLUMNS = "id, session_id, role, content, created_at, tool_name, tool_calls, in_context"

    def _message(self, r: tuple) -> MessageRecord:
        return MessageRecord(r[0], r[1], r[2], r[3], _iso(r[4]), r[5] or "",
                             json.loads(r[6] or "[]"), bool(r[7]))

    def messages(self, session_id: str, in_context_only: bool = False) -> list[MessageRecord]:
        extra = " AND in_context" if in_context_only else ""
        rows = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE session_id = ?{extra} ORDER BY id",
            [session_id]).fetchall()
        return [self._message(r) for r in rows]

    def evict(self, message_ids: list[int], summary: str, session_id: str) -> None:
        """Messages leave main context (they stay here); the summary replaces them."""
        with self.store.lock:
            con = self.store.cursor()
            con.execute("BEGIN")
            try:
                con.execute("UPDATE messages SET in_context = false WHERE id IN "
                            "(SELECT unnest(?::BIGINT[]))", [message_ids])
                con.execute("UPDATE sessions SET summary = ? WHERE id = ?", [summary, session_id])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def search(self, query: str, k: int = 10, session_id: str | None = None,
               since: str | None = None, until: str | None = None) -> list[MessageRecord]:
        """Messages by text, newest first among equals; `since`/`until` are ISO dates."""
        terms, params = _match_params(query)
        if not terms:
            return []
        where = ["score > 0", "role IN ('user', 'assistant')"]
        if session_id:
            where.append("session_id = $session")
            params["session"] = session_id
        for name, value, op in (("since", since, ">="), ("until", until, "<")):
            if value:
                try:
                    params[name] = datetime.fromisoformat(value)
                except ValueError:
                    raise InvalidArgument(f"{name} must be an ISO date (2026-11-23), got {value!r}") from None
                where.append(f"created_at {op} ${name}")
        params["k"] = max(1, min(k, 100))
        rows = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM (SELECT *, {_match_sql('content', terms)} AS score "
            f"FROM messages) WHERE {' AND '.join(where)} ORDER BY score DESC, id DESC LIMIT $k",
            params).fetchall()
        return [self._message(r) for r in rows]

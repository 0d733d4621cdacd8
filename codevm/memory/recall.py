"""Recall storage: every message of every session, searchable; messages evicted from main
context stay here."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from codevm.api import MessageRecord, SessionInfo
from codevm.db.store import Store, first_row
from codevm.errors import InvalidArgument
from codevm.memory.matching import iso, match_params, match_sql


class Recall:
    """Sessions and their messages; evicted messages stay here, findable."""

    def __init__(self, store: Store):
        self.store = store

    def new_session(self, title: str = "") -> SessionInfo:
        sid = uuid.uuid4().hex[:12]
        with self.store.lock:
            row = first_row(
                self.store.cursor(),
                "INSERT INTO sessions VALUES (?, ?, '', current_localtimestamp(), current_localtimestamp()) "
                "RETURNING created_at", [sid, title[:200]])
        return SessionInfo(sid, title[:200], iso(row[0]), iso(row[0]), 0)

    _SESSIONS = ("SELECT s.id, s.title, s.created_at, s.updated_at, "
                 "(SELECT count(*) FROM messages m WHERE m.session_id = s.id), s.summary "
                 "FROM sessions s ")

    def _sessions(self, where: str, params: list) -> list[SessionInfo]:
        rows = self.store.cursor().execute(self._SESSIONS + where, params).fetchall()
        return [SessionInfo(r[0], r[1], iso(r[2]), iso(r[3]), r[4], r[5] or "") for r in rows]

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
        with self.store.transaction() as con:
            row = first_row(
                con, "INSERT INTO messages VALUES (nextval('message_ids'), ?, ?, ?, ?, ?, ?, true, "
                "current_localtimestamp()) RETURNING id, created_at",
                [session_id, role, content, json.dumps(tool_calls or []), tool_name, tokens])
            con.execute("UPDATE sessions SET updated_at = current_localtimestamp(), "
                        "title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END "
                        "WHERE id = ?", [role, content[:80], session_id])
        return MessageRecord(row[0], session_id, role, content, iso(row[1]), tool_name,
                             tool_calls or [], True)

    _COLUMNS = "id, session_id, role, content, created_at, tool_name, tool_calls, in_context"

    def _message(self, r: tuple) -> MessageRecord:
        return MessageRecord(r[0], r[1], r[2], r[3], iso(r[4]), r[5] or "",
                             json.loads(r[6] or "[]"), bool(r[7]))

    def messages(self, session_id: str, in_context_only: bool = False) -> list[MessageRecord]:
        extra = " AND in_context" if in_context_only else ""
        rows = self.store.cursor().execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE session_id = ?{extra} ORDER BY id",
            [session_id]).fetchall()
        return [self._message(r) for r in rows]

    def evict(self, message_ids: list[int], summary: str, session_id: str) -> None:
        """Messages leave main context (they stay here); the summary replaces them."""
        with self.store.transaction() as con:
            con.execute("UPDATE messages SET in_context = false WHERE id IN "
                        "(SELECT unnest(?::BIGINT[]))", [message_ids])
            con.execute("UPDATE sessions SET summary = ? WHERE id = ?", [summary, session_id])

    def search(self, query: str, k: int = 10, session_id: str | None = None,
               since: str | None = None, until: str | None = None) -> list[MessageRecord]:
        """Messages by text, newest first among equals; `since`/`until` are ISO dates."""
        terms, params = match_params(query)
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
            f"SELECT {self._COLUMNS} FROM (SELECT *, {match_sql('content', terms)} AS score "
            f"FROM messages) WHERE {' AND '.join(where)} ORDER BY score DESC, id DESC LIMIT $k",
            params).fetchall()
        return [self._message(r) for r in rows]

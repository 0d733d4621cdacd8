"""`codevm index --rebuild`: a new database for a project whose database is truncated or
corrupt, keeping what was remembered.

The old file (and its log) is moved aside, never deleted. Every memory table that can
still be read from it (core memory, notes, sessions and their messages, and the models'
recorded modes and calibrations) is first exported next to it as JSON lines, then copied
into the new database; the index itself is rebuilt from the files on disk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from codevm.db.store import Store

# table -> sequence of its ids (continued after the highest kept id)
MEMORY_TABLES = {"core_blocks": None, "notes": "note_ids", "sessions": None, "messages": "message_ids"}
KEPT_META = ("ask_mode:", "tool_calls:", "calibration:")  # what was learned about models


@dataclass
class RescueReport:
    moved_to: str = ""  # where the old file is
    exported_to: str = ""  # what could be read of it, as JSON lines
    kept: dict[str, int] = field(default_factory=dict)  # table -> rows kept
    lost: dict[str, str] = field(default_factory=dict)  # table -> why it could not be read


def rebuild(path: Path) -> RescueReport:
    """Move the database at `path` aside and make a new one holding what it can read."""
    report = RescueReport()
    rows: dict[str, tuple[list[str], list[tuple]]] = {}
    if path.exists():
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            wal.replace(aside.with_name(aside.name + ".wal"))
        report.moved_to = str(aside)
        rows = _read_memory(aside, report)
        export = aside.with_name(aside.name + ".memory.jsonl")
        with export.open("w", encoding="utf-8") as f:
            for table, (columns, values) in rows.items():
                for value in values:
                    f.write(json.dumps({"table": table, **dict(zip(columns, value, strict=True))},
                                       default=str) + "\n")
        report.exported_to = str(export)
    store = Store(path)
    try:
        with store.transaction() as con:
            for table, (columns, values) in rows.items():
                if not values:
                    continue
                if table == "meta":
                    con.executemany("INSERT INTO meta VALUES (?, ?)", values)
                    continue
                names = ", ".join(columns)
                marks = ", ".join("?" for _ in columns)
                con.executemany(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", values)
                if (sequence := MEMORY_TABLES.get(table)) is not None:
                    top = con.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
                    con.execute(f"DROP SEQUENCE {sequence}")
                    con.execute(f"CREATE SEQUENCE {sequence} START {int(top[0] if top else 0) + 1}")
        for table, (_, values) in rows.items():
            report.kept[table] = len(values)
    finally:
        store.close()
    return report


def _read_memory(path: Path, report: RescueReport) -> dict[str, tuple[list[str], list[tuple]]]:
    """Each memory table that can be read from the broken file (columns, rows)."""
    rows: dict[str, tuple[list[str], list[tuple]]] = {}
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:
        report.lost["the whole file"] = _first_line(e)
        return rows
    try:
        for table in MEMORY_TABLES:
            try:
                cursor = con.execute(f"SELECT * FROM {table}")
                values = cursor.fetchall()
                rows[table] = ([d[0] for d in cursor.description], values)
            except duckdb.Error as e:
                report.lost[table] = _first_line(e)
        try:
            meta = con.execute("SELECT key, value FROM meta").fetchall()
            rows["meta"] = (["key", "value"], [(k, v) for k, v in meta if k.startswith(KEPT_META)])
        except duckdb.Error:
            pass
    finally:
        con.close()
    return rows


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]

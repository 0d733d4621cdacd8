"""Tool bodies: plain functions over an engine (codevm.api.EngineAPI), testable without any protocol.

Each returns a JSON-serialisable dict. Lists are paged and capped (`max_chars`) so that a
tool never floods the caller's context: `has_more` and `next_offset` say how to go on.
Bad arguments raise InvalidArgument, which the server turns into a tool error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from codevm.api import EngineAPI, to_dict
from codevm.errors import InvalidArgument

MAX_K = 50
DEFAULT_MAX_CHARS = 12_000
MAX_CHARS = 60_000


def _check_bounds(k: int, offset: int, max_chars: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
    if offset < 0:
        raise InvalidArgument(f"offset must be 0 or more, got {offset}")
    if not 200 <= max_chars <= MAX_CHARS:
        raise InvalidArgument(f"max_chars must be between 200 and {MAX_CHARS}, got {max_chars}")


def fit_items(items: list[Any], offset: int, max_chars: int, more: bool = False) -> dict:
    """As many items as fit in max_chars (at least one), with how to get the rest."""
    out: list[Any] = []
    used = 0
    for item in items:
        size = len(json.dumps(item, ensure_ascii=False))
        if out and used + size > max_chars:
            break
        out.append(item)
        used += size
    has_more = more or len(out) < len(items)
    return {"items": out, "has_more": has_more,
            "next_offset": offset + len(out) if has_more else None}


def search_code(engine: EngineAPI, query: str, k: int = 10, language: str | None = None,
                path_glob: str | None = None, kind: str | None = None, offset: int = 0,
                max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    _check_bounds(k, offset, max_chars)
    hits = engine.search(query, k=offset + k + 1, language=language, path_glob=path_glob, kind=kind)
    window = [to_dict(h) for h in hits[offset: offset + k]]
    result = fit_items(window, offset, max_chars, more=len(hits) > offset + k)
    vectors = engine.embedding_progress()
    if vectors.partial:  # the ranking will change as embedding goes on
        result["vectors"] = vectors.describe()
    return result


def find_symbol(engine: EngineAPI, name: str) -> dict:
    return {"items": to_dict(engine.symbol(name))}


def find_references(engine: EngineAPI, name: str, offset: int = 0,
                    max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    _check_bounds(1, offset, max_chars)
    refs = to_dict(engine.refs(name, limit=offset + 1000))
    assert isinstance(refs, list)
    return fit_items(refs[offset:], offset, max_chars)


def read_code(engine: EngineAPI, path: str | None = None, start_line: int | None = None,
              end_line: int | None = None, chunk_id: int | None = None,
              max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    _check_bounds(1, 0, max_chars)
    if chunk_id is not None:
        code = engine.read_chunk(chunk_id)
    elif path:
        code = engine.read(path, start_line, end_line)
    else:
        raise InvalidArgument("read_code needs a path or a chunk_id")
    text = code.text
    has_more = len(text) > max_chars
    if has_more:
        text = text[:max_chars].rsplit("\n", 1)[0]
    last = code.start_line + text.count("\n")
    return {"path": code.path, "start_line": code.start_line, "end_line": last,
            "total_lines": code.total_lines, "text": text, "has_more": has_more or last < code.end_line,
            "next_start_line": last + 1 if has_more or last < code.end_line else None}


def outline(engine: EngineAPI, path: str) -> dict:
    return {"path": engine.relative_path(path), "symbols": [
        {"name": d.name, "qualified_name": d.qualified_name, "kind": d.kind,
         "start_line": d.start_line, "end_line": d.end_line, "signature": d.signature}
        for d in engine.outline(path)]}


def remember(engine: EngineAPI, text: str, tags: list[str] | None = None, path: str | None = None,
             symbol: str | None = None) -> dict:
    return to_dict(engine.add_note(text, tags, path, symbol, source="mcp"))  # type: ignore[return-value]


def recall(engine: EngineAPI, query: str, k: int = 10) -> dict:
    _check_bounds(k, 0, DEFAULT_MAX_CHARS)
    return fit_items(to_dict(engine.search_notes(query, k)), 0, DEFAULT_MAX_CHARS)  # type: ignore[arg-type]


def forget(engine: EngineAPI, note_id: int) -> dict:
    return {"forgotten": to_dict(engine.forget_note(note_id))}


def core_memory(engine: EngineAPI) -> dict:
    return {"blocks": to_dict(engine.core_memory())}


def core_memory_update(engine: EngineAPI, block: str, text: str, mode: str = "replace") -> dict:
    return to_dict(engine.core_memory_update(block, text, mode))  # type: ignore[return-value]


def conversation_search(engine: EngineAPI, query: str, k: int = 10) -> dict:
    _check_bounds(k, 0, DEFAULT_MAX_CHARS)
    return fit_items(to_dict(engine.conversation_search(query, k)), 0, DEFAULT_MAX_CHARS)  # type: ignore[arg-type]


def ask(engine: EngineAPI, question: str, session: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS, on_status: Callable[[str], None] | None = None) -> dict:
    _check_bounds(1, 0, max_chars)
    result = engine.ask(question, session=session, on_status=on_status)
    pages = [{"citation": p.citation, "symbol": p.symbol, "reason": p.reason, "text": p.text}
             for p in result.pages]
    out = {"answer": result.answer, "model_used": result.model_used, "session_id": result.session_id,
           "citations": result.citations,
           "note": "" if result.answer else
           f"No local model answered ({result.notice}); these are the pages codevm's pager chose "
           "for the question: read them and answer yourself."}
    out["pages"] = fit_items(pages, 0, max(200, max_chars - len(json.dumps(out))))
    return out


def index_status(engine: EngineAPI) -> dict:
    return to_dict(engine.status())  # type: ignore[return-value]

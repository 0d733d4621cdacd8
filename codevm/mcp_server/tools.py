"""Tool bodies: plain functions over an engine (codevm.api.EngineAPI), testable without any protocol.

Each returns a typed dict (its TypedDict is the tool's output schema) and a compact text
rendering of it, for hosts that read only text: code as code under `path:start-end`
headers, not JSON-escaped. Lists are paged and every result fits `max_chars`, counted on
both what is sent: the text and the structured content's compact JSON. `has_more` and
`next_offset` say how to go on. Bad arguments raise InvalidArgument, which the server
turns into a tool error; misses suggest near names.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from typing import Any, NotRequired

from typing_extensions import TypedDict  # pydantic reads this one on Python < 3.12

from codevm.api import (
    CodeText,
    EmbeddingProgress,
    EngineAPI,
    IndexReport,
    MessageRecord,
    Note,
    PageInfo,
    SearchHit,
    SymbolInfo,
    to_dict,
)
from codevm.errors import InvalidArgument
from codevm.memory.budget import TokenEstimator

MAX_K = 50
DEFAULT_MAX_CHARS = 12_000
MAX_CHARS = 60_000
SNIPPET_LINES = 3  # of each hit after the first, whose whole body is sent
TOO_LONG = "the first result is longer than max_chars: ask again with a larger max_chars"


# -- what the tools return ---------------------------------------------------------------
class Hit(TypedDict):
    id: int  # read_code(chunk_id=...) reads it whole
    path: str
    start_line: int
    end_line: int
    symbol: str
    kind: str
    signature: str
    snippet: str  # the first lines; the top hit has `code` instead
    code: NotRequired[str]


class SearchResult(TypedDict):
    items: list[Hit]
    has_more: bool
    next_offset: int | None
    ranking: str  # "keyword + vectors" or "keyword only (...)"


class Definition(TypedDict):
    name: str
    qualified_name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str
    code: NotRequired[str]
    members: NotRequired[list[Definition]]  # with depth: a class's methods (no code)


class SymbolResult(TypedDict):
    items: list[Definition]
    suggestions: list[str]  # near names when nothing is defined under this one
    has_more: bool


class Reference(TypedDict):
    path: str
    line: int
    kind: str  # call | import
    caller: str  # the enclosing definition ('' at module level)


class ReferencesResult(TypedDict):
    items: list[Reference]
    has_more: bool
    next_offset: int | None
    suggestions: list[str]


class Code(TypedDict):
    path: str
    start_line: int
    end_line: int
    total_lines: int
    text: str
    has_more: bool
    next_start_line: int | None
    other_definitions: NotRequired[list[str]]  # read_code(symbol=...) with several


class Remembered(TypedDict):
    text: str
    when: str
    id: NotRequired[int]  # a note's (forget takes it)
    path: NotRequired[str | None]
    symbol: NotRequired[str | None]
    stale: NotRequired[bool]  # the code the note is about changed since
    role: NotRequired[str]  # a message's: user or assistant


class RecallResult(TypedDict):
    items: list[Remembered]
    has_more: bool


class NoteId(TypedDict):
    note_id: int


class Block(TypedDict):
    label: str
    value: str
    limit: int


class BlocksResult(TypedDict):
    blocks: list[Block]


class ContextPage(TypedDict):
    path: str
    start_line: int
    end_line: int
    symbol: str
    relevance: float  # 0..1, of the best page
    reason: str  # why it was chosen: search hit, definition, caller, ...
    whole: bool  # every line of the range (a class may come as its outline)
    code: str


class ContextResult(TypedDict):
    question: str
    max_tokens: int
    tokens: int  # of the text sent
    pages: list[ContextPage]
    left_out: int  # pages that did not fit


class AskToolResult(TypedDict):
    answer: str  # empty when no local model answered: see note
    session_id: str
    citations: list[str]
    note: str


class StatusResult(TypedDict):
    files: int
    chunks: int
    symbols: int
    languages: dict[str, int]
    skipped: int
    errors: int
    last_indexed_at: str | None
    watching: bool  # the index follows file changes
    search: str  # how search_code ranks now
    detail: NotRequired[dict[str, Any]]


class IndexResult(TypedDict):
    parsed: int
    unchanged: int
    deleted: int
    errors: int
    chunks: int
    seconds: float


# -- sizes and pages ---------------------------------------------------------------------
def _check_bounds(k: int, offset: int, max_chars: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
    if offset < 0:
        raise InvalidArgument(f"offset must be 0 or more, got {offset}")
    if not 200 <= max_chars <= MAX_CHARS:
        raise InvalidArgument(f"max_chars must be between 200 and {MAX_CHARS}, got {max_chars}")


def sent_size(result: Any, text: str) -> int:
    """The larger of what is sent: the text, and the structured content as compact JSON."""
    return max(len(text), len(json.dumps(result, ensure_ascii=False, separators=(",", ":"))))


def fit(build: Callable[[int], tuple[Any, str]], count: int, max_chars: int) -> tuple[Any, str]:
    """The result of the most items (of `count`) whose result fits in `max_chars`; at least
    the result of none or one. `build(n)` makes the result and its text from n items."""
    lo, hi = 0, count
    while lo < hi:  # results grow with n: the largest n that fits
        mid = (lo + hi + 1) // 2
        if sent_size(*build(mid)) <= max_chars:
            lo = mid
        else:
            hi = mid - 1
    return build(lo)


def _fence(text: str) -> str:
    ticks = "```" if "```" not in text else "````"
    return f"{ticks}\n{text.rstrip()}\n{ticks}"


def _head_lines(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[:n])


# -- near names for a miss ---------------------------------------------------------------
def near_names(engine: EngineAPI, name: str, n: int = 5) -> list[str]:
    """Defined names close to `name` (a typo, a different case, a missing prefix)."""
    base = name.rsplit(".", 1)[-1]
    parts = {base[:4], base[-4:]} | {p for p in re.split(r"_|(?<=[a-z])(?=[A-Z])", base) if len(p) >= 3}
    found: dict[str, SymbolInfo] = {}
    for part in sorted(p for p in parts if p.strip()):
        for info in engine.find_symbols(part, limit=150):
            found.setdefault(info.qualified_name, info)
    dotted = "." in name
    keys = {(i.qualified_name if dotted else i.name): i.qualified_name for i in found.values()}
    close = difflib.get_close_matches(name if dotted else base, list(keys), n=n, cutoff=0.6)
    lowered = [k for k in keys if k.lower() == name.lower() and k not in close]
    return list(dict.fromkeys(keys[k] for k in lowered + close))[:n]


def _miss(what: str, suggestions: list[str]) -> str:
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else \
        " Names must be exact (Class.method works); search_code finds code by words."
    return f"no {what}.{hint}"


# -- the tools ---------------------------------------------------------------------------
def ranking(vectors: EmbeddingProgress) -> str:
    """How search ranks, from how far the vectors are."""
    if vectors.complete:
        return "keyword + vectors"
    if vectors.partial:
        return f"keyword + vectors ({vectors.describe()}; the ranking changes as embedding goes on)"
    return "keyword only (no embedder runs: use the words the code uses)"


def _hit(h: SearchHit, with_code: str | None) -> Hit:
    out = Hit(id=h.id, path=h.path, start_line=h.start_line, end_line=h.end_line, symbol=h.symbol,
              kind=h.kind, signature=h.signature, snippet="")
    if with_code is not None:
        out["code"] = with_code
    else:
        out["snippet"] = _head_lines(h.snippet, SNIPPET_LINES)
    return out


def search_code(engine: EngineAPI, query: str, k: int = 10, language: str | None = None,
                path_glob: str | None = None, kind: str | None = None, offset: int = 0,
                max_chars: int = DEFAULT_MAX_CHARS) -> tuple[SearchResult, str]:
    _check_bounds(k, offset, max_chars)
    hits = engine.search(query, k=offset + k + 1, language=language, path_glob=path_glob, kind=kind)
    window = hits[offset: offset + k]
    more = len(hits) > offset + k
    top_code = engine.read_chunk(window[0].id).text if window and offset == 0 else None
    how = ranking(engine.embedding_progress())

    def build(n: int, code: str | None = top_code) -> tuple[SearchResult, str]:
        items = [_hit(h, code if i == 0 else None) for i, h in enumerate(window[:n])]
        has_more = more or n < len(window)
        result = SearchResult(items=items, has_more=has_more,
                              next_offset=offset + n if has_more else None, ranking=how)
        lines = [f"{len(items)} hits for {query[:80]!r}; ranking: {how}" if items else
                 f"no hits for {query[:80]!r}; ranking: {how}. Try other words, or find_symbol for a name"]
        for i, item in enumerate(items):
            title = f"{item['path']}:{item['start_line']}-{item['end_line']}"
            lines.append(f"\n[{offset + i + 1}] {title} {item['kind']} {item['symbol']} (id {item['id']})".rstrip())
            if "code" in item:
                lines.append(_fence(item["code"]))
            elif item["signature"] or item["snippet"]:
                lines.append("    " + (item["signature"] or item["snippet"]).replace("\n", "\n    "))
        if has_more:
            lines.append(f"\nmore: offset={offset + n}")
        return result, "\n".join(lines)

    result, text = fit(build, len(window), max_chars)
    if window and not result["items"]:  # the top hit's body alone is too big: its signature
        result, text = fit(lambda n: build(n, None), len(window), max_chars)
    return result, text


def _definition(engine: EngineAPI, d: SymbolInfo, include_body: bool, depth: int,
                outlines: dict[str, list[SymbolInfo]]) -> Definition:
    """`d` as a tool result; with `depth`, its members from its file's outline (read once
    per file into `outlines`)."""
    out = Definition(name=d.name, qualified_name=d.qualified_name, kind=d.kind, path=d.path,
                     start_line=d.start_line, end_line=d.end_line, signature=d.signature)
    if include_body:
        out["code"] = engine.read(d.path, d.start_line, d.end_line).text
    if depth > 0:
        if d.path not in outlines:
            outlines[d.path] = engine.outline(d.path)
        prefix = d.qualified_name + "."
        out["members"] = [_definition(engine, m, False, 0, outlines) for m in outlines[d.path]
                          if m.qualified_name.startswith(prefix) and m.qualified_name[len(prefix):].count(".") < depth]
    return out


def _render_definition(d: Definition) -> str:
    lines = [f"{d['path']}:{d['start_line']}-{d['end_line']} {d['kind']} {d['qualified_name']}"]
    if "code" in d:
        lines.append(_fence(d["code"]))
    elif d["signature"]:
        lines.append("    " + d["signature"])
    for m in d.get("members", []):
        lines.append(f"  {m['start_line']}-{m['end_line']} {m['kind']} {m['signature'] or m['qualified_name']}")
    return "\n".join(lines)


def find_symbol(engine: EngineAPI, name: str | None = None, path: str | None = None, include_body: bool = False,
                depth: int = 0, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[SymbolResult, str]:
    """Where `name` is defined; or, with `path` only, every definition of that file (its
    outline); with both, `name` in that file."""
    _check_bounds(1, 0, max_chars)
    if not 0 <= depth <= 3:
        raise InvalidArgument(f"depth must be between 0 and 3, got {depth}")
    if not name and not path:
        raise InvalidArgument("find_symbol needs a name, a path, or both")
    outlines: dict[str, list[SymbolInfo]] = {}  # path -> its definitions, read once
    if name:
        found = engine.symbol(name, limit=200 if path else 20)
        if path:
            rel = engine.relative_path(path)
            found = [d for d in found if d.path == rel]
    else:
        rel = engine.relative_path(path or "")
        found = outlines[rel] = engine.outline(rel)
        name = path or ""
    suggestions = [] if found or not name or path else near_names(engine, name)
    definitions = [_definition(engine, d, include_body, depth, outlines) for d in found]
    outline_only = bool(path) and not include_body

    def build(n: int, items: list[Definition] = definitions) -> tuple[SymbolResult, str]:
        result = SymbolResult(items=items[:n], suggestions=suggestions, has_more=n < len(items))
        if not items:
            return result, _miss(f"symbol named {name!r}", suggestions)
        text = ("\n" if outline_only else "\n\n").join(_render_definition(d) for d in items[:n])
        return result, text + (f"\n\n({len(items) - n} more definitions)" if n < len(items) else "")

    result, text = fit(build, len(definitions), max_chars)
    if definitions and not result["items"]:  # one body too big: signatures, read_code pages on
        bare = [Definition(name=d["name"], qualified_name=d["qualified_name"], kind=d["kind"], path=d["path"],
                           start_line=d["start_line"], end_line=d["end_line"], signature=d["signature"])
                for d in definitions]
        result, text = fit(lambda n: build(n, bare), len(bare), max_chars)
        text += "\n(the code is too long for max_chars: read_code pages through it)"
    return result, text


def find_references(engine: EngineAPI, name: str, offset: int = 0,
                    max_chars: int = DEFAULT_MAX_CHARS) -> tuple[ReferencesResult, str]:
    _check_bounds(1, offset, max_chars)
    refs = engine.refs(name, limit=offset + 1000)[offset:]
    suggestions = [] if refs or offset else near_names(engine, name)
    items = [Reference(path=r.path, line=r.line, kind=r.kind, caller=r.caller) for r in refs]

    def build(n: int) -> tuple[ReferencesResult, str]:
        has_more = n < len(items)
        result = ReferencesResult(items=items[:n], has_more=has_more,
                                  next_offset=offset + n if has_more else None, suggestions=suggestions)
        if not items:
            return result, _miss(f"references to {name!r}", suggestions)
        lines = [f"{r['path']}:{r['line']} {r['kind']}" + (f" in {r['caller']}" if r["caller"] else "")
                 for r in items[:n]]
        return result, "\n".join(lines) + (f"\nmore: offset={offset + n}" if has_more else "")

    return fit(build, len(items), max_chars)


def _code(code: CodeText, max_chars: int, others: list[str] | None = None) -> tuple[Code, str]:
    lines = code.text.split("\n")

    def build(n: int) -> tuple[Code, str]:
        text = "\n".join(lines[:n])
        last = code.start_line + max(n, 1) - 1
        more = n < len(lines) or last < code.end_line
        result = Code(path=code.path, start_line=code.start_line, end_line=last, total_lines=code.total_lines,
                      text=text, has_more=more, next_start_line=last + 1 if more else None)
        if others:
            result["other_definitions"] = others
        header = f"{code.path}:{code.start_line}-{last} (of {code.total_lines} lines)"
        rendered = header + "\n" + _fence(text)
        if more:
            rendered += f"\nmore: start_line={last + 1}"
        if others:
            rendered += "\nalso defined at: " + ", ".join(others)
        return result, rendered

    return fit(build, len(lines), max_chars)


def read_code(engine: EngineAPI, path: str | None = None, start_line: int | None = None,
              end_line: int | None = None, chunk_id: int | None = None, symbol: str | None = None,
              max_chars: int = DEFAULT_MAX_CHARS) -> tuple[Code, str]:
    _check_bounds(1, 0, max_chars)
    others: list[str] = []
    if chunk_id is not None:
        code = engine.read_chunk(chunk_id)
    elif symbol:
        found = engine.symbol(symbol, limit=10)
        if not found:
            raise InvalidArgument(_miss(f"symbol named {symbol!r}", near_names(engine, symbol)))
        d = found[0]
        code = engine.read(d.path, d.start_line, d.end_line)
        others = [f"{o.path}:{o.start_line}-{o.end_line}" for o in found[1:]]
    elif path:
        code = engine.read(path, start_line, end_line)
    else:
        raise InvalidArgument("read_code needs a path, a symbol or a chunk_id")
    return _code(code, max_chars, others)


def _note(n: Note) -> Remembered:
    return Remembered(text=n.text, when=n.updated_at, id=n.id, path=n.path, symbol=n.symbol, stale=n.stale)


def _message(m: MessageRecord) -> Remembered:
    return Remembered(text=m.content, when=m.created_at, role=m.role)


def _render_remembered(r: Remembered) -> str:
    if "role" in r:
        return f"{r['when']} {r['role']}:\n{r['text']}"
    where = " ".join(x for x in (r.get("path"), r.get("symbol")) if x)
    return (f"note {r.get('id')}" + (f" ({where})" if where else "")
            + (" STALE: the code changed since" if r.get("stale") else "") + f"\n{r['text']}")


def remember(engine: EngineAPI, text: str, tags: list[str] | None = None, path: str | None = None,
             symbol: str | None = None) -> tuple[NoteId, str]:
    note = engine.add_note(text, tags, path, symbol, source="mcp")
    return NoteId(note_id=note.id), f"remembered as note {note.id}"


def recall(engine: EngineAPI, query: str, k: int = 10, source: str = "notes",
           max_chars: int = DEFAULT_MAX_CHARS) -> tuple[RecallResult, str]:
    """Notes that match, or (source="conversations") messages of past conversations."""
    _check_bounds(k, 0, max_chars)
    if source not in ("notes", "conversations"):
        raise InvalidArgument(f"source must be 'notes' or 'conversations', got {source!r}")
    found = ([_note(n) for n in engine.search_notes(query, k)] if source == "notes"
             else [_message(m) for m in engine.conversation_search(query, k)])

    def build(n: int) -> tuple[RecallResult, str]:
        text = "\n\n".join(_render_remembered(x) for x in found[:n]) or (
            f"no {source} match {query[:80]!r}" if not found else TOO_LONG)
        return RecallResult(items=found[:n], has_more=n < len(found)), text

    return fit(build, len(found), max_chars)


def forget(engine: EngineAPI, note_id: int) -> tuple[NoteId, str]:
    engine.forget_note(note_id)
    return NoteId(note_id=note_id), f"forgot note {note_id}"


def core_memory(engine: EngineAPI, block: str | None = None, text: str | None = None, mode: str = "replace",
                old: str | None = None) -> tuple[BlocksResult, str]:
    """The blocks; with `block` and `text`, after that edit."""
    if (block is None) != (text is None):
        raise InvalidArgument("to edit core memory give both block and text; give neither to read it")
    if block is not None and text is not None:
        engine.core_memory_update(block, text, mode, old)
    blocks = [Block(label=b.label, value=b.value, limit=b.limit) for b in engine.core_memory()]
    rendered = "\n\n".join(f"[{b['label']}] ({len(b['value'])}/{b['limit']} chars)\n{b['value'] or '(empty)'}"
                           for b in blocks)
    return BlocksResult(blocks=blocks), rendered


def _page(p: PageInfo) -> ContextPage:
    return ContextPage(path=p.path, start_line=p.start_line, end_line=p.end_line, symbol=p.symbol,
                       relevance=round(p.relevance, 3), reason=p.reason, whole=p.verbatim, code=p.text)


def _render_page(p: ContextPage) -> str:
    title = f"{p['path']}:{p['start_line']}-{p['end_line']} {p['symbol']}".rstrip()
    note = "" if p["whole"] else " (outline: its members are pages of their own)"
    return f"{title} ({p['reason']}, relevance {p['relevance']}){note}\n{_fence(p['code'])}"


ESTIMATE = TokenEstimator()


def context_for(engine: EngineAPI, question: str, max_tokens: int = 4000) -> tuple[ContextResult, str]:
    """The pager's working set for `question`, most relevant first; the text sent (and its
    JSON) within `max_tokens` as codevm counts them."""
    pages = [_page(p) for p in engine.context_for(question, max_tokens)]
    chars = ESTIMATE.chars(max_tokens)

    def build(n: int) -> tuple[ContextResult, str]:
        text = "\n\n".join(_render_page(p) for p in pages[:n]) or \
            "no code matches this question well; try search_code with the words the code uses"
        if n < len(pages):
            text += f"\n\n({len(pages) - n} more pages did not fit in {max_tokens} tokens)"
        return ContextResult(question=question[:200], max_tokens=max_tokens, tokens=ESTIMATE.count(text),
                             pages=pages[:n], left_out=len(pages) - n), text

    return fit(build, len(pages), chars)


def ask(engine: EngineAPI, question: str, session: str | None = None,
        on_status: Callable[[str], None] | None = None) -> tuple[AskToolResult, str]:
    result = engine.ask(question, session=session, on_status=on_status)
    note = "" if result.answer else (
        f"No local model answered ({result.notice}). context_for gives the code it would have read.")
    out = AskToolResult(answer=result.answer, session_id=result.session_id, citations=result.citations, note=note)
    return out, (result.answer + f"\n\nSources: {', '.join(result.citations)}" if result.answer else note)


def index_status(engine: EngineAPI, detail: bool = False) -> tuple[StatusResult, str]:
    st = engine.status()
    out = StatusResult(files=st.files, chunks=st.chunks, symbols=st.symbols, languages=st.languages,
                       skipped=sum(st.skipped.values()), errors=len(st.errors), last_indexed_at=st.last_indexed_at,
                       watching=st.watching, search=ranking(st.embeddings))
    languages = ", ".join(f"{k} {v}" for k, v in list(st.languages.items())[:10])
    text = (f"{st.files} files ({languages}), {st.chunks} chunks, {st.symbols} symbols; "
            f"last indexed {st.last_indexed_at or 'never'}; search: {out['search']}; "
            f"{'follows file changes' if st.watching else 'does not follow file changes: reindex after edits'}"
            + (f", {st.pending_changes} changes waiting" if st.pending_changes else "")
            + (f"; {len(st.errors)} files failed" if st.errors else ""))
    if detail:
        out["detail"] = {"root": st.root, "database": st.database, "database_bytes": st.database_bytes,
                         "service_pid": st.process, "skipped": st.skipped, "errors": st.errors[:50],
                         "pending_changes": st.pending_changes, "embeddings": to_dict(st.embeddings)}
        text += (f"\nroot {st.root}; database {st.database} ({st.database_bytes:,} bytes); "
                 f"service pid {st.process}; skipped {st.skipped}")
    return out, text


def reindex_result(r: IndexReport) -> tuple[IndexResult, str]:
    out = IndexResult(parsed=r.parsed, unchanged=r.unchanged, deleted=r.deleted, errors=r.errors, chunks=r.chunks,
                      seconds=r.seconds)
    return out, (f"{r.parsed} files parsed, {r.unchanged} unchanged, {r.deleted} deleted, {r.errors} failed, "
                 f"{r.chunks} chunks in {r.seconds:.1f} s" + "".join(f"\n{m}" for m in r.messages))

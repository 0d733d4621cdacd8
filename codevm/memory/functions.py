"""The memory functions a model calls: page code in and out of the working set, save and
search notes, search the conversation, edit core memory.

Each takes the model's JSON arguments and returns the text the model sees; every error
becomes that text (the model can correct itself), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from codevm.api import CodeText
from codevm.errors import CodevmError
from codevm.memory.context import MainContext, Page
from codevm.memory.core import CoreMemory
from codevm.memory.notes import Notes
from codevm.memory.pager import Candidate, HeuristicPager
from codevm.memory.recall import Recall
from codevm.project import project_path
from codevm.retrieval.retriever import Retriever

# reads lines of a project file: (path, start_line, end_line) -> CodeText
Reader = Callable[[str, int | None, int | None], CodeText]
MAX_RESULT_CHARS = 2400  # one tool result never floods the context


def _schema(name: str, description: str, properties: dict[str, tuple[str, str]],
            required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "required": required, "properties": {
            k: {"type": t, "description": d} for k, (t, d) in properties.items()}}}}


# short schemas: a small model reads them with every call (the 9 took ~900 tokens, now ~550)
TOOLS = [
    _schema("search_code", "Find code by words or names.",
            {"query": ("string", "words or names"), "offset": ("integer", "skip results")}, ["query"]),
    _schema("open_code", "Show code: an id from search_code, or a path and lines.",
            {"id": ("integer", "id"), "path": ("string", "file"),
             "start_line": ("integer", "first line"), "end_line": ("integer", "last line")}, []),
    _schema("close_code", "Hide code you no longer need.",
            {"citation": ("string", "path:start-end")}, ["citation"]),
    _schema("archival_memory_insert", "Save a note for later sessions.",
            {"text": ("string", "the note"), "path": ("string", "file it is about"),
             "symbol": ("string", "symbol it is about")}, ["text"]),
    _schema("archival_memory_search", "Search saved notes.", {"query": ("string", "words")}, ["query"]),
    _schema("conversation_search", "Search earlier conversations.", {"query": ("string", "words")},
            ["query"]),
    _schema("core_memory_append", "Add to a core memory block.",
            {"block": ("string", "project, user or task"), "text": ("string", "text")},
            ["block", "text"]),
    _schema("core_memory_replace", "Replace text in a core memory block.",
            {"block": ("string", "project, user or task"), "old": ("string", "old text"),
             "new": ("string", "new text")}, ["block", "old", "new"]),
    _schema("send_message", "Give the final answer.",
            {"message": ("string", "the answer, citing path:start-end")}, ["message"]),
]
TOOL_NAMES = {t["function"]["name"] for t in TOOLS}


def call_schema(tools: list[dict]) -> dict:
    """The JSON schema of one call of one of `tools`: {"name": ..., "arguments": {...}}.
    A server that constrains its output to it (llama.cpp's `response_format`, Ollama's
    `format`) can only write a well-formed call, for a model without native tool calling."""
    return {"anyOf": [
        {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
         "properties": {"name": {"const": t["function"]["name"]},
                        "arguments": {**t["function"]["parameters"], "additionalProperties": False}}}
        for t in tools]}


def describe_tools(tools: list[dict]) -> str:
    """The functions as lines of text, for a prompt without native schemas (a quarter of
    their JSON): `- search_code(query, offset?): Find code by words or names.`"""
    lines = []
    for t in tools:
        f = t["function"]
        params = f["parameters"]
        names = [k if k in params.get("required", []) else k + "?" for k in params["properties"]]
        lines.append(f"- {f['name']}({', '.join(names)}): {f['description']}")
    return ('Reply with exactly one JSON object, {"name": <function>, "arguments": {...}}, '
            "calling one of these functions:\n" + "\n".join(lines))


class MemoryFunctions:
    """The functions of TOOLS over one question's main context and the project's memory."""

    def __init__(self, root: Path, read: Reader, context: MainContext, retriever: Retriever,
                 pager: HeuristicPager, notes: Notes, recall: Recall, core: CoreMemory):
        self.root = root
        self.read = read  # the engine's: it refuses what the project ignores and secrets
        self.context = context
        self.retriever = retriever
        self.pager = pager
        self.notes = notes
        self.recall = recall
        self.core = core
        self.last_search: dict[int, Any] = {}

    def _search_code(self, query: str, k: int = 5, offset: int = 0) -> str:
        k = max(1, min(int(k), 10))
        offset = max(0, int(offset))
        hits = self.retriever.search(query, k=k + offset)[offset:]
        if not hits:
            return "no results"
        lines = []
        for h in hits:
            self.last_search[h.id] = h
            lines.append(f"id={h.id} {h.path}:{h.start_line}-{h.end_line} {h.kind} {h.symbol}\n"
                         f"{h.snippet}")
        more = f"\n(more: offset={offset + k})" if len(hits) == k else ""
        return "\n\n".join(lines) + more

    def _open_code(self, id: int | None = None, path: str | None = None,
                   start_line: int | None = None, end_line: int | None = None) -> str:
        ws = self.context.working_set
        if id is not None:
            pages = self.pager.pages([Candidate(int(id), 0.9, "opened by the model")],
                                     self.context.budget.tokens, estimator=self.context.estimator)
            if not pages:
                raise CodevmError(f"no code with id {id}; use an id from search_code")
            page = pages[0]
        elif path:
            code = self.read(path, start_line,
                              end_line if end_line else (start_line or 1) + 80)
            text = code.text
            page = Page(f"{code.path}:{code.start_line}-{code.end_line}", code.path, code.start_line,
                        code.end_line, text, 0, relevance=0.9, reason="opened by the model")
            page.tokens = self.context.estimator.count(page.render())
        else:
            raise CodevmError("open_code needs an id, or a path (and lines)")
        if page.tokens > self.context.budget.opened_page:
            raise CodevmError(f"{page.citation} is {page.tokens} tokens, more than a third of the "
                              "budget: open a smaller line range")
        page.last_used = ws.tick()
        ws.page_in(page)
        return f"opened {page.citation} ({page.tokens} tokens); it is in the working set now"

    def _close_code(self, citation: str) -> str:
        ws = self.context.working_set
        key = citation if citation in ws.pages else next(
            (k for k, p in ws.pages.items() if p.citation == citation), None)
        if key is None:
            raise CodevmError(f"no page {citation!r} in the working set")
        ws.page_out(key)
        return f"closed {citation}"

    def _archival_memory_insert(self, text: str, tags: list[str] | None = None,
                                path: str | None = None, symbol: str | None = None) -> str:
        rel = project_path(self.root, path) if path else None
        note = self.notes.insert(text, tags, "agent", rel, symbol.strip() if symbol else None)
        return f"saved note {note.id}"

    def _archival_memory_search(self, query: str, k: int = 5) -> str:
        notes = self.notes.search(query, k=max(1, min(int(k), 10)))
        return "\n".join(f"[note {n.id}{' STALE' if n.stale else ''}] {n.text}" for n in notes) or "no notes"

    def _conversation_search(self, query: str, k: int = 5) -> str:
        found = self.recall.search(query, k=max(1, min(int(k), 10)))
        return "\n".join(f"[{m.created_at} {m.role}] {m.content[:400]}" for m in found) or "no messages"

    def _core_memory_append(self, block: str, text: str) -> str:
        b = self.core.update(block, text, mode="append")
        return f"{block}: {len(b.value)}/{b.limit} chars"

    def _core_memory_replace(self, block: str, old: str, new: str) -> str:
        b = self.core.update(block, new, mode="replace", old=old)
        return f"{block}: {len(b.value)}/{b.limit} chars"

    def call(self, name: str, arguments: dict) -> tuple[bool, str]:
        """Run one function; errors become the result the model sees."""
        if name not in TOOL_NAMES:
            return False, f"error: unknown function {name!r}; available: {', '.join(sorted(TOOL_NAMES))}"
        if not isinstance(arguments, dict):
            return False, "error: arguments must be a JSON object"
        try:
            result = getattr(self, "_" + name)(**arguments)
        except TypeError as e:
            return False, f"error: bad arguments for {name}: {e}"
        except (CodevmError, ValueError) as e:
            return False, f"error: {e}"
        except Exception as e:  # a bug must not end the conversation
            return False, f"error: {name} failed: {type(e).__name__}: {e}"
        text = str(result)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + "\n(cut: ask for less, or the next page)"
        return True, text


"""The agent loop: a local model answers inside main context, paging code and memory
through function calls.

Every error (unknown function, bad arguments, an exception) goes back to the model as a
tool result and the loop goes on, within a step limit. Models that print a call as JSON
text instead of using native tool calling are understood too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from codevm.errors import CodevmError
from codevm.memory.context import ContextMessage, MainContext, Page
from codevm.memory.pager import Candidate
from codevm.api import StepLog

if TYPE_CHECKING:
    from codevm.memory.engine import Engine
    from codevm.memory.model import ModelReply

MAX_RESULT_CHARS = 2400  # one tool result never floods the context

INSTRUCTIONS = """You are codevm, an assistant that answers questions about one codebase.
Your context window is small, so it works like virtual memory: code you need must be
paged in. The working set below holds code already paged in for this question.
- search_code finds code; open_code pages code in (by id or path and lines); close_code
  pages it out. Open only what you need.
- Facts worth keeping across sessions go to archival_memory_insert (notes) or core memory.
- Earlier conversation you no longer see is found with conversation_search.
- Answer with send_message, or plainly when you are done. Cite code as path:start-end.
Be brief and exact; say so when the code does not show the answer."""


def _schema(name: str, description: str, properties: dict[str, tuple[str, str]],
            required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "required": required, "properties": {
            k: {"type": t, "description": d} for k, (t, d) in properties.items()}}}}


TOOLS = [
    _schema("search_code", "Search the codebase by words, identifiers or symbol names.",
            {"query": ("string", "what to look for"), "k": ("integer", "results (max 10)"),
             "page": ("integer", "result page, from 1")}, ["query"]),
    _schema("open_code", "Page code into the working set: a search result id, or a path and lines.",
            {"id": ("integer", "id from search_code"), "path": ("string", "file path"),
             "start_line": ("integer", "first line"), "end_line": ("integer", "last line")}, []),
    _schema("close_code", "Page code out of the working set.",
            {"page": ("string", "page key or path:start-end as shown")}, ["page"]),
    _schema("archival_memory_insert", "Save a note for later sessions, optionally about a symbol.",
            {"text": ("string", "the note"), "tags": ("array", "tags"),
             "path": ("string", "file the note is about"), "symbol": ("string", "symbol name")},
            ["text"]),
    _schema("archival_memory_search", "Search saved notes.",
            {"query": ("string", "what to look for"), "k": ("integer", "results")}, ["query"]),
    _schema("conversation_search", "Search earlier messages of all conversations.",
            {"query": ("string", "what to look for"), "k": ("integer", "results")}, ["query"]),
    _schema("core_memory_append", "Append text to a core memory block (project, user, task).",
            {"block": ("string", "project | user | task"), "text": ("string", "text to add")},
            ["block", "text"]),
    _schema("core_memory_replace", "Replace text in a core memory block.",
            {"block": ("string", "project | user | task"), "old": ("string", "text to replace"),
             "new": ("string", "replacement")}, ["block", "old", "new"]),
    _schema("send_message", "Send the final answer to the user.",
            {"message": ("string", "the answer, citing path:start-end")}, ["message"]),
]
TOOL_NAMES = {t["function"]["name"] for t in TOOLS}

_JSON_CALL = re.compile(r"\{.*\}", re.DOTALL)


def parse_text_call(content: str) -> dict | None:
    """A call printed as JSON text ({"name": ..., "arguments": {...}}), if that is all it is."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    m = _JSON_CALL.fullmatch(text)
    if not m:
        return None
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("name") or (data.get("function") or {}).get("name")
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if name in TOOL_NAMES and isinstance(args, dict):
        return {"name": name, "arguments": args}
    return None




@dataclass
class AgentResult:
    answer: str
    steps: list[StepLog] = field(default_factory=list)
    finished: bool = True


class Agent:
    def __init__(self, engine: Engine, context: MainContext, session_id: str,
                 chat: Callable[[list[dict], int, Callable[[str], None] | None], ModelReply],
                 max_steps: int, remember: Callable[[ContextMessage], None]):
        self.engine = engine
        self.context = context
        self.session_id = session_id
        self.chat = chat
        self.max_steps = max_steps
        self.remember = remember  # persists a message and appends it to main context
        self.last_search: dict[int, Any] = {}

    # -- functions -----------------------------------------------------------------------
    def _search_code(self, query: str, k: int = 5, page: int = 1) -> str:
        k = max(1, min(int(k), 10))
        page = max(1, int(page))
        hits = self.engine.search(query, k=k * page)[k * (page - 1):]
        if not hits:
            return "no results"
        lines = []
        for h in hits:
            self.last_search[h.id] = h
            lines.append(f"id={h.id} {h.path}:{h.start_line}-{h.end_line} {h.kind} {h.symbol}\n"
                         f"{h.snippet}")
        more = "\n(more: page=%d)" % (page + 1) if len(hits) == k else ""
        return "\n\n".join(lines) + more

    def _open_code(self, id: int | None = None, path: str | None = None,
                   start_line: int | None = None, end_line: int | None = None) -> str:
        ws = self.context.working_set
        if id is not None:
            pages = self.engine.pager.pages([Candidate(int(id), 0.9, "opened by the model")],
                                            self.context.budget, estimator=self.context.estimator)
            if not pages:
                raise CodevmError(f"no code with id {id}; use an id from search_code")
            page = pages[0]
        elif path:
            code = self.engine.read(path, start_line, end_line if end_line else (start_line or 1) + 80)
            text = code.text
            page = Page(f"{code.path}:{code.start_line}-{code.end_line}", code.path, code.start_line,
                        code.end_line, text, 0, relevance=0.9, reason="opened by the model")
            page.tokens = self.context.estimator.count(page.render())
        else:
            raise CodevmError("open_code needs an id, or a path (and lines)")
        limit = self.context.budget // 3
        if page.tokens > limit:
            raise CodevmError(f"{page.citation} is {page.tokens} tokens, more than a third of the "
                              "budget: open a smaller line range")
        page.last_used = ws.tick()
        ws.page_in(page)
        return f"opened {page.citation} ({page.tokens} tokens); it is in the working set now"

    def _close_code(self, page: str) -> str:
        ws = self.context.working_set
        key = page if page in ws.pages else next(
            (k for k, p in ws.pages.items() if p.citation == page), None)
        if key is None:
            raise CodevmError(f"no page {page!r} in the working set")
        ws.page_out(key)
        return f"closed {page}"

    def _archival_memory_insert(self, text: str, tags: list[str] | None = None,
                                path: str | None = None, symbol: str | None = None) -> str:
        note = self.engine.remember(text, tags=tags, path=path, symbol=symbol, source="agent")
        return f"saved note {note.id}"

    def _archival_memory_search(self, query: str, k: int = 5) -> str:
        notes = self.engine.recall(query, k=max(1, min(int(k), 10)))
        return "\n".join(f"[note {n.id}{' STALE' if n.stale else ''}] {n.text}" for n in notes) or "no notes"

    def _conversation_search(self, query: str, k: int = 5) -> str:
        found = self.engine.conversation_search(query, k=max(1, min(int(k), 10)))
        return "\n".join(f"[{m.created_at} {m.role}] {m.content[:400]}" for m in found) or "no messages"

    def _core_memory_append(self, block: str, text: str) -> str:
        b = self.engine.core_memory_update(block, text, mode="append")
        return f"{block}: {len(b.value)}/{b.limit} chars"

    def _core_memory_replace(self, block: str, old: str, new: str) -> str:
        b = self.engine.core_memory_update(block, new, mode="replace", old=old)
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

    # -- loop ----------------------------------------------------------------------------
    def run(self, fit: Callable[[], None], on_text: Callable[[str], None] | None) -> AgentResult:
        steps: list[StepLog] = []
        last_content = ""
        for _ in range(self.max_steps):
            fit()
            self.context.working_set.tick()
            messages, estimate = self.context.prompt()
            reply = self.chat(messages, estimate, on_text)
            calls = reply.tool_calls
            if not calls and (parsed := parse_text_call(reply.content)):
                calls = [parsed]
                reply.content = ""
            if not calls:
                answer = reply.content.strip()
                self.remember(self._message("assistant", answer))
                return AgentResult(answer, steps)
            self.remember(self._message("assistant", reply.content, tool_calls=calls))
            last_content = reply.content or last_content
            for call in calls:
                name, args = call.get("name", ""), call.get("arguments") or {}
                if name == "send_message":
                    answer = str(args.get("message", "")).strip() if isinstance(args, dict) else ""
                    self.remember(self._message("tool", "sent", tool_name=name))
                    steps.append(StepLog(name, {}, True, "answer sent"))
                    if on_text and answer:
                        on_text(answer)
                    return AgentResult(answer, steps)
                ok, result = self.call(name, args)
                steps.append(StepLog(name, args if isinstance(args, dict) else {}, ok, result[:120]))
                self.remember(self._message("tool", result, tool_name=str(name)))
        return AgentResult(last_content.strip(), steps, finished=False)

    def _message(self, role: str, content: str, tool_calls: list[dict] | None = None,
                 tool_name: str = "") -> ContextMessage:
        text = content + (json.dumps(tool_calls) if tool_calls else "")
        return ContextMessage(role, content, self.context.estimator.count(text) + 4,
                              tool_calls=tool_calls or [], tool_name=tool_name)

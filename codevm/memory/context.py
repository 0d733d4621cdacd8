"""Main context: the prompt the model sees, under a hard token budget.

Sections, in order: instructions (+ function schemas, sent as tools), core memory blocks,
the working set of code pages, the recursive summary of evicted conversation, and the
recent messages. Their tokens are counted by the Budget (budget.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from codevm.api import ContextReport, CoreBlock, SectionReport
from codevm.memory.budget import Budget


@dataclass
class Page:
    """A piece of code paged into main context."""

    key: str  # "chunk:<id>" or "path:start-end"
    path: str
    start_line: int
    end_line: int
    text: str
    tokens: int
    symbol: str = ""
    relevance: float = 0.0  # 0..1, from retrieval
    last_used: int = 0  # step at which it was paged in or used
    pinned: bool = False
    reason: str = ""  # why it was paged in (search hit, definition, caller, ...)

    @property
    def citation(self) -> str:
        return f"{self.path}:{self.start_line}-{self.end_line}"

    @property
    def verbatim(self) -> bool:
        """Whether the page holds every line of its range (a class's page is an outline:
        its methods are pages of their own)."""
        return self.text.count("\n") + 1 >= self.end_line - self.start_line + 1

    def render(self) -> str:
        title = f"[{self.citation}]" + (f" {self.symbol}" if self.symbol else "")
        return f"{title}\n{self.text}"


class WorkingSet:
    """Code pages in main context, evicted by relevance x recency (pinned pages last)."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.clock = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.pages.values())

    def page_in(self, page: Page) -> Page:
        page.last_used = self.clock
        old = self.pages.get(page.key)
        if old is not None:
            old.last_used = self.clock
            old.relevance = max(old.relevance, page.relevance)
            return old
        self.pages[page.key] = page
        return page

    def page_out(self, key: str) -> Page | None:
        return self.pages.pop(key, None)

    def pin(self, key: str, pinned: bool = True) -> None:
        if key in self.pages:
            self.pages[key].pinned = pinned

    def _keep_score(self, page: Page) -> float:
        age = self.clock - page.last_used
        return page.relevance / (1.0 + 0.5 * age)

    def evict_to(self, limit: int) -> list[Page]:
        """Page out the least valuable pages until the set fits `limit` tokens."""
        evicted: list[Page] = []
        order = sorted(self.pages.values(), key=lambda p: (p.pinned, self._keep_score(p)))
        for page in order:
            if self.tokens <= limit:
                break
            evicted.append(self.pages.pop(page.key))
        return evicted

    def ordered(self) -> list[Page]:
        return sorted(self.pages.values(), key=lambda p: (p.path, p.start_line))

    def most_relevant_first(self) -> list[Page]:
        return sorted(self.pages.values(), key=lambda p: (-p.relevance, p.path, p.start_line))


@dataclass
class ContextMessage:
    role: str  # user | assistant | tool
    content: str
    tokens: int
    record_id: int | None = None  # id in recall storage
    tool_calls: list[dict] = field(default_factory=list)
    tool_name: str = ""

    def to_ollama(self) -> dict:
        out: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"function": c} for c in self.tool_calls]
        if self.tool_name:
            out["tool_name"] = self.tool_name
        return out






# a citation, path:start[-end] (groups: path, start, end)
CITED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.\w+):(\d+)(?:-(\d+))?")
_NAMED = re.compile(r"`([^`\n]{2,80})`")
ANSWER_CODE = 8  # citations and names of an earlier answer kept in the record of the turn


def answer_code(answer: str) -> list[str]:
    """The citations (path:lines) and code names (in backticks) of an answer, in order."""
    found = [(m.start(), m.group(0)) for m in CITED.finditer(answer)]
    found += [(m.start(), f"`{m.group(1)}`") for m in _NAMED.finditer(answer)]
    return list(dict.fromkeys(text for _, text in sorted(found)))[:ANSWER_CODE]


class MainContext:
    """The prompt, in one of two layouts:

    - "tools": everything the model may edit in the system message (instructions, core
      memory, the working set, the summary), then the conversation with its tool calls;
    - "pager": the stable part first, so that a server can reuse its prompt cache from
      one question to the next (instructions, core memory, the summary, a record of the
      earlier turns: all in the system message), and what changes with each question last,
      in its user message: the working set, the notes that match, the question.
    """

    def __init__(self, budget: Budget, instructions: str, tools: list[dict], layout: str = "tools"):
        self.budget = budget
        self.estimator = budget.estimator
        self.instructions = instructions
        self.tools = tools
        self.tools_json = json.dumps(tools) if tools else ""  # counted with every prompt
        self.layout = layout
        self.core: list[CoreBlock] = []
        self.working_set = WorkingSet()
        self.summary = ""
        self.notes = ""  # notes that match the question ("pager" layout)
        self.closing = ""  # what is asked of the answer, after the question ("pager" layout)
        self.messages: list[ContextMessage] = []

    # -- sections ----------------------------------------------------------------------
    def _core_text(self) -> str:
        if self.layout == "pager":
            filled = [b for b in self.core if b.value.strip()]
            return ("## What you know about this project and user\n" + "\n".join(
                f"{b.label}: {b.value}" for b in filled)) if filled else ""
        parts = []
        for b in self.core:
            parts.append(f"<{b.label} chars={len(b.value)}/{b.limit}>\n{b.value}\n</{b.label}>")
        return "## Core memory (edit with core_memory_append / core_memory_replace)\n" + "\n".join(parts)

    def _pages_text(self) -> str:
        pages = self.working_set.ordered()
        if self.layout == "pager":
            # the best excerpt first: a small model cites and uses what it reads first
            pages = self.working_set.most_relevant_first()
            if not pages:
                return "(no code of the project matched the question)"
            return "Code from the project, each part headed by its path:lines:\n\n" + "\n\n".join(
                p.render() for p in pages)
        if not pages:
            return "## Working set\n(no code paged in: use search_code and open_code)"
        return "## Working set (code paged in; cite as path:start-end)\n\n" + "\n\n".join(
            p.render() for p in pages)

    def _notes_text(self) -> str:
        return f"Notes saved in earlier sessions:\n{self.notes}" if self.notes else ""

    def _summary_text(self) -> str:
        if not self.summary:
            return ""
        return ("## Summary of earlier conversation (full messages: conversation_search)\n"
                + self.summary)

    def section_tokens(self) -> dict[str, int]:
        count = self.estimator.count
        return {
            "instructions": count(self.instructions) + count(self.tools_json),
            "core memory": count(self._core_text()),
            "working set": count(self._pages_text()),
            "summary": count(self._summary_text()),
            "notes": count(self._notes_text()),
            "messages": (count(self._recap_text()) + (self.messages[-1].tokens if self.messages else 0)
                         if self.layout == "pager" else sum(m.tokens for m in self.messages)),
        }

    def _sections(self) -> list[str]:
        parts = [self.instructions, self._core_text(), self._pages_text()]
        if self.summary:
            parts.append(self._summary_text())
        if self.notes:
            parts.append(self._notes_text())
        return [p for p in parts if p]

    def _estimate(self, system: str) -> int:
        """Tokens of a prompt with this system message: it, the schemas, the messages."""
        return (self.estimator.count(system) + self.estimator.count(self.tools_json)
                + sum(m.tokens for m in self.messages) + 8 * (len(self.messages) + 1))

    def used(self) -> int:
        if self.layout == "pager":  # the earlier turns as their record, not as messages
            return self._pager_prompt()[1]
        return self._estimate("\n\n".join(self._sections()))

    def pressure(self) -> bool:
        return self.budget.under_pressure(self.used())

    def prompt(self) -> tuple[list[dict], int]:
        """Messages for the model and their estimated token count (system included)."""
        if self.layout == "pager":
            return self._pager_prompt()
        parts = self._sections()
        used = self._estimate("\n\n".join(parts))
        if self.budget.under_pressure(used):
            parts.append(
                f"## Memory pressure: {round(100 * used / self.budget.tokens)}% of your context is in use. "
                "Save what matters with archival_memory_insert or core_memory_append and "
                "close_code pages you no longer need; the oldest messages will soon be evicted "
                "to recall storage.")
        system = "\n\n".join(parts)
        messages = [{"role": "system", "content": system}] + [m.to_ollama() for m in self.messages]
        return messages, self._estimate(system)

    def _recap_text(self) -> str:
        """The earlier turns still in main context, as a record in the system message: each
        question, and of its answer only the code it cited and named.

        Not the answers' words: given them, as replies of its own or as this record,
        Qwen2.5-Coder-1.5B wrote the next answer as a copy of the last one
        (bench/answers.py --sessions). The answers are in recall storage."""
        lines = []
        for m in self.messages[:-1]:
            if m.role == "user" and m.content.strip():
                lines.append(f"- {' '.join(m.content.split())}")
            elif m.role == "assistant" and lines and (code := answer_code(m.content)):
                lines.append(f"  (answered with {', '.join(code)})")
        if not lines:
            return ""
        return "## Questions asked earlier in this conversation (already answered)\n" + "\n".join(lines)

    def _pager_prompt(self) -> tuple[list[dict], int]:
        system = "\n\n".join(p for p in (self.instructions, self._core_text(), self._summary_text(),
                                         self._recap_text()) if p)
        question = self.messages[-1].content if self.messages else ""
        last = "\n\n".join(p for p in (self._pages_text(), self._notes_text(), f"Question: {question}",
                                       self.closing) if p)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": last}]
        count = self.estimator.count
        return messages, count(system) + count(last) + 8 * len(messages)

    # -- eviction ----------------------------------------------------------------------
    def evictable_groups(self) -> list[list[ContextMessage]]:
        """Oldest-first groups that leave together: a tool call is never cut from its result."""
        groups: list[list[ContextMessage]] = []
        for m in self.messages:
            if m.role == "tool" and groups:
                groups[-1].append(m)
            else:
                groups.append([m])
        return groups

    def report(self) -> ContextReport:
        tokens = self.section_tokens()
        sections = [SectionReport(name, t) for name, t in tokens.items()]
        for s in sections:
            if s.name == "working set":
                s.items = [f"{p.citation} {p.symbol} ({p.tokens} tok{', pinned' if p.pinned else ''}"
                           f"{', ' + p.reason if p.reason else ''})" for p in self.working_set.ordered()]
            elif s.name == "core memory":
                s.items = [f"{b.label}: {len(b.value)}/{b.limit} chars" for b in self.core]
            elif s.name == "messages":
                s.items = [f"{len(self.messages)} in context"]
        return ContextReport(self.budget.tokens, self.budget.num_ctx, self.used(), sections,
                             self.pressure())

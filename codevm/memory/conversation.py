"""One question in a session: main context assembled, kept under budget, and persisted.

Every message goes to recall storage as it is made. When main context reaches its budget
the oldest messages (a tool call always with its result) leave it for recall storage and
are folded into a recursive summary — written by the model when there is one, extractive
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from codevm.errors import InvalidArgument
from codevm.memory.context import ContextMessage, ContextReport, MainContext
from codevm.memory.recall import Recall

SUMMARY_PROMPT = """Summarise the conversation below for your own later use, in at most
{words} words: what the user asked, what was found (with path:lines), decisions and open
questions. Start from the earlier summary when there is one."""


@dataclass
class Eviction:
    messages: int
    pages: int
    summary_by_model: bool


@dataclass
class ConversationState:
    evictions: list[Eviction] = field(default_factory=list)
    warned: bool = False


class Conversation:
    def __init__(self, context: MainContext, recall: Recall, session_id: str,
                 summarize: Callable[[str, str, int], str | None]):
        self.context = context
        self.recall = recall
        self.session_id = session_id
        self.summarize = summarize  # (previous summary, transcript, max words) -> summary
        self.state = ConversationState()

    def restore(self) -> None:
        """Bring back the session's summary and the messages still in main context."""
        info = self.recall.session(self.session_id)
        self.context.summary = info.summary
        for m in self.recall.messages(self.session_id, in_context_only=True):
            text = m.content + (str(m.tool_calls) if m.tool_calls else "")
            self.context.messages.append(ContextMessage(
                m.role, m.content, self.context.estimator.count(text) + 4, m.id,
                m.tool_calls, m.tool_name))

    def record(self, message: ContextMessage) -> None:
        """Persist first (nothing is lost), then place in main context."""
        record = self.recall.add(self.session_id, message.role, message.content,
                                 message.tool_calls, message.tool_name, message.tokens)
        message.record_id = record.id
        self.context.messages.append(message)

    def fit(self) -> None:
        """Make the next prompt fit the budget; never send one over it."""
        ctx = self.context
        limit = ctx.budget.prompt_limit
        ws_limit = ctx.budget.pages
        if ctx.working_set.tokens > ws_limit:
            ctx.working_set.evict_to(ws_limit)
        if ctx.pressure():
            self.state.warned = True
        if ctx.prompt()[1] <= limit:
            return
        self._evict_messages()
        # still over: code pages go (pinned last), then the newest message is cut
        if ctx.prompt()[1] > limit:
            ctx.working_set.evict_to(max(0, ctx.working_set.tokens - (ctx.prompt()[1] - limit)))
        while ctx.prompt()[1] > limit and ctx.messages:
            last = ctx.messages[-1]
            over = ctx.prompt()[1] - limit
            keep = max(0, len(last.content) - ctx.estimator.chars(over + 16))
            if keep == 0 and len(ctx.messages) > 1:
                ctx.messages.pop(0)
                continue
            last.content = last.content[:keep] + "\n(cut to fit the context budget)"
            last.tokens = ctx.estimator.count(last.content) + 4
            if keep == 0:
                break
        if ctx.prompt()[1] > limit:
            raise InvalidArgument(
                f"instructions and core memory alone exceed the budget of {limit} tokens: "
                "raise --budget (or num_ctx) or shorten the core memory blocks")

    def _evict_messages(self) -> None:
        ctx = self.context
        groups = ctx.evictable_groups()
        evicted: list[ContextMessage] = []
        # keep the newest group (the current question or step) in context
        while len(groups) > 1 and ctx.prompt()[1] > ctx.budget.after_eviction():
            group = groups.pop(0)
            for m in group:
                ctx.messages.remove(m)
            evicted.extend(group)
        if not evicted:
            return
        transcript = "\n".join(f"{m.role}: {m.content[:600]}" for m in evicted if m.content)
        by_model = self.summarize(ctx.summary, transcript, ctx.budget.summary_words)
        summary = by_model if by_model else extractive_summary(ctx.summary, evicted)
        # the summary is capped too: its oldest lines go first
        cap = ctx.budget.summary_chars
        while len(summary) > cap and "\n" in summary:
            summary = summary.split("\n", 1)[1]
        ctx.summary = summary[-cap:]
        self.recall.evict([m.record_id for m in evicted if m.record_id is not None], ctx.summary,
                          self.session_id)
        self.state.evictions.append(Eviction(len(evicted), 0, bool(by_model)))

    def report(self) -> ContextReport:
        return self.context.report()


def extractive_summary(previous: str, evicted: list[ContextMessage]) -> str:
    lines = [previous] if previous else []
    for m in evicted:
        if m.role in ("user", "assistant") and m.content.strip():
            first = " ".join(m.content.split())[:200]
            lines.append(f"- {m.role} {'asked' if m.role == 'user' else 'said'}: {first}")
    return "\n".join(lines)

"""The agent loop: a local model answers inside main context, paging code and memory
through function calls.

Every error (unknown function, bad arguments, an exception) goes back to the model as a
tool result and the loop goes on, within a step limit. Models that print a call as JSON
text instead of using native tool calling are understood too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from codevm.api import StepLog
from codevm.memory.context import ContextMessage, MainContext
from codevm.memory.functions import TOOL_NAMES, MemoryFunctions
from codevm.memory.replies import as_answer, parse_call
from codevm.models import ModelReply

INSTRUCTIONS = """You are codevm, an assistant that answers questions about one codebase.
Your context window is small, so it works like virtual memory: code you need must be
paged in. The working set below holds code already paged in for this question.
- search_code finds code; open_code pages code in (by id or path and lines); close_code
  pages it out. Open only what you need.
- Facts worth keeping across sessions go to archival_memory_insert (notes) or core memory.
- Earlier conversation you no longer see is found with conversation_search.
- Answer with send_message, or plainly when you are done. Cite code as path:start-end.
Be brief and exact; say so when the code does not show the answer."""

NOT_AN_ANSWER = ("That was not an answer: it repeats the function definitions. Call one function, "
                 "or answer the question in plain words, citing path:start-end.")


@dataclass
class AgentResult:
    answer: str
    steps: list[StepLog] = field(default_factory=list)
    finished: bool = True
    malformed: int = 0  # replies that were neither an answer nor a call (an echoed schema)


class Agent:
    def __init__(self, functions: MemoryFunctions, context: MainContext,
                 chat: Callable[[list[dict], int, Callable[[str], None] | None], ModelReply],
                 max_steps: int, record: Callable[[ContextMessage], None]):
        self.functions = functions
        self.context = context
        self.chat = chat
        self.max_steps = max_steps
        self.record = record  # persists a message to recall storage and main context

    def run(self, fit: Callable[[], None], on_text: Callable[[str], None] | None) -> AgentResult:
        steps: list[StepLog] = []
        last_content = ""
        malformed = 0
        for _ in range(self.max_steps):
            fit()
            self.context.working_set.tick()
            messages, estimate = self.context.prompt()
            reply = self.chat(messages, estimate, on_text)
            calls = reply.tool_calls
            if not calls and (parsed := parse_call(reply.content, TOOL_NAMES)):
                calls = [parsed]
                reply.content = ""
            if not calls:
                answer, bad = as_answer(reply.content, TOOL_NAMES)
                if bad:  # a copy of the schemas: never an answer; the model is told so
                    malformed += 1
                    self.record(self._message("assistant", reply.content))
                    self.record(self._message("user", NOT_AN_ANSWER))
                    continue
                self.record(self._message("assistant", answer))
                return AgentResult(answer, steps, malformed=malformed)
            self.record(self._message("assistant", reply.content, tool_calls=calls))
            last_content = reply.content or last_content
            for call in calls:
                name, args = call.get("name", ""), call.get("arguments") or {}
                if name == "send_message":
                    answer = str(args.get("message", "")).strip() if isinstance(args, dict) else ""
                    self.record(self._message("tool", "sent", tool_name=name))
                    steps.append(StepLog(name, {}, True, "answer sent"))
                    if on_text and answer:
                        on_text(answer)
                    return AgentResult(answer, steps, malformed=malformed)
                ok, result = self.functions.call(name, args)
                steps.append(StepLog(name, args if isinstance(args, dict) else {}, ok, result[:120]))
                self.record(self._message("tool", result, tool_name=str(name)))
        return AgentResult(as_answer(last_content, TOOL_NAMES)[0], steps, finished=False,
                           malformed=malformed)

    def _message(self, role: str, content: str, tool_calls: list[dict] | None = None,
                 tool_name: str = "") -> ContextMessage:
        text = content + (json.dumps(tool_calls) if tool_calls else "")
        return ContextMessage(role, content, self.context.estimator.count(text) + 4,
                              tool_calls=tool_calls or [], tool_name=tool_name)

"""Reading what a model wrote: function calls printed as text (in the forms real small
models print them), and replies that are not answers at all (the model's copy of its
own tool schemas), which are never shown as an answer.

Forms of a call seen from real models (Qwen2.5-Coder 1.5B through llama.cpp and Ollama):
    {"name": "search_code", "arguments": {...}}             (bare JSON)
    ```json\\n{...}\\n```                                      (fenced)
    <tool_call>\\n{...}\\n</tool_call>                         (Qwen's own template)
    send_message\\n{"message": "..."}                          (a name, then its arguments)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_TAGGED = re.compile(r"<(tool_call|tools)>\s*(.*?)\s*(?:</\1>|$)", re.DOTALL)
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[:,\n]\s*(\{.*\})$", re.DOTALL)
_CUT_SEND = re.compile(r'^\s*\{\s*"name"\s*:\s*"send_message"\s*,\s*"arguments"\s*:\s*\{\s*"message"\s*:\s*"(.*)$',
                       re.DOTALL)
_CUT_CALL = re.compile(r'^\s*\{\s*"name"\s*:\s*"[A-Za-z_]+"\s*,\s*"arguments"')
# the marks of a copied schema: the template's wrapper, or a function definition
_ECHO = re.compile(r"</?tools>|\"type\"\s*:\s*\"function\"|\"parameters\"\s*:\s*\{\s*\"type\"\s*:\s*\"object\"")


def _json_object(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_call(content: str, names: Collection[str]) -> dict | None:
    """The call a reply prints as text, if the reply is only that: {"name", "arguments"}."""
    text = content.strip()
    if m := _FENCE.match(text):
        text = m.group(1).strip()
    if m := _TAGGED.search(text):
        text = m.group(2).strip()
    name, data = None, _json_object(text)
    if data is None and (m := _NAMED.match(text)):
        name, data = m.group(1), _json_object(m.group(2))
        if data is not None and "arguments" not in data and "name" not in data:
            data = {"name": name, "arguments": data}
    if data is None:
        return None
    name = data.get("name") or (data.get("function") or {}).get("name") or name
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        args = _json_object(args)
    if name in names and isinstance(args, dict):
        return {"name": name, "arguments": args}
    return None


def echoes_schema(content: str) -> bool:
    """Whether a reply copies function schemas (or the wrapper they came in)."""
    return bool(_ECHO.search(content))


def _cut_message(content: str) -> str | None:
    """The message of a send_message call cut off at the answer's token limit (its JSON
    never closed), as far as it got."""
    m = _CUT_SEND.match(content)
    if m is None:
        return None
    text = m.group(1)
    for end in range(len(text), max(len(text) - 8, -1), -1):  # a cut escape sequence
        try:
            return str(json.loads('"' + text[:end].removesuffix("\\") + '"')).strip()
        except ValueError:
            continue
    return text.strip()


def as_answer(content: str, names: Collection[str]) -> tuple[str, bool]:
    """What of a reply may be shown as the answer, and whether the reply was malformed.

    A `send_message` call printed as text is its message (even one cut off before its
    end); any other call, or a copy of the schemas, is no answer at all ("" and malformed)."""
    call = parse_call(content, set(names) | {"send_message"})
    if call is not None:
        if call["name"] == "send_message":
            return str(call["arguments"].get("message", "")).strip(), True
        return "", True
    if (cut := _cut_message(content)) is not None:
        return cut, True
    if _CUT_CALL.match(content):  # another call, cut off
        return "", True
    if echoes_schema(content):
        return "", True
    return content.strip(), False


class StreamGate:
    """Passes a reply's streamed text on, unless it starts like a call or a copied schema
    (then none of it is shown): the first `window` characters decide."""

    _START = re.compile(r"^\s*(?:\{|\[|```|<tool|[A-Za-z_][A-Za-z0-9_]*\s*[:,\n]\s*\{)")

    def __init__(self, out: Callable[[str], None] | None, window: int = 80):
        self.out = out
        self.window = window
        self.buffer = ""
        self.state = "deciding"  # deciding | open | shut
        self.shown = False  # some of the reply reached `out`

    def __call__(self, text: str) -> None:
        if self.out is None or self.state == "shut":
            return
        if self.state == "open":
            self.out(text)
            return
        self.buffer += text
        if self._withheld():
            self.state = "shut"
        elif len(self.buffer) >= self.window or "\n" in self.buffer.strip():
            self._open()

    def finish(self) -> None:
        """The reply ended: a short one still being decided is shown if it is prose."""
        if self.state == "deciding":
            if self.out is not None and self.buffer.strip() and not self._withheld():
                self._open()
            else:
                self.state = "shut"

    def _withheld(self) -> bool:
        return bool(self._START.match(self.buffer) or echoes_schema(self.buffer))

    def _open(self) -> None:
        assert self.out is not None
        self.state, self.shown = "open", True
        self.out(self.buffer)

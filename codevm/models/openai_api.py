"""Any OpenAI-compatible server: llama.cpp's server, LM Studio, vLLM, LocalAI, Ollama's
/v1. Chat completions streamed as server-sent events over httpx.

llama.cpp is recognised by its /props endpoint: it reports the context size it runs
with, reuses the longest common prefix of consecutive prompts (`cache_prompt`) and
reports how much of a prompt came from that cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from codevm.errors import ModelMissing, ModelUnavailable
from codevm.models.base import METADATA_TIMEOUT, Limits, ModelReply, Watchdog, http_failure, stream_chat


class OpenAIModel:
    def __init__(self, model: str, base_url: str, limits: Limits | None = None,
                 api_key: str = ""):
        self.name = model
        self.where = base_url.rstrip("/")
        limits = limits or Limits()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.where, headers=headers, timeout=httpx.Timeout(
            max(limits.first_token, limits.idle), connect=limits.connect))
        self.llama_cpp: bool | None = None  # known after context_length
        self.connect_timeout = limits.connect

    def _root(self) -> str:
        return self.where.removesuffix("/v1")

    def close(self) -> None:
        self.http.close()

    def context_length(self, default: int) -> int:
        """llama.cpp's n_ctx (from /props); other servers do not say: `default`."""
        try:
            response = self.http.get(self._root() + "/props", timeout=httpx.Timeout(
                METADATA_TIMEOUT, connect=self.connect_timeout))
        except httpx.HTTPError as e:
            raise http_failure(e, self.where, "openai", "/props") from None
        if response.status_code == 200:
            try:
                settings = response.json().get("default_generation_settings") or {}
                n_ctx = int(settings.get("n_ctx") or 0)
            except (ValueError, TypeError, AttributeError):
                n_ctx = 0
            self.llama_cpp = True
            if n_ctx:
                return n_ctx
        else:
            self.llama_cpp = False
        return default

    def chat(self, messages: list[dict], num_ctx: int, limits: Limits,
             tools: list[dict] | None = None, json_schema: dict | None = None,
             on_text: Callable[[str], None] | None = None) -> ModelReply:
        body: dict = {"model": self.name, "messages": [_openai_message(m) for m in messages],
                      "stream": True, "stream_options": {"include_usage": True},
                      "max_tokens": limits.max_tokens, "temperature": 0.2}
        if self.llama_cpp:
            body["cache_prompt"] = True
        if tools:
            body["tools"] = tools
        if json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "reply", "schema": json_schema, "strict": True}}
        calls: dict[int, dict] = {}

        def read(line: str, reply: ModelReply, watchdog: Watchdog) -> bool:
            if not line.startswith("data:"):
                return True
            data = line[5:].strip()
            if data == "[DONE]":
                return False
            self._part(json.loads(data), reply, calls, watchdog, on_text)
            return True

        def refuse(response: httpx.Response) -> Exception:
            text = response.text[:300]
            if response.status_code == 404 or "model" in text.lower() and "not found" in text.lower():
                return ModelMissing(f"the server at {self.where} has no model {self.name}: {text}")
            return ModelUnavailable(f"the model server at {self.where} failed: {text}")

        reply = stream_chat(self.http, "/chat/completions", body, limits, self.where, read, refuse, "openai")
        reply.tool_calls = [_call(c) for _, c in sorted(calls.items())]
        return reply

    @staticmethod
    def _part(part: dict, reply: ModelReply, calls: dict[int, dict], watchdog: Watchdog,
              on_text: Callable[[str], None] | None) -> None:
        if part.get("error"):
            raise ModelUnavailable(f"the model server failed: {part['error']}")
        for choice in part.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                watchdog.token()
                reply.content += delta["content"]
                if on_text:
                    on_text(delta["content"])
            for call in delta.get("tool_calls") or []:
                watchdog.token()
                slot = calls.setdefault(int(call.get("index", len(calls))), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") == "length":
                reply.truncated = True
        usage = part.get("usage") or {}
        if usage.get("prompt_tokens") is not None:
            reply.prompt_tokens = usage["prompt_tokens"]
            reply.completion_tokens = usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                reply.cached_tokens = details["cached_tokens"]
        timings = part.get("timings") or {}  # llama.cpp: cache_n of prompt_n + cache_n
        if timings.get("cache_n") is not None:
            reply.cached_tokens = timings["cache_n"]


def _openai_message(message: dict) -> dict:
    """Ollama's message shape (tool calls with dict arguments, tool_name) -> OpenAI's."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"].get("arguments") or {})}}
            for i, c in enumerate(message["tool_calls"])]
    if message["role"] == "tool":
        out["tool_call_id"] = "call_0"
    return out


def _call(slot: dict) -> dict:
    try:
        arguments = json.loads(slot["arguments"] or "{}")
    except ValueError:
        arguments = {"_unparsed": slot["arguments"]}
    return {"name": slot["name"], "arguments": arguments if isinstance(arguments, dict) else {}}

"""Ollama's native API (/api/show, /api/chat), streamed over httpx.

Also what the embedder shares: `ollama_failure` turns a failed request of the `ollama`
client into an error that says what to do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx

from codevm.errors import ModelMissing, ModelUnavailable
from codevm.models.base import METADATA_TIMEOUT, Limits, ModelReply, Watchdog, http_failure, stream_chat


def ollama_failure(error: Exception, host: str, model: str) -> ModelUnavailable | ModelMissing:
    """What a failed request to Ollama means for the user, in one line."""
    import ollama

    if isinstance(error, ollama.ResponseError) and error.status_code == 404:
        return ModelMissing(f"Ollama at {host} does not have the model {model}: "
                            f"run `ollama pull {model}`")
    if isinstance(error, ollama.ResponseError):
        return ModelUnavailable(f"Ollama at {host} failed: {error.error}")
    if isinstance(error, httpx.TimeoutException):
        return ModelUnavailable(f"Ollama at {host} did not answer in time ({type(error).__name__})")
    if isinstance(error, ValueError):  # a reply that is not what Ollama sends
        return ModelUnavailable(f"the server at {host} does not answer like Ollama: {error}")
    return ModelUnavailable(
        f"no Ollama server answered at {host}: start it with `ollama serve` (or set OLLAMA_HOST)")


def ollama_errors() -> tuple[type[Exception], ...]:
    """What the ollama client raises when a request fails. The client is imported when an
    Ollama embedder is made, not with this module: it took 0.2-0.4 s of every command's
    start (`codevm index` included), for users who may never run Ollama."""
    import ollama

    return (ConnectionError, httpx.HTTPError, ollama.ResponseError, ValueError)


class OllamaModel:
    def __init__(self, model: str, host: str, limits: Limits | None = None):
        self.name = model
        self.where = host.rstrip("/")
        limits = limits or Limits()
        self.http = httpx.Client(base_url=self.where, timeout=httpx.Timeout(
            max(limits.first_token, limits.idle), connect=limits.connect))
        self.metadata_timeout = httpx.Timeout(METADATA_TIMEOUT, connect=limits.connect)

    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            response = self.http.post(path, json=body, timeout=self.metadata_timeout)
        except httpx.HTTPError as e:
            raise http_failure(e, self.where, "ollama", path) from None
        if response.status_code == 404:
            raise ModelMissing(f"Ollama at {self.where} does not have the model {self.name}: "
                               f"run `ollama pull {self.name}`")
        if response.status_code >= 400:
            raise ModelUnavailable(f"Ollama at {self.where} failed: {response.text[:300]}")
        return response

    def close(self) -> None:
        self.http.close()

    def context_length(self, default: int) -> int:
        """num_ctx set in the model's parameters, else min(its trained length, default)."""
        try:
            info = self._post("/api/show", {"model": self.name}).json()
        except ValueError as e:
            raise ModelUnavailable(f"the server at {self.where} does not answer like Ollama: {e}") from None
        m = re.search(r"^\s*num_ctx\s+(\d+)", info.get("parameters") or "", re.MULTILINE)
        if m:
            return int(m.group(1))
        trained = [int(v) for k, v in (info.get("model_info") or info.get("modelinfo") or {}).items()
                   if k.endswith(".context_length") and isinstance(v, int)]
        return min([default] + trained)

    def chat(self, messages: list[dict], num_ctx: int, limits: Limits,
             tools: list[dict] | None = None, json_schema: dict | None = None,
             on_text: Callable[[str], None] | None = None) -> ModelReply:
        body: dict = {"model": self.name, "messages": messages, "stream": True,
                      "options": {"num_ctx": num_ctx, "num_predict": limits.max_tokens,
                                  "temperature": 0.2}}
        if tools:
            body["tools"] = tools
        if json_schema is not None:
            body["format"] = json_schema

        def read(line: str, reply: ModelReply, watchdog: Watchdog) -> bool:
            if not line.strip():
                return True
            part = json.loads(line)
            if part.get("error"):
                raise ModelUnavailable(f"Ollama at {self.where} failed: {part['error']}")
            message = part.get("message") or {}
            if message.get("content"):
                watchdog.token()
                reply.content += message["content"]
                if on_text:
                    on_text(message["content"])
            for call in message.get("tool_calls") or []:
                watchdog.token()
                function = call.get("function") or {}
                reply.tool_calls.append({"name": function.get("name", ""),
                                         "arguments": function.get("arguments") or {}})
            if part.get("done"):
                reply.prompt_tokens = part.get("prompt_eval_count")
                reply.completion_tokens = part.get("eval_count")
                reply.truncated = part.get("done_reason") == "length"
            return True

        def refuse(response: httpx.Response) -> Exception:
            if response.status_code == 404:
                return ModelMissing(f"Ollama at {self.where} does not have the model {self.name}: "
                                    f"run `ollama pull {self.name}`")
            return ModelUnavailable(f"Ollama at {self.where} failed: {response.text[:300]}")

        return stream_chat(self.http, "/api/chat", body, limits, self.where, read, refuse, "ollama")

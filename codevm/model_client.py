"""The local model: a thin layer over the `ollama` client that turns its failures into
domain errors saying what to do, and learns the model's context size."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import ollama

from codevm.errors import ModelMissing, ModelUnavailable


@dataclass
class ModelReply:
    content: str
    tool_calls: list[dict] = field(default_factory=list)  # {"name": ..., "arguments": {...}}
    prompt_tokens: int | None = None  # Ollama's prompt_eval_count (may be missing)


def ollama_failure(error: Exception, host: str, model: str) -> ModelUnavailable | ModelMissing:
    """What a failed request to Ollama means for the user, in one line."""
    if isinstance(error, ollama.ResponseError) and error.status_code == 404:
        return ModelMissing(f"Ollama at {host} does not have the model {model}: "
                            f"run `ollama pull {model}`")
    if isinstance(error, ollama.ResponseError):
        return ModelUnavailable(f"Ollama at {host} failed: {error.error}")
    if isinstance(error, ValueError):  # a reply that is not what Ollama sends
        return ModelUnavailable(f"the server at {host} does not answer like Ollama: {error}")
    return ModelUnavailable(
        f"no Ollama server answered at {host}: start it with `ollama serve` (or set OLLAMA_HOST)")


# what the ollama client raises when a request fails
OLLAMA_ERRORS = (ConnectionError, httpx.HTTPError, ollama.ResponseError, ValueError)


class OllamaModel:
    def __init__(self, model: str, host: str, timeout: float = 300.0):
        self.model = model
        self.host = host
        self.client = ollama.Client(host=host, timeout=timeout)

    def context_length(self, default: int) -> int:
        """num_ctx set in the model's parameters, else min(its trained length, default)."""
        try:
            info = self.client.show(self.model)
        except OLLAMA_ERRORS as e:
            raise ollama_failure(e, self.host, self.model) from None
        m = re.search(r"^\s*num_ctx\s+(\d+)", info.parameters or "", re.MULTILINE)
        if m:
            return int(m.group(1))
        trained = [int(v) for k, v in (info.modelinfo or {}).items()
                   if k.endswith(".context_length") and isinstance(v, int)]
        return min([default] + trained)

    def chat(self, messages: list[dict], tools: list[dict], num_ctx: int,
             on_text: Callable[[str], None] | None = None) -> ModelReply:
        try:
            stream: Iterator[ollama.ChatResponse] = self.client.chat(
                self.model, messages=messages, tools=tools, stream=True,
                options={"num_ctx": num_ctx, "temperature": 0.2})
            content: list[str] = []
            calls: list[dict] = []
            prompt_tokens = None
            for part in stream:
                msg = part.message
                if msg.content:
                    content.append(msg.content)
                    if on_text:
                        on_text(msg.content)
                for call in msg.tool_calls or []:
                    calls.append({"name": call.function.name,
                                  "arguments": dict(call.function.arguments or {})})
                if part.done:
                    prompt_tokens = part.prompt_eval_count
        except OLLAMA_ERRORS as e:
            raise ollama_failure(e, self.host, self.model) from None
        return ModelReply("".join(content), calls, prompt_tokens)

"""An Ollama-compatible HTTP server on 127.0.0.1 that plays a scripted model.

It replaces only the model: the engine talks to it through the real `ollama` client over
real HTTP. Each /api/chat request takes the next scripted reply (a dict, or a function of
the request that returns one) and is recorded, so tests can check what was sent.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = dict[str, Any] | Callable[[dict], dict[str, Any]]


# words that the fake embedding model takes for one meaning: each group is one dimension
CONCEPTS = (
    {"pause", "sleep", "wait", "delay", "halt", "suspend", "nap"},
    {"money", "price", "cost", "invoice", "bill", "payment", "charge"},
    {"colour", "color", "paint", "hue", "tint", "shade"},
)


def fake_embedding(text: str, dimension: int) -> list[float]:
    """A bag of words in `dimension` numbers: synonyms (CONCEPTS) share one, other words
    are hashed into the rest. Enough meaning to tell a vector search from a lexical one."""
    vector = [0.0] * dimension
    for word in re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()):
        group = next((i for i, words in enumerate(CONCEPTS) if word in words), None)
        if group is None:
            group = len(CONCEPTS) + zlib.crc32(word.encode()) % (dimension - len(CONCEPTS))
        vector[group] += 1.0
    return vector


def call(name: str, **arguments: Any) -> dict:
    return {"function": {"name": name, "arguments": arguments}}


class FakeOllama:
    def __init__(self, models: dict[str, int] | None = None):
        self.models = models if models is not None else {"qwen2.5-coder:7b": 4096}
        self.script: list[Reply] = []
        self.requests: list[dict] = []
        self.dimension = 16  # of the vectors /api/embed returns (tests change it)
        self.embed_gate = threading.Event()  # /api/embed waits until it is set...
        self.embed_gate.set()
        self.embed_pause_after: int | None = None  # ...after this many requests, if set
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeOllama:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/api/chat"]

    def embedded_texts(self) -> list[str]:
        """Every text sent to /api/embed, in order."""
        out: list[str] = []
        for r in self.requests:
            if r["path"] == "/api/embed":
                inputs = r["body"].get("input")
                out.extend([inputs] if isinstance(inputs, str) else inputs)
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict | list[dict], stream: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-ndjson" if stream else "application/json")
                self.end_headers()
                if stream:
                    for part in body:  # type: ignore[union-attr]
                        self.wfile.write(json.dumps(part).encode() + b"\n")
                else:
                    self.wfile.write(json.dumps(body).encode())

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    self._send(200, {"models": [{"name": m, "model": m} for m in fake.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "body": body})
                model = body.get("model") or body.get("name")
                if self.path in ("/api/show", "/api/chat", "/api/embed") and model not in fake.models:
                    self._send(404, {"error": f"model '{model}' not found"})
                elif self.path == "/api/show":
                    self._send(200, {"parameters": f"num_ctx {fake.models[model]}",
                                     "model_info": {"qwen2.context_length": 32768},
                                     "details": {"family": "qwen2"}})
                elif self.path == "/api/embed":
                    served = sum(r["path"] == "/api/embed" for r in fake.requests) - 1
                    if fake.embed_pause_after is None or served >= fake.embed_pause_after:
                        fake.embed_gate.wait(30)
                    inputs = body.get("input")
                    inputs = [inputs] if isinstance(inputs, str) else inputs
                    self._send(200, {"model": model, "embeddings": [
                        fake_embedding(t, fake.dimension) for t in inputs]})
                elif self.path == "/api/chat":
                    self._chat(body)
                else:
                    self._send(404, {"error": "not found"})

            def _chat(self, body: dict) -> None:
                if not fake.script:
                    reply: dict[str, Any] = {"content": "(the script ran out)"}
                else:
                    step = fake.script.pop(0)
                    reply = step(body) if callable(step) else step
                if "error" in reply:
                    self._send(reply.get("status", 500), {"error": reply["error"]})
                    return
                prompt_chars = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools") or []))
                message = {"role": "assistant", "content": reply.get("content", "")}
                if reply.get("tool_calls"):
                    message["tool_calls"] = reply["tool_calls"]
                done = {"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                        "message": {"role": "assistant", "content": ""}, "done": True,
                        "done_reason": "stop", "prompt_eval_count": prompt_chars // 4,
                        "eval_count": 10}
                part = {"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                        "message": message, "done": False}
                if body.get("stream"):
                    self._send(200, [part, done], stream=True)
                else:
                    self._send(200, {**done, "message": message})

        return Handler

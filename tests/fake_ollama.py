"""An Ollama-compatible HTTP server on 127.0.0.1 that plays a scripted model.

It replaces only the model: the engine talks to it through the real `ollama` client over
real HTTP. Each /api/chat request takes the next scripted reply (a dict, or a function of
the request that returns one) and is recorded, so tests can check what was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = dict[str, Any] | Callable[[dict], dict[str, Any]]


def call(name: str, **arguments: Any) -> dict:
    return {"function": {"name": name, "arguments": arguments}}


class FakeOllama:
    def __init__(self, models: dict[str, int] | None = None):
        self.models = models if models is not None else {"qwen2.5-coder:7b": 4096}
        self.script: list[Reply] = []
        self.requests: list[dict] = []
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
                    inputs = body.get("input")
                    inputs = [inputs] if isinstance(inputs, str) else inputs
                    self._send(200, {"model": model, "embeddings": [
                        [float(len(t) % 7), 1.0, 0.5] for t in inputs]})
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

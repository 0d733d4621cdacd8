"""A model server on 127.0.0.1 that plays a scripted model, speaking both Ollama's API
(/api/chat, /api/show, /api/embed) and the OpenAI-compatible one of llama.cpp's server
(/v1/chat/completions as server-sent events, /props).

It replaces only the model: the engine talks to it over real HTTP. Each chat request
takes the next scripted reply (a dict, or a function of the request that returns one)
and is recorded, so tests can check what was sent. A reply may hold `recorded` (the
verbatim body of a real server's streamed response, replayed as it came), `content`,
`tool_calls`, `done_reason` ("length": cut at the token limit), `wait_first` (seconds
before the first token) and `trickle` (seconds between tokens).
"""

from __future__ import annotations

import json
import re
import threading
import time
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


def _pieces(text: str) -> list[str]:
    """A reply's text as a model streams it: a word or so at a time."""
    return re.findall(r"\S*\s*", text)[:-1] if text else []


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
        self.n_ctx = 4096  # what /props reports (the OpenAI-compatible side)
        self.metadata_wait = 0.0  # seconds /props and /api/show hang before answering
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
        return [r for r in self.requests if r["path"] in ("/api/chat", "/v1/chat/completions")]

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
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-ndjson" if stream else "application/json")
                    self.end_headers()
                    if stream:
                        for part in body:  # type: ignore[union-attr]
                            self.wfile.write(json.dumps(part).encode() + b"\n")
                    else:
                        self.wfile.write(json.dumps(body).encode())
                except OSError:
                    pass  # the client gave up (a timeout under test)

            def do_GET(self) -> None:
                if self.path == "/props":
                    time.sleep(fake.metadata_wait)
                    self._send(200, {"default_generation_settings": {"n_ctx": fake.n_ctx}})
                elif self.path == "/api/tags":
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
                    time.sleep(fake.metadata_wait)
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
                elif self.path == "/v1/chat/completions":
                    self._openai_chat(body)
                else:
                    self._send(404, {"error": "not found"})

            def _next_reply(self, body: dict) -> dict[str, Any]:
                if not fake.script:
                    return {"content": "(the script ran out)"}
                step = fake.script.pop(0)
                return step(body) if callable(step) else step

            def _stream(self, content_type: str, lines: list[bytes], reply: dict[str, Any]) -> None:
                """Headers now, then each line: the first after `wait_first` seconds, the
                others `trickle` seconds apart."""
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                self.wfile.flush()
                try:
                    for i, line in enumerate(lines):
                        time.sleep(reply.get("wait_first", 0) if i == 0 else reply.get("trickle", 0))
                        self.wfile.write(line)
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up

            def _chat(self, body: dict) -> None:
                reply = self._next_reply(body)
                if "error" in reply:
                    self._send(reply.get("status", 500), {"error": reply["error"]})
                    return
                prompt_chars = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools") or []))
                done = {"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                        "message": {"role": "assistant", "content": ""}, "done": True,
                        "done_reason": reply.get("done_reason", "stop"),
                        "prompt_eval_count": prompt_chars // 4, "eval_count": 10}
                parts = [{"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                          "message": {"role": "assistant", "content": piece}, "done": False}
                         for piece in _pieces(reply.get("content", ""))]
                if reply.get("tool_calls"):
                    parts.append({"model": body["model"], "created_at": "2026-11-23T00:00:00Z",
                                  "message": {"role": "assistant", "content": "",
                                              "tool_calls": reply["tool_calls"]}, "done": False})
                if body.get("stream"):
                    self._stream("application/x-ndjson",
                                 [json.dumps(p).encode() + b"\n" for p in parts + [done]], reply)
                else:
                    message = {"role": "assistant", "content": reply.get("content", ""),
                               **({"tool_calls": reply["tool_calls"]} if reply.get("tool_calls") else {})}
                    self._send(200, {**done, "message": message})

            def _openai_chat(self, body: dict) -> None:
                reply = self._next_reply(body)
                if "recorded" in reply:  # a real server's response, byte for byte
                    self._stream("text/event-stream", [reply["recorded"].encode()], reply)
                    return
                if "error" in reply:
                    self._send(reply.get("status", 500), {"error": {"message": reply["error"]}})
                    return
                prompt_chars = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools") or []))
                chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {"content": piece}}]}
                                                for piece in _pieces(reply.get("content", ""))]
                for i, c in enumerate(reply.get("tool_calls") or []):
                    chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{
                        "index": i, "id": f"call_{i}", "type": "function",
                        "function": {"name": c["function"]["name"],
                                     "arguments": json.dumps(c["function"]["arguments"])}}]}}]})
                finish = "length" if reply.get("done_reason") == "length" else (
                    "tool_calls" if reply.get("tool_calls") else "stop")
                chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                chunks.append({"choices": [], "usage": {"prompt_tokens": prompt_chars // 4,
                                                        "completion_tokens": 10},
                               "timings": {"prompt_n": prompt_chars // 8, "cache_n": prompt_chars // 8}})
                self._stream("text/event-stream",
                             [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
                             + [b"data: [DONE]\n\n"], reply)

        return Handler

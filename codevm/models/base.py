"""What every model backend gives: one reply to a list of messages, streamed, within
explicit time limits, with the counts the server reports.

Time limits (settings): `model_connect_timeout` to reach the server,
`model_first_token_timeout` for the prompt to be read (slow on a CPU: tokens/s of prompt
reading times the prompt), `model_idle_timeout` between two tokens after the first. Each
one that fires says which it was.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from codevm.errors import ModelTimeout, ModelUnavailable


@dataclass
class ModelReply:
    content: str
    tool_calls: list[dict] = field(default_factory=list)  # {"name": ..., "arguments": {...}}
    prompt_tokens: int | None = None  # as the server counted the prompt (may be missing)
    cached_tokens: int | None = None  # of those, read from the server's prompt cache
    completion_tokens: int | None = None
    truncated: bool = False  # generation stopped at the token limit, not at its end
    repeated: bool = False  # stopped where the text began repeating itself (cut after one copy)
    first_token_seconds: float | None = None
    seconds: float = 0.0


@dataclass
class Limits:
    """How long a request may take, in seconds, and how much it may generate."""

    connect: float = 10.0
    first_token: float = 600.0
    idle: float = 120.0
    max_tokens: int = 1024


class ChatModel(Protocol):
    """A chat model behind a server (Ollama, an OpenAI-compatible server)."""

    name: str
    where: str  # the server, for messages

    def context_length(self, default: int) -> int:
        """The context size the server runs the model with (`default` if it does not say)."""
        ...

    def chat(self, messages: list[dict], num_ctx: int, limits: Limits,
             tools: list[dict] | None = None, json_schema: dict | None = None,
             on_text: Callable[[str], None] | None = None) -> ModelReply:
        """One reply; `on_text` gets the answer's text as it streams."""
        ...

    def close(self) -> None:
        """Let go of the connections to the server."""
        ...


class Watchdog:
    """Ends a streamed reply that waits too long: for its first token, then between two.

    `close` is called from the watchdog's thread (it closes the HTTP response, which makes
    the reading thread fail); `expired()` then says which limit fired."""

    def __init__(self, limits: Limits, close: Callable[[], None], where: str,
                 started: float | None = None):
        self.limits = limits
        self.close = close
        self.where = where
        self.started = time.monotonic() if started is None else started  # the request's start
        self.deadline = self.started + limits.first_token
        self.first_token: float | None = None
        self.fired: str = ""
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="codevm-model-watchdog",
                                         daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def token(self) -> None:
        """A token arrived: the idle limit starts again."""
        now = time.monotonic()
        with self._lock:
            if self.first_token is None:
                self.first_token = now - self.started
            self.deadline = now + self.limits.idle

    def _watch(self) -> None:
        while not self._done.wait(0.25):
            with self._lock:
                late = time.monotonic() > self.deadline
            if late:
                self.fired = "idle" if self.first_token is not None else "first_token"
                self.close()
                return

    def timeout(self) -> ModelTimeout:
        if self.fired == "idle":
            return ModelTimeout(
                f"the model at {self.where} stopped sending for {self.limits.idle:.0f}s in the middle "
                "of its answer (model_idle_timeout): the server may be overloaded or stuck")
        return ModelTimeout(
            f"the model at {self.where} sent nothing for {self.limits.first_token:.0f}s while reading "
            "the prompt (model_first_token_timeout): on a CPU, lower --budget or raise the timeout")


METADATA_TIMEOUT = 30.0  # seconds for what is no answer (the model's context size): it was 600


def http_failure(error: Exception, where: str, api: str, asked: str = "") -> ModelUnavailable:
    """A failed HTTP request to a model server, in one line that says what to do."""
    if isinstance(error, httpx.ConnectTimeout):
        return ModelUnavailable(f"{where} did not accept a connection in time (model_connect_timeout)")
    if isinstance(error, httpx.ConnectError):
        if api == "ollama":
            return ModelUnavailable(f"no Ollama server answered at {where}: start it with "
                                    "`ollama serve` (or set OLLAMA_HOST)")
        return ModelUnavailable(f"no model server answered at {where}: start it, or set model_url "
                                "to where it listens")
    if isinstance(error, httpx.TimeoutException) and asked:
        return ModelUnavailable(f"{where} accepted the connection but did not answer {asked} within "
                                f"{METADATA_TIMEOUT:.0f}s: the server hangs; restart it")
    if isinstance(error, httpx.TimeoutException):
        return ModelUnavailable(f"{where} did not answer in time ({type(error).__name__})")
    return ModelUnavailable(f"the model server at {where} failed: {type(error).__name__}: {error}")



SPEAKS = {"ollama": "Ollama", "openai": "an OpenAI-compatible server"}
LOOP_MIN = 32  # characters: the shortest run whose copies in a row make a loop
LOOP_MAX = 800  # the longest
LOOP_COPIES = 3
LOOP_CHECK = 32  # characters of new text between two looks for a loop
SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")  # also where ask reads a citation's sentence


def loop_start(text: str) -> int | None:
    """Where a text that ends in LOOP_COPIES copies of one run in a row stops saying
    something new: the end of the run's first copy, moved to the nearest end of a sentence
    (None: it does not end so). A small model can loop until its token limit
    (Qwen2.5-Coder-1.5B wrote one sentence about thirty times over)."""
    n = len(text)
    for period in range(LOOP_MIN, min(LOOP_MAX, n // LOOP_COPIES) + 1):
        tail = text[n - period:]
        if all(text[n - (k + 1) * period: n - k * period] == tail for k in range(1, LOOP_COPIES)):
            start = n - LOOP_COPIES * period
            while start > 0 and text[start - 1] == text[start - 1 + period]:
                start -= 1
            # the first copy, to the end of a sentence or line nearest its own end (the copies
            # begin anywhere in a sentence)
            ends = [m.end() for m in SENTENCE_END.finditer(text, start + 1, start + 2 * period)]
            return min(ends, key=lambda e: abs(e - start - period), default=start + period)
    return None


def stream_chat(http: httpx.Client, path: str, body: dict, limits: Limits, where: str,
                read: Callable[[str, ModelReply, Watchdog], bool],
                refuse: Callable[[httpx.Response], Exception], api: str) -> ModelReply:
    """POST a streamed chat request; `read` takes each line into the reply (False: the
    stream is done), `refuse` turns an HTTP error status into the error to raise."""
    started = time.monotonic()
    reply = ModelReply("")
    looked = 0  # characters of the reply looked at for a loop
    try:
        with http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise refuse(response)
            with Watchdog(limits, response.close, where, started) as watchdog:
                try:
                    for line in response.iter_lines():
                        if not read(line, reply, watchdog):
                            break
                        if len(reply.content) - looked >= LOOP_CHECK:
                            looked = len(reply.content)
                            if (cut := loop_start(reply.content)) is not None:
                                # closing the stream stops the server generating
                                reply.content, reply.repeated = reply.content[:cut].rstrip(), True
                                break
                    if watchdog.fired:  # the stream was closed under the loop
                        raise watchdog.timeout()
                except (httpx.HTTPError, ValueError) as e:
                    if watchdog.fired:
                        raise watchdog.timeout() from None
                    if isinstance(e, ValueError):
                        raise ModelUnavailable(
                            f"the server at {where} does not answer like {SPEAKS[api]}: {e}") from None
                    raise
                reply.first_token_seconds = watchdog.first_token
    except httpx.HTTPError as e:
        raise http_failure(e, where, api) from None
    reply.seconds = time.monotonic() - started
    return reply

"""Clients of the engine service: connect (starting a service when none runs), and
`RemoteEngine`, the Engine API answered by the service.

Clients import none of the engine's modules (database, parsers, model client): a CLI
command then starts in a fraction of the time.

Retries: a request that never reached the service (a connection that was already
closed, a stopping service that did not serve it) is sent to the next service. A call
that broke while the service was running it is retried only if it is idempotent
(`codevm.api.idempotent`): adding a note, editing core memory or asking twice would
do it twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import codevm.service.wire as wire
from codevm.api import (
    IDEMPOTENT_METHODS,
    AskResult,
    CodeText,
    CoreBlock,
    EmbeddingProgress,
    EngineHandle,
    IndexReport,
    MessageRecord,
    ModelCheck,
    Note,
    PageInfo,
    Progress,
    RefInfo,
    SearchHit,
    SessionInfo,
    SkippedFile,
    Status,
    SymbolDetail,
    SymbolInfo,
)
from codevm.config import Settings
from codevm.errors import CodevmError, ServiceUnavailable
from codevm.project import data_folder, project_path
from codevm.service.files import ServiceFiles, lock_held
from codevm.service.protocol import CallbackRef, build_id, receive, send

START_TIMEOUT = 30.0  # seconds to wait for a service to answer (it may replay a big log)
# seconds a quick call may take (a stopped or wedged service must not hang `status`);
# the calls that work for long (LONG_CALLS) wait as long as the service runs
CALL_TIMEOUT = 120.0
LONG_CALLS = frozenset({"index", "update_file", "embed", "ask", "check_model", "warm_up"})
POLL_SECONDS = 1.0
MAX_LOG_BYTES = 1 << 20
SERVICE_MAIN = "import sys; from codevm.service.server import main; sys.exit(main())"


class NotDelivered(Exception):
    """The request did not reach a serving service: it may go to the next one."""


class BrokenCall(Exception):
    """The service went away while it had the request: it may or may not have run it."""


def _spawn(root: Path, files: ServiceFiles) -> tuple[subprocess.Popen, int]:
    """Start a service for `root`; the process and where its log starts."""
    data_folder(root)
    try:
        if files.log.stat().st_size > MAX_LOG_BYTES:
            files.log.replace(files.log.with_name("service.log.1"))
    except OSError:
        pass
    detach: dict[str, Any] = ({"start_new_session": True} if os.name == "posix" else
                              {"creationflags": subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
                               | subprocess.CREATE_NEW_PROCESS_GROUP})  # type: ignore[attr-defined]
    fd = os.open(files.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as log_file:
        offset = log_file.seek(0, os.SEEK_END)
        # -c, not -m: the module must not also be __main__ (its classes would exist twice);
        # -P and a cwd of our own: the project's files must never shadow a Python module
        return subprocess.Popen([sys.executable, "-P", "-c", SERVICE_MAIN, str(root)], cwd=files.folder,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log_file, close_fds=True, **detach), offset


def _startup_error(files: ServiceFiles, offset: int) -> str:
    """The last error that a service started at log `offset` logged (or its last line)."""
    try:
        with open(files.log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "it left no log"
    errors = [line.split(" ERROR ", 1)[1] for line in lines if " ERROR " in line]
    return errors[-1] if errors else (lines[-1] if lines else "it left no log")


def connect(root: Path, files: ServiceFiles | None = None) -> Connection:
    """A connection to the project's service, started here if none runs."""
    files = files or ServiceFiles.of(root)
    info = files.read_info()
    if info is not None and info.get("build") != build_id():
        stop_service(root)  # a service running other code (an upgrade, an edit): replace it
    conn = wire.connect_once(files)
    if conn is not None:
        return conn
    process, offset = _spawn(root, files)
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.005
    while True:
        conn = wire.connect_once(files)
        if conn is not None:
            return conn
        code = process.poll()
        if code not in (None, 0):
            raise ServiceUnavailable(f"the codevm service for {root} could not start: "
                                     f"{_startup_error(files, offset)}")
        if code == 0 and not lock_held(files):
            process, offset = _spawn(root, files)  # it found a service that has stopped since
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the codevm service for {root} did not answer within "
                                     f"{START_TIMEOUT:.0f}s (log: {files.log})")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def _exchange(conn: Connection, message: tuple, callbacks: list[Callable[..., Any]],
              wait: Callable[[Connection], None] | None = None) -> tuple[str, Any]:
    """Send one request and serve its callbacks: ("result", value) or ("raise", error).
    `wait` returns when a reply is there to read, or raises (default: wire.HANDSHAKE_TIMEOUT)."""
    try:
        send(conn, message)
    except (EOFError, OSError) as e:
        raise NotDelivered(e) from None
    failure: BaseException | None = None
    while True:
        try:
            if wait is not None:
                wait(conn)
            elif not conn.poll(wire.HANDSHAKE_TIMEOUT):
                raise BrokenCall(f"no reply within {wire.HANDSHAKE_TIMEOUT:.0f}s")
            reply = receive(conn)
        except (EOFError, OSError) as e:
            raise BrokenCall(e) from None
        kind = reply[0] if isinstance(reply, tuple) and reply else None
        if kind == "callback":
            try:
                callbacks[reply[1]](*reply[2])
            except BaseException as e:  # noqa: BLE001 - re-raised once the service let go
                failure = e
                send(conn, ("failed",))
            else:
                send(conn, ("ok",))
        elif kind == "result":
            return "result", reply[1]
        elif kind == "error":
            return "raise", reply[1]
        elif kind == "callback_failed":
            return "raise", failure or CodevmError("a callback failed")
        elif kind == "not_served":
            raise NotDelivered("the service is stopping")
        else:
            raise BrokenCall(f"unexpected reply {str(kind)[:40]!r}")


class RemoteEngine:
    """The Engine API (codevm.api.EngineAPI), answered by the project's service; safe to
    call from many threads."""

    def __init__(self, root: Path, settings: Settings | None = None):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        self.files = ServiceFiles.of(self.root)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._release(connect(self.root, self.files))  # a service that cannot start fails here

    def relative_path(self, path: str) -> str:
        return project_path(self.root, path)

    # -- the API, each method one call of the service's Engine ------------------------------
    def index(self, paths: list[str] | None = None,
              progress: Callable[[Progress], None] | None = None) -> IndexReport:
        return self._call("index", paths, progress)

    def update_file(self, path: str, text: str | None = None) -> IndexReport:
        return self._call("update_file", path, text)

    def configure(self, settings: Settings) -> None:
        """New settings for this client and for the service's indexing."""
        self.settings = settings
        self._call("configure", settings)

    def warm_up(self) -> None:
        self._call("warm_up")

    def embed(self, progress: Callable[[EmbeddingProgress], None] | None = None,
              reset: bool = False) -> EmbeddingProgress:
        return self._call("embed", progress, reset)

    def embedding_progress(self) -> EmbeddingProgress:
        return self._call("embedding_progress")

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        return self._call("search", query, k, language, path_glob, kind)

    def symbol(self, name: str, limit: int = 50) -> list[SymbolInfo]:
        return self._call("symbol", name, limit)

    def find_symbols(self, query: str, limit: int = 200) -> list[SymbolInfo]:
        return self._call("find_symbols", query, limit)

    def outline(self, path: str) -> list[SymbolInfo]:
        return self._call("outline", path)

    def definitions(self, name: str, from_path: str | None = None,
                    limit: int = 50) -> list[SymbolInfo]:
        return self._call("definitions", name, from_path, limit)

    def describe(self, name: str, from_path: str | None = None) -> SymbolDetail | None:
        return self._call("describe", name, from_path)

    def read(self, path: str, start_line: int | None = None,
             end_line: int | None = None) -> CodeText:
        return self._call("read", path, start_line, end_line)

    def read_chunk(self, chunk_id: int) -> CodeText:
        return self._call("read_chunk", chunk_id)

    def refs(self, name: str, limit: int = 200) -> list[RefInfo]:
        return self._call("refs", name, limit)

    def status(self) -> Status:
        return self._call("status")

    def skipped_files(self, limit: int = 1000) -> list[SkippedFile]:
        return self._call("skipped_files", limit)

    def add_note(self, text: str, tags: list[str] | None = None, path: str | None = None,
                 symbol: str | None = None, source: str = "user") -> Note:
        return self._call("add_note", text, tags, path, symbol, source)

    def search_notes(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]:
        return self._call("search_notes", query, k, tag)

    def list_notes(self, path: str | None = None, symbol: str | None = None,
                   limit: int = 100) -> list[Note]:
        return self._call("list_notes", path, symbol, limit)

    def forget_note(self, note_id: int) -> Note:
        return self._call("forget_note", note_id)

    def core_memory(self) -> list[CoreBlock]:
        return self._call("core_memory")

    def core_memory_block(self, label: str) -> CoreBlock:
        return self._call("core_memory_block", label)

    def core_memory_update(self, block: str, text: str, mode: str = "replace",
                           old: str | None = None) -> CoreBlock:
        return self._call("core_memory_update", block, text, mode, old)

    def conversation_search(self, query: str, k: int = 10, session: str | None = None,
                            since: str | None = None,
                            until: str | None = None) -> list[MessageRecord]:
        return self._call("conversation_search", query, k, session, since, until)

    def sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self._call("sessions", limit)

    def new_session(self, title: str = "") -> SessionInfo:
        return self._call("new_session", title)

    def session_messages(self, session_id: str) -> list[MessageRecord]:
        return self._call("session_messages", session_id)

    def ask(self, question: str, session: str | None = None, budget: int | None = None,
            on_text: Callable[[str], None] | None = None, new_session: bool = False,
            settings: Settings | None = None,
            on_status: Callable[[str], None] | None = None) -> AskResult:
        # the model settings are the asking client's (its environment, its editor)
        return self._call("ask", question, session, budget, on_text, new_session,
                          settings or self.settings, on_status)

    def check_model(self, settings: Settings | None = None) -> ModelCheck:
        return self._call("check_model", settings or self.settings)

    def context_for(self, question: str, max_tokens: int = 4000) -> list[PageInfo]:
        return self._call("context_for", question, max_tokens)

    # -- the service itself ----------------------------------------------------------------
    def service_info(self) -> dict[str, Any]:
        return self._request(("info",), [], retry=True)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release(self, conn: Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    def _take(self) -> Connection:
        """An idle connection that is still open, or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return connect(self.root, self.files)
            try:
                # the service never speaks first: something to read means it hung up
                if not conn.poll(0):
                    return conn
            except (EOFError, OSError):
                pass
            conn.close()

    def _call(self, method: str, *args: Any) -> Any:
        callbacks: list[Callable[..., Any]] = []

        def mark(value: Any) -> Any:
            if callable(value) and not isinstance(value, type):
                callbacks.append(value)
                return CallbackRef(len(callbacks) - 1)
            return value

        return self._request(("call", method, tuple(map(mark, args)), {}), callbacks,
                             retry=method in IDEMPOTENT_METHODS, method=method)

    def _waiter(self, method: str) -> Callable[[Connection], None]:
        """How long to wait for a reply: a quick call CALL_TIMEOUT; a long one while the
        service runs. A stopped, vanished or wedged service ends the wait with one line."""
        started = time.monotonic()
        limit = None if method in LONG_CALLS else CALL_TIMEOUT

        def wait(conn: Connection) -> None:
            stopped_since = None
            while not conn.poll(POLL_SECONDS):
                info = self.files.read_info()
                state = wire.process_state(int(info["pid"])) if info and info.get("pid") else "?"
                if state is None:
                    raise BrokenCall("the service's process is gone")
                stopped_since = (stopped_since or time.monotonic()) if state in ("T", "t") else None
                if stopped_since and time.monotonic() - stopped_since > wire.HANDSHAKE_TIMEOUT:
                    raise ServiceUnavailable(
                        wire.stuck(info, self.files, f"stopped while running {method or 'a call'}"))
                if limit is not None and time.monotonic() - started > limit:
                    raise ServiceUnavailable(wire.stuck(info, self.files, f"did not answer {method or 'a call'} "
                                                    f"within {limit:.0f}s"))
        return wait

    def _request(self, message: tuple, callbacks: list[Callable[..., Any]], retry: bool,
                 method: str = "") -> Any:
        for attempt in (1, 2):
            conn = self._take()
            try:
                outcome, value = _exchange(conn, message, callbacks, self._waiter(method))
            except (NotDelivered, BrokenCall) as e:
                # the service went away (killed, stopped, idle): so did every idle connection
                conn.close()
                self.close()
                if attempt == 1 and (retry or isinstance(e, NotDelivered)):
                    continue
                if isinstance(e, BrokenCall) and not retry:
                    raise ServiceUnavailable(
                        f"the codevm service stopped while running {method} "
                        f"({str(e) or 'the connection closed'}): it may or may not have been done; check, "
                        f"then run the command again (log: {self.files.log})") from None
                raise ServiceUnavailable(
                    f"the codevm service stopped while answering ({str(e) or 'the connection closed'}); "
                    f"run the command again (log: {self.files.log})") from None
            except BaseException:
                conn.close()  # interrupted mid-exchange: the connection's state is unknown
                raise
            self._release(conn)
            if outcome == "raise":
                raise value
            return value
        raise AssertionError("unreachable")


def open_engine(root: Path, settings: Settings | None = None) -> EngineHandle:
    """The project's engine: through its service, or in this process if `service` is off."""
    settings = settings or Settings.load(root)
    if not settings.service:
        from codevm.engine import Engine

        return Engine(root, settings)
    return RemoteEngine(root, settings)


def _once(files: ServiceFiles, request: str) -> dict[str, Any] | None:
    """One service-level request ("info", "stop") to a running service; None if none answers."""
    conn = wire.connect_once(files)
    if conn is None:
        return None
    try:
        outcome, value = _exchange(conn, (request,), [])
        return value if outcome == "result" else None
    except (NotDelivered, BrokenCall):
        return None
    finally:
        conn.close()


def service_info(root: Path, files: ServiceFiles | None = None) -> dict[str, Any] | None:
    """What the running service reports about itself, or None when none answers."""
    return _once(files or ServiceFiles.of(root), "info")


def stop_service(root: Path) -> dict[str, Any] | None:
    """Stop the project's service and wait until it has let go; what it was, or None."""
    files = ServiceFiles.of(root)
    try:
        info = _once(files, "stop")
    except ServiceUnavailable:  # it takes connections but does not answer them
        info = None
    stale = files.read_info() if info is None and lock_held(files) else None
    pid = int(stale["pid"]) if stale and stale.get("pid") else 0
    if pid:  # it holds the lock but does not answer: stopped (SIGSTOP) or wedged
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        info = stale
    deadline = time.monotonic() + START_TIMEOUT
    killed = False
    while lock_held(files):
        if pid and not killed and time.monotonic() > deadline - START_TIMEOUT / 2:
            _signal(pid, signal.SIGKILL)  # committed work is safe in the database's log
            killed = True
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the codevm service for {root} does not stop (see {files.log})")
        time.sleep(0.05)
    return info


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass

"""The engine service: one process per project owns the database; front ends are its clients.

DuckDB lets one process at a time open a database file, so `codevm lsp`, `codevm mcp`
and the CLI commands do not open it themselves: they call the Engine of one service
process per project over a local socket (`multiprocessing.connection`, with an HMAC
challenge on a random key that only the owner can read), and start that process when
none runs, like `gopls -remote=auto`. The service's files, in the project's data folder:

- `service.lock`: locked (flock) by the running service for its whole life. A second
  service that cannot take it waits until the first answers, then leaves;
- `service.key`: the running service's key (0600), new at every start;
- `service.json`: its pid, address and start time (0600);
- `service.sock`: its Unix socket (0600; in a private temp folder if the path is too long);
- `service.log`: what it logs.

A killed service leaves these files behind, but its lock dies with it: the next service
takes the lock and replaces them. Clients retry a call once on a new service when theirs
went away. Every message is a pickled tuple; nothing is unpickled before the key checks.

    client -> ("call", method, args, kwargs) | ("info",) | ("stop",)
    service -> ("callback", n, args)   client -> ("ok",) | ("failed",)
    service -> ("result", value) | ("error", CodevmError) | ("callback_failed",)

Callables among the arguments (progress, streamed text) stay in the client; the service
calls them back, and an exception they raise ends the call in both processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import (
    AuthenticationError, Client, Connection, Listener, answer_challenge, deliver_challenge)
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codevm import __version__
from codevm.config import Settings
from codevm.errors import CodevmError, InvalidArgument, ServiceUnavailable
from codevm.project import data_folder, database_path, project_path

if TYPE_CHECKING:
    from codevm.memory.engine import Engine

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

log = logging.getLogger("codevm.service")

UNIX_SOCKETS = sys.platform != "win32"
MAX_SOCKET_PATH = 100  # bytes; Unix socket paths are limited to ~104-108
START_TIMEOUT = 30.0  # seconds to wait for a service to answer (it may replay a big log)
STOP_TIMEOUT = 10.0
MAX_LOG_BYTES = 1 << 20
SERVICE_MAIN = "import sys; from codevm.service import main; sys.exit(main())"
# what clients may call: the Engine's public API (a test checks that none is missing).
# Clients import none of the engine's modules (database, parsers, model client): a CLI
# command then starts in a fraction of the time.
ENGINE_METHODS = frozenset({
    "ask", "configure", "conversation_search", "core_memory", "core_memory_block",
    "core_memory_update", "definitions", "describe", "embed", "embedding_progress",
    "find_symbols", "forget", "index",
    "list_notes", "new_session", "outline", "read", "read_chunk", "recall", "refs",
    "relative_path", "remember", "search", "session_messages", "sessions", "status", "symbol",
    "update_file", "warm_up"})


# -- files and locks ----------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceFiles:
    folder: Path

    @classmethod
    def of(cls, root: Path) -> ServiceFiles:
        return cls(database_path(root).parent)

    @property
    def lock(self) -> Path:
        return self.folder / "service.lock"

    @property
    def key(self) -> Path:
        return self.folder / "service.key"

    @property
    def info(self) -> Path:
        return self.folder / "service.json"

    @property
    def log(self) -> Path:
        return self.folder / "service.log"

    def socket_path(self) -> str:
        path = str(self.folder / "service.sock")
        if len(path.encode()) <= MAX_SOCKET_PATH:
            return path
        private = Path(tempfile.gettempdir()) / f"codevm-{os.getuid()}"
        private.mkdir(mode=0o700, exist_ok=True)
        st = private.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ServiceUnavailable(f"{private} must be yours and private: chmod 700 {private}")
        return str(private / (hashlib.sha1(path.encode()).hexdigest()[:20] + ".sock"))

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


class FileLock:
    """An exclusive lock on a file, released by the OS when its holder dies."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self) -> bool:
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def close(self) -> None:
        os.close(self.fd)


def lock_held(files: ServiceFiles) -> bool:
    """Whether a live service holds the project's service lock."""
    if not files.lock.exists():
        return False
    lock = FileLock(files.lock)
    try:
        return not lock.try_acquire()
    finally:
        lock.close()


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file that only the owner can read."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- the service --------------------------------------------------------------------------
@dataclass(frozen=True)
class CallbackRef:
    """Stands for a callable argument that stays in the client."""

    index: int


class CallbackFailed(Exception):
    """The client's callback raised: the call ends, and the client re-raises its error."""


class ClientGone(Exception):
    pass


class Service:
    def __init__(self, root: Path, settings: Settings | None = None):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        self.files = ServiceFiles.of(self.root)
        self.engine: Engine | None = None
        self.address = ""  # for people: path, or host:port
        self._listening: tuple[Any, str] | None = None  # (address, family) of the listener
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.clients = 0
        self.calls = 0
        self.active_calls = 0
        self.last_active = time.monotonic()
        self.stopping = threading.Event()
        self.state = threading.Condition()

    # lifecycle
    def run(self) -> int:
        """Serve until stopped or idle; 0 also when another service already serves."""
        data_folder(self.root)
        lock = FileLock(self.files.lock)
        deadline = time.monotonic() + START_TIMEOUT
        while not lock.try_acquire():
            # another service holds the lock: it serves, or it is still starting or stopping
            if service_info(self.root, self.files) is not None:
                log.info("a service already runs for %s", self.root)
                lock.close()
                return 0
            if time.monotonic() > deadline:
                log.error("the service lock %s stays taken, but no service answers", self.files.lock)
                lock.close()
                return 1
            time.sleep(0.05)
        listener = None
        try:
            from codevm.memory.engine import Engine
            from codevm.memory.watcher import Watcher

            self.engine = Engine(self.root, self.settings)
            self.engine.background_embedding = True
            key = secrets.token_bytes(32)
            listener = self._listen(key)
            self.engine.watcher = Watcher(self.engine, self.settings.watch_debounce_ms)
            if self.settings.watch:
                self.engine.watcher.start()
            # first searches look their terms up in SQL until the dictionary is loaded
            threading.Thread(target=self.engine.warm_up, name="codevm-warm-up", daemon=True).start()
            threading.Thread(target=self._idle_monitor, name="codevm-idle", daemon=True).start()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: self.stop())
            log.info("serving %s at %s (pid %d)", self.root, self.address, os.getpid())
            self._accept(listener, key)
            return 0
        except CodevmError as e:
            log.error("%s", e)
            return 1
        finally:
            self._shutdown(listener)
            lock.close()

    def _listen(self, key: bytes) -> Listener:
        if UNIX_SOCKETS:
            family, address = "AF_UNIX", self.files.socket_path()
            try:
                os.unlink(address)  # left by a service that died: we hold the lock now
            except FileNotFoundError:
                pass
        else:
            family, address = "AF_INET", ("127.0.0.1", 0)  # loopback only
        _write_private(self.files.key, key)
        old = os.umask(0o177)  # the socket is born readable by its owner only
        try:
            listener = Listener(address, family)
        finally:
            os.umask(old)
        self._listening = (listener.address, family)
        self.address = listener.address if family == "AF_UNIX" else "%s:%d" % listener.address
        _write_private(self.files.info, json.dumps({
            "pid": os.getpid(), "root": str(self.root), "family": family,
            "address": listener.address, "started_at": self.started_at, "version": __version__,
        }).encode())
        return listener

    def stop(self) -> None:
        with self.state:
            if self.stopping.is_set():
                return
            self.stopping.set()
        try:  # wake the accept loop
            if self._listening is not None:
                Client(*self._listening).close()
        except OSError:
            pass

    def _shutdown(self, listener: Listener | None) -> None:
        self.stopping.set()
        if listener is not None:
            listener.close()
            for path in (self.files.info, self.files.key):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        if self.engine is not None:
            if self.engine.watcher is not None:
                self.engine.watcher.stop()
            with self.state:
                self.state.wait_for(lambda: self.active_calls == 0, STOP_TIMEOUT)
            self.engine.close()
        if listener is not None:
            log.info("stopped (%d calls served)", self.calls)

    def _idle_monitor(self) -> None:
        idle = self.settings.service_idle_seconds
        if idle <= 0:
            return
        while not self.stopping.wait(min(1.0, idle / 4)):
            with self.state:
                quiet = (self.clients == 0 and self.active_calls == 0
                         and time.monotonic() - self.last_active >= idle)
            watcher = self.engine.watcher if self.engine else None
            busy = (watcher is not None and watcher.pending_count() > 0) or (
                self.engine is not None and self.engine.vectors.running)
            if quiet and not busy:  # changes to index and code to embed are finished first
                log.info("no client for %ds: exiting", idle)
                self.stop()

    def info(self) -> dict[str, Any]:
        watcher = self.engine.watcher if self.engine else None
        with self.state:
            return {"pid": os.getpid(), "root": str(self.root), "address": self.address,
                    "version": __version__, "started_at": self.started_at,
                    "clients": self.clients, "calls": self.calls, "active_calls": self.active_calls,
                    "idle_seconds": self.settings.service_idle_seconds,
                    "watching": bool(watcher and watcher.running),
                    "pending_changes": watcher.pending_count() if watcher else 0}

    # connections
    def _accept(self, listener: Listener, key: bytes) -> None:
        while not self.stopping.is_set():
            try:
                conn = listener.accept()
            except OSError as e:
                if self.stopping.is_set():
                    break
                log.warning("accept failed: %s", e)
                continue
            if self.stopping.is_set():
                conn.close()
                break
            threading.Thread(target=self._serve, args=(conn, key), daemon=True).start()

    def _serve(self, conn: Connection, key: bytes) -> None:
        try:  # the same handshake as Listener(authkey=...), off the accept loop
            deliver_challenge(conn, key)
            answer_challenge(conn, key)
        except (AuthenticationError, EOFError, OSError) as e:
            log.warning("refused a client: %s", e or type(e).__name__)
            conn.close()
            return
        with self.state:
            self.clients += 1
        try:
            while not self.stopping.is_set():
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break
                if not self._handle(conn, message):
                    break
        except (ClientGone, OSError):
            pass
        except Exception:  # noqa: BLE001 - one bad client must not stop the service
            log.exception("dropped a client")
        finally:
            with self.state:
                self.clients -= 1
                self.last_active = time.monotonic()
            conn.close()

    def _handle(self, conn: Connection, message: Any) -> bool:
        """Answer one request; False ends the connection."""
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "call" and len(message) == 4:
            return self._call(conn, *message[1:])
        if kind == "info":
            conn.send(("result", self.info()))
            return True
        if kind == "stop":
            conn.send(("result", self.info()))
            self.stop()
            return False
        conn.send(("error", InvalidArgument(f"unknown request {str(kind)[:40]!r}")))
        return True

    def _call(self, conn: Connection, method: str, args: Any, kwargs: Any) -> bool:
        with self.state:
            if self.stopping.is_set():
                return False  # the client retries on the next service
            self.active_calls += 1
            self.calls += 1
        try:
            if method not in ENGINE_METHODS or not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise InvalidArgument(f"the engine has no method {str(method)[:40]!r}")

            def bind(value: Any) -> Any:
                return self._callback(conn, value.index) if isinstance(value, CallbackRef) else value

            value = getattr(self.engine, method)(*map(bind, args),
                                                 **{k: bind(v) for k, v in kwargs.items()})
            reply: tuple = ("result", value)
        except CallbackFailed:
            reply = ("callback_failed",)
        except CodevmError as e:
            reply = ("error", e)
        except (ClientGone, EOFError):
            raise ClientGone from None
        except Exception as e:  # noqa: BLE001 - reported to the client in one line
            log.exception("%s failed", method)
            reply = ("error", CodevmError(
                f"the codevm service failed in {method}: {type(e).__name__}: {e} "
                f"(details in {self.files.log})"))
        finally:
            with self.state:
                self.active_calls -= 1
                self.last_active = time.monotonic()
                self.state.notify_all()
        conn.send(reply)
        return True

    @staticmethod
    def _callback(conn: Connection, index: int) -> Any:
        def call(*args: Any) -> None:
            try:
                conn.send(("callback", index, args))
                answer = conn.recv()
            except (EOFError, OSError) as e:
                raise ClientGone from e
            if answer != ("ok",):
                raise CallbackFailed
        return call


# -- clients ------------------------------------------------------------------------------
def _address(info: dict[str, Any]) -> Any:
    address = info["address"]
    return tuple(address) if isinstance(address, list) else address


def _connect_once(files: ServiceFiles) -> Connection | None:
    info = files.read_info()
    if info is None:
        return None
    try:
        key = files.key.read_bytes()
        return Client(_address(info), info["family"], authkey=key)
    except (OSError, EOFError, KeyError, AuthenticationError):
        return None  # gone, stale, or replaced between reading its files: look again


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
    if info is not None and info.get("version") != __version__:
        stop_service(root)  # a service of another codevm version: replace it
    conn = _connect_once(files)
    if conn is not None:
        return conn
    process, offset = _spawn(root, files)
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.005
    while True:
        conn = _connect_once(files)
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


def _exchange(conn: Connection, message: tuple, callbacks: list) -> tuple[str, Any]:
    """Send one request and serve its callbacks; ("result", value) or ("raise", error)."""
    conn.send(message)
    failure: BaseException | None = None
    while True:
        reply = conn.recv()
        kind = reply[0]
        if kind == "callback":
            try:
                callbacks[reply[1]](*reply[2])
            except BaseException as e:  # noqa: BLE001 - re-raised once the service let go
                failure = e
                conn.send(("failed",))
            else:
                conn.send(("ok",))
        elif kind == "result":
            return "result", reply[1]
        elif kind == "error":
            return "raise", reply[1]
        elif kind == "callback_failed":
            return "raise", failure or CodevmError("a callback failed")
        else:
            raise EOFError(f"unexpected reply {kind!r}")


class RemoteEngine:
    """The Engine API, answered by the project's service; safe to call from many threads."""

    def __init__(self, root: Path, settings: Settings | None = None):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        self.files = ServiceFiles.of(self.root)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._release(connect(self.root, self.files))  # a service that cannot start fails here

    def relative_path(self, path: str) -> str:
        return project_path(self.root, path)

    def configure(self, settings: Settings) -> None:
        """New settings for this client and for the service's indexing."""
        self.settings = settings
        self._call("configure", settings)

    def ask(self, question: str, session: str | None = None, budget: int | None = None,
            on_text: Any = None, new_session: bool = False, settings: Settings | None = None) -> Any:
        # the model settings are the asking client's (its environment, its editor)
        return self._call("ask", question, session=session, budget=budget, on_text=on_text,
                          new_session=new_session, settings=settings or self.settings)

    def __getattr__(self, name: str) -> Any:
        if name in ENGINE_METHODS:
            return functools.partial(self._call, name)
        raise AttributeError(name)

    def service_info(self) -> dict[str, Any]:
        return self._request(("info",), [])

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

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        callbacks: list = []

        def mark(value: Any) -> Any:
            if callable(value) and not isinstance(value, type):
                callbacks.append(value)
                return CallbackRef(len(callbacks) - 1)
            return value

        return self._request(("call", method, tuple(map(mark, args)),
                              {k: mark(v) for k, v in kwargs.items()}), callbacks)

    def _request(self, message: tuple, callbacks: list) -> Any:
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = connect(self.root, self.files)
            try:
                outcome, value = _exchange(conn, message, callbacks)
            except (EOFError, OSError) as e:
                # the service went away (killed, stopped, idle): so did every idle connection
                conn.close()
                self.close()
                if attempt == 2:
                    raise ServiceUnavailable(
                        f"the codevm service stopped while answering ({e or type(e).__name__}); "
                        f"run the command again (log: {self.files.log})") from None
                continue
            except BaseException:
                conn.close()  # interrupted mid-exchange: the connection's state is unknown
                raise
            self._release(conn)
            if outcome == "raise":
                raise value
            return value
        raise AssertionError("unreachable")


def open_engine(root: Path, settings: Settings | None = None) -> Engine | RemoteEngine:
    """The project's engine: through its service, or in this process if `service` is off."""
    settings = settings or Settings.load(root)
    if not settings.service:
        from codevm.memory.engine import Engine

        return Engine(root, settings)
    return RemoteEngine(root, settings)


def _once(files: ServiceFiles, request: str) -> dict[str, Any] | None:
    """One service-level request ("info", "stop") to a running service; None if none answers."""
    conn = _connect_once(files)
    if conn is None:
        return None
    try:
        return _exchange(conn, (request,), [])[1]
    except (EOFError, OSError):
        return None
    finally:
        conn.close()


def service_info(root: Path, files: ServiceFiles | None = None) -> dict[str, Any] | None:
    """What the running service reports about itself, or None when none answers."""
    return _once(files or ServiceFiles.of(root), "info")


def stop_service(root: Path) -> dict[str, Any] | None:
    """Stop the project's service and wait until it has let go; what it was, or None."""
    files = ServiceFiles.of(root)
    info = _once(files, "stop")
    if info is None and lock_held(files):  # it holds the lock but does not answer
        stale = files.read_info()
        if stale and stale.get("pid"):
            try:
                os.kill(int(stale["pid"]), signal.SIGTERM)
                info = stale
            except OSError:
                pass
    deadline = time.monotonic() + START_TIMEOUT
    while lock_held(files):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the codevm service for {root} does not stop (see {files.log})")
        time.sleep(0.05)
    return info


def main(argv: list[str] | None = None) -> int:
    """`codevm.service.main([ROOT])`: how clients start a service."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: codevm service run --root PROJECT_ROOT", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # one line per change otherwise
    try:
        return Service(Path(args[0])).run()
    except CodevmError as e:
        log.error("%s", e)
        return 1


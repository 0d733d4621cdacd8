"""The engine service: one process per project owns the database; front ends are its clients.

DuckDB lets one process at a time open a database file, so `codevm lsp`, `codevm mcp`
and the CLI commands do not open it themselves: they call the Engine of one service
process per project over a local socket (`multiprocessing.connection`, with an HMAC
challenge on a random key that only the owner can read; see protocol.py), and start that
process when none runs, like `gopls -remote=auto` (client.py). The service watches the
project's files (watcher.py) and exits after a while without clients.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from contextlib import suppress
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from multiprocessing.context import AuthenticationError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codevm import __version__, render
from codevm.api import API_METHODS
from codevm.config import Settings
from codevm.errors import CodevmError, InvalidArgument
from codevm.project import data_folder
from codevm.service.client import service_info
from codevm.service.files import FileLock, ServiceFiles, write_private
from codevm.service.protocol import CallbackRef, build_id, receive, send
from codevm.service.watcher import Watcher

if TYPE_CHECKING:
    from codevm.engine import Engine

log = logging.getLogger("codevm.service")

UNIX_SOCKETS = sys.platform != "win32"
START_TIMEOUT = 30.0  # seconds to wait for a service to answer (it may replay a big log)
STOP_TIMEOUT = 10.0


FOLDER_CHECK_SECONDS = 1.0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
        self.watcher: Watcher | None = None
        self.address = ""  # for people: path, or host:port
        self._listening: tuple[Any, str] | None = None  # (address, family) of the listener
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.clients = 0
        self.calls = 0
        self.active_calls = 0
        self.last_active = time.monotonic()
        self.stopping = threading.Event()
        self.state = threading.Condition()
        self._key = b""

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
            from codevm.engine import Engine

            self.engine = engine = Engine(self.root, self.settings, background_embedding=True)
            key = secrets.token_bytes(32)
            listener = self._listen(key)
            self.watcher = Watcher(self.root, engine.store.path.parent, engine.index,
                                   lambda: engine.store.get_meta("last_indexed_at") is not None,
                                   self.settings.watch_debounce_ms)
            engine.monitor_changes(self.watcher)
            if self.settings.watch:
                self.watcher.start()
            # the embedding model and the vectors load in the background
            threading.Thread(target=self.engine.warm_up, name="codevm-warm-up", daemon=True).start()
            threading.Thread(target=self._idle_monitor, name="codevm-idle", daemon=True).start()
            threading.Thread(target=self._folder_monitor, args=(_identity(engine.store.path),),
                             name="codevm-folder", daemon=True).start()
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
        address: str | tuple[str, int]
        if UNIX_SOCKETS:
            family, address = "AF_UNIX", (path := self.files.socket_path())
            try:
                os.unlink(path)  # left by a service that died: we hold the lock now
            except FileNotFoundError:
                pass
        else:
            family, address = "AF_INET", ("127.0.0.1", 0)  # loopback only
        write_private(self.files.key, key)
        self._key = key
        old = os.umask(0o177)  # the socket is born readable by its owner only
        try:
            listener = Listener(address, family)
        finally:
            os.umask(old)
        self._listening = (listener.address, family)
        self.address = listener.address if family == "AF_UNIX" else "{}:{}".format(*listener.address)
        write_private(self.files.info, json.dumps({
            "pid": os.getpid(), "root": str(self.root), "family": family,
            "address": listener.address, "started_at": self.started_at, "version": __version__,
            "build": build_id(),
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
            self._remove_own_files()
        if self.engine is not None:
            if self.watcher is not None:
                self.watcher.stop()
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
            watcher = self.watcher
            busy = (watcher is not None and watcher.pending_count() > 0) or (
                self.engine is not None and self.engine.vectors.running)
            if quiet and not busy:  # changes to index and code to embed are finished first
                log.info("no client for %ds: exiting", idle)
                self.stop()

    def _folder_monitor(self, opened: tuple[int, int] | None) -> None:
        """Exit at once when the database is deleted or replaced under the service (rm -rf
        .codevm): closing would write its log into whatever folder now has that name, and
        clients would keep talking to a database nobody can see."""
        while not self.stopping.wait(FOLDER_CHECK_SECONDS):
            if self.engine is not None and _identity(self.engine.store.path) != opened:
                log.error("the database %s was deleted or replaced: exiting", self.engine.store.path)
                self._remove_own_files()
                os._exit(3)

    def _remove_own_files(self) -> None:
        """Remove this service's info and key, if they are still its own: a folder deleted
        and made again (rm -rf .codevm, then any command) holds the next service's files,
        and removing those left that service running with no client able to reach it."""
        info = self.files.read_info()
        with suppress(OSError):
            if info is not None and info.get("pid") == os.getpid():
                self.files.info.unlink()
        with suppress(OSError):
            if self.files.key.read_bytes() == self._key:
                self.files.key.unlink()

    def info(self) -> dict[str, Any]:
        watcher = self.watcher
        with self.state:
            return {"pid": os.getpid(), "root": str(self.root), "address": self.address,
                    "version": __version__, "build": build_id(), "started_at": self.started_at,
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
            log.warning("refused a client: %s", str(e) or type(e).__name__)
            conn.close()
            return
        with self.state:
            self.clients += 1
        try:
            while not self.stopping.is_set():
                try:
                    message = receive(conn)
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
        if kind == "render" and len(message) == 3:  # a quick command of the CLI (codevm/quick.py)
            return self._call(conn, "render", (message[1], message[2]), {})
        if kind == "info":
            send(conn, ("result", self.info()))
            return True
        if kind == "stop":
            send(conn, ("result", self.info()))
            self.stop()
            return False
        send(conn, ("error", InvalidArgument(f"unknown request {str(kind)[:40]!r}")))
        return True

    def _call(self, conn: Connection, method: str, args: Any, kwargs: Any) -> bool:
        with self.state:
            if self.stopping.is_set():
                send(conn, ("not_served",))  # the client calls the next service
                return False
            self.active_calls += 1
            self.calls += 1
        try:
            engine = self.engine
            if engine is None:  # connections are taken once it is open
                raise CodevmError("the service has not opened its database yet")
            if method == "render":  # a quick command of the CLI: its lines (codevm/render.py)
                target = functools.partial(render.command, engine)
            elif method in API_METHODS:
                target = getattr(engine, method)
            else:
                raise InvalidArgument(f"the engine has no method {str(method)[:40]!r}")
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise InvalidArgument("a call's arguments must be a tuple and a dict")

            def bind(value: Any) -> Any:
                return self._callback(conn, value.index) if isinstance(value, CallbackRef) else value

            value = target(*map(bind, args), **{k: bind(v) for k, v in kwargs.items()})
            reply: tuple = ("result", value)
        except CallbackFailed:
            reply = ("callback_failed",)
        except CodevmError as e:
            reply = ("error", e)
        except (ClientGone, EOFError):
            raise ClientGone from None
        except Exception as e:  # noqa: BLE001 - reported to the client in one line
            # the log and the reply echo at most 500 characters of what failed (a 10 MB
            # argument quoted in an error message grew the log to 42 MB)
            log.error("%s failed: %s: %.500s\n%s", method, type(e).__name__, e,
                      "".join(traceback.format_tb(e.__traceback__))[-4000:])
            reply = ("error", CodevmError(
                f"the codevm service failed in {method}: {type(e).__name__}: {str(e)[:500]} "
                f"(details in {self.files.log})"))
        finally:
            with self.state:
                self.active_calls -= 1
                self.last_active = time.monotonic()
                self.state.notify_all()
        send(conn, reply)
        return True

    @staticmethod
    def _callback(conn: Connection, index: int) -> Any:
        def call(*args: Any) -> None:
            try:
                send(conn, ("callback", index, args))
                answer = receive(conn)
            except (EOFError, OSError) as e:
                raise ClientGone from e
            if answer != ("ok",):
                raise CallbackFailed
        return call


def main(argv: list[str] | None = None) -> int:
    """`codevm.service.server.main([ROOT])`: how clients start a service."""
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


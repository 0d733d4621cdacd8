"""The wire between the engine service and its clients.

Messages are tuples, pickled; nothing is unpickled before the HMAC handshake, and the
unpickler admits codevm's API data, settings and errors only (no other class can be
built from a message, so only plain data travels):

    client -> ("call", method, args, kwargs) | ("info",) | ("stop",)
    service -> ("callback", n, args)   client -> ("ok",) | ("failed",)
    service -> ("result", value) | ("error", CodevmError) | ("callback_failed",)
             | ("not_served",)   (a stopping service did not run the call: try the next)

Callables among the arguments (progress, streamed text) stay in the client as
`CallbackRef`s; the service calls them back, and an exception they raise ends the call
in both processes.

A client talks only to a service of the same build: `build_id()` hashes codevm's own
files, so an edited or upgraded install never talks to a service started before.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the quick path's `wire.Light` has the same methods: no import of multiprocessing
    from multiprocessing.connection import Connection

    from codevm.service.wire import Light

# modules whose classes may be built from a message
_ALLOWED_MODULES = frozenset({"codevm.api", "codevm.config", "codevm.errors",
                              "codevm.service.protocol"})
_PACKAGE = Path(__file__).resolve().parent.parent


class CallbackRef:
    """Stands for a callable argument that stays in the client. (A plain class: importing
    dataclasses costs the CLI's quick path, which imports this module, ~10 ms.)"""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallbackRef) and other.index == self.index

    def __hash__(self) -> int:
        return hash(self.index)

    def __repr__(self) -> str:
        return f"CallbackRef({self.index})"


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES and not name.startswith("_"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not travel between codevm processes")


def send(conn: Connection | Light, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection | Light) -> Any:
    """The next message; EOFError when the other side is gone or sends what is not ours."""
    data = conn.recv_bytes()
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, ValueError) as e:
        raise EOFError(f"a message that is not codevm's: {e}") from None


@functools.cache
def build_id() -> str:
    """A hash of the names, sizes and modification times of codevm's own source files
    (and data: the ranker's model):
    the same for a client and a service only when both run the same code (an upgrade or
    an edit changes it). Stat, not content: reading every file cost a quick command 16 ms."""
    digest = hashlib.sha256()
    stack = [str(_PACKAGE)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith((".py", ".json")):  # code, and the ranker's model
                    st = entry.stat()
                    digest.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]

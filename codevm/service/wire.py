"""The connection to a running service: find it from its files, connect with a bounded
handshake. The CLI's quick path (codevm/quick.py) uses this module alone, so it imports
none of the engine's API: keep it light. On Python 3.11 its connection is `Light`, which
speaks multiprocessing's framing and handshake without importing multiprocessing (21 of
a quick command's ~100 ms of CPU on a slow machine); Python 3.12 changed the handshake,
and there the quick path uses multiprocessing's own.
"""

from __future__ import annotations

import hmac
import os
import select
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from codevm.errors import ServiceUnavailable
from codevm.service.files import ServiceFiles

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

HANDSHAKE_TIMEOUT = 10.0  # a service that takes the connection but never answers it is stuck
# the handshake `Light` speaks: multiprocessing's up to Python 3.11 (an HMAC-MD5 of a
# 20-byte challenge, each way)
LIGHT_HANDSHAKE = sys.version_info < (3, 12)
_CHALLENGE, _WELCOME, _FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"


class Refused(OSError):
    """The other side does not know the key (or is not a codevm service)."""


class Light:
    """multiprocessing.connection.Connection's framing (a 4-byte big-endian length, -1 and
    8 bytes for a longer message) over a socket: what the quick path needs of it."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        self._sock.sendall(header + data)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        (size,) = struct.unpack("!i", self._exactly(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._exactly(8))
        if maxlength is not None and size > maxlength:
            raise OSError("bad message length")
        return self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            part = self._sock.recv(n - len(data))
            if not part:
                raise EOFError("the service closed the connection")
            data += part
        return bytes(data)

    def poll(self, timeout: float = 0.0) -> bool:
        return bool(select.select([self._sock], [], [], timeout)[0])

    def close(self) -> None:
        self._sock.close()


def _answer_challenge(conn: Light, key: bytes) -> None:
    message = conn.recv_bytes(256)
    if not message.startswith(_CHALLENGE):
        raise Refused("not a codevm service's challenge")
    conn.send_bytes(hmac.new(key, message[len(_CHALLENGE):], "md5").digest())
    if conn.recv_bytes(256) != _WELCOME:
        raise Refused("the service refused the key")


def _deliver_challenge(conn: Light, key: bytes) -> None:
    message = os.urandom(20)
    conn.send_bytes(_CHALLENGE + message)
    if not hmac.compare_digest(conn.recv_bytes(256), hmac.new(key, message, "md5").digest()):
        conn.send_bytes(_FAILURE)
        raise Refused("the service does not know the key")
    conn.send_bytes(_WELCOME)


def address_of(info: dict[str, Any]) -> Any:
    address = info["address"]
    return tuple(address) if isinstance(address, list) else address


def connect_once(files: ServiceFiles, light: bool = False) -> Any:
    """A connection to the service (a multiprocessing Connection; with `light`, on Python
    3.11, a `Light` one), or None when it is gone, stale or replaced between reading its
    files (look again)."""
    info = files.read_info()
    if info is None:
        return None
    fast = light and LIGHT_HANDSHAKE and info.get("family") in ("AF_UNIX", "AF_INET")
    gone: tuple[type[BaseException], ...] = (OSError, EOFError, KeyError)  # Refused is an OSError
    if not fast:
        from multiprocessing.context import AuthenticationError

        gone += (AuthenticationError,)
    try:
        key = files.key.read_bytes()
        if fast:
            return light_handshake(address_of(info), info["family"], key)
        if info["family"] not in ("AF_UNIX", "AF_INET"):
            from multiprocessing.connection import Client

            return Client(address_of(info), info["family"], authkey=key)
        return handshake(address_of(info), info["family"], key)
    except TimeoutError:
        raise ServiceUnavailable(stuck(info, files, f"did not answer within {HANDSHAKE_TIMEOUT:.0f}s")) from None
    except gone:
        return None  # gone, stale, or replaced between reading its files: look again


def _connected(address: Any, family: str) -> socket.socket:
    """A socket connected within HANDSHAKE_TIMEOUT, whose reads time out after it too."""
    sock = socket.socket(getattr(socket, family))
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.connect(address)
        sock.settimeout(None)
        _receive_timeout(sock, HANDSHAKE_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


def _both_ways(conn: Any, key: bytes, answer: Any, deliver: Any) -> None:
    """The challenge of each side (the service's first); the receive timeout becomes a
    TimeoutError, and the connection is closed on any failure."""
    try:
        answer(conn, key)
        deliver(conn, key)
    except BlockingIOError:  # the receive timeout
        conn.close()
        raise TimeoutError from None
    except BaseException:
        conn.close()
        raise


def light_handshake(address: Any, family: str, key: bytes) -> Light:
    """`handshake`, with a `Light` connection."""
    conn = Light(_connected(address, family))
    _both_ways(conn, key, _answer_challenge, _deliver_challenge)
    _receive_timeout(conn._sock, 0)  # replies are awaited with select() from here on
    return conn


def handshake(address: Any, family: str, key: bytes) -> Connection:
    """multiprocessing's Client, but a service that never answers fails in HANDSHAKE_TIMEOUT
    (a stopped process's socket still takes connections: Client would wait forever)."""
    from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

    sock = _connected(address, family)
    try:
        conn = Connection(sock.detach())
    finally:
        sock.close()
    _both_ways(conn, key, answer_challenge, deliver_challenge)
    with socket.socket(fileno=os.dup(conn.fileno())) as same:
        _receive_timeout(same, 0)  # replies are awaited with poll() from here on
    return conn


def _receive_timeout(sock: socket.socket, seconds: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(seconds), 0))


def process_state(pid: int) -> str | None:
    """'R', 'S', 'T' (stopped) ... from /proc; None when no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def stuck(info: dict[str, Any] | None, files: ServiceFiles, what: str) -> str:
    pid = int((info or {}).get("pid") or 0)
    state = process_state(pid) if pid else None
    why = f" (it is stopped: kill -CONT {pid} resumes it)" if state in ("T", "t") else ""
    return (f"the codevm service (pid {pid or '?'}) {what}{why}; `codevm service stop` ends it "
            f"(log: {files.log})")

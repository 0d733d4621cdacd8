"""The connection to a running service: find it from its files, connect with a bounded
handshake. The CLI's quick path (codevm/quick.py) uses this module alone, so it imports
none of the engine's API: keep it light.
"""

from __future__ import annotations

import os
import socket
import struct
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from multiprocessing.context import AuthenticationError
from typing import Any

from codevm.errors import ServiceUnavailable
from codevm.service.files import ServiceFiles

HANDSHAKE_TIMEOUT = 10.0  # a service that takes the connection but never answers it is stuck


def address_of(info: dict[str, Any]) -> Any:
    address = info["address"]
    return tuple(address) if isinstance(address, list) else address


def connect_once(files: ServiceFiles) -> Connection | None:
    info = files.read_info()
    if info is None:
        return None
    try:
        key = files.key.read_bytes()
        if info["family"] not in ("AF_UNIX", "AF_INET"):
            return Client(address_of(info), info["family"], authkey=key)
        return handshake(address_of(info), info["family"], key)
    except TimeoutError:
        raise ServiceUnavailable(stuck(info, files, f"did not answer within {HANDSHAKE_TIMEOUT:.0f}s")) from None
    except (OSError, EOFError, KeyError, AuthenticationError):
        return None  # gone, stale, or replaced between reading its files: look again


def handshake(address: Any, family: str, key: bytes) -> Connection:
    """multiprocessing's Client, but a service that never answers fails in HANDSHAKE_TIMEOUT
    (a stopped process's socket still takes connections: Client would wait forever)."""
    sock = socket.socket(getattr(socket, family))
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.connect(address)
        sock.settimeout(None)
        _receive_timeout(sock, HANDSHAKE_TIMEOUT)
        conn = Connection(sock.detach())
    finally:
        sock.close()
    try:
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
    except BlockingIOError:  # the receive timeout
        conn.close()
        raise TimeoutError from None
    except BaseException:
        conn.close()
        raise
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

"""The service's files in the project's data folder, and the lock that elects one service.

- `service.lock`: locked (flock) by the running service for its whole life. A second
  service that cannot take it waits until the first answers, then leaves;
- `service.key`: the running service's key (0600), new at every start;
- `service.json`: its pid, address, build and start time (0600);
- `service.sock`: its Unix socket (0600; in a private temp folder if the path is too long);
- `service.log`: what it logs.

A killed service leaves these files behind, but its lock dies with it: the next service
takes the lock and replaces them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from codevm.errors import ServiceUnavailable
from codevm.project import database_path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

MAX_SOCKET_PATH = 100  # bytes; Unix socket paths are limited to ~104-108


class ServiceFiles:
    """Where a project's service keeps its files. (A plain class: importing dataclasses
    costs the CLI's quick path, which imports this module, ~10 ms.)"""

    __slots__ = ("folder",)

    def __init__(self, folder: Path):
        self.folder = folder

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServiceFiles) and other.folder == self.folder

    def __hash__(self) -> int:
        return hash(self.folder)

    def __repr__(self) -> str:
        return f"ServiceFiles({str(self.folder)!r})"

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
        import tempfile  # only for a long path: the CLI's quick path would pay for it

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


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file that only the owner can read."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

"""Keeps a project's index current as its files change on disk.

The engine service runs one watcher per project, so an index shared by several clients
stays fresh even when no editor reports edits. Changes are debounced into batches; each
batch re-indexes only its paths (a changed ignore file re-checks everything). On start,
a catch-up run picks up what changed while no service was running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from codevm.api import IndexReport
from codevm.indexers.discovery import DEFAULT_EXCLUDED_DIRS

log = logging.getLogger("codevm.watcher")

IGNORE_FILES = frozenset({".gitignore", ".codevmignore", "exclude"})
TICK_MS = 1000  # the watch loop wakes this often even without changes


RETRY_SECONDS = 5


class Watcher:
    def __init__(self, root: Path, data_folder: Path,
                 index: Callable[[list[str] | None], IndexReport], indexed: Callable[[], bool],
                 debounce_ms: int = 300):
        """`index(paths)` re-indexes paths (None: everything); `indexed()` says whether the
        project was ever indexed (until then there is nothing to keep fresh)."""
        self.index = index
        self.indexed = indexed
        self.root = os.path.realpath(root)
        self.data = os.path.realpath(data_folder)
        self.debounce_ms = max(debounce_ms, 50)
        self.running = False
        self.error = ""
        self._pending: set[str] = set()
        self._retry_at = 0.0  # after a failed batch: its paths stay pending until then
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.running = True
        self._thread = threading.Thread(target=self._run, name="codevm-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; a batch being indexed is finished first (up to `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def _wanted(self, _change: watchfiles.Change, path: str) -> bool:
        if path == self.data or path.startswith(self.data + os.sep):
            return False  # our own database and scratch files
        rel = os.path.relpath(path, self.root)
        parts = rel.split(os.sep)
        return parts[0] != ".." and not any(p in DEFAULT_EXCLUDED_DIRS for p in parts[:-1])

    def _run(self) -> None:
        caught_up = False
        try:
            for changes in watchfiles.watch(
                    self.root, watch_filter=self._wanted, debounce=self.debounce_ms, step=50,
                    stop_event=self._stop, rust_timeout=TICK_MS, yield_on_timeout=True,
                    raise_interrupt=False, ignore_permission_denied=True):
                with self._lock:
                    self._pending.update(os.path.relpath(p, self.root).replace(os.sep, "/")
                                         for _, p in changes)
                if not caught_up and time.monotonic() >= self._retry_at:
                    # the watch is in place: nothing that changes from now on is missed
                    caught_up = self._apply(everything=True)
                elif self._pending and time.monotonic() >= self._retry_at:
                    self._apply()
        except Exception as e:  # noqa: BLE001 - the service goes on without watching
            self.error = f"watching stopped: {type(e).__name__}: {e}"
            log.warning("%s", self.error)
        finally:
            self.running = False

    def _apply(self, everything: bool = False) -> bool:
        """Index the pending paths; False when the project has never been indexed."""
        with self._lock:
            paths = sorted(self._pending)
        if not self.indexed():
            with self._lock:
                self._pending.difference_update(paths)
            return False  # nothing to keep fresh: the first index is the user's to start
        if any(p.rsplit("/", 1)[-1] in IGNORE_FILES for p in paths):
            everything = True
        try:
            report = self.index(None if everything else paths)
            if report.parsed or report.deleted:
                log.info("re-indexed %d changed and %d removed files", report.parsed, report.deleted)
            for message in report.messages[:5]:
                log.warning("%s", message[:300])
        except Exception as e:  # noqa: BLE001 - a database error must not stop the watching
            # the paths stay pending (status shows them) and are tried again
            log.warning("re-indexing %d changed files failed (again in %ds): %s",
                        len(paths), RETRY_SECONDS, str(e)[:300])
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return not everything  # a catch-up that failed is tried again as a whole
        with self._lock:
            self._pending.difference_update(paths)
        self._retry_at = 0.0
        return True

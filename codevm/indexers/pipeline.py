"""Incremental indexing of a project: walk, decide what changed, parse in parallel, commit.

mtime+size is the fast path; a file whose mtime moved is hashed and only re-parsed when
its content changed. Parsing runs in one process per core; the main process loads their
output into DuckDB in batches, each one transaction.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from codevm.api import IndexReport, Progress
from codevm.config import Settings
from codevm.db.index_tables import IndexTables
from codevm.indexers.chunker import content_hash
from codevm.indexers.discovery import Candidate, Skipped, WalkMemory, walk_project
from codevm.indexers.languages import EXTRACTOR_VERSION
from codevm.indexers.worker import Limits, TaskFile, TaskResult, run_task

TASK_FILES = 24  # files per worker task: small enough to balance the cores
IN_PROCESS_MAX = 8  # fewer changed files than this are parsed without worker processes
LEXICAL_COMMIT_SECONDS = 10.0  # how stale tantivy may be for searches during a long run
# tasks handed out per worker process at first, and then one per result: enough for the
# workers to go on through the writing process's longest stall, DuckDB's automatic
# checkpoint (1.7 s on u-boot, ~40 tasks of a worker); 40 left a core idle 1 s longer
AHEAD_TASKS = 120



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class Indexer:
    def __init__(self, root: Path, tables: IndexTables, settings: Settings):
        self.root = root
        self.tables = tables
        self.store = tables.store
        self.settings = settings
        self.walk_memory_path = f"{self.store.path}.walk"
        self.limits = Limits(settings.max_file_bytes, settings.max_line_chars,
                             settings.max_chunk_tokens, settings.min_chunk_tokens)

    def _tmp_dir(self) -> Path:
        base = self.store.path.parent / "tmp"
        # runs killed before their cleanup (kill -9) leave their folder behind
        for old in base.glob("run-*") if base.is_dir() else []:
            pid = old.name.split("-")[1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        tmp = base / f"run-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def run(self, only: list[str] | None = None,
            progress: Callable[[Progress], None] | None = None) -> IndexReport:
        """Bring the index up to date with the files on disk (or just `only` paths)."""
        started = time.perf_counter()
        report = IndexReport()
        notify = progress or (lambda p: None)
        notify(Progress("scanning"))
        prefixes = tuple(p.rstrip("/") for p in only) if only else None
        # the files under `only` (a watcher's few paths): reading all of u-boot's 38k rows
        # and testing each against the paths took 250 of an edit's 300 ms
        known = self.tables.known_files(under=list(prefixes) if prefixes else None)
        # what the last whole walk found in each folder (see WalkMemory)
        memory = WalkMemory.load(self.walk_memory_path) if prefixes is None else None
        processes = _Processes(self._workers())
        try:
            todo, skipped, seen = self._walk(known, prefixes, memory, report, processes)
            deleted = [p for p in known if p not in seen]
            report.deleted = len(deleted)
            self._index(todo, deleted, skipped, report, notify, processes)
        finally:
            processes.stop()
        if memory is not None:
            memory.save(self.walk_memory_path)
        report.seconds = time.perf_counter() - started
        self.store.set_meta("last_indexed_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        notify(Progress("done", len(todo), len(todo), report.chunks, report.skipped, report.errors))
        return report

    def _walk(self, known: dict[str, tuple[int, int, str, str, str]], prefixes: tuple[str, ...] | None,
              memory: WalkMemory | None, report: IndexReport,
              processes: _Processes) -> tuple[list[TaskFile], list[tuple[str, str]], set[str]]:
        """The files to parse, the files skipped that the index does not list as such,
        and every path seen. A batch of files to parse starts the parsing processes."""
        todo: list[TaskFile] = []
        skipped: list[tuple[str, str]] = []
        seen: set[str] = set()
        for item in walk_project(str(self.root), self.settings.ignore, self.settings.max_file_bytes,
                                 prefixes, memory):
            seen.add(item.path)
            report.files_seen += 1
            old = known.get(item.path)
            if isinstance(item, Skipped):
                report.skipped += 1
                if old is None or old[4] != "skipped":
                    skipped.append((item.path, item.reason))
                continue
            assert isinstance(item, Candidate)
            current = old if old is not None and old[3] == EXTRACTOR_VERSION else None
            if current and current[0] == item.size and current[1] == item.mtime_ns and current[4] != "error":
                if current[4] == "skipped":
                    report.skipped += 1
                else:
                    report.unchanged += 1
                continue
            known_hash = current[2] if current and current[4] == "indexed" else None
            todo.append(TaskFile(item.path, item.size, item.mtime_ns, known_hash))
            if len(todo) == self.settings.batch_files and processes.count > 1:
                processes.start()
        return todo, skipped, seen

    def update_texts(self, texts: dict[str, str | None]) -> IndexReport:
        """Re-index a few files now: path -> unsaved text, or None to read it from disk. A
        file whose content is what the index holds costs a hash (an editor opening a file)."""
        started = time.perf_counter()
        report = IndexReport()
        todo: list[TaskFile] = []
        deleted: list[str] = []
        known = self.tables.known_files(list(texts))
        for path, text in texts.items():
            if text is None and not (self.root / path).is_file():
                deleted.append(path)
                continue
            current = known.get(path)
            known_hash = current[2] if current and current[3] == EXTRACTOR_VERSION and current[4] == "indexed" \
                else None
            if text is not None and known_hash == content_hash(text.encode("utf-8", "replace")):
                report.unchanged += 1
                continue
            try:
                st = (self.root / path).stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = 0, 0
            # unsaved text gets mtime 0 so that the next scan re-reads the file on disk
            todo.append(TaskFile(path, size, mtime if text is None else 0, known_hash, text))
        report.files_seen = len(texts)
        report.deleted = len(deleted)
        if todo or deleted:  # an unchanged buffer writes nothing (no transaction either)
            self._index(todo, deleted, [], report, lambda p: None)
        report.seconds = time.perf_counter() - started
        return report

    def _index(self, todo: list[TaskFile], deleted: list[str], skipped: list[tuple[str, str]],
               report: IndexReport, notify: Callable[[Progress], None], processes: _Processes | None = None) -> None:
        tmp = self._tmp_dir()
        outputs = _Outputs(tmp)
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            if processes is None:
                processes = _Processes(self._workers())
            stack.callback(processes.stop)
            pending: list[TaskResult] = []
            pending_files = 0
            first = True
            done = 0
            # a long run commits tantivy every LEXICAL_COMMIT_SECONDS, not every batch (a
            # commit cost ~100 ms a batch on u-boot); searches meanwhile see the last one
            bulk = len(todo) >= self.settings.batch_files
            committed_at = time.monotonic()
            if bulk and self._workers() > 1:  # parsing processes take every core
                stack.enter_context(self.store.bulk_threads())
            for result in self._results(todo, outputs, processes):
                done += result.n_files
                report.parsed += result.n_files - result.n_unchanged - result.n_skipped - result.n_errors
                report.unchanged += result.n_unchanged
                report.skipped += result.n_skipped
                report.errors += result.n_errors
                report.chunks += result.n_chunks
                report.messages.extend(result.messages)
                pending.append(result)
                pending_files += result.n_files
                notify(Progress("indexing", done, len(todo), report.chunks, report.skipped,
                                report.errors))
                if pending_files >= self.settings.batch_files:
                    self._commit(pending, outputs, deleted if first else [], skipped if first else [], defer=bulk)
                    first = False
                    pending, pending_files = [], 0
                    if time.monotonic() - committed_at >= LEXICAL_COMMIT_SECONDS:
                        self.store.flush_lexical(compact=False)  # once, at the end
                        committed_at = time.monotonic()
            if pending or first:
                self._commit(pending, outputs, deleted if first else [], skipped if first else [], defer=bulk)
            if bulk:
                self.store.finish_bulk()
            else:
                self.store.flush_lexical()

    def _commit(self, results: list[TaskResult], outputs: _Outputs, deleted: list[str],
                skipped: list[tuple[str, str]], defer: bool = False) -> None:
        # a batch that changes what the index holds says when (in its own transaction: an
        # edit does not pay for a second commit)
        changed = bool(deleted) or any(r.n_files > r.n_unchanged + r.n_skipped for r in results)
        meta = {"last_updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")} if changed else None
        self.tables.load_batch([r.files for r in results], [r.chunks for r in results],
                              [r.symbols for r in results], [r.refs for r in results],
                              deleted, skipped, meta, defer_lexical=defer)
        for r in results:
            outputs.give_back(r)

    def _workers(self) -> int:
        return self.settings.workers or os.cpu_count() or 1

    def _results(self, todo: list[TaskFile], outputs: _Outputs, processes: _Processes) -> Iterator[TaskResult]:
        """Each task's result, as the workers finish them. A task is given the names of
        its output files when it is handed to a worker; a few tasks ahead of the workers
        keep them busy while this process commits a batch."""
        root = str(self.root)
        tasks = (todo[i : i + TASK_FILES] for i in range(0, len(todo), TASK_FILES))
        workers = self._workers()
        if len(todo) < IN_PROCESS_MAX or workers == 1:
            for files in tasks:
                yield run_task(root, files, self.limits, outputs.take())
            return
        pool = processes.start(-(-len(todo) // TASK_FILES))
        done: queue.SimpleQueue[TaskResult | BaseException] = queue.SimpleQueue()

        def submit() -> int:
            files = next(tasks, None)
            if files is None:
                return 0
            pool.apply_async(run_task, (root, files, self.limits, outputs.take()),
                             callback=done.put, error_callback=done.put)
            return 1

        running = sum(submit() for _ in range(AHEAD_TASKS * workers))
        while running:
            result = done.get()
            if isinstance(result, BaseException):
                raise result
            running += submit() - 1
            yield result


class _Processes:
    """A run's parsing processes, started when first needed: by the walk once it has
    found a batch of files to parse, so that their start (~0.4 s of importing on 2 cores)
    overlaps the rest of the walk, or for the tasks; stopped when the run ends."""

    def __init__(self, count: int):
        self.count = count
        self.pool: multiprocessing.pool.Pool | None = None

    def start(self, tasks: int | None = None) -> multiprocessing.pool.Pool:
        if self.pool is None:
            # spawn, not fork: the parent holds a DuckDB connection and threads
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(min(self.count, tasks or self.count))
        return self.pool

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


class _Outputs:
    """Names for the workers' output files, each used again once its batch is committed.
    Creating a file where others were just deleted is slow on ext4 (it searches past
    recently deleted inodes): a new file per task (6,400 for u-boot) cost a tenth of a
    cold index's CPU, against some tens of names for a whole run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.free: list[str] = []
        self.made = 0

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        self.made += 1
        return str(self.folder / f"t{self.made}")

    def give_back(self, result: TaskResult) -> None:
        self.free.append(result.prefix)

"""The Engine: the one API that the CLI, the LSP server and the MCP server call
(`codevm.api.EngineAPI`). A facade: it builds the parts and delegates to them.

Arguments and results are plain JSON-serialisable dataclasses (codevm/api.py).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from codevm.api import (
    API_METHODS,
    MAX_CONTEXT_TOKENS,
    AskResult,
    CodeText,
    CoreBlock,
    EmbeddingProgress,
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
    check_arguments,
)
from codevm.config import Settings
from codevm.db.index_tables import IndexTables
from codevm.db.store import Store
from codevm.errors import InvalidArgument, NotIndexed, PathOutsideProject
from codevm.indexers.discovery import hidden_reason
from codevm.indexers.pipeline import Indexer
from codevm.memory.budget import TokenEstimator
from codevm.memory.core import CoreMemory
from codevm.memory.notes import Notes
from codevm.memory.pager import HeuristicPager
from codevm.memory.recall import Recall
from codevm.project import data_folder, database_path, find_root, project_path, read_lines
from codevm.retrieval.fusion import weights
from codevm.retrieval.ranker import MODEL_FILE, Model
from codevm.retrieval.retriever import Retriever
from codevm.retrieval.symbols import Symbols
from codevm.retrieval.vectors import Vectors

__all__ = ["ChangeMonitor", "Engine"]

_EMBEDDING_SETTINGS = ("embedder", "embed_model", "embed_batch", "embed_max_tokens", "ollama_host")


class ChangeMonitor(Protocol):
    """What keeps the index fresh from outside (the service's file watcher), as `status`
    reports it."""

    @property
    def running(self) -> bool: ...

    @property
    def error(self) -> str: ...

    def pending_count(self) -> int: ...


def _checked(cls: type) -> type:
    """Every API method of `cls` checks its arguments' types and caps first (api.check_arguments):
    the one place every door's calls pass, in process or through the service."""
    for name in API_METHODS:
        method = getattr(cls, name, None)
        if not inspect.isfunction(method):
            continue
        signature = inspect.signature(method)

        def checked(*args: object, _method: Callable = method, _name: str = name,
                    _signature: inspect.Signature = signature, **kwargs: object) -> object:
            try:
                bound = _signature.bind(*args, **kwargs)
            except TypeError as e:
                raise InvalidArgument(f"{_name}: {e}") from None
            check_arguments(_name, {k: v for k, v in bound.arguments.items() if k != "self"})
            return _method(*args, **kwargs)

        setattr(cls, name, functools.wraps(method)(checked))
    return cls


@_checked
class Engine:
    """The project's index and memory in this process (codevm.api.EngineAPI).

    `background_embedding`: embed new code in a background thread after each change (the
    engine service does); otherwise vectors are made when `embed` is called.
    """

    def __init__(self, root: Path, settings: Settings | None = None,
                 background_embedding: bool = False):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        self.background_embedding = background_embedding
        ranker = _ranker(self.settings)  # a bad setting fails before the database is opened
        data_folder(self.root)
        self.store = Store(database_path(self.root), self.settings.workers)
        self.index_tables = IndexTables(self.store)
        self.indexer = Indexer(self.root, self.index_tables, self.settings)
        self.symbols = Symbols(self.store.cursor, self.store.lexical)
        self.notes = Notes(self.store)
        self.core = CoreMemory(self.store)
        self.recall = Recall(self.store)
        self.vectors = Vectors(self.store, self.settings)
        self.retriever = Retriever(self.store.cursor, self.store.lexical, weights(self.settings),
                                   self.vectors)
        self.pager = HeuristicPager(self.store, self.retriever, TokenEstimator(), ranker,
                                    lambda path, start, end: read_lines(self.root, path, start, end).text)
        self.changes: ChangeMonitor | None = None
        self._indexed = False  # once indexed, a project stays indexed
        self._index_lock = threading.Lock()

    @classmethod
    def open(cls, start: Path | str = ".") -> Engine:
        return cls(find_root(Path(start)))

    def close(self) -> None:
        self.vectors.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def monitor_changes(self, monitor: ChangeMonitor) -> None:
        """Report `monitor`'s state in `status` (the service's watcher)."""
        self.changes = monitor

    # -- paths -------------------------------------------------------------------------
    def relative_path(self, path: str) -> str:
        """A path given by a user or client -> '/'-separated path inside the project."""
        return project_path(self.root, path)

    # -- indexing ----------------------------------------------------------------------
    def index(self, paths: list[str] | None = None,
              progress: Callable[[Progress], None] | None = None) -> IndexReport:
        only, refused = self._batch(paths) if paths else (None, [])
        if only == [""]:
            only = None
        if only == []:
            return IndexReport(messages=refused)
        # one run at a time (a client's, the watcher's): the second then finds little to do.
        # Edits (update_file) do not wait for a long run.
        with self._index_lock:
            report = self._indexed_now(self.indexer.run(only, progress))
        report.messages.extend(refused)
        return report

    def _batch(self, paths: list[str]) -> tuple[list[str], list[str]]:
        """The project paths of a batch (a watcher's, a client's), and one message for each
        path that is not the project's: one bad path never costs the others their update."""
        only, refused = [], []
        for path in paths:
            try:
                only.append(self.relative_path(path))
                continue
            except PathOutsideProject:
                # a link of the project to elsewhere: the walk records it as skipped
                lexical = Path(os.path.normpath(path if os.path.isabs(path) else self.root / path))
                if lexical != self.root and self.root in lexical.parents:
                    only.append(lexical.relative_to(self.root).as_posix())
                    continue
            except InvalidArgument:
                pass
            refused.append(f"{str(path)[:200]}: not a path of the project, not indexed")
        return only, refused

    def _indexed_now(self, report: IndexReport) -> IndexReport:
        self.notes.mark_stale()
        if report.chunks and self.background_embedding:
            self.vectors.kick()  # new code gets its vectors in the background
        return report

    def update_file(self, path: str, text: str | None = None) -> IndexReport:
        """Re-index one file now, from its unsaved `text` or from disk."""
        return self._indexed_now(self.indexer.update_texts({self.relative_path(path): text}))

    def configure(self, settings: Settings) -> None:
        """New settings (from an editor) for everything that follows, indexing included."""
        old, self.settings = self.settings, settings
        self.indexer = Indexer(self.root, self.index_tables, settings)
        self.retriever.weights = weights(settings)
        if any(getattr(old, name) != getattr(settings, name) for name in _EMBEDDING_SETTINGS):
            self.vectors.close()
            self.vectors = self.retriever.vectors = Vectors(self.store, settings)
            if self.background_embedding:
                self.vectors.kick()

    def warm_up(self) -> None:
        """Load what the first search or edit would load (each chunk's path and kind, the
        in-process embedding model, the vectors) and resume embedding where it stopped."""
        self.store.lexical.chunks.get(())
        self.vectors.preload()
        if self.background_embedding:
            self.vectors.kick()

    # -- dense vectors -------------------------------------------------------------------
    def embed(self, progress: Callable[[EmbeddingProgress], None] | None = None,
              reset: bool = False) -> EmbeddingProgress:
        """Embed every chunk that has no vector yet, now (`reset`: drop this embedder's
        vectors first). The background work does the same after each index run."""
        self._require_index()
        if reset:
            self.vectors.reset()
        self.vectors.embed(progress)
        return self.vectors.progress()

    def embedding_progress(self) -> EmbeddingProgress:
        return self.vectors.progress()

    # -- code --------------------------------------------------------------------------
    def _require_index(self) -> None:
        if not self._indexed:
            # a first index under way already answers from what it has committed
            self._indexed = self.index_tables.has_files()
        if not self._indexed:
            raise NotIndexed(f"{self.root} is not indexed yet: run `codevm index` first")

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        self._require_index()
        # no lock: committed batches only, so a search never waits for an index batch
        return self.retriever.search(query, k, language, path_glob, kind)

    def symbol(self, name: str, limit: int = 50) -> list[SymbolInfo]:
        """Where `name` (a name or a qualified name like Class.method) is defined."""
        if not name.strip():
            raise InvalidArgument("empty symbol name")
        self._require_index()
        return self.symbols.defined(name.strip(), limit)

    def find_symbols(self, query: str, limit: int = 200) -> list[SymbolInfo]:
        """Symbols whose name holds `query`: exact, then prefix, then shortest; tests last."""
        return self.symbols.matching(query, limit)

    def outline(self, path: str) -> list[SymbolInfo]:
        """The symbols of one file, in order (outer before inner)."""
        rel = self.relative_path(path)
        found = self.symbols.outline(rel)
        if not found and not (self.root / rel).is_file():
            raise InvalidArgument(f"{rel} is not a file of the project")
        return found

    def definitions(self, name: str, from_path: str | None = None, limit: int = 50) -> list[SymbolInfo]:
        """Definitions of `name` as seen from a file: its own first, then modules it imports."""
        return self.symbols.definitions(name, self.relative_path(from_path) if from_path else "", limit)

    def describe(self, name: str, from_path: str | None = None) -> SymbolDetail | None:
        """The best definition of `name` with its signature, docstring and notes."""
        found = self.definitions(name, from_path, limit=1)
        if not found:
            return None
        d = found[0]
        signature, docstring = self.symbols.signature_and_docstring(d)
        notes = [n for n in self.notes.list(d.path) if n.symbol in (d.name, d.qualified_name)]
        return SymbolDetail(d, signature, docstring, notes)

    def read(self, path: str, start_line: int | None = None, end_line: int | None = None) -> CodeText:
        """Lines of a project file as they are on disk (not files the project ignores, nor
        secrets, nor version-control internals, unless `read_ignored` is set)."""
        rel = project_path(self.root, path)
        if not self.settings.read_ignored and (why := hidden_reason(str(self.root), rel, self.settings.ignore)):
            raise InvalidArgument(f"{rel} {why}: not shown (set read_ignored = true to allow it)")
        return read_lines(self.root, rel, start_line, end_line)

    def read_chunk(self, chunk_id: int) -> CodeText:
        """The lines of the file that a chunk (a search hit's id) covers; the indexed text
        when the file no longer has them (the chunk came from an editor's unsaved buffer)."""
        path, start, end = self.symbols.chunk_location(chunk_id)
        try:
            return self.read(path, start, end)
        except InvalidArgument:  # the chunk's own lines, as the index holds them
            path, start, end = self.symbols.chunk_location(chunk_id, whole=False)
            return CodeText(path, start, end, end, self.symbols.chunk_text(chunk_id))

    def refs(self, name: str, limit: int = 200) -> list[RefInfo]:
        """Who calls or imports `name` (the last part of a qualified name counts)."""
        if not name.strip():
            raise InvalidArgument("empty symbol name")
        self._require_index()
        return self.symbols.references(name.strip(), limit)

    def skipped_files(self, limit: int = 1000) -> list[SkippedFile]:
        return [SkippedFile(p, r) for p, r in self.index_tables.skipped(limit)]

    def status(self) -> Status:
        counts = self.index_tables.counts()
        changes = self.changes
        return Status(
            root=str(self.root), database=str(self.store.path),
            database_bytes=counts.database_bytes, files=counts.files, chunks=counts.chunks,
            symbols=counts.symbols, refs=counts.refs, languages=counts.languages,
            skipped=counts.skipped, errors=counts.errors,
            last_indexed_at=counts.last_indexed_at, last_updated_at=counts.last_updated_at,
            process=os.getpid(),
            watching=changes is not None and changes.running,
            pending_changes=changes.pending_count() if changes else 0,
            watch_error=changes.error if changes else "",
            embeddings=self.vectors.progress(),
        )

    # -- memory: notes (archival), core blocks, conversations (recall) -------------------
    def add_note(self, text: str, tags: list[str] | None = None, path: str | None = None,
                 symbol: str | None = None, source: str = "user") -> Note:
        rel = self.relative_path(path) if path else None
        return self.notes.insert(text, tags, source, rel, symbol.strip() if symbol else None)

    def search_notes(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]:
        return self.notes.search(query, k, tag)

    def list_notes(self, path: str | None = None, symbol: str | None = None,
                   limit: int = 100) -> list[Note]:
        return self.notes.list(self.relative_path(path) if path else None, symbol, limit)

    def forget_note(self, note_id: int) -> Note:
        return self.notes.forget(note_id)

    def core_memory(self) -> list[CoreBlock]:
        return self.core.blocks()

    def core_memory_block(self, label: str) -> CoreBlock:
        return self.core.get(label)

    def core_memory_update(self, block: str, text: str, mode: str = "replace",
                           old: str | None = None) -> CoreBlock:
        return self.core.update(block, text, mode, old)

    def conversation_search(self, query: str, k: int = 10, session: str | None = None,
                            since: str | None = None, until: str | None = None) -> list[MessageRecord]:
        return self.recall.search(query, k, session, since, until)

    def sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self.recall.sessions(limit)

    def new_session(self, title: str = "") -> SessionInfo:
        return self.recall.new_session(title)

    def session_messages(self, session_id: str) -> list[MessageRecord]:
        self.recall.session(session_id)  # a clear error for an unknown id
        return self.recall.messages(session_id)

    # -- asking ------------------------------------------------------------------------
    def ask(self, question: str, session: str | None = None, budget: int | None = None,
            on_text: Callable[[str], None] | None = None, new_session: bool = False,
            settings: Settings | None = None,
            on_status: Callable[[str], None] | None = None) -> AskResult:
        """Answer a question with the local model inside a bounded main context.

        `session`: continue that session; None continues the latest unless `new_session`.
        `settings`: the asking client's model settings (model, host, context), if not ours.
        `on_text` gets the answer as it streams; `on_status` what happens meanwhile.
        Without a reachable model the answer is the pages the heuristic pager chose.
        """
        if not question or not question.strip():
            raise InvalidArgument("the question is empty")
        self._require_index()
        ask = _ask()
        memory = ask.Memory(self.root, self.read, self.store, self.retriever, self.pager, self.notes,
                            self.recall, self.core)
        return ask.ask(memory, settings or self.settings, question, session, budget, on_text,
                       new_session, on_status)

    def check_model(self, settings: Settings | None = None) -> ModelCheck:
        """Probe the model once; record which mode of asking it can use."""
        return _ask().check_model(self.store, settings or self.settings)

    def context_for(self, question: str, max_tokens: int = 4000) -> list[PageInfo]:
        if not question.strip():
            raise InvalidArgument("empty question")
        if not 100 <= max_tokens <= MAX_CONTEXT_TOKENS:
            raise InvalidArgument(f"max_tokens must be between 100 and {MAX_CONTEXT_TOKENS:,}, got {max_tokens}")
        self._require_index()
        # the host chose the budget: fill it, most relevant first (the floor that keeps weak
        # pages from a small local model is for `ask`)
        pages = self.pager.prefetch(question, max_tokens, floor=0.0)
        return [_ask().page_info(p) for p in sorted(pages, key=lambda p: -p.relevance)]


def _ask() -> Any:
    """codevm.memory.ask, imported when a question is asked: it brings the model clients
    and httpx (~150 ms that `codevm index` need not pay)."""
    from codevm.memory import ask
    return ask


def _ranker(settings: Settings) -> Model | None:
    """The learned ranker the settings ask for (None: the hand-weighted fusion)."""
    if settings.ranker not in ("learned", "fusion"):
        raise InvalidArgument(f"setting 'ranker' must be learned or fusion, got {settings.ranker!r}")
    return Model.load(MODEL_FILE) if settings.ranker == "learned" else None

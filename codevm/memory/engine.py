"""The Engine: the one API that the CLI, the LSP server and the MCP server call.

Arguments and results are plain JSON-serialisable dataclasses.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from codevm.api import (
    MIN_BUDGET, AskResult, CodeText, CoreBlock, EmbeddingProgress, IndexReport, MessageRecord, Note,
    PageInfo, Progress, RefInfo, SearchHit, SessionInfo, Status, SymbolDetail, SymbolInfo, to_dict)
from codevm.config import Settings
from codevm.errors import InvalidArgument, ModelMissing, ModelUnavailable, NotIndexed
from codevm.indexers.pipeline import Indexer
from codevm.memory.agent import INSTRUCTIONS, TOOLS, Agent
from codevm.memory.embeddings import Vectors
from codevm.memory.context import ContextMessage, MainContext, TokenEstimator
from codevm.memory.conversation import SUMMARY_PROMPT, Conversation
from codevm.memory.model import ModelReply, OllamaModel
from codevm.memory.pager import HeuristicPager
from codevm.memory.records import CoreMemory, Notes, Recall
from codevm.memory.retrieval import Retriever
from codevm.memory.store import Store
from codevm.memory.watcher import Watcher
from codevm.project import data_folder, database_path, find_root, project_path

__all__ = ["Engine", "MIN_BUDGET", "find_root", "to_dict"]



def weights(settings: Settings) -> dict[str, float]:
    return {"lexical": settings.weight_lexical, "named": settings.weight_named,
            "graph": settings.weight_graph, "vector": settings.weight_vector,
            "text": settings.weight_text, "file": settings.weight_file}


_EMBEDDING_SETTINGS = ("embedder", "embed_model", "embed_batch", "embed_max_tokens", "ollama_host")


class Engine:
    def __init__(self, root: Path, settings: Settings | None = None):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        data_folder(self.root)
        self.store = Store(database_path(self.root))
        self.indexer = Indexer(self.root, self.store, self.settings)
        self._indexed = False  # once indexed, a project stays indexed
        self.notes = Notes(self.store)
        self.core = CoreMemory(self.store)
        self.recall_storage = Recall(self.store)
        self.vectors = Vectors(self.store, self.settings)
        self.retriever = Retriever(self.store.cursor, self.store.terms, weights(self.settings),
                                   self.vectors)
        self.pager = HeuristicPager(self.store, self.retriever, TokenEstimator())
        self.watcher: Watcher | None = None  # set by the engine service
        # the engine service embeds new code in the background; an Engine used in-process
        # (a library, CODEVM_SERVICE=0) embeds when asked: embed()
        self.background_embedding = False
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

    # -- paths -------------------------------------------------------------------------
    def relative_path(self, path: str) -> str:
        """A path given by a user or client -> '/'-separated path inside the project."""
        return project_path(self.root, path)

    # -- indexing ----------------------------------------------------------------------
    def index(self, paths: list[str] | None = None,
              progress: Callable[[Progress], None] | None = None) -> IndexReport:
        only = [self.relative_path(p) for p in paths] if paths else None
        if only == [""]:
            only = None
        # one run at a time (a client's, the watcher's): the second then finds little to do.
        # Edits (update_file) do not wait for a long run.
        with self._index_lock:
            return self._indexed_now(self.indexer.run(only, progress))

    def _indexed_now(self, report: IndexReport) -> IndexReport:
        self.notes.mark_stale()
        if report.chunks and self.background_embedding:
            self.vectors.kick()  # new code gets its vectors in the background
        return report

    def configure(self, settings: Settings) -> None:
        """New settings (from an editor) for everything that follows, indexing included."""
        old, self.settings = self.settings, settings
        self.indexer = Indexer(self.root, self.store, settings)
        self.retriever.weights = weights(settings)
        if any(getattr(old, name) != getattr(settings, name) for name in _EMBEDDING_SETTINGS):
            self.vectors.close()
            self.vectors = self.retriever.vectors = Vectors(self.store, settings)
            if self.background_embedding:
                self.vectors.kick()

    def warm_up(self) -> None:
        """Load what the first search or edit would load (the term dictionary, the
        in-process embedding model, the vectors) and resume embedding where it stopped."""
        with self.store.lock:
            self.store.terms.load(self.store.cursor())
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

    def update_file(self, path: str, text: str | None = None) -> IndexReport:
        """Re-index one file now, from its unsaved `text` or from disk."""
        return self._indexed_now(self.indexer.update_texts({self.relative_path(path): text}))

    # -- queries -----------------------------------------------------------------------
    def _require_index(self) -> None:
        if self._indexed:
            return
        # a first index under way already answers from what it has committed
        self._indexed = self.store.get_meta("last_indexed_at") is not None or bool(
            self.store.cursor().execute("SELECT count(*) FROM files").fetchone()[0])
        if not self._indexed:
            raise NotIndexed(f"{self.root} is not indexed yet: run `codevm index` first")

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        self._require_index()
        # no lock: committed terms only, so a search never waits for an index batch
        return self.retriever.search(query, k, language, path_glob, kind)

    def symbol(self, name: str, limit: int = 50) -> list[SymbolInfo]:
        """Where `name` (a name or a qualified name like Class.method) is defined."""
        if not name.strip():
            raise InvalidArgument("empty symbol name")
        self._require_index()
        rows = self.store.cursor().execute(
            """SELECT name, qualified_name, kind, path, start_line, end_line, signature, language
               FROM symbols WHERE name = $n OR qualified_name = $n
                  OR qualified_name LIKE '%.' || $n
               ORDER BY qualified_name = $n DESC, path LIKE '%test%', path, start_line
               LIMIT $limit""", {"n": name.strip(), "limit": limit}).fetchall()
        return [SymbolInfo(*r) for r in rows]

    _SYMBOL_COLUMNS = "name, qualified_name, kind, path, start_line, end_line, signature, language"

    def find_symbols(self, query: str, limit: int = 200) -> list[SymbolInfo]:
        """Symbols whose name holds `query`: exact, then prefix, then shortest; tests last."""
        rows = self.store.cursor().execute(
            f"""SELECT {self._SYMBOL_COLUMNS} FROM symbols
               WHERE $q = '' OR lower(name) LIKE '%' || lower($q) || '%'
                  OR lower(qualified_name) LIKE '%' || lower($q) || '%'
               ORDER BY lower(name) = lower($q) DESC, lower(name) LIKE lower($q) || '%' DESC,
                        path LIKE '%test%', length(name), path
               LIMIT $limit""", {"q": query.strip(), "limit": max(1, min(limit, 1000))}).fetchall()
        return [SymbolInfo(*r) for r in rows]

    def outline(self, path: str) -> list[SymbolInfo]:
        """The symbols of one file, in order (outer before inner)."""
        rel = self.relative_path(path)
        rows = self.store.cursor().execute(
            f"SELECT {self._SYMBOL_COLUMNS} FROM symbols WHERE path = ? "
            "ORDER BY start_line, end_line DESC", [rel]).fetchall()
        if not rows and not (self.root / rel).is_file():
            raise InvalidArgument(f"{rel} is not a file of the project")
        return [SymbolInfo(*r) for r in rows]

    def definitions(self, name: str, from_path: str | None = None, limit: int = 50) -> list[SymbolInfo]:
        """Definitions of `name` as seen from a file: its own first, then modules it imports."""
        rel = self.relative_path(from_path) if from_path else ""
        con = self.store.cursor()
        imports = " ".join(r[0] for r in con.execute(
            "SELECT name FROM refs WHERE path = ? AND kind = 'import'", [rel]).fetchall())
        rows = [SymbolInfo(*r) for r in con.execute(
            f"SELECT {self._SYMBOL_COLUMNS} FROM symbols WHERE name = ? OR qualified_name = ? LIMIT 500",
            [name, name]).fetchall()]
        rows.sort(key=lambda d: (d.path != rel, Path(d.path).stem not in imports,
                                 "test" in d.path, d.path, d.start_line))
        return rows[:limit]

    def describe(self, name: str, from_path: str | None = None) -> SymbolDetail | None:
        """The best definition of `name` with its signature, docstring and notes."""
        found = self.definitions(name, from_path, limit=1)
        if not found:
            return None
        d = found[0]
        row = self.store.cursor().execute(
            "SELECT signature, docstring FROM chunks WHERE path = ? AND start_line <= ? "
            "AND end_line >= ? AND (name = ? OR qualified_name = ?) "
            "ORDER BY end_line - start_line LIMIT 1",
            [d.path, d.start_line, d.start_line, d.name, d.qualified_name]).fetchone()
        notes = [n for n in self.notes.list(d.path) if n.symbol in (d.name, d.qualified_name)]
        return SymbolDetail(d, (row[0] if row else "") or d.signature, (row[1] if row else "") or "",
                            notes)

    def read_chunk(self, chunk_id: int) -> CodeText:
        """The lines of the file that a chunk (a search hit's id) covers."""
        row = self.store.cursor().execute(
            "SELECT path, start_line, end_line FROM chunks WHERE id = ?", [chunk_id]).fetchone()
        if row is None:
            raise InvalidArgument(f"no chunk with id {chunk_id}; ids come from search")
        return self.read(*row)

    def refs(self, name: str, limit: int = 200) -> list[RefInfo]:
        """Who calls or imports `name` (the last part of a qualified name counts)."""
        if not name.strip():
            raise InvalidArgument("empty symbol name")
        self._require_index()
        short = name.strip().rsplit(".", 1)[-1]
        rows = self.store.cursor().execute(
            """SELECT name, kind, path, line, caller, language FROM refs WHERE name = ?
               ORDER BY path, line LIMIT ?""", [short, limit]).fetchall()
        return [RefInfo(*r) for r in rows]

    def read(self, path: str, start_line: int | None = None, end_line: int | None = None) -> CodeText:
        """Lines of a project file as they are on disk."""
        rel = self.relative_path(path)
        full = self.root / rel
        if not full.is_file():
            raise InvalidArgument(f"{rel} is not a file of the project")
        data = full.read_bytes()
        if b"\0" in data[:8192]:
            raise InvalidArgument(f"{rel} is a binary file")
        lines = data.decode("utf-8", "replace").split("\n")
        total = len(lines)
        start = start_line or 1
        end = end_line or total
        if start < 1 or end < start:
            raise InvalidArgument(f"invalid line range {start}-{end}")
        if start > total:
            raise InvalidArgument(f"{rel} has only {total} lines")
        end = min(end, total)
        return CodeText(rel, start, end, total, "\n".join(lines[start - 1 : end]))

    def status(self) -> Status:
        watcher = self.watcher
        con = self.store.cursor()
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        db = self.store.path
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
        return Status(
            root=str(self.root),
            database=str(db),
            database_bytes=size,
            files=one("SELECT count(*) FROM files WHERE status = 'indexed'"),
            chunks=one("SELECT count(*) FROM chunks"),
            symbols=one("SELECT count(*) FROM symbols"),
            refs=one("SELECT count(*) FROM refs"),
            languages=dict(con.execute(
                "SELECT language, count(*) FROM files WHERE status = 'indexed' "
                "GROUP BY 1 ORDER BY 2 DESC").fetchall()),
            skipped=dict(con.execute(
                "SELECT regexp_replace(reason, ' \\(.*$', ''), count(*) FROM files "
                "WHERE status = 'skipped' GROUP BY 1 ORDER BY 2 DESC").fetchall()),
            errors=[f"{p}: {r}" for p, r in con.execute(
                "SELECT path, reason FROM files WHERE status = 'error' ORDER BY path LIMIT 50"
            ).fetchall()],
            last_indexed_at=self.store.get_meta("last_indexed_at"),
            last_updated_at=self.store.get_meta("last_updated_at"),
            process=os.getpid(),
            watching=watcher is not None and watcher.running,
            pending_changes=watcher.pending_count() if watcher else 0,
            watch_error=watcher.error if watcher else "",
            embeddings=self.vectors.progress(),
        )

    # -- memory: notes, core blocks, recall ----------------------------------------------
    def remember(self, text: str, tags: list[str] | None = None, path: str | None = None,
                 symbol: str | None = None, source: str = "user") -> Note:
        rel = self.relative_path(path) if path else None
        return self.notes.insert(text, tags, source, rel, symbol.strip() if symbol else None)

    def recall(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]:
        return self.notes.search(query, k, tag)

    def list_notes(self, path: str | None = None, symbol: str | None = None,
                   limit: int = 100) -> list[Note]:
        return self.notes.list(self.relative_path(path) if path else None, symbol, limit)

    def forget(self, note_id: int) -> Note:
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
        return self.recall_storage.search(query, k, session, since, until)

    def sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self.recall_storage.sessions(limit)

    def new_session(self, title: str = "") -> SessionInfo:
        return self.recall_storage.new_session(title)

    def session_messages(self, session_id: str) -> list[MessageRecord]:
        self.recall_storage.session(session_id)  # a clear error for an unknown id
        return self.recall_storage.messages(session_id)

    # -- asking ------------------------------------------------------------------------
    def ask(self, question: str, session: str | None = None, budget: int | None = None,
            on_text: Callable[[str], None] | None = None, new_session: bool = False,
            settings: Settings | None = None) -> AskResult:
        """Answer a question with the local model inside a bounded main context.

        `session`: continue that session; None continues the latest unless `new_session`.
        `settings`: the asking client's model settings (model, host, context), if not ours.
        Without a reachable model the answer is the pages the heuristic pager chose.
        """
        if not question or not question.strip():
            raise InvalidArgument("the question is empty")
        self._require_index()
        recall = self.recall_storage
        if session:
            info = recall.session(session)
        else:
            latest = None if new_session else recall.latest()
            info = latest or recall.new_session()
        settings = settings or self.settings
        model: OllamaModel | None = OllamaModel(settings.model, settings.ollama_host)
        notice = ""
        num_ctx = settings.num_ctx
        try:
            num_ctx = model.context_length(settings.num_ctx)
        except (ModelUnavailable, ModelMissing) as e:
            model, notice = None, str(e)
        reserve = min(settings.answer_reserve, num_ctx // 4)
        if budget is not None:
            if budget < MIN_BUDGET:
                raise InvalidArgument(f"a budget of {budget} tokens is too small: instructions and "
                                      f"function schemas alone take ~1,000 (at least {MIN_BUDGET})")
            num_ctx = min(num_ctx, budget + reserve)
        factor_key = f"calibration:{settings.model}"
        estimator = TokenEstimator(float(self.store.get_meta(factor_key) or 1.0))
        context = MainContext(num_ctx, reserve, estimator, INSTRUCTIONS, TOOLS)
        context.core = self.core.blocks()

        def summarize(previous: str, transcript: str, words: int) -> str | None:
            if model is None:
                return None
            prompt = SUMMARY_PROMPT.format(words=words)
            room = int((context.budget - estimator.count(prompt) - 64) * 3.0)
            text = (f"Earlier summary:\n{previous}\n\n" if previous else "") + transcript
            try:
                reply = model.chat([{"role": "system", "content": prompt},
                                    {"role": "user", "content": text[-room:]}], [], num_ctx)
            except (ModelUnavailable, ModelMissing):
                return None
            return reply.content.strip() or None

        conversation = Conversation(context, recall, info.id, summarize, settings.pager_share)
        conversation.restore()
        conversation.add(ContextMessage("user", question, estimator.count(question) + 4))
        # the heuristic pager fills the working set's share before the model sees anything
        share = int(settings.pager_share * context.budget) - context.working_set.tokens
        for page in self.pager.prefetch(question, max(0, share), set(context.working_set.pages),
                                        estimator):
            page.last_used = context.working_set.clock
            context.working_set.page_in(page)
        conversation.fit()
        result = AskResult(question, "", info.id, settings.model, model is not None, notice)
        if model is not None:
            def chat(messages: list[dict], estimate: int,
                     stream: Callable[[str], None] | None) -> ModelReply:
                assert estimate <= context.budget, "fit() keeps every prompt within budget"
                reply = model.chat(messages, TOOLS, num_ctx, stream)
                estimator.calibrate(estimate, reply.prompt_tokens)
                return reply

            agent = Agent(self, context, info.id, chat, settings.max_steps, conversation.add)
            try:
                outcome = agent.run(conversation.fit, on_text)
                result.answer, result.steps, result.finished = (
                    outcome.answer, outcome.steps, outcome.finished)
                self.store.set_meta(factor_key, f"{estimator.factor:.4f}")
            except (ModelUnavailable, ModelMissing) as e:
                result.model_used, result.notice = False, str(e)
        pages = sorted(context.working_set.pages.values(), key=lambda p: -p.relevance)
        result.pages = [PageInfo(p.citation, p.path, p.start_line, p.end_line, p.symbol, p.tokens,
                                 p.relevance, p.reason, p.text) for p in pages]
        cited = [p.citation for p in pages if p.path in result.answer]
        if result.answer and not cited and pages:
            cited = [p.citation for p in pages[:5]]
            result.answer += "\n\nSources: " + ", ".join(cited)
        result.citations = cited if result.answer else [p.citation for p in pages]
        result.context = context.report()
        result.evicted_messages = sum(e.messages for e in conversation.state.evictions)
        return result

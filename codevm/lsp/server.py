"""The LSP server: LSP features -> Engine calls, nothing else.

The workspace is indexed in the background with $/progress reports; requests are
answered from what is indexed so far. Open buffers are re-chunked as they change
(debounced), saves and watched-file events keep the index equal to the disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types as t
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from codevm import __version__
from codevm.api import EngineAPI, EngineHandle, to_dict
from codevm.config import Settings
from codevm.errors import CodevmError
from codevm.indexers.identifiers import IDENTIFIER
from codevm.lsp.convert import document_symbols, hover_markdown, line_range, selected_text, symbol_kind, uri_to_path
from codevm.lsp.settings import editor_settings
from codevm.service import open_engine

log = logging.getLogger("codevm.lsp")
PROGRESS_CREATE_SECONDS = 5.0  # a client that never answers must not hold up indexing
DEBOUNCE_SECONDS = 0.15  # typing pauses longer than this; keeps edit -> symbol under 300 ms


class IndexCancelled(Exception):
    """The client cancelled the indexing progress."""


class AnsweringProtocol(LanguageServerProtocol):
    """Every request gets a reply: pygls answered none to params it could not read (a
    list, a string, a negative position) or to a `jsonrpc` other than 2.0, and the client
    waited forever."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except Exception:  # noqa: BLE001 - JsonRpcInvalidParams, JsonRpcInternalError
            if not isinstance(data, dict) or "id" not in data or "method" not in data:
                raise
            method = str(data.get("method"))[:100]
            self._send_response(data["id"], error=t.ResponseError(
                -32602, f"invalid params for {method}: they do not match the LSP specification"))
            return _IGNORED

    def handle_message(self, message: Any) -> None:
        if message is _IGNORED:
            return
        if getattr(message, "jsonrpc", "2.0") != "2.0" and getattr(message, "id", None) is not None:
            self._send_response(message.id, error=t.ResponseError(-32600, "invalid request: jsonrpc must be \"2.0\""))
            return
        super().handle_message(message)


_IGNORED = object()  # a message that was answered while it was read


class CodevmLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codevm", __version__, protocol_cls=AnsweringProtocol)
        # one project (its own index and service) per workspace folder; the first is the
        # one that commands without a file answer from
        self.engines: list[EngineHandle] = []
        self.notifications = False  # the client asked for codevm/* notifications
        self.options: Any = None  # the editor's initializationOptions
        self.budget: int | None = None  # the editor's answer budget (None: the default)
        self._timers: dict[str, threading.Timer] = {}
        # open documents whose index entry came from the editor's text, not the disk: put
        # back to the disk's on save, close, shutdown, exit or a dropped connection (the
        # index is shared with the CLI and MCP, which must not see text nobody saved)
        self.unsaved: set[str] = set()
        self._unsaved_lock = threading.Lock()
        # one update of a buffer at a time: a debounced update already running when the
        # editor shuts down must not put its text back after the revert
        self._update_lock = threading.Lock()
        self._closing = False  # after shutdown, exit or a dropped connection: no more updates

    @property
    def engine(self) -> EngineHandle | None:
        return self.engines[0] if self.engines else None

    @property
    def api(self) -> EngineAPI:
        """The first folder's engine; a request before `initialize` gets a JSON-RPC error."""
        if self.engine is None:
            raise RuntimeError("codevm: the server is not initialized yet")
        return self.engine

    def open_folder(self, root: Path, settings: Settings, configure: bool) -> EngineHandle | None:
        """The folder's project (its service, started if need be); a folder that cannot be
        opened is said in a message and left out."""
        root = root.resolve()
        if any(e.root == root for e in self.engines):
            return None
        try:
            engine = open_engine(root, settings)
            if configure:
                engine.configure(settings)  # the editor's settings also govern the shared index
        except CodevmError as e:
            self.window_show_message(t.ShowMessageParams(t.MessageType.Error, f"codevm: {root}: {e}"))
            return None
        self.engines.append(engine)
        return engine

    def close_folder(self, root: Path) -> None:
        root = root.resolve()
        for engine in [e for e in self.engines if e.root == root]:
            self.revert_unsaved(engine)
            self.engines.remove(engine)
            engine.close()

    def locate(self, uri: str) -> tuple[EngineHandle, str] | None:
        """The project a document belongs to (the innermost folder) and its path there."""
        try:
            path = uri_to_path(uri)
        except Exception:  # noqa: BLE001 - not a file URI
            return None
        for engine in sorted(self.engines, key=lambda e: len(e.root.parts), reverse=True):
            try:
                return engine, engine.relative_path(str(path))
            except CodevmError:
                continue  # a file outside this folder
        return None

    def project_for(self, args: tuple[Any, ...]) -> EngineAPI | None:
        """A command's project: the folder (or the file's folder) of its `uri` argument; None
        when it names none."""
        uri = args[0].get("uri") if args and isinstance(args[0], dict) else None
        if not isinstance(uri, str):
            return None
        if (engine := self.folder(uri)) is not None:
            return engine
        if (found := self.locate(uri)) is not None:
            return found[0]
        raise ValueError(f"codevm: {uri[:200]} is in no workspace folder")

    def folder(self, uri: str) -> EngineHandle | None:
        """The project whose root is this folder URI."""
        try:
            path = uri_to_path(uri).resolve()
        except Exception:  # noqa: BLE001
            return None
        return next((e for e in self.engines if e.root == path), None)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """A codevm/* notification, to a client that asked for them (others are not troubled
        with methods they do not know)."""
        if self.notifications:
            self.protocol.notify(method, params)

    def settings_from(self, root: Path, options: Any) -> Settings:
        """The settings from the editor's options; invalid ones are shown, defaults kept."""
        settings, budget, problems = editor_settings(root, options)
        if budget is not None:
            self.budget = budget
        if problems:
            self.window_show_message(t.ShowMessageParams(
                t.MessageType.Warning,
                "codevm: invalid settings (" + "; ".join(problems) + "); using defaults"))
        return settings

    # -- helpers -------------------------------------------------------------------------
    def word_at(self, uri: str, pos: t.Position) -> str | None:
        if self.locate(uri) is None:  # pygls would read any file of the disk that is not open
            return None
        doc = self.workspace.get_text_document(uri)
        if pos.line >= len(doc.lines):
            return None
        line = doc.lines[pos.line]
        for m in IDENTIFIER.finditer(line):
            if m.start() <= pos.character <= m.end():
                return m.group(0)
        return None

    def symbol_at(self, uri: str, pos: t.Position) -> str | None:
        """The identifier under the cursor, with the buffer's pending edits indexed first."""
        self.flush(uri)
        return self.word_at(uri, pos)

    def cancel_update(self, uri: str) -> bool:
        """Drop a pending debounced update; True if there was one."""
        timer = self._timers.pop(uri, None)
        if timer:
            timer.cancel()
        return timer is not None

    def schedule_update(self, uri: str) -> None:
        """Re-chunk an open buffer's unsaved text, debounced."""
        self.cancel_update(uri)
        timer = threading.Timer(DEBOUNCE_SECONDS, self.update_now, [uri])
        timer.daemon = True
        self._timers[uri] = timer
        timer.start()

    def update_now(self, uri: str, from_disk: bool = False) -> None:
        with self._update_lock:
            if self._closing or (found := self.locate(uri)) is None:
                return
            engine, rel = found
            try:
                text = None if from_disk else self.workspace.get_text_document(uri).source
                report = engine.update_file(rel, text)
                with self._unsaved_lock:
                    if from_disk:
                        self.unsaved.discard(uri)
                    elif report.parsed:  # the index now holds text the disk does not
                        self.unsaved.add(uri)
            except CodevmError as e:
                self.window_log_message(t.LogMessageParams(t.MessageType.Warning, str(e)))

    def revert_unsaved(self, only: EngineHandle | None = None) -> None:
        """Every document indexed from the editor's text (in one project, or all: the
        editor is leaving, and no update runs after this) goes back to the disk's."""
        if only is None:
            self._closing = True
            for uri in list(self._timers):
                self.cancel_update(uri)
        with self._update_lock:  # after an update already under way
            with self._unsaved_lock:
                mine = {u for u in self.unsaved if only is None or ((f := self.locate(u)) and f[0] is only)}
                uris, self.unsaved = sorted(mine), self.unsaved - mine
            for uri in uris:
                self.cancel_update(uri)
                try:
                    if (found := self.locate(uri)) is not None:
                        found[0].update_file(found[1], None)
                except CodevmError as e:
                    log.warning("could not put %s back to the disk's text: %s", uri, e)

    async def progress_token(self, token: str) -> None:
        """window/workDoneProgress/create, if the client said it shows progress; raises if
        it does not, or does not answer within PROGRESS_CREATE_SECONDS (work goes on without)."""
        window = getattr(self.client_capabilities, "window", None)
        if not getattr(window, "work_done_progress", False):
            raise RuntimeError("the client shows no progress")
        await asyncio.wait_for(self.work_done_progress.create_async(token), PROGRESS_CREATE_SECONDS)

    def flush(self, uri: str) -> None:
        if self.cancel_update(uri):
            self.update_now(uri)


server = CodevmLanguageServer()


@server.feature(t.INITIALIZE)
def initialize(ls: CodevmLanguageServer, params: t.InitializeParams) -> None:
    folders = [uri_to_path(f.uri) for f in params.workspace_folders or []]
    if not folders:
        folders = [uri_to_path(params.root_uri) if params.root_uri else Path.cwd()]
    options = params.initialization_options
    ls.notifications = isinstance(options, dict) and options.get("notifications") is True
    ls.options = options  # for folders added later
    for root in folders:  # each folder its own project: its index, its service
        ls.open_folder(root, ls.settings_from(root, options), configure=bool(options))
    if not ls.engines:
        raise CodevmError(f"codevm: no workspace folder could be opened ({', '.join(map(str, folders))})")


@server.feature(t.INITIALIZED)
async def initialized(ls: CodevmLanguageServer, params: t.InitializedParams) -> None:
    _start_indexing(ls, list(ls.engines))


def _start_indexing(ls: CodevmLanguageServer, engines: list[EngineHandle]) -> None:
    async def run() -> None:
        token = str(uuid.uuid4())
        try:
            await ls.progress_token(token)
        except Exception:  # the client may not support progress: index anyway
            token = ""
        indexing = ls.thread_pool.submit(_index_workspace, ls, engines, token)
        await asyncio.wrap_future(indexing)
        for engine in engines:
            await _embedding_progress(ls, engine)

    asyncio.ensure_future(run())


EMBED_POLL_SECONDS = 1.0


async def _embedding_progress(ls: CodevmLanguageServer, engine: EngineHandle) -> None:
    """After indexing, $/progress (and codevm/progress) for the service's background
    embedding while it lasts."""
    try:
        state = await asyncio.to_thread(engine.embedding_progress)
        if not (state.partial and state.running):
            return

        def how_far() -> dict[str, Any]:
            return {"message": f"{state.embedded}/{state.total} chunks",
                    "percentage": int(100 * state.embedded / max(state.total, 1))}

        token = str(uuid.uuid4())
        try:
            await ls.progress_token(token)
            ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: embedding", **how_far()))
        except Exception:  # noqa: BLE001 - the client shows no progress: codevm/progress only
            token = ""
        while state.running and not state.complete:
            ls.notify("codevm/progress", {"root": str(engine.root), "phase": "embedding",
                                          "done": state.embedded, "total": state.total, **how_far()})
            await asyncio.sleep(EMBED_POLL_SECONDS)
            state = await asyncio.to_thread(engine.embedding_progress)
            if token:
                ls.work_done_progress.report(token, t.WorkDoneProgressReport(**how_far()))
        if token:
            ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message=state.describe()))
        ls.notify("codevm/progress", {"root": str(engine.root), "phase": "done", "message": state.describe()})
    except Exception as e:  # noqa: BLE001 - progress is a courtesy: never fail the server
        log.debug("embedding progress: %s", e)


def _index_workspace(ls: CodevmLanguageServer, engines: list[EngineHandle], token: str) -> None:
    progress = ls.work_done_progress
    if token:
        progress.begin(token, t.WorkDoneProgressBegin(title="codevm: indexing", percentage=0,
                                                       cancellable=True))
    cancelled = threading.Event()
    if token:
        progress.tokens[token].add_done_callback(lambda _f: cancelled.set())
    messages = []
    for engine in engines:
        where = f"{engine.root.name}: " if len(ls.engines) > 1 else ""

        def report(p: Any, engine: EngineHandle = engine, where: str = where) -> None:
            if cancelled.is_set():
                raise IndexCancelled  # stops the run; committed batches stay
            if p.phase == "indexing" and p.total:
                message = f"{where}{p.done}/{p.total} files, {p.chunks} chunks"
                percentage = int(100 * p.done / p.total)
                if token:
                    progress.report(token, t.WorkDoneProgressReport(message=message, percentage=percentage))
                ls.notify("codevm/progress", {"root": str(engine.root), "phase": "indexing", "done": p.done,
                                              "total": p.total, "message": message, "percentage": percentage})

        try:
            report_ = engine.index(progress=report)
            # a run that read a file from the disk while its buffer was being indexed
            # (opened or edited meanwhile) put the disk's text back: the buffers that
            # differ from the disk (the unsaved ones) win again
            with ls._unsaved_lock:
                unsaved = sorted(ls.unsaved)
            for uri in unsaved:
                if (found := ls.locate(uri)) is not None and found[0] is engine:
                    ls.update_now(uri)
            engine.warm_up()  # the first edit or search then answers at full speed
            messages.append(f"{where}{report_.parsed} files parsed, {report_.chunks} chunks")
        except IndexCancelled:
            messages.append("cancelled")
            break
        except CodevmError as e:
            messages.append(f"{where}{e}")
            ls.window_show_message(t.ShowMessageParams(t.MessageType.Error, f"codevm: {where}{e}"))
        finally:
            ls.notify("codevm/progress", {"root": str(engine.root), "phase": "indexed", "message": messages[-1]
                                          if messages else ""})
    if token:
        progress.end(token, t.WorkDoneProgressEnd(message="; ".join(messages) or "done"))


@server.feature(t.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
def did_change_workspace_folders(ls: CodevmLanguageServer, params: t.DidChangeWorkspaceFoldersParams) -> None:
    for folder in params.event.removed:
        ls.close_folder(uri_to_path(folder.uri))
    added = []
    for folder in params.event.added:
        root = uri_to_path(folder.uri)
        if (engine := ls.open_folder(root, ls.settings_from(root, ls.options), configure=bool(ls.options))) is not None:
            added.append(engine)
    if added:
        _start_indexing(ls, added)


@server.feature(t.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(ls: CodevmLanguageServer, params: t.DidChangeConfigurationParams) -> None:
    options = params.settings.get("codevm", params.settings) if isinstance(params.settings, dict) else None
    for engine in ls.engines:
        engine.configure(ls.settings_from(engine.root, options))


@server.feature(t.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodevmLanguageServer, params: t.DidOpenTextDocumentParams) -> None:
    """From didOpen the client owns the text: a buffer that differs from what is indexed (a
    restored unsaved buffer, a new file not yet saved) is indexed as the editor has it; one
    that does not costs the engine a hash."""
    ls.update_now(params.text_document.uri)


@server.feature(t.SHUTDOWN)
def shutdown(ls: CodevmLanguageServer, params: Any) -> None:
    ls.revert_unsaved()


@server.feature(t.EXIT)
def exit_(ls: CodevmLanguageServer, params: Any) -> None:
    ls.revert_unsaved()  # a client may exit without shutdown


@server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CodevmLanguageServer, params: t.DidChangeTextDocumentParams) -> None:
    ls.schedule_update(params.text_document.uri)


@server.feature(t.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: CodevmLanguageServer, params: t.DidSaveTextDocumentParams) -> None:
    ls.cancel_update(params.text_document.uri)
    ls.update_now(params.text_document.uri, from_disk=True)


@server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CodevmLanguageServer, params: t.DidCloseTextDocumentParams) -> None:
    ls.cancel_update(params.text_document.uri)
    ls.update_now(params.text_document.uri, from_disk=True)  # unsaved edits are dropped


@server.feature(t.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def did_change_watched_files(ls: CodevmLanguageServer, params: t.DidChangeWatchedFilesParams) -> None:
    for change in params.changes:
        ls.update_now(change.uri, from_disk=True)


# -- features ----------------------------------------------------------------------------
def _uri(engine: EngineAPI, rel: str) -> str:
    return (engine.root / rel).as_uri()


@server.feature(t.WORKSPACE_SYMBOL)
def workspace_symbol(ls: CodevmLanguageServer, params: t.WorkspaceSymbolParams) -> list[t.WorkspaceSymbol]:
    return [t.WorkspaceSymbol(name=d.name, kind=symbol_kind(d.kind),
                              location=t.Location(_uri(engine, d.path), line_range(d.start_line, d.end_line)),
                              container_name=d.qualified_name.rsplit(".", 1)[0] if "." in d.qualified_name else None)
            for engine in list(ls.engines) for d in engine.find_symbols(params.query)]


@server.feature(t.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(ls: CodevmLanguageServer, params: t.DocumentSymbolParams) -> list[t.DocumentSymbol]:
    ls.flush(params.text_document.uri)
    if (found := ls.locate(params.text_document.uri)) is None:
        return []
    engine, rel = found
    return document_symbols(engine.outline(rel))


@server.feature(t.TEXT_DOCUMENT_DEFINITION)
def definition(ls: CodevmLanguageServer, params: t.DefinitionParams) -> list[t.Location]:
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name or (found := ls.locate(params.text_document.uri)) is None:
        return []
    engine, rel = found
    defs = engine.definitions(name, rel, limit=20)
    if defs and defs[0].path == rel:  # exact: defined in this file
        defs = [d for d in defs if d.path == rel]
    return [t.Location(_uri(engine, d.path), line_range(d.start_line, d.end_line)) for d in defs]


@server.feature(t.TEXT_DOCUMENT_REFERENCES)
def references(ls: CodevmLanguageServer, params: t.ReferenceParams) -> list[t.Location]:
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name or (found := ls.locate(params.text_document.uri)) is None:
        return []
    engine, rel = found
    out = [t.Location(_uri(engine, r.path), line_range(r.line, r.line)) for r in engine.refs(name, limit=500)]
    if params.context.include_declaration:
        out += [t.Location(_uri(engine, d.path), line_range(d.start_line, d.start_line))
                for d in engine.definitions(name, rel)]
    return out


@server.feature(t.TEXT_DOCUMENT_HOVER)
def hover(ls: CodevmLanguageServer, params: t.HoverParams) -> t.Hover | None:
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name or (found := ls.locate(params.text_document.uri)) is None:
        return None
    engine, rel = found
    detail = engine.describe(name, rel)
    if detail is None:
        return None
    return t.Hover(contents=t.MarkupContent(t.MarkupKind.Markdown, hover_markdown(detail)))


@server.feature(t.TEXT_DOCUMENT_CODE_LENS)
def code_lens(ls: CodevmLanguageServer, params: t.CodeLensParams) -> list[t.CodeLens]:
    if (found := ls.locate(params.text_document.uri)) is None:
        return []
    engine, rel = found
    counts: dict[str, int] = {}
    for note in engine.list_notes(path=rel):
        if note.symbol:
            counts[note.symbol] = counts.get(note.symbol, 0) + 1
    lenses = []
    for d in engine.outline(rel):
        n = counts.pop(d.qualified_name, 0) or counts.pop(d.name, 0)
        if n:
            lenses.append(t.CodeLens(range=line_range(d.start_line, d.start_line), command=t.Command(
                title=f"{n} note{'s' if n > 1 else ''}", command="codevm.recall",
                arguments=[{"query": d.qualified_name, "uri": params.text_document.uri}])))
    return lenses


@server.feature(t.TEXT_DOCUMENT_CODE_ACTION)
def code_action(ls: CodevmLanguageServer, params: t.CodeActionParams) -> list[t.Command]:
    uri = params.text_document.uri
    if (found := ls.locate(uri)) is None:  # only files of the workspace (pygls reads any file)
        return []
    rel = found[1]
    doc = ls.workspace.get_text_document(uri)
    r = params.range
    last = max(len(doc.lines) - 1, 0)  # a range past the end ends at the last line
    r = t.Range(t.Position(min(r.start.line, last), r.start.character),
                t.Position(min(r.end.line, last), r.end.character))
    selection = selected_text(list(doc.lines), r)
    actions: list[t.Command] = []  # plain commands: they run without editing anything
    if selection:
        actions.append(t.Command(title="Ask codevm about this selection", command="codevm.ask", arguments=[{
            "question": f"In {rel}:{r.start.line + 1}-{r.end.line + 1}, explain:\n{selection}", "uri": uri}]))
    name = ls.word_at(uri, r.start)
    if name:
        actions.append(t.Command(title=f"Remember a note about {name}", command="codevm.remember",
                                 arguments=[{"path": rel, "symbol": name, "uri": uri}]))
    return actions


# -- commands ----------------------------------------------------------------------------
def _arg(args: Any, index: int, key: str) -> Any:
    if isinstance(args, list) and len(args) > index:
        value = args[index]
        return value.get(key) if isinstance(value, dict) and key in value else value
    if isinstance(args, dict):
        return args.get(key)
    return None


def _run(fn: Any) -> Any:
    try:
        return fn()
    except CodevmError as e:
        raise ValueError(str(e)) from None  # a JSON-RPC error the client sees


def _with_uri(engine: EngineAPI, item: Any) -> dict[str, Any]:
    """A result (a dict of to_dict) for an editor: the file's URI beside its project path."""
    assert isinstance(item, dict)
    if item.get("path"):
        item["uri"] = _uri(engine, item["path"])
    return item


@server.command("codevm.search")
def cmd_search(ls: CodevmLanguageServer, *args: Any) -> Any:
    """[query] or [{query, uri?, k?}]: hits of the folder of `uri`, else of every folder."""
    query = _arg(list(args), 0, "query")
    k = _arg(list(args), 0, "k") if args and isinstance(args[0], dict) else 20
    project = ls.project_for(args)
    hits = []
    for engine in [project] if project else list(ls.engines):
        hits += [_with_uri(engine, to_dict(h)) for h in _run(lambda e=engine: e.search(query or "", k=k))]
    return sorted(hits, key=lambda h: -h.get("score", 0))[:k if isinstance(k, int) else 20]


@server.command("codevm.recall")
def cmd_recall(ls: CodevmLanguageServer, *args: Any) -> Any:
    query = _arg(list(args), 0, "query")
    engine = ls.project_for(args) or ls.api
    return [_with_uri(engine, to_dict(n)) for n in _run(lambda: engine.search_notes(query or ""))]


@server.command("codevm.remember")
def cmd_remember(ls: CodevmLanguageServer, *args: Any) -> Any:
    data = args[0] if args and isinstance(args[0], dict) else {}
    text = data.get("text") or (args[1] if len(args) > 1 else None)
    if not text:
        raise ValueError("codevm.remember needs {'text': ..., 'path'?: ..., 'symbol'?: ...}")
    engine = ls.project_for(args) or ls.api
    return _with_uri(engine, to_dict(_run(lambda: engine.add_note(
        text, data.get("tags"), data.get("path"), data.get("symbol"), source="lsp"))))


@server.command("codevm.notes")
def cmd_notes(ls: CodevmLanguageServer, *args: Any) -> Any:
    """[{uri?, path?}]: the notes (newest first, stale ones marked) of a folder, else of all."""
    path = _arg(list(args), 0, "path") if args and isinstance(args[0], dict) else None
    project = ls.project_for(args)
    return [{**_with_uri(engine, to_dict(n)), "root": str(engine.root)}
            for engine in ([project] if project else list(ls.engines))
            for n in _run(lambda e=engine: e.list_notes(path=path, limit=500))]


@server.command("codevm.coreMemory")
def cmd_core_memory(ls: CodevmLanguageServer, *args: Any) -> Any:
    engine = ls.project_for(args) or ls.api
    return to_dict(_run(engine.core_memory))


@server.command("codevm.sessions")
def cmd_sessions(ls: CodevmLanguageServer, *args: Any) -> Any:
    engine = ls.project_for(args) or ls.api
    return to_dict(_run(lambda: engine.sessions(50)))


@server.command("codevm.reindex")
def cmd_reindex(ls: CodevmLanguageServer, *args: Any) -> Any:
    engine = ls.project_for(args) or ls.api
    return _run(lambda: to_dict(engine.index()))


@server.command("codevm.status")
def cmd_status(ls: CodevmLanguageServer, *args: Any) -> Any:
    engine = ls.project_for(args) or ls.api
    return {**_run(lambda: to_dict(engine.status())), "folders": [str(e.root) for e in ls.engines]}


@server.command("codevm.ask")
async def cmd_ask(ls: CodevmLanguageServer, *args: Any) -> Any:
    """[question] or [{question, session?, newSession?, stream?, uri?}]. With `stream` (an id
    the client picks) the answer's text comes as codevm/answer notifications while the
    model writes, and what happens meanwhile as codevm/status; without it the answer is
    also shown as a message (for editors with no view of their own)."""
    question = _arg(list(args), 0, "question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("codevm.ask needs a question (text)")
    data = args[0] if isinstance(args[0], dict) else {}
    stream = data.get("stream")
    stream = str(stream)[:100] if isinstance(stream, (str, int)) and not isinstance(stream, bool) else None
    session = data.get("session") if isinstance(data.get("session"), str) else None
    new_session = data.get("newSession") is True
    engine = ls.project_for(args) or ls.api
    token = str(uuid.uuid4())
    try:
        await ls.progress_token(token)
        ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: thinking"))
    except Exception:
        token = ""
    budget = ls.budget

    def status(message: str) -> None:  # "reading 2,900 tokens of context..."
        if token:
            ls.work_done_progress.report(token, t.WorkDoneProgressReport(message=message))
        if stream:
            ls.protocol.notify("codevm/status", {"stream": stream, "message": message})

    def text(delta: str) -> None:
        ls.protocol.notify("codevm/answer", {"stream": stream, "text": delta})

    try:
        result = await asyncio.get_running_loop().run_in_executor(
            ls.thread_pool, lambda: _run(lambda: engine.ask(
                question, session=session, budget=budget, on_text=text if stream else None,
                new_session=new_session, on_status=status)))
    finally:
        if token:
            ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message="done"))
    if not stream:
        if result.answer:
            sources = "" if result.cites_code else "\n\nSources: " + ", ".join(result.citations)
            shown = result.answer + sources
        else:
            cited = "\n".join(f"- {p.citation} {p.symbol}" for p in result.pages)
            shown = f"No model answered: {result.notice}\n\nCode codevm selected:\n{cited}"
        ls.window_show_message(t.ShowMessageParams(t.MessageType.Info, shown[:4000]))
    out = _with_uri(engine, to_dict(result))
    out["root"] = str(engine.root)
    for page in out["pages"]:
        _with_uri(engine, page)
    return out


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def main(argv_tcp: bool = False, host: str = "127.0.0.1", port: int = 2087) -> None:
    if argv_tcp and host not in LOOPBACK:
        # the protocol has no authentication: anyone who reaches the port reads the project
        raise SystemExit(f"codevm lsp --tcp listens on loopback only ({', '.join(LOOPBACK)}), not {host}: "
                         "use stdio, or an SSH tunnel to reach it from another machine")
    if argv_tcp:
        server.start_tcp(host, port)
    else:
        try:
            server.start_io()
        finally:  # the editor quit or its connection dropped (Neovim :qa! sends no didClose)
            server.revert_unsaved()

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
        self.engine: EngineHandle | None = None
        self.budget: int | None = None  # the editor's answer budget (None: the default)
        self._timers: dict[str, threading.Timer] = {}
        # open documents whose index entry came from the editor's text, not the disk: put
        # back to the disk's on save, close, shutdown, exit or a dropped connection (the
        # index is shared with the CLI and MCP, which must not see text nobody saved)
        self.unsaved: set[str] = set()
        self._unsaved_lock = threading.Lock()

    @property
    def api(self) -> EngineAPI:
        """The project's engine; a request before `initialize` gets a JSON-RPC error."""
        if self.engine is None:
            raise RuntimeError("codevm: the server is not initialized yet")
        return self.engine

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
    def rel(self, uri: str) -> str | None:
        try:
            return self.api.relative_path(str(uri_to_path(uri)))
        except CodevmError:
            return None  # a file outside the project

    def uri(self, rel: str) -> str:
        return (self.api.root / rel).as_uri()

    def word_at(self, uri: str, pos: t.Position) -> str | None:
        if self.rel(uri) is None:  # pygls would read any file of the disk that is not open
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
        if self.engine is None or (rel := self.rel(uri)) is None:
            return
        try:
            text = None if from_disk else self.workspace.get_text_document(uri).source
            report = self.engine.update_file(rel, text)
            with self._unsaved_lock:
                if from_disk:
                    self.unsaved.discard(uri)
                elif report.parsed:  # the index now holds text the disk does not
                    self.unsaved.add(uri)
        except CodevmError as e:
            self.window_log_message(t.LogMessageParams(t.MessageType.Warning, str(e)))

    def revert_unsaved(self) -> None:
        """Every document indexed from the editor's text goes back to the disk's."""
        with self._unsaved_lock:
            uris, self.unsaved = sorted(self.unsaved), set()
        for uri in uris:
            self.cancel_update(uri)
            try:
                if self.engine is not None and (rel := self.rel(uri)) is not None:
                    self.engine.update_file(rel, None)
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
    folders = params.workspace_folders or []
    root = uri_to_path(folders[0].uri) if folders else (
        uri_to_path(params.root_uri) if params.root_uri else Path.cwd())
    settings = ls.settings_from(root, params.initialization_options)
    if len(folders) > 1:  # said, not silently dropped
        ls.window_show_message(t.ShowMessageParams(t.MessageType.Warning, (
            f"codevm serves one workspace folder, {root}; the other {len(folders) - 1} are not indexed "
            "(open them as their own workspaces)")))
    ls.engine = engine = open_engine(root.resolve(), settings)  # the service, started if need be
    if params.initialization_options:
        engine.configure(settings)  # the editor's settings also govern the shared index


@server.feature(t.INITIALIZED)
async def initialized(ls: CodevmLanguageServer, params: t.InitializedParams) -> None:
    token = str(uuid.uuid4())
    try:
        await ls.progress_token(token)
    except Exception:  # the client may not support progress: index anyway
        token = ""
    indexing = ls.thread_pool.submit(_index_workspace, ls, token)
    if token:
        asyncio.ensure_future(_embedding_progress(ls, asyncio.wrap_future(indexing)))


EMBED_POLL_SECONDS = 1.0


async def _embedding_progress(ls: CodevmLanguageServer, indexing: asyncio.Future) -> None:
    """After indexing, $/progress for the service's background embedding while it lasts."""
    await indexing
    engine = ls.api
    try:
        state = await asyncio.to_thread(engine.embedding_progress)
        if not (state.partial and state.running):
            return
        def how_far() -> dict[str, Any]:
            return {"message": f"{state.embedded}/{state.total} chunks",
                    "percentage": int(100 * state.embedded / max(state.total, 1))}

        token = str(uuid.uuid4())
        await ls.progress_token(token)
        ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: embedding", **how_far()))
        while state.running and not state.complete:
            await asyncio.sleep(EMBED_POLL_SECONDS)
            state = await asyncio.to_thread(engine.embedding_progress)
            ls.work_done_progress.report(token, t.WorkDoneProgressReport(**how_far()))
        ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message=state.describe()))
    except Exception as e:  # noqa: BLE001 - progress is a courtesy: never fail the server
        log.debug("embedding progress: %s", e)


def _index_workspace(ls: CodevmLanguageServer, token: str) -> None:
    progress = ls.work_done_progress
    if token:
        progress.begin(token, t.WorkDoneProgressBegin(title="codevm: indexing", percentage=0,
                                                       cancellable=True))
    cancelled = threading.Event()
    if token:
        progress.tokens[token].add_done_callback(lambda _f: cancelled.set())

    def report(p: Any) -> None:
        if cancelled.is_set():
            raise IndexCancelled  # stops the run; committed batches stay
        if token and p.phase == "indexing" and p.total:
            progress.report(token, t.WorkDoneProgressReport(
                message=f"{p.done}/{p.total} files, {p.chunks} chunks",
                percentage=int(100 * p.done / p.total)))

    message = "done"
    try:
        report_ = ls.api.index(progress=report)
        ls.api.warm_up()  # the first edit or search then answers at full speed
        message = f"{report_.parsed} files parsed, {report_.chunks} chunks"
    except IndexCancelled:
        message = "cancelled"
    except CodevmError as e:
        message = str(e)
        ls.window_show_message(t.ShowMessageParams(t.MessageType.Error, f"codevm: {e}"))
    finally:
        if token:
            progress.end(token, t.WorkDoneProgressEnd(message=message))


@server.feature(t.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(ls: CodevmLanguageServer, params: t.DidChangeConfigurationParams) -> None:
    if ls.engine is None:
        return
    options = params.settings.get("codevm", params.settings) if isinstance(params.settings, dict) else None
    ls.api.configure(ls.settings_from(ls.api.root, options))


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
@server.feature(t.WORKSPACE_SYMBOL)
def workspace_symbol(ls: CodevmLanguageServer, params: t.WorkspaceSymbolParams) -> list[t.WorkspaceSymbol]:
    return [t.WorkspaceSymbol(name=d.name, kind=symbol_kind(d.kind),
                              location=t.Location(ls.uri(d.path), line_range(d.start_line, d.end_line)),
                              container_name=d.qualified_name.rsplit(".", 1)[0] if "." in d.qualified_name else None)
            for d in ls.api.find_symbols(params.query)]


@server.feature(t.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(ls: CodevmLanguageServer, params: t.DocumentSymbolParams) -> list[t.DocumentSymbol]:
    ls.flush(params.text_document.uri)
    rel = ls.rel(params.text_document.uri)
    if rel is None:
        return []
    return document_symbols(ls.api.outline(rel))


@server.feature(t.TEXT_DOCUMENT_DEFINITION)
def definition(ls: CodevmLanguageServer, params: t.DefinitionParams) -> list[t.Location]:
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name:
        return []
    rel = ls.rel(params.text_document.uri)
    defs = ls.api.definitions(name, rel, limit=20)
    if defs and defs[0].path == rel:  # exact: defined in this file
        defs = [d for d in defs if d.path == rel]
    return [t.Location(ls.uri(d.path), line_range(d.start_line, d.end_line)) for d in defs]


@server.feature(t.TEXT_DOCUMENT_REFERENCES)
def references(ls: CodevmLanguageServer, params: t.ReferenceParams) -> list[t.Location]:
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name:
        return []
    out = [t.Location(ls.uri(r.path), line_range(r.line, r.line)) for r in ls.api.refs(name, limit=500)]
    if params.context.include_declaration:
        out += [t.Location(ls.uri(d.path), line_range(d.start_line, d.start_line))
                for d in ls.api.definitions(name, ls.rel(params.text_document.uri))]
    return out


@server.feature(t.TEXT_DOCUMENT_HOVER)
def hover(ls: CodevmLanguageServer, params: t.HoverParams) -> t.Hover | None:
    name = ls.symbol_at(params.text_document.uri, params.position)
    detail = ls.api.describe(name, ls.rel(params.text_document.uri)) if name else None
    if detail is None:
        return None
    return t.Hover(contents=t.MarkupContent(t.MarkupKind.Markdown, hover_markdown(detail)))


@server.feature(t.TEXT_DOCUMENT_CODE_LENS)
def code_lens(ls: CodevmLanguageServer, params: t.CodeLensParams) -> list[t.CodeLens]:
    rel = ls.rel(params.text_document.uri)
    if rel is None:
        return []
    counts: dict[str, int] = {}
    for note in ls.api.list_notes(path=rel):
        if note.symbol:
            counts[note.symbol] = counts.get(note.symbol, 0) + 1
    lenses = []
    for d in ls.api.outline(rel):
        n = counts.pop(d.qualified_name, 0) or counts.pop(d.name, 0)
        if n:
            lenses.append(t.CodeLens(range=line_range(d.start_line, d.start_line), command=t.Command(
                title=f"{n} note{'s' if n > 1 else ''}", command="codevm.recall",
                arguments=[d.qualified_name])))
    return lenses


@server.feature(t.TEXT_DOCUMENT_CODE_ACTION)
def code_action(ls: CodevmLanguageServer, params: t.CodeActionParams) -> list[t.Command]:
    rel = ls.rel(params.text_document.uri)
    if rel is None:  # only files of the workspace (pygls reads any file of the disk)
        return []
    doc = ls.workspace.get_text_document(params.text_document.uri)
    r = params.range
    last = max(len(doc.lines) - 1, 0)  # a range past the end ends at the last line
    r = t.Range(t.Position(min(r.start.line, last), r.start.character),
                t.Position(min(r.end.line, last), r.end.character))
    selection = selected_text(list(doc.lines), r)
    actions: list[t.Command] = []  # plain commands: they run without editing anything
    if selection:
        actions.append(t.Command(title="Ask codevm about this selection", command="codevm.ask", arguments=[
            f"In {rel}:{r.start.line + 1}-{r.end.line + 1}, explain:\n{selection}"]))
    name = ls.word_at(params.text_document.uri, r.start)
    if name:
        actions.append(t.Command(title=f"Remember a note about {name}", command="codevm.remember",
                                 arguments=[{"path": rel, "symbol": name}]))
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


@server.command("codevm.search")
def cmd_search(ls: CodevmLanguageServer, *args: Any) -> Any:
    query = _arg(list(args), 0, "query")
    return _run(lambda: to_dict(ls.api.search(query or "", k=20)))  # the engine checks its type


@server.command("codevm.recall")
def cmd_recall(ls: CodevmLanguageServer, *args: Any) -> Any:
    query = _arg(list(args), 0, "query")
    return _run(lambda: to_dict(ls.api.search_notes(query or "")))


@server.command("codevm.remember")
def cmd_remember(ls: CodevmLanguageServer, *args: Any) -> Any:
    data = args[0] if args and isinstance(args[0], dict) else {}
    text = data.get("text") or (args[1] if len(args) > 1 else None)
    if not text:
        raise ValueError("codevm.remember needs {'text': ..., 'path'?: ..., 'symbol'?: ...}")
    return _run(lambda: to_dict(ls.api.add_note(text, data.get("tags"), data.get("path"),
                                                  data.get("symbol"), source="lsp")))


@server.command("codevm.reindex")
def cmd_reindex(ls: CodevmLanguageServer, *args: Any) -> Any:
    return _run(lambda: to_dict(ls.api.index()))


@server.command("codevm.status")
def cmd_status(ls: CodevmLanguageServer, *args: Any) -> Any:
    return _run(lambda: to_dict(ls.api.status()))


@server.command("codevm.ask")
async def cmd_ask(ls: CodevmLanguageServer, *args: Any) -> Any:
    question = _arg(list(args), 0, "question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("codevm.ask needs a question (text)")
    token = str(uuid.uuid4())
    try:
        await ls.progress_token(token)
        ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: thinking"))
    except Exception:
        token = ""
    engine = ls.api
    budget = ls.budget

    def status(message: str) -> None:  # "reading 2,900 tokens of context..."
        if token:
            ls.work_done_progress.report(token, t.WorkDoneProgressReport(message=message))

    try:
        result = await asyncio.get_running_loop().run_in_executor(
            ls.thread_pool, lambda: _run(lambda: engine.ask(question, budget=budget,
                                                            on_status=status)))
    finally:
        if token:
            ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message="done"))
    if result.answer:
        sources = "" if result.cites_code else "\n\nSources: " + ", ".join(result.citations)
        text = result.answer + sources
    else:
        cited = "\n".join(f"- {p.citation} {p.symbol}" for p in result.pages)
        text = f"No model answered: {result.notice}\n\nCode codevm selected:\n{cited}"
    ls.window_show_message(t.ShowMessageParams(t.MessageType.Info, text[:4000]))
    return to_dict(result)


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

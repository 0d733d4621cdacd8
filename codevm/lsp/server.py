"""The LSP server: LSP features -> Engine calls, nothing else.

The workspace is indexed in the background with $/progress reports; requests are
answered from what is indexed so far. Open buffers are re-chunked as they change
(debounced), saves and watched-file events keep the index equal to the disk.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from lsprotocol import types as t
from pygls.lsp.server import LanguageServer

from codevm import __version__
from codevm.config import Settings
from codevm.errors import CodevmError
from codevm.api import MIN_BUDGET, to_dict
from codevm.service import RemoteEngine, open_engine

if TYPE_CHECKING:
    from codevm.memory.engine import Engine

log = logging.getLogger("codevm.lsp")
DEBOUNCE_SECONDS = 0.15  # typing pauses longer than this; keeps edit -> symbol under 300 ms
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SYMBOL_KINDS = {
    "function": t.SymbolKind.Function, "method": t.SymbolKind.Method, "class": t.SymbolKind.Class,
    "interface": t.SymbolKind.Interface, "enum": t.SymbolKind.Enum, "module": t.SymbolKind.Module,
    "struct": t.SymbolKind.Struct, "constant": t.SymbolKind.Constant,
}


class IndexCancelled(Exception):
    """The client cancelled the indexing progress."""


def uri_to_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


class CodevmLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codevm", __version__)
        self.engine: Engine | RemoteEngine | None = None
        self.settings_overrides: dict[str, Any] = {}
        self._timers: dict[str, threading.Timer] = {}

    # -- helpers -------------------------------------------------------------------------
    def rel(self, uri: str) -> str | None:
        assert self.engine is not None
        try:
            return self.engine.relative_path(str(uri_to_path(uri)))
        except CodevmError:
            return None  # a file outside the project

    def uri(self, rel: str) -> str:
        assert self.engine is not None
        return (self.engine.root / rel).as_uri()

    def word_at(self, uri: str, pos: t.Position) -> str | None:
        doc = self.workspace.get_text_document(uri)
        if pos.line >= len(doc.lines):
            return None
        line = doc.lines[pos.line]
        for m in WORD.finditer(line):
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
            self.engine.update_file(rel, text)
        except CodevmError as e:
            self.window_log_message(t.LogMessageParams(t.MessageType.Warning, str(e)))

    def flush(self, uri: str) -> None:
        if self.cancel_update(uri):
            self.update_now(uri)


server = CodevmLanguageServer()


def _settings(root: Path, options: Any) -> Settings:
    settings = Settings.load(root)
    if not isinstance(options, dict):
        return settings
    problems = []
    for key, attr, kind in (("model", "model", str), ("ollamaHost", "ollama_host", str),
                            ("numCtx", "num_ctx", int), ("ignore", "ignore", list)):
        if key in options:
            value = options[key]
            if isinstance(value, kind) and not isinstance(value, bool):
                setattr(settings, attr, value)
            else:
                problems.append(f"{key} must be a {kind.__name__}")
    if "budget" in options:
        value = options["budget"]
        if isinstance(value, int) and not isinstance(value, bool) and value >= MIN_BUDGET:
            server.settings_overrides["budget"] = value
        else:
            problems.append(f"budget must be a number of tokens >= {MIN_BUDGET}")
    if problems:
        server.window_show_message(t.ShowMessageParams(
            t.MessageType.Warning, "codevm: invalid settings (" + "; ".join(problems) + "); using defaults"))
    return settings


@server.feature(t.INITIALIZE)
def initialize(ls: CodevmLanguageServer, params: t.InitializeParams) -> None:
    folders = params.workspace_folders or []
    root = uri_to_path(folders[0].uri) if folders else (
        uri_to_path(params.root_uri) if params.root_uri else Path.cwd())
    settings = _settings(root, params.initialization_options)
    ls.engine = open_engine(root.resolve(), settings)  # the project's service, started if need be
    if params.initialization_options:
        ls.engine.configure(settings)  # the editor's settings also govern the shared index


@server.feature(t.INITIALIZED)
async def initialized(ls: CodevmLanguageServer, params: t.InitializedParams) -> None:
    token = str(uuid.uuid4())
    try:
        await ls.work_done_progress.create_async(token)
    except Exception:  # the client may not support progress: index anyway
        token = ""
    indexing = ls.thread_pool.submit(_index_workspace, ls, token)
    if token:
        asyncio.ensure_future(_embedding_progress(ls, asyncio.wrap_future(indexing)))


EMBED_POLL_SECONDS = 1.0


async def _embedding_progress(ls: CodevmLanguageServer, indexing: asyncio.Future) -> None:
    """After indexing, $/progress for the service's background embedding while it lasts."""
    await indexing
    engine = ls.engine
    assert engine is not None
    try:
        state = await asyncio.to_thread(engine.embedding_progress)
        if not (state.partial and state.running):
            return
        def how_far() -> dict[str, Any]:
            return {"message": f"{state.embedded}/{state.total} chunks",
                    "percentage": int(100 * state.embedded / max(state.total, 1))}

        token = str(uuid.uuid4())
        await ls.work_done_progress.create_async(token)
        ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: embedding", **how_far()))
        while state.running and not state.complete:
            await asyncio.sleep(EMBED_POLL_SECONDS)
            state = await asyncio.to_thread(engine.embedding_progress)
            ls.work_done_progress.report(token, t.WorkDoneProgressReport(**how_far()))
        ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message=state.describe()))
    except Exception as e:  # noqa: BLE001 - progress is a courtesy: never fail the server
        log.debug("embedding progress: %s", e)


def _index_workspace(ls: CodevmLanguageServer, token: str) -> None:
    assert ls.engine is not None
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
        report_ = ls.engine.index(progress=report)
        ls.engine.warm_up()  # the first edit or search then answers at full speed
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
    ls.engine.configure(_settings(ls.engine.root, options))


@server.feature(t.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodevmLanguageServer, params: t.DidOpenTextDocumentParams) -> None:
    pass  # the file on disk is indexed; unsaved changes arrive through didChange


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
def _range(start: int, end: int) -> t.Range:
    return t.Range(t.Position(max(start - 1, 0), 0), t.Position(max(end - 1, 0), 10_000))


@server.feature(t.WORKSPACE_SYMBOL)
def workspace_symbol(ls: CodevmLanguageServer, params: t.WorkspaceSymbolParams) -> list[t.WorkspaceSymbol]:
    assert ls.engine is not None
    return [t.WorkspaceSymbol(name=d.name, kind=SYMBOL_KINDS.get(d.kind, t.SymbolKind.Variable),
                              location=t.Location(ls.uri(d.path), _range(d.start_line, d.end_line)),
                              container_name=d.qualified_name.rsplit(".", 1)[0] if "." in d.qualified_name else None)
            for d in ls.engine.find_symbols(params.query)]


@server.feature(t.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(ls: CodevmLanguageServer, params: t.DocumentSymbolParams) -> list[t.DocumentSymbol]:
    assert ls.engine is not None
    ls.flush(params.text_document.uri)
    rel = ls.rel(params.text_document.uri)
    if rel is None:
        return []
    roots: list[t.DocumentSymbol] = []
    stack: list[tuple[t.DocumentSymbol, int]] = []
    for d in ls.engine.outline(rel):
        sym = t.DocumentSymbol(name=d.name, kind=SYMBOL_KINDS.get(d.kind, t.SymbolKind.Variable),
                               range=_range(d.start_line, d.end_line),
                               selection_range=_range(d.start_line, d.start_line),
                               detail=d.signature or None, children=[])
        while stack and stack[-1][1] < d.end_line:
            stack.pop()
        (stack[-1][0].children if stack else roots).append(sym)  # type: ignore[union-attr]
        stack.append((sym, d.end_line))
    return roots


@server.feature(t.TEXT_DOCUMENT_DEFINITION)
def definition(ls: CodevmLanguageServer, params: t.DefinitionParams) -> list[t.Location]:
    assert ls.engine is not None
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name:
        return []
    rel = ls.rel(params.text_document.uri)
    defs = ls.engine.definitions(name, rel, limit=20)
    if defs and defs[0].path == rel:  # exact: defined in this file
        defs = [d for d in defs if d.path == rel]
    return [t.Location(ls.uri(d.path), _range(d.start_line, d.end_line)) for d in defs]


@server.feature(t.TEXT_DOCUMENT_REFERENCES)
def references(ls: CodevmLanguageServer, params: t.ReferenceParams) -> list[t.Location]:
    assert ls.engine is not None
    name = ls.symbol_at(params.text_document.uri, params.position)
    if not name:
        return []
    out = [t.Location(ls.uri(r.path), _range(r.line, r.line)) for r in ls.engine.refs(name, limit=500)]
    if params.context.include_declaration:
        out += [t.Location(ls.uri(d.path), _range(d.start_line, d.start_line))
                for d in ls.engine.definitions(name, ls.rel(params.text_document.uri))]
    return out


@server.feature(t.TEXT_DOCUMENT_HOVER)
def hover(ls: CodevmLanguageServer, params: t.HoverParams) -> t.Hover | None:
    assert ls.engine is not None
    name = ls.symbol_at(params.text_document.uri, params.position)
    detail = ls.engine.describe(name, ls.rel(params.text_document.uri)) if name else None
    if detail is None:
        return None
    d = detail.definition
    parts = [f"```\n{detail.signature or d.qualified_name}\n```"]
    if detail.docstring:
        parts.append(detail.docstring)
    parts.append(f"*{d.path}:{d.start_line}-{d.end_line}*")
    if detail.notes:
        parts.append("**Notes**\n" + "\n".join(
            f"- {n.text}{' *(stale: the code changed)*' if n.stale else ''} (#{n.id}, {n.source})"
            for n in detail.notes))
    return t.Hover(contents=t.MarkupContent(t.MarkupKind.Markdown, "\n\n".join(parts)))


@server.feature(t.TEXT_DOCUMENT_CODE_LENS)
def code_lens(ls: CodevmLanguageServer, params: t.CodeLensParams) -> list[t.CodeLens]:
    assert ls.engine is not None
    rel = ls.rel(params.text_document.uri)
    if rel is None:
        return []
    counts: dict[str, int] = {}
    for note in ls.engine.list_notes(path=rel):
        if note.symbol:
            counts[note.symbol] = counts.get(note.symbol, 0) + 1
    lenses = []
    for d in ls.engine.outline(rel):
        n = counts.pop(d.qualified_name, 0) or counts.pop(d.name, 0)
        if n:
            lenses.append(t.CodeLens(range=_range(d.start_line, d.start_line), command=t.Command(
                title=f"{n} note{'s' if n > 1 else ''}", command="codevm.recall",
                arguments=[d.qualified_name])))
    return lenses


@server.feature(t.TEXT_DOCUMENT_CODE_ACTION)
def code_action(ls: CodevmLanguageServer, params: t.CodeActionParams) -> list[t.Command]:
    doc = ls.workspace.get_text_document(params.text_document.uri)
    r = params.range
    lines = list(doc.lines[r.start.line: r.end.line + 1])
    if lines:
        lines[-1] = lines[-1][: r.end.character] if r.end.line != r.start.line else lines[-1][r.start.character: r.end.character]
        if r.end.line != r.start.line:
            lines[0] = lines[0][r.start.character:]
    selection = "".join(lines).strip()
    rel = ls.rel(params.text_document.uri) or ""
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
    assert ls.engine is not None
    query = _arg(list(args), 0, "query")
    return _run(lambda: to_dict(ls.engine.search(str(query or ""), k=20)))


@server.command("codevm.recall")
def cmd_recall(ls: CodevmLanguageServer, *args: Any) -> Any:
    assert ls.engine is not None
    query = _arg(list(args), 0, "query")
    return _run(lambda: to_dict(ls.engine.recall(str(query or ""))))


@server.command("codevm.remember")
def cmd_remember(ls: CodevmLanguageServer, *args: Any) -> Any:
    assert ls.engine is not None
    data = args[0] if args and isinstance(args[0], dict) else {}
    text = data.get("text") or (args[1] if len(args) > 1 else None)
    if not text:
        raise ValueError("codevm.remember needs {'text': ..., 'path'?: ..., 'symbol'?: ...}")
    return _run(lambda: to_dict(ls.engine.remember(str(text), data.get("tags"), data.get("path"),
                                                  data.get("symbol"), source="lsp")))


@server.command("codevm.reindex")
def cmd_reindex(ls: CodevmLanguageServer, *args: Any) -> Any:
    assert ls.engine is not None
    return _run(lambda: to_dict(ls.engine.index()))


@server.command("codevm.status")
def cmd_status(ls: CodevmLanguageServer, *args: Any) -> Any:
    assert ls.engine is not None
    return _run(lambda: to_dict(ls.engine.status()))


@server.command("codevm.ask")
async def cmd_ask(ls: CodevmLanguageServer, *args: Any) -> Any:
    assert ls.engine is not None
    question = _arg(list(args), 0, "question")
    if not question or not str(question).strip():
        raise ValueError("codevm.ask needs a question")
    token = str(uuid.uuid4())
    try:
        await ls.work_done_progress.create_async(token)
        ls.work_done_progress.begin(token, t.WorkDoneProgressBegin(title="codevm: thinking"))
    except Exception:
        token = ""
    engine = ls.engine
    budget = ls.settings_overrides.get("budget")
    try:
        result = await asyncio.get_running_loop().run_in_executor(
            ls.thread_pool, lambda: _run(lambda: engine.ask(str(question), budget=budget)))
    finally:
        if token:
            ls.work_done_progress.end(token, t.WorkDoneProgressEnd(message="done"))
    if result.model_used:
        text = result.answer
    else:
        cited = "\n".join(f"- {p.citation} {p.symbol}" for p in result.pages)
        text = f"No model answered: {result.notice}\n\nCode codevm selected:\n{cited}"
    ls.window_show_message(t.ShowMessageParams(t.MessageType.Info, text[:4000]))
    return to_dict(result)


def main(argv_tcp: bool = False, host: str = "127.0.0.1", port: int = 2087) -> None:
    if argv_tcp:
        server.start_tcp(host, port)
    else:
        server.start_io()

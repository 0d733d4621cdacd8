"""The `codevm` command: parse arguments, call the Engine, print. Nothing else lives here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click

from codevm import __version__, render
from codevm.api import EmbeddingProgress, EngineHandle, to_dict
from codevm.api import Progress as IndexProgress
from codevm.errors import CodevmError, ProjectNotFound
from codevm.project import find_root
from codevm.service import open_engine, service_info, stop_service


class Printer:
    """Prints a line to stdout or stderr. Styles are render.ansi's codes (click.echo drops
    them when the output is not a terminal), never from markup in the text: a path, note or title
    holding "[/x]" is printed as it is. rich, for progress bars only, is imported on first
    use (importing it costs a quick command more than the rest of its start-up)."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self.stderr, highlight=False, soft_wrap=True)
        return self._console

    def print(self, text: str = "", end: str = "\n") -> None:
        click.echo(text + end, nl=False, err=self.stderr)


def bold(text: str) -> str:
    return render.ansi(text, "bold")


def dim(text: str) -> str:
    return render.ansi(text, "dim")


out = Printer()
err = Printer(stderr=True)


def _progress(*columns: str, disable: bool) -> Any:
    """A transient progress bar on stderr: a description column, then `columns` of
    bar, count, detail and elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    made = {"bar": BarColumn, "count": MofNCompleteColumn, "elapsed": TimeElapsedColumn}
    return Progress(*[made[c]() if c in made else TextColumn(c) for c in columns],
                    console=err.console, transient=True, disable=disable)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"codevm: error: {message}")
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors become one clear line and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CodevmError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; what was committed is kept — run the command again to finish", 130)
        except BrokenPipeError:  # `codevm ask ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and Python's last flush
        except OSError as e:
            _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")

    return wrapper


@contextmanager
def engine_at(start: str = ".", root: Path | None = None) -> Iterator[EngineHandle]:
    """The project's engine, through its service (started if need be)."""
    with open_engine(root or find_root(Path(start))) as engine:
        yield engine


def _emit(rendered: render.Rendered) -> None:
    """Print what codevm/render.py made; exit with its code when that is not 0."""
    for to_err, text in rendered.lines:
        (err if to_err else out).print(text)
    if rendered.code:
        sys.exit(rendered.code)


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group()
@click.version_option(__version__, prog_name="codevm")
def main() -> None:
    """codevm: a persistent, local memory of your codebase for code assistants."""


def _rebuild(root: Path) -> None:
    from codevm.db.rescue import rebuild
    from codevm.project import database_path

    with contextlib.suppress(CodevmError):
        stop_service(root)  # it holds the file
    report = rebuild(database_path(root))
    kept = ", ".join(f"{n} {table}" for table, n in report.kept.items() if table != "meta") or "nothing"
    lost = "; ".join(f"{table}: {why}" for table, why in report.lost.items())
    err.print(f"rebuilt the database: kept {kept}" + (f" (unreadable: {lost})" if lost else "")
              + (f"; the old file is {report.moved_to}, what could be read of it {report.exported_to}"
                 if report.moved_to else ""))


@main.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--rebuild", is_flag=True,
              help="A new database (for a corrupt one): the old file is kept aside; notes, core "
                   "memory and conversations that can be read from it are kept.")
@handle_errors
def index(path: str, as_json: bool, rebuild: bool) -> None:
    """Index the project at PATH (or bring its index up to date)."""
    target = Path(path).resolve()
    if not target.is_dir():
        raise ProjectNotFound(f"{path} is not a folder")
    try:
        root = find_root(target)
    except ProjectNotFound:
        root = target
    if rebuild:
        _rebuild(root)
    with engine_at(root=root) as engine:
        only = None if target == root else [str(target)]
        with _progress("[bold]{task.description}", "bar", "count", "{task.fields[detail]}", "elapsed",
                       disable=as_json) as bar:
            task = bar.add_task("scanning", total=None, detail="")

            def on_progress(p: IndexProgress) -> None:
                bar.update(task, description=p.phase, completed=p.done, total=p.total or None,
                           detail=f"{p.chunks} chunks, {p.skipped} skipped, {p.errors} errors")

            report = engine.index(only, on_progress)
        if as_json:
            _print_json(to_dict(report))
            return
        for message in report.messages[:20]:
            err.print(f"warning: {message}")
        out.print(
            f"indexed {root}: {report.parsed} parsed, {report.unchanged} unchanged, "
            f"{report.deleted} removed, {report.skipped} skipped, {report.errors} errors, "
            f"{report.chunks} chunks in {report.seconds:.1f}s")


@main.command()
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=10, show_default=True, help="Number of results.")
@click.option("--lang", "language", help="Only this language (python, go, ...).")
@click.option("--path", "path_glob", help="Only paths matching this glob (src/*.py).")
@click.option("--kind", help="Only this kind (function, method, class, module, section, window).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@handle_errors
def search(query: tuple[str, ...], k: int, language: str | None, path_glob: str | None,
           kind: str | None, as_json: bool) -> None:
    """Find code by words, identifiers or symbol names."""
    with engine_at() as engine:
        hits = engine.search(" ".join(query), k, language, path_glob, kind)
        vectors = None if as_json else engine.embedding_progress()  # JSON: hits only
    _emit(render.search(hits, vectors, as_json, render.ansi, render.ansi))


@main.command()
@click.option("--reset", is_flag=True, help="Drop this embedder's vectors first and embed again.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def embed(reset: bool, as_json: bool) -> None:
    """Give every chunk its dense vector now (the service also does it in the background)."""
    with engine_at() as engine:
        with _progress("[bold]embedding", "bar", "count", "elapsed", disable=as_json) as bar:
            task = bar.add_task("embedding", total=None)

            def on_progress(p: EmbeddingProgress) -> None:
                bar.update(task, completed=p.embedded, total=p.total or None)

            result = engine.embed(on_progress, reset)
    if as_json:
        _print_json(to_dict(result))
        return
    out.print(result.describe())


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def symbol(name: str, as_json: bool) -> None:
    """Where NAME (or Class.method) is defined."""
    with engine_at() as engine:
        found = engine.symbol(name)
    _emit(render.symbol(found, name, as_json))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def refs(name: str, as_json: bool) -> None:
    """Who calls or imports NAME."""
    with engine_at() as engine:
        found = engine.refs(name)
    _emit(render.refs(found, name, as_json))


@main.command()
@click.argument("location")
@handle_errors
def show(location: str) -> None:
    """Print PATH or PATH:START-END (or PATH:LINE) of a project file."""
    path, start, end = location, None, None
    if ":" in location:
        head, _, tail = location.rpartition(":")
        bounds = tail.split("-", 1)
        if head and all(b.isdigit() for b in bounds):
            path = head
            start = int(bounds[0])
            end = int(bounds[1]) if len(bounds) > 1 else start
    with engine_at() as engine:
        code = engine.read(path, start, end)
    width = len(str(code.end_line))
    for number, line in enumerate(code.text.split("\n"), start=code.start_line):
        out.print(f"{number:>{width}}  {line}")


@main.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@click.option("--skipped", is_flag=True, help="List every path left out of the index, with its reason.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(path: str, skipped: bool, as_json: bool) -> None:
    """What the index of the project at PATH holds: files, chunks, languages, skipped files, size."""
    with engine_at(path) as engine:
        if skipped:
            left_out = engine.skipped_files(10_000)
        else:
            st = engine.status()
    if skipped:
        if as_json:
            _print_json(to_dict(left_out))
        else:
            for item in left_out:
                click.echo(f"{item.path}\t{item.reason}")  # tab-separated, for grep and cut
        return
    _emit(render.status(st, as_json, os.getpid()))


# -- the engine service --------------------------------------------------------------------
@main.group()
def model() -> None:
    """The local model that `codevm ask` uses."""


@model.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def model_check(as_json: bool) -> None:
    """Ask the model once to call a function; record how `ask` should use it."""
    with engine_at() as engine:
        found = engine.check_model()
    if as_json:
        _print_json(to_dict(found))
        return
    how = ("tool mode: it pages code and memory itself" if found.mode == "tools" else
           "pager-first: one answer over the code the pager chooses")
    out.print(f"{found.model} at {found.server} (context {found.context_length:,} tokens): "
              f"{how} ({found.reason}; {found.seconds:.0f}s). Set ask_mode to override.")


@main.group()
def service() -> None:
    """The engine service: one process per project that owns its index (started on demand)."""


@service.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def service_status(as_json: bool) -> None:
    """Whether the project's service runs, since when, with how many clients."""
    root = find_root(Path("."))
    info = service_info(root)
    if as_json:
        _print_json({"running": info is not None, **(info or {})})
        return
    if info is None:
        out.print(f"no service runs for {root}; the next command starts one")
        return
    out.print(f"running    pid {info['pid']} since {info['started_at']} at {info['address']}")
    out.print(f"clients    {info['clients']} connected, {info['calls']} calls served, "
              f"exits after {info['idle_seconds']}s without clients")
    out.print(f"watching   {'yes' if info['watching'] else 'no'}, "
              f"{info['pending_changes']} changes pending")


@service.command("stop")
@handle_errors
def service_stop() -> None:
    """Stop the project's service (clients start a new one when they need it)."""
    root = find_root(Path("."))
    info = stop_service(root)
    out.print(f"stopped the service (pid {info['pid']})" if info else "no service was running")


@service.command("run")
@click.option("--root", "root_", default=".", type=click.Path(file_okay=False),
              help="The project's root folder.")
@handle_errors
def service_run(root_: str) -> None:
    """Run the service in the foreground, logging to stderr (clients start it by themselves)."""
    from codevm.service.server import main as run

    sys.exit(run([str(Path(root_).resolve())]))


# -- asking and memory -------------------------------------------------------------------
def _show_context(result: Any) -> None:
    """Draw main context: each section with its tokens, a bar of the budget, the pages."""
    ctx = result.context
    if ctx is None:
        return
    width = 40
    filled = min(width, round(width * ctx.used / max(ctx.budget, 1)))
    colour = "red" if ctx.pressure else "green"
    out.print("\n" + bold("main context") + f" {ctx.used}/{ctx.budget} tokens (num_ctx {ctx.num_ctx}) "
              + render.ansi('█' * filled, colour) + '░' * (width - filled))
    for section in ctx.sections:
        out.print(f"  {section.name:<13} {section.tokens:>6} tok")
        for item in section.items:
            out.print(f"      {item}")
    if result.evicted_messages:
        out.print("  " + dim(f"{result.evicted_messages} messages evicted to recall storage"))


def _print_answer(result: Any, show_context: bool) -> None:
    if result.answer:
        if result.streamed:
            out.print()
            if result.corrected:  # printed as the model wrote it: say what it meant
                out.print(dim(f"Cited: {'; '.join(result.corrected)}"))
        else:
            out.print(result.answer)
        if not result.cites_code and result.citations:
            out.print(dim(f"Sources: {', '.join(result.citations)}"))
        if result.truncated:
            err.print("codevm: the answer was cut at its length limit (raise answer_reserve for longer ones)")
        if result.repeated:
            err.print("codevm: the model began repeating itself: it was stopped, and its answer ends "
                      "before the repeats (ask again, or try a larger model)")
        if not result.finished:
            err.print(f"codevm: the model did not finish within {len(result.steps)} steps: "
                      "this is what it had")
    else:
        out.print(bold("Code the pager selected for this question:"))
        for page in result.pages:
            out.print("\n" + render.ansi(page.citation, "cyan") + f" {page.symbol} " + dim(f"({page.reason})"))
            out.print("\n".join(page.text.split("\n")[:12]))
        what = "no model answered" if not result.model_used else "the model gave no answer"
        err.print(f"codevm: {what}: {result.notice}")
    if show_context:
        _show_context(result)


def _status(text: str) -> None:
    err.print(dim(text))


@main.command()
@click.argument("question", nargs=-1, required=True)
@click.option("--session", help="Continue this session (default: the latest).")
@click.option("--new", "new_session", is_flag=True, help="Start a new session.")
@click.option("--budget", type=int, help="Token budget of main context.")
@click.option("--show-context", is_flag=True, help="Draw main context after answering.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def ask(question: tuple[str, ...], session: str | None, new_session: bool, budget: int | None,
        show_context: bool, as_json: bool) -> None:
    """Answer QUESTION about the project with the local model and paged code."""
    with engine_at() as engine:
        stream = None if as_json else (lambda text: out.print(text, end=""))
        result = engine.ask(" ".join(question), session=session, budget=budget,
                            on_text=stream, new_session=new_session,
                            on_status=None if as_json else _status)
        if as_json:
            _print_json(to_dict(result))
            return
        _print_answer(result, show_context)
        if result.model_used and not result.answer:
            sys.exit(1)  # a model ran and gave no answer (without a model, the pages are one)


CHAT_HELP = """/memory  core memory blocks     /notes QUERY  search notes
/pages   the working set        /budget       main context by section
/new     start a new session    /quit         leave (Ctrl-D too)"""


@main.command()
@click.option("--session", help="Continue this session (default: the latest).")
@click.option("--budget", type=int, help="Token budget of main context.")
@handle_errors
def chat(session: str | None, budget: int | None) -> None:
    """Talk with the model about the project; the session and its memory persist."""
    with engine_at() as engine:
        last = None
        current = session or (s[0].id if (s := engine.sessions(1)) else None)
        out.print(dim(f"codevm chat — session {current or '(new)'}; /help for commands"))
        while True:
            try:
                line = click.prompt("", prompt_suffix="› ", default="", show_default=False).strip()
            except (EOFError, click.Abort):
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/help":
                out.print(CHAT_HELP)
            elif line == "/memory":
                for block in engine.core_memory():
                    out.print(bold(block.label) + f" ({len(block.value)}/{block.limit}): {block.value}")
            elif line.startswith("/notes"):
                for note in engine.search_notes(line[6:].strip() or "note"):
                    out.print(f"[{note.id}] {note.text}")
            elif line in ("/pages", "/budget"):
                if last is None:
                    out.print(dim("ask something first"))
                elif line == "/pages":
                    for page in last.pages:
                        out.print(f"{page.citation} {page.symbol} ({page.tokens} tok, {page.reason})")
                else:
                    _show_context(last)
            elif line == "/new":
                current = engine.new_session().id
                out.print(dim(f"session {current}"))
            else:
                last = engine.ask(line, session=current, budget=budget,
                                  on_text=lambda text: out.print(text, end=""),
                                  new_session=current is None, on_status=_status)
                current = last.session_id
                _print_answer(last, False)


@main.group()
def memory() -> None:
    """Core memory blocks, archival notes and conversation sessions."""


@memory.command("core")
@click.argument("block", required=False)
@click.argument("text", required=False)
@click.option("--append", is_flag=True, help="Append TEXT instead of replacing the block.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_core(block: str | None, text: str | None, append: bool, as_json: bool) -> None:
    """Show core memory, or set BLOCK (project, user, task) to TEXT."""
    with engine_at() as engine:
        if block and text is not None:
            engine.core_memory_update(block, text, mode="append" if append else "replace")
        blocks = engine.core_memory()
        if block:
            blocks = [engine.core_memory_block(block)]
        if as_json:
            _print_json(to_dict(blocks))
            return
        for b in blocks:
            out.print(bold(b.label) + " " + dim(f"({len(b.value)}/{b.limit} chars; {b.description})"))
            out.print(b.value or dim("(empty)"))


@memory.group("notes")
def memory_notes() -> None:
    """Archival notes: add, list, search, forget."""


def _print_notes(notes: list[Any], as_json: bool) -> None:
    if as_json:
        _print_json(to_dict(notes))
        return
    for n in notes:
        anchor = f" {n.path}{'::' + n.symbol if n.symbol else ''}" if n.path else ""
        stale = " " + render.ansi("STALE", "red") if n.stale else ""
        tags = " " + dim(f"#{' #'.join(n.tags)}") if n.tags else ""
        out.print(bold(f"[{n.id}]") + stale + render.ansi(anchor, "cyan") + tags + " "
                  + dim(f"{n.source} {n.updated_at}"))
        out.print(f"    {n.text}")
    if not notes:
        out.print(dim("no notes"))


@memory_notes.command("add")
@click.argument("text")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--path", help="Anchor the note to this file.")
@click.option("--symbol", help="Anchor the note to this symbol in --path.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def notes_add(text: str, tags: tuple[str, ...], path: str | None, symbol: str | None,
              as_json: bool) -> None:
    with engine_at() as engine:
        _print_notes([engine.add_note(text, list(tags), path, symbol)], as_json)


@memory_notes.command("list")
@click.option("--path", help="Only notes about this file.")
@click.option("--symbol", help="Only notes about this symbol.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def notes_list(path: str | None, symbol: str | None, as_json: bool) -> None:
    with engine_at() as engine:
        _print_notes(engine.list_notes(path, symbol), as_json)


@memory_notes.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def notes_search(query: tuple[str, ...], k: int, as_json: bool) -> None:
    with engine_at() as engine:
        _print_notes(engine.search_notes(" ".join(query), k), as_json)


@memory_notes.command("forget")
@click.argument("note_id", type=int)
@handle_errors
def notes_forget(note_id: int) -> None:
    with engine_at() as engine:
        note = engine.forget_note(note_id)
        out.print(f"forgot note {note.id}")


@memory.command("sessions")
@click.argument("session_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_sessions(session_id: str | None, as_json: bool) -> None:
    """List sessions, or show the messages of SESSION_ID."""
    with engine_at() as engine:
        if session_id:
            messages = engine.session_messages(session_id)
            if as_json:
                _print_json(to_dict(messages))
                return
            for m in messages:
                where = "" if m.in_context else " " + dim("(evicted)")
                out.print(bold(m.role) + where + " " + dim(m.created_at))
                out.print(f"    {m.content[:2000]}")
            return
        sessions = engine.sessions()
        if as_json:
            _print_json(to_dict(sessions))
            return
        for s in sessions:
            out.print(bold(s.id) + f" {s.updated_at} " + dim(f"{s.messages} messages") + f" {s.title}")
        if not sessions:
            out.print(dim("no sessions yet: codevm ask QUESTION"))


@memory.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--since", help="Only messages from this date (2026-11-23).")
@click.option("--until", help="Only messages before this date.")
@click.option("-k", "k", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_search(query: tuple[str, ...], since: str | None, until: str | None, k: int,
                  as_json: bool) -> None:
    """Search the messages of every session (recall storage)."""
    with engine_at() as engine:
        found = engine.conversation_search(" ".join(query), k, since=since, until=until)
        if as_json:
            _print_json(to_dict(found))
            return
        for m in found:
            out.print(bold(m.session_id) + f" {m.role} " + dim(m.created_at))
            out.print(f"    {m.content[:500]}")


@main.command("mcp")
@click.option("--project", default=".", help="The project (default: the current folder's).")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option("--port", default=8765, show_default=True, help="HTTP: port.")
@handle_errors
def mcp_command(project: str, transport: str, host: str, port: int) -> None:
    """Serve codevm's memory to assistants over the Model Context Protocol."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)  # stdout is the wire
    root = find_root(Path(project))
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(open_engine, root)  # the service starts while the SDK loads
        from codevm.mcp_server.server import build_server

        engine = opening.result()
    with engine:
        server = build_server(engine)
        if transport == "stdio":
            server.run("stdio")
        else:
            from codevm.mcp_server.http import project_token, serve_http

            token, where, made = project_token(root)
            err.print(f"codevm mcp: http://{host}:{port}/mcp; clients send 'Authorization: Bearer <token>'"
                      + (f": the token is {token} (kept in {where})" if made else f"; the token is in {where}"))
            # the HTTP server's access log writes to stdout; logs belong on stderr
            with contextlib.redirect_stdout(sys.stderr):
                serve_http(server, host, port, token)


@main.command("lsp")
@click.option("--tcp", is_flag=True, help="Listen on TCP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2087, show_default=True)
@click.option("--log-file", type=click.Path(dir_okay=False), help="Write logs here (default: stderr).")
@click.option("-v", "verbose", count=True, help="More logging (-vv for debug).")
def lsp_command(tcp: bool, host: str, port: int, log_file: str | None, verbose: int) -> None:
    """Serve codevm to editors over the Language Server Protocol (stdio by default)."""
    import logging

    from codevm.lsp.server import main as serve

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    if log_file:
        logging.basicConfig(filename=log_file, level=level)
    else:
        logging.basicConfig(stream=sys.stderr, level=level)  # stdout is the wire
    serve(tcp, host, port)

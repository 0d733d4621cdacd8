"""The `codevm` command: parse arguments, call the Engine, print. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from codevm import __version__
from codevm.errors import CodevmError, ProjectNotFound
from codevm.indexers.pipeline import Progress as IndexProgress
from codevm.memory.engine import Engine, find_root, to_dict

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"codevm: error: {message}", markup=False)
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
        except OSError as e:
            _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")

    return wrapper


@contextmanager
def engine_at(start: str = ".") -> Iterator[Engine]:
    with Engine.open(start) as engine:
        yield engine


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group()
@click.version_option(__version__, prog_name="codevm")
def main() -> None:
    """codevm: a persistent, local memory of your codebase for code assistants."""


@main.command()
@click.argument("path", default=".", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def index(path: str, as_json: bool) -> None:
    """Index the project at PATH (or bring its index up to date)."""
    target = Path(path).resolve()
    if not target.is_dir():
        raise ProjectNotFound(f"{path} is not a folder")
    try:
        root = find_root(target)
    except ProjectNotFound:
        root = target
    with Engine(root) as engine:
        only = None if target == root else [str(target)]
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("scanning", total=None, detail="")

            def on_progress(p: IndexProgress) -> None:
                bar.update(task, description=p.phase, completed=p.done, total=p.total or None,
                           detail=f"{p.chunks} chunks, {p.skipped} skipped, {p.errors} errors")

            report = engine.index(only, on_progress)
        if as_json:
            _print_json(to_dict(report))
            return
        for message in report.messages[:20]:
            err.print(f"warning: {message}", markup=False)
        out.print(
            f"indexed {root}: {report.parsed} parsed, {report.unchanged} unchanged, "
            f"{report.deleted} removed, {report.skipped} skipped, {report.errors} errors, "
            f"{report.chunks} chunks in {report.seconds:.1f}s", markup=False)


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
    if as_json:
        _print_json(to_dict(hits))
        return
    if not hits:
        out.print("no results")
    for hit in hits:
        symbol = f"  {hit.kind} {hit.symbol}" if hit.symbol else f"  {hit.kind}"
        out.print(f"[bold]{hit.path}:{hit.start_line}-{hit.end_line}[/]{symbol}  "
                  f"[dim]({hit.score:.2f})[/]")
        for line in hit.snippet.split("\n"):
            out.print(f"    {line}", markup=False)


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def symbol(name: str, as_json: bool) -> None:
    """Where NAME (or Class.method) is defined."""
    with engine_at() as engine:
        found = engine.symbol(name)
    if as_json:
        _print_json(to_dict(found))
        return
    if not found:
        _fail(f"no definition of {name!r} in the index")
    for s in found:
        out.print(f"{s.path}:{s.start_line}-{s.end_line}  {s.kind} {s.qualified_name}  "
                  f"{s.signature}", markup=False)


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def refs(name: str, as_json: bool) -> None:
    """Who calls or imports NAME."""
    with engine_at() as engine:
        found = engine.refs(name)
    if as_json:
        _print_json(to_dict(found))
        return
    if not found:
        _fail(f"no reference to {name!r} in the index")
    for r in found:
        where = f" in {r.caller}" if r.caller else ""
        out.print(f"{r.path}:{r.line}  {r.kind}{where}", markup=False)


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
        out.print(f"{number:>{width}}  {line}", markup=False)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(as_json: bool) -> None:
    """What the index holds: files, chunks, languages, skipped files, size."""
    with engine_at() as engine:
        st = engine.status()
    if as_json:
        _print_json(to_dict(st))
        return
    out.print(f"project    {st.root}", markup=False)
    out.print(f"database   {st.database} ({st.database_bytes / 1e6:.1f} MB)", markup=False)
    out.print(f"indexed    {st.files} files, {st.chunks} chunks, {st.symbols} symbols, "
              f"{st.refs} references; last run {st.last_indexed_at or 'never'}", markup=False)
    if st.languages:
        out.print("languages  " + ", ".join(f"{k} {v}" for k, v in st.languages.items()),
                  markup=False)
    if st.skipped:
        out.print("skipped    " + ", ".join(f"{k}: {v}" for k, v in st.skipped.items()),
                  markup=False)
    for e in st.errors:
        out.print(f"error      {e}", markup=False)


if __name__ == "__main__":
    main()

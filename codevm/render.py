"""What `codevm symbol|refs|search|status` print, made from the engine's answers.

The full CLI (codevm/cli.py) prints these lines after calling the engine; the service
makes them for the CLI's quick path (codevm/quick.py), which then only writes them out.
A result is a list of lines, each for stdout or stderr, and the exit code. Styles are
ANSI codes, given only to a stream that is a terminal; they are never markup read from the
text, so a path or name holding brackets or escapes prints as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from codevm.api import EngineAPI, to_dict
from codevm.errors import InvalidArgument

_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "cyan": "36"}


def ansi(text: str, style: str) -> str:
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m" if text else text


def plain(text: str, style: str) -> str:
    return text


Style = Callable[[str, str], str]


@dataclass
class Rendered:
    lines: list[tuple[bool, str]] = field(default_factory=list)  # (to stderr, text)
    code: int = 0

    def out(self, text: str) -> None:
        self.lines.append((False, text))

    def err(self, text: str) -> None:
        self.lines.append((True, text))

    def fail(self, message: str) -> Rendered:
        self.err(f"codevm: error: {message}")
        self.code = 1
        return self

    def as_json(self, data: object) -> Rendered:
        self.out(json.dumps(to_dict(data), indent=2, ensure_ascii=False))
        return self


def _listing(found: list[Any], as_json: bool, missing: str, line: Callable[[Any], str]) -> Rendered:
    r = Rendered()
    if as_json:
        return r.as_json(found)
    if not found:
        return r.fail(missing)
    for item in found:
        r.out(line(item))
    return r


def symbol(found: list[Any], name: str, as_json: bool) -> Rendered:
    return _listing(found, as_json, f"no definition of {name!r} in the index",
                    lambda s: f"{s.path}:{s.start_line}-{s.end_line}  {s.kind} {s.qualified_name}  {s.signature}")


def refs(found: list[Any], name: str, as_json: bool) -> Rendered:
    return _listing(found, as_json, f"no reference to {name!r} in the index",
                    lambda r: f"{r.path}:{r.line}  {r.kind}" + (f" in {r.caller}" if r.caller else ""))


def search(hits: list[Any], vectors: Any, as_json: bool, style: Style = plain,
           err_style: Style = plain) -> Rendered:
    r = Rendered()
    if as_json:
        return r.as_json(hits)
    if not hits:
        r.out("no results")
    for hit in hits:
        symbol = f"  {hit.kind} {hit.symbol}" if hit.symbol else f"  {hit.kind}"
        r.out(style(f"{hit.path}:{hit.start_line}-{hit.end_line}", "bold") + f"{symbol}  "
              + style(f"({hit.score:.2f})", "dim"))
        for line in hit.snippet.split("\n"):
            r.out(f"    {line}")
    if vectors is not None and vectors.partial:
        r.err(err_style(f"{vectors.describe()}: results improve as embedding goes on", "dim"))
    return r


def status(st: Any, as_json: bool, client_pid: int) -> Rendered:
    r = Rendered()
    if as_json:
        return r.as_json(st)
    r.out(f"project    {st.root}")
    r.out(f"database   {st.database} ({st.database_bytes / 1e6:.1f} MB)")
    r.out(f"indexed    {st.files} files, {st.chunks} chunks, {st.symbols} symbols, "
          f"{st.refs} references; last run {st.last_indexed_at or 'never'}")
    if st.languages:
        r.out("languages  " + ", ".join(f"{k} {v}" for k, v in st.languages.items()))
    if st.skipped:
        r.out("skipped    " + ", ".join(f"{k}: {v}" for k, v in st.skipped.items()))
    for e in st.errors:
        r.out(f"error      {e}")
    watching = (f"watching files for changes, {st.pending_changes} pending" if st.watching
                else st.watch_error or "not watching files")
    r.out(f"updated    {st.last_updated_at or 'never'}; {watching}")
    r.out(f"vectors    {st.embeddings.describe().removeprefix('vectors: ')}")
    owner = "this process" if st.process == client_pid else "the codevm service"
    r.out(f"served by  {owner} (pid {st.process})")
    return r


def command(engine: EngineAPI, name: str, options: dict[str, Any]) -> tuple[list[tuple[bool, str]], int]:
    """One quick command run on `engine` (in the service) for a client: its lines and exit
    code. `options` are the command's arguments, `color`/`err_color` whether the client's
    stdout/stderr are terminals and `pid` the client's process."""
    if not isinstance(options, dict):
        raise InvalidArgument("a quick command's options must be a dict")
    as_json = bool(options.get("json"))
    style: Style = ansi if options.get("color") else plain
    err_style: Style = ansi if options.get("err_color") else plain
    if name == "symbol":
        r = symbol(engine.symbol(str(options["name"])), str(options["name"]), as_json)
    elif name == "refs":
        r = refs(engine.refs(str(options["name"])), str(options["name"]), as_json)
    elif name == "search":
        hits = engine.search(str(options["query"]), int(options.get("k", 10)), options.get("language"),
                             options.get("path_glob"), options.get("kind"))
        r = search(hits, None if as_json else engine.embedding_progress(), as_json, style, err_style)
    elif name == "status":
        r = status(engine.status(), as_json, int(options.get("pid", 0)))
    else:
        raise InvalidArgument(f"no quick command {str(name)[:40]!r}")
    return r.lines, r.code

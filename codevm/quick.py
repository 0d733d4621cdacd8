"""The `codevm` command's entry point, with a quick path for the commands people run in a
loop: `symbol`, `refs`, `search` and `status`.

When one of them is run in plain form (the options below, no help) in a project whose
service runs this same build, it is sent to the service as one "render" request and the
lines the service makes (codevm/render.py, the same the full CLI prints) are written
out. This path imports neither click nor the engine's API: on this 2-core machine the
full CLI spent ~130 ms of CPU before it could send a request, most of it importing.
Anything else, and any doubt (no service yet, another build, a setting that may turn the
service off, a connection that fails), runs the full CLI (codevm/cli.py), which starts
the service, explains errors and owns every other command.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

QUICK = {"symbol", "refs", "search", "status"}
REPLY_SECONDS = 30.0  # then the full CLI takes over, with its own timeouts and messages


def parse(argv: list[str]) -> tuple[str, dict[str, Any], str] | None:
    """(command, options, folder to find the project from), or None for the full CLI."""
    if not argv or argv[0] not in QUICK:
        return None
    command, rest = argv[0], argv[1:]
    options: dict[str, Any] = {}
    words: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--json":
            options["json"] = True
        elif command == "search" and arg in ("-k", "--lang", "--path", "--kind") and i + 1 < len(rest):
            value = rest[i + 1]
            if arg == "-k":
                if not value.isdigit():
                    return None
                options["k"] = int(value)
            else:
                options[{"--lang": "language", "--path": "path_glob", "--kind": "kind"}[arg]] = value
            i += 1
        elif arg.startswith("-"):
            return None  # --help, --skipped, a negative number, a typo: click's to handle
        else:
            words.append(arg)
        i += 1
    start = "."
    if command in ("symbol", "refs"):
        if len(words) != 1:
            return None
        options["name"] = words[0]
    elif command == "search":
        if not words:
            return None
        options["query"] = " ".join(words)
    else:
        if len(words) > 1:
            return None
        start = words[0] if words else "."
    return command, options, start


def _service_may_be_off(root: Path) -> bool:
    """A setting that may turn the service off (or point elsewhere): leave it to the full
    CLI, which reads settings properly."""
    if "CODEVM_SERVICE" in os.environ:
        return True
    for name in ("pyproject.toml", ".codevm.toml"):
        try:
            if re.search(r"^\s*service\s*=", (root / name).read_text(encoding="utf-8", errors="replace"),
                         re.MULTILINE):
                return True
        except OSError:
            pass
    return False


def run(argv: list[str]) -> int | None:
    """Run a quick command through the running service: its exit code, or None when the
    full CLI must run it."""
    parsed = parse(argv)
    if parsed is None:
        return None
    command, options, start = parsed
    import codevm.service.wire as wire
    from codevm.errors import CodevmError
    from codevm.project import find_root
    from codevm.service.files import ServiceFiles
    from codevm.service.protocol import build_id, receive, send

    try:
        root = find_root(Path(start))
    except (CodevmError, OSError):
        return None
    if _service_may_be_off(root):
        return None
    files = ServiceFiles.of(root)
    info = files.read_info()
    if info is None or info.get("build") != build_id():
        return None
    try:
        conn = wire.connect_once(files, light=True)
    except CodevmError:
        return None
    if conn is None:
        return None
    options.update(color=sys.stdout.isatty(), err_color=sys.stderr.isatty(), pid=os.getpid())
    try:
        send(conn, ("render", command, options))
        if not conn.poll(REPLY_SECONDS):
            return None
        reply = receive(conn)
    except (EOFError, OSError):
        return None
    finally:
        conn.close()
    if not (isinstance(reply, tuple) and len(reply) == 2):
        return None
    kind, value = reply
    if kind == "error" and isinstance(value, CodevmError):
        print(f"codevm: error: {value}", file=sys.stderr)
        return 1
    if kind != "result":
        return None
    lines, code = value
    try:
        for to_err, text in lines:
            print(text, file=sys.stderr if to_err else sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `codevm search x | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return int(code)


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        code = 130
    if code is None:
        from codevm.cli import main as full

        full()
    else:
        sys.exit(code)

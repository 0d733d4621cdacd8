"""Where a project is, where its data lives, and which paths belong to it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from codevm.errors import InvalidArgument, PathOutsideProject, ProjectNotFound

if TYPE_CHECKING:  # the CLI's quick path imports this module, and not the API
    from codevm.api import CodeText

DATA_DIR = ".codevm"


def find_root(start: Path) -> Path:
    """The project root: the nearest folder holding `.codevm` or `.git`, or whose data
    folder is in CODEVM_HOME (a folder indexed there that is no repository holds neither)."""
    start = start.resolve()
    if not start.exists():
        raise ProjectNotFound(f"{start} does not exist")
    here = start if start.is_dir() else start.parent
    for folder in (here, *here.parents):  # database_path's folder: .codevm, or its CODEVM_HOME one
        if (folder / DATA_DIR).is_dir() or (folder / ".git").exists() or database_path(folder).parent.is_dir():
            return folder
    raise ProjectNotFound(
        f"no project found at {start}: run `codevm index` in the project's root folder first"
    )


def database_path(root: Path) -> Path:
    home = os.environ.get("CODEVM_HOME")
    if home:
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
        return Path(home) / f"{root.name}-{digest}" / "index.duckdb"
    return root / DATA_DIR / "index.duckdb"


def data_folder(root: Path) -> Path:
    """The folder of the project's database (created, with a `.gitignore` inside a project),
    owner-only: the index holds the text of every file, the notes and the conversations."""
    folder = database_path(root).parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        if folder == root / DATA_DIR:
            (folder / ".gitignore").write_text("*\n", encoding="utf-8")
    owner_only(folder)
    return folder


def owner_only(path: Path) -> None:
    """chmod go-rwx a folder or file of ours (the data of an older version was 0755/0644)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(st.st_mode & 0o700)
    except OSError:
        pass  # not ours, or gone: opening it will say so


def project_path(root: Path, path: str) -> str:
    """A path given by a user or client -> '/'-separated path inside the project `root`."""
    if not path or "\0" in path:
        raise InvalidArgument("empty or invalid path")
    p = Path(path)
    try:
        full = (p if p.is_absolute() else root / p).resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise InvalidArgument(f"{path[:200]} cannot be resolved: {e}") from None
    if full != root and root not in full.parents:
        raise PathOutsideProject(f"{path} is outside the project {root}")
    return full.relative_to(root).as_posix()


def read_lines(root: Path, path: str, start_line: int | None = None,
               end_line: int | None = None) -> CodeText:
    """Lines of a project file as they are on disk."""
    from codevm.api import CodeText

    rel = project_path(root, path)
    full = root / rel
    if not full.is_file():
        raise InvalidArgument(f"{rel} is not a file of the project")
    data = full.read_bytes()
    if b"\0" in data[:8192]:
        raise InvalidArgument(f"{rel} is a binary file")
    lines = data.decode("utf-8", "replace").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    total = len(lines)
    start = 1 if start_line is None else start_line
    end = total if end_line is None else end_line
    if start < 1 or (end < start and end_line is not None):
        raise InvalidArgument(f"invalid line range {start}-{end}")
    if start > total:
        raise InvalidArgument(f"{rel} has only {total} lines")
    end = min(end, total)
    return CodeText(rel, start, end, total, "\n".join(lines[start - 1 : end]))

"""The Engine: the one API that the CLI, the LSP server and the MCP server call.

Arguments and results are plain JSON-serialisable dataclasses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codevm.config import Settings
from codevm.errors import InvalidArgument, NotIndexed, PathOutsideProject, ProjectNotFound
from codevm.indexers.pipeline import Indexer, IndexReport, Progress
from codevm.memory.search import SearchHit, search
from codevm.memory.store import Store

DATA_DIR = ".codevm"


@dataclass
class SymbolInfo:
    name: str
    qualified_name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str
    language: str


@dataclass
class RefInfo:
    name: str
    kind: str  # call | import
    path: str
    line: int
    caller: str  # qualified name of the enclosing definition ('' at module level)
    language: str


@dataclass
class CodeText:
    path: str
    start_line: int
    end_line: int
    total_lines: int
    text: str


@dataclass
class Status:
    root: str
    database: str
    database_bytes: int
    files: int
    chunks: int
    symbols: int
    refs: int
    languages: dict[str, int] = field(default_factory=dict)  # language -> files
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    errors: list[str] = field(default_factory=list)
    last_indexed_at: str | None = None


def to_dict(obj: object) -> object:
    if isinstance(obj, list):
        return [to_dict(o) for o in obj]
    return asdict(obj)  # type: ignore[call-overload]


def find_root(start: Path) -> Path:
    """The project root: the nearest folder holding `.codevm` or `.git`."""
    start = start.resolve()
    if not start.exists():
        raise ProjectNotFound(f"{start} does not exist")
    here = start if start.is_dir() else start.parent
    for folder in (here, *here.parents):
        if (folder / DATA_DIR).is_dir() or (folder / ".git").exists():
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


class Engine:
    def __init__(self, root: Path, settings: Settings | None = None):
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)
        db = database_path(self.root)
        data_dir = self.root / DATA_DIR
        if db.parent == data_dir and not data_dir.exists():
            data_dir.mkdir(parents=True)
            (data_dir / ".gitignore").write_text("*\n", encoding="utf-8")
        self.store = Store(db)
        self.indexer = Indexer(self.root, self.store, self.settings)
        self._indexed = False  # once indexed, a project stays indexed

    @classmethod
    def open(cls, start: Path | str = ".") -> Engine:
        return cls(find_root(Path(start)))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -------------------------------------------------------------------------
    def relative_path(self, path: str) -> str:
        """A path given by a user or client -> '/'-separated path inside the project."""
        if not path or "\0" in path:
            raise InvalidArgument("empty or invalid path")
        p = Path(path)
        full = (p if p.is_absolute() else self.root / p).resolve()
        if full != self.root and self.root not in full.parents:
            raise PathOutsideProject(f"{path} is outside the project {self.root}")
        return full.relative_to(self.root).as_posix()

    # -- indexing ----------------------------------------------------------------------
    def index(self, paths: list[str] | None = None,
              progress: Callable[[Progress], None] | None = None) -> IndexReport:
        only = [self.relative_path(p) for p in paths] if paths else None
        if only == [""]:
            only = None
        return self.indexer.run(only, progress)

    def update_file(self, path: str, text: str | None = None) -> IndexReport:
        """Re-index one file now, from its unsaved `text` or from disk."""
        return self.indexer.update_texts({self.relative_path(path): text})

    # -- queries -----------------------------------------------------------------------
    def _require_index(self) -> None:
        if self._indexed:
            return
        self._indexed = self.store.get_meta("last_indexed_at") is not None
        if not self._indexed:
            raise NotIndexed(f"{self.root} is not indexed yet: run `codevm index` first")

    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]:
        self._require_index()
        with self.store.lock:
            return search(self.store.cursor(), query, k, language, path_glob, kind, self.store.terms)

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
        )

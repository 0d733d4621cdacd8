"""The named signal: what a question names outright, resolved exactly against the index:
traceback frames (file, line), file paths and modules, quoted error messages, and the
definitions of identifiers it writes like code (dotted, CamelCase, snake_case), the rarer
the name the higher."""

from __future__ import annotations

import re
from collections import defaultdict

import duckdb

from codevm.db.lexical import DEFINITION_KINDS, LexicalIndex
from codevm.indexers.identifiers import IDENTIFIER, expand_identifier
from codevm.indexers.languages import EXTENSIONS
from codevm.retrieval.fusion import Ranked, Scored
from codevm.retrieval.lexical import lexical
from codevm.retrieval.sql import BY_IDS, by_ids

_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)(?:, in ([\w<>.]+))?')
_JS_FRAME = re.compile(r"at (?:([\w$.<>]+) \()?([^\s()]+?):(\d+)(?::\d+)?\)?")
_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z]{1,5})(?::(\d+))?(?![\w/])")
_CODE_IDENT = re.compile(
    r"\b(?:[^\W\d]\w*\.)+[^\W\d]\w*\b"  # dotted: module.func, Class.method
    r"|\b_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b"  # CamelCase
    r"|\b[a-z]+[A-Z]\w*\b")  # camelCase
_DOTTED = re.compile(r"\b[^\W\d]\w*(?:\.[^\W\d]\w*)+\b")
_BACKTICK_NAME = re.compile(r"`((?:[^\W\d]\w*\.)*[^\W\d]\w*)(?:\([^`]*\))?`")
# "SomeError: message" on a line of its own (a traceback's last line, a quoted error)
_ERROR_LINE = re.compile(r"^[ \t>]*(?:[\w.]+\.)?\w*(?:Error|Exception|Warning)\b:[ \t]*(.{8,300})$",
                         re.MULTILINE)
# the parts of a message that a program fills in: quoted values, numbers, <objects>
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\b0x[0-9a-fA-F]+\b|\b\d+(?:\.\d+)?\b")
_TEXT_EXTENSIONS = {".md", ".rst", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}

MAX_NAMED = 24  # identifiers and paths taken from one question
MAX_DEFINITIONS = 6  # a name defined more often than this is too generic to resolve
MAX_PARTS = 8  # chunks of one definition (a long function is split) counted as one
MAX_MESSAGES = 3  # error message fragments looked up in the code
MAX_MODULE_DEPTH = 12  # parts of a dotted module path tried as a file path
MAX_LITERALS = 3  # quoted code fragments looked up in the code
LITERAL_CANDIDATES = 300  # chunks holding a fragment's every word, read for the fragment itself
MAX_HOLDERS = 20  # code found in more chunks than this points nowhere in particular
# code quoted in a question (`x.foo(`, `return a + b`), or a short query that is code
_QUOTED_CODE = re.compile(r"`([^`\n]{3,200})`")
_CODE_CHARS = re.compile(r"[()\[\]{}=+*/<>;:!&|%^~-]")


def looks_like_path(name: str) -> bool:
    """src/app.py or app.py, but not Circle.scale (a dotted name)."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return "/" in name or suffix in EXTENSIONS or suffix in _TEXT_EXTENSIONS


def _words(question: str) -> str:
    return " ".join(IDENTIFIER.findall(question)[:200])


def chunk_at(con: duckdb.DuckDBPyConnection, path: str, line: int) -> int | None:
    row = con.execute(
        "SELECT id FROM chunks WHERE path = ? AND start_line <= ? AND end_line >= ? "
        "ORDER BY end_line - start_line LIMIT 1", [path, line, line]).fetchone()
    return row[0] if row else None


def _resolve_path(con: duckdb.DuckDBPyConnection, named: str) -> str | None:
    """The project file a path from a question means: the one sharing the longest tail
    of folders with it (a traceback's /usr/lib/.../site-packages/pkg/mod.py is pkg/mod.py)."""
    parts = [p for p in named.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        return None
    rows = con.execute(
        "SELECT path FROM files WHERE status = 'indexed' AND (path = $p OR path LIKE '%/' || $p)",
        {"p": parts[-1]}).fetchall()

    def shared(path: str) -> int:
        theirs = path.split("/")
        n = 0
        while n < min(len(theirs), len(parts)) and theirs[-1 - n] == parts[-1 - n]:
            n += 1
        return n

    best = max(rows, key=lambda r: (shared(r[0]), -len(r[0])), default=None)
    return best[0] if best else None


# -- named: what the question names outright ---------------------------------------------
def named_signal(con: duckdb.DuckDBPyConnection, index: LexicalIndex, question: str) -> Ranked:
    found: list[Scored] = []
    # traceback frames: the innermost (last in Python tracebacks) first
    frames = [(m.group(1), int(m.group(2))) for m in _PY_FRAME.finditer(question)]
    frames += [(m.group(2), int(m.group(3))) for m in _JS_FRAME.finditer(question)]
    for depth, (named, line) in enumerate(reversed(frames[-MAX_NAMED:])):
        path = _resolve_path(con, named)
        if path and (cid := chunk_at(con, path, line)) is not None:
            found.append(Scored(cid, 1.0 - 0.03 * depth, f"traceback {path}:{line}"))
    # paths named in the text (with a line, that line's chunk)
    words = _words(question)
    named_files: list[str] = []
    for m in [m for m in _PATH.finditer(question) if looks_like_path(m.group(1))][:MAX_NAMED]:
        path = _resolve_path(con, m.group(1))
        if not path:
            continue
        if m.group(2) and (cid := chunk_at(con, path, int(m.group(2)))) is not None:
            found.append(Scored(cid, 0.95, f"named {path}:{m.group(2)}"))
            continue
        named_files.append(path)
    for path in named_files:
        found.extend(_file_chunks(con, index, path, words, 0.75, f"named file {path}"))
    # modules named by their dotted import path (django.db.models.query)
    for path in _module_files(con, question):
        if path not in named_files:
            found.extend(_file_chunks(con, index, path, words, 0.7, f"module {path}"))
    found.extend(_error_messages(con, index, question))
    found.extend(_literal_code(con, index, question))
    found.extend(_definitions(con, index, question))
    best: dict[int, Scored] = {}
    for item in found:
        if item.chunk_id not in best or item.score > best[item.chunk_id].score:
            best[item.chunk_id] = item
    # equal scores in the order found (frames and paths as the question lists them, the
    # rest in file order), never by chunk id: ids follow the index's history, and the same
    # question on the same code must rank the same however the index came to hold it
    order = {cid: i for i, cid in enumerate(best)}
    return Ranked(sorted(best.values(), key=lambda r: (-r.score, order[r.chunk_id])))


def _file_chunks(con: duckdb.DuckDBPyConnection, index: LexicalIndex, path: str, words: str,
                 score: float, reason: str) -> list[Scored]:
    """The chunks of a named file that the question's words match best, else its first."""
    _, ranked = lexical(con, index, words, 3, path_glob=path) if words else (None, [])
    ids = [item.chunk_id for item in ranked[:3]]
    if not ids:
        row = con.execute("SELECT id FROM chunks WHERE path = ? ORDER BY ord LIMIT 1",
                          [path]).fetchone()
        ids = [row[0]] if row else []
    return [Scored(cid, score - 0.05 * i, reason) for i, cid in enumerate(ids)]


def _module_files(con: duckdb.DuckDBPyConnection, question: str) -> list[str]:
    """Project files of the Python modules a question names by dotted path: for a.b.c.d,
    the longest of a/b/c/d.py, a/b/c/d/__init__.py, a/b/c.py ... that is a file of the
    project (at its root or under a source folder)."""
    wanted: dict[str, tuple[int, int]] = {}  # candidate path -> (order, parts)
    dotted = [m.group(0) for m in _DOTTED.finditer(question) if not looks_like_path(m.group(0))]
    for order, name in enumerate(dict.fromkeys(dotted)):
        parts = name.split(".")[:MAX_MODULE_DEPTH]  # a.a.a... of 8,000 parts took 2 s
        for n in range(len(parts), 1, -1):
            stem = "/".join(parts[:n])
            wanted.setdefault(stem + ".py", (order, n))
            wanted.setdefault(stem + "/__init__.py", (order, n))
        if len(wanted) > 4 * MAX_NAMED:
            break
    if not wanted:
        return []
    rows = con.execute(
        "SELECT c.cand, f.path FROM files f JOIN (SELECT unnest($c) AS cand) c "
        "ON f.path = c.cand OR ends_with(f.path, '/' || c.cand) WHERE f.status = 'indexed'",
        {"c": list(wanted)}).fetchall()
    best: dict[int, tuple[int, str]] = {}  # per name: the longest module path that exists
    for cand, path in rows:
        order, n = wanted[cand]
        if order not in best or n > best[order][0] or (n == best[order][0] and len(path) < len(best[order][1])):
            best[order] = (n, path)
    return list(dict.fromkeys(path for _, (_, path) in sorted(best.items())))


def holding(con: duckdb.DuckDBPyConnection, index: LexicalIndex, fragment: str, limit: int) -> list[int]:
    """Ids of up to `limit` chunks whose text holds `fragment` (runs of spaces in either
    count as one). Bounded at any scale when the fragment has a word the index holds: only
    the LITERAL_CANDIDATES chunks that match all its words best are read; else (`a + b`)
    every chunk's text is scanned for it as written."""
    squeezed = " ".join(fragment.split())
    words = {t[0] for ident in IDENTIFIER.findall(fragment) if (t := expand_identifier(ident))
             and t[0] == ident.lower()}
    if not words:
        return [r[0] for r in con.execute("SELECT id FROM chunks WHERE contains(text, $f) "
                                          "ORDER BY path, start_line LIMIT $n", {"f": squeezed, "n": limit}).fetchall()]
    found = index.search(dict.fromkeys(words, 1.0), LITERAL_CANDIDATES, every=True)
    if not found:
        return []
    rows = con.execute(f"SELECT id, text, path, start_line FROM chunks c {BY_IDS}",
                       {"ids": [cid for cid, _ in found]}).fetchall()
    return [cid for cid, _, _, _ in sorted((r for r in rows if squeezed in " ".join(r[1].split())),
                                           key=lambda r: (r[2], r[3]))][:limit]


def _error_messages(con: duckdb.DuckDBPyConnection, index: LexicalIndex, question: str) -> list[Scored]:
    """Chunks holding the constant text of an error message the question quotes
    (`ValueError: Unknown format code 'd' for object`: 'Unknown format code')."""
    fragments: list[str] = []
    for m in _ERROR_LINE.finditer(question):
        for part in _VARIABLE.split(m.group(1)):
            part = part.strip(" .,:;!?-")
            if len(part) >= 12 and " " in part:
                fragments.append(part)
    found: list[Scored] = []
    for fragment in sorted(dict.fromkeys(fragments), key=len, reverse=True)[:MAX_MESSAGES]:
        ids = holding(con, index, fragment, MAX_DEFINITIONS + 1)
        if 0 < len(ids) <= MAX_DEFINITIONS:  # more: too common a phrase to point anywhere
            found.extend(Scored(cid, 0.85 / len(ids) ** 0.5, "holds the error message") for cid in ids)
    return found


def _literal_code(con: duckdb.DuckDBPyConnection, index: LexicalIndex, question: str) -> list[Scored]:
    """Chunks holding code the question quotes (`x.foo(`, `return a + b`), or that a short
    query is (return a + b): literal code search, beside the words of BM25."""
    fragments = [f.strip() for f in _QUOTED_CODE.findall(question) if _CODE_CHARS.search(f) or " " in f.strip()]
    stripped = question.strip()
    if not fragments and len(stripped) <= 120 and "\n" not in stripped and _CODE_CHARS.search(stripped) \
            and len(stripped.split()) <= 12:
        fragments = [stripped]
    found: list[Scored] = []
    for fragment in list(dict.fromkeys(fragments))[:MAX_LITERALS]:
        ids = holding(con, index, fragment, MAX_HOLDERS + 1)
        if 0 < len(ids) <= MAX_HOLDERS:
            found.extend(Scored(cid, 0.9 / len(ids) ** 0.5, f"holds `{fragment[:60]}`") for cid in ids)
    return found


def code_names(text: str) -> list[str]:
    """The names a text writes like code (`snake_case`, `CamelCase`, `Class.method`) and any
    name quoted as code (`sort`, `Model.save()`), in order, at most MAX_NAMED."""
    names: list[str] = []
    backticked = [m.group(1) for m in _BACKTICK_NAME.finditer(text)]
    for name in [m.group(0) for m in _CODE_IDENT.finditer(text)] + backticked:
        if name not in names and not looks_like_path(name):
            names.append(name)
    return names[:MAX_NAMED]


def _definitions(con: duckdb.DuckDBPyConnection, index: LexicalIndex, question: str) -> list[Scored]:
    """Chunks defining the identifiers a question writes like code; a rare name (one
    definition) ranks above a common one, a dotted name above a bare one."""
    names = code_names(question)
    if not names:
        return []
    keys: dict[str, str] = {}  # qualified or bare key -> the name as written
    for name in names:
        parts = name.split(".")
        keys.setdefault(".".join(parts[-2:]), name)  # Class.method, module.func
        keys.setdefault(parts[-1], name)
    # each name's chunks from the lexical index (a name on too many of them is left out
    # there), then those that define it, read by id
    held = index.holders("names", sorted(keys), MAX_DEFINITIONS * MAX_PARTS)
    ids = sorted({cid for found in held.values() for cid in found})
    by_key: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    if ids:
        where, params = by_ids(ids)
        for cid, name, qualified, path, kind in con.execute(
                f"SELECT id, name, qualified_name, path, kind FROM chunks c {where} ORDER BY path, start_line",
                params).fetchall():
            if kind in DEFINITION_KINDS:
                key = qualified if qualified in keys else name
                by_key[key].append((cid, qualified, path))
    found: list[Scored] = []
    for key, defs in by_key.items():
        distinct = {(q, p) for _, q, p in defs}
        if len(distinct) > MAX_DEFINITIONS:
            continue
        order = names.index(keys[key])
        score = (0.9 if "." in key else 0.8) / len(distinct) ** 0.5 - 0.01 * order
        for cid, _, path in defs:
            prior = 0.5 if "test" in path else 1.0
            found.append(Scored(cid, score * prior, f"definition of {keys[key]}"))
    return found

"""The per-file work of indexing, run in parser processes.

A task is a list of files; the worker reads, checks, hashes, parses and chunks each one
and writes the rows as newline-delimited JSON that DuckDB loads in bulk (row-by-row
inserts from Python are about a thousand times slower).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from codevm.indexers.chunker import Extraction, chunk_names, content_hash, extract
from codevm.indexers.identifiers import index_text
from codevm.indexers.languages import EXTRACTOR_VERSION, detect_language


@dataclass(frozen=True)
class TaskFile:
    path: str  # relative to the root, '/'-separated
    size: int
    mtime_ns: int
    known_hash: str | None  # content hash already indexed (None: parse whatever it is)
    text: str | None = None  # unsaved buffer text, instead of the file on disk


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_line_chars: int
    max_chunk_tokens: int
    min_chunk_tokens: int


@dataclass
class TaskResult:
    prefix: str  # the files written are named after it (see the properties)
    n_files: int = 0
    n_chunks: int = 0
    n_skipped: int = 0
    n_errors: int = 0
    n_unchanged: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def files(self) -> str:  # NDJSON
        return f"{self.prefix}.files.jsonl"

    @property
    def chunks(self) -> str:  # NDJSON
        return f"{self.prefix}.chunks.jsonl"

    @property
    def symbols(self) -> str:  # TSV
        return f"{self.prefix}.symbols.tsv"

    @property
    def refs(self) -> str:  # TSV
        return f"{self.prefix}.refs.tsv"


def _file_row(t: TaskFile, status: str, reason: str, language: str = "", digest: str = "",
              n_chunks: int = 0, changed: bool = True) -> dict:
    return {"path": t.path, "language": language, "size": t.size, "mtime_ns": t.mtime_ns,
            "hash": digest, "status": status, "reason": reason, "n_chunks": n_chunks,
            "extractor": EXTRACTOR_VERSION, "changed": changed}


def _read(root: str, t: TaskFile) -> bytes:
    if t.text is not None:
        return t.text.encode("utf-8", "replace")  # an editor buffer may hold lone surrogates
    with open(os.path.join(root, t.path), "rb") as f:
        return f.read()


def process_file(root: str, t: TaskFile, limits: Limits) -> tuple[dict, Extraction | None]:
    """One file -> its `files` row and, when it is (re)indexed, its extraction."""
    try:
        data = _read(root, t)
    except FileNotFoundError:
        return _file_row(t, "vanished", "file vanished during indexing"), None
    except IsADirectoryError:
        return _file_row(t, "vanished", "became a folder during indexing"), None
    except OSError as e:
        return _file_row(t, "error", f"unreadable: {e.strerror or e}"), None
    t = TaskFile(t.path, len(data), t.mtime_ns, t.known_hash, t.text)
    if len(data) > limits.max_file_bytes:
        return _file_row(t, "skipped", f"too large ({len(data)} bytes > {limits.max_file_bytes})"), None
    if b"\0" in data[:8192]:
        return _file_row(t, "skipped", "binary"), None
    digest = content_hash(data)
    if digest == t.known_hash:
        return _file_row(t, "indexed", "", digest=digest, changed=False), None
    reason = ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
        data = text.encode("utf-8")
        reason = "invalid UTF-8 replaced"
    longest = max(map(len, text.split("\n"))) if text else 0
    if longest > limits.max_line_chars:
        return _file_row(t, "skipped", f"minified or generated (a line of {longest} chars)",
                         digest=digest), None
    language = detect_language(t.path, data[:256])
    try:
        ex = extract(t.path, text, language, data, limits.max_chunk_tokens, limits.min_chunk_tokens)
    except Exception as e:  # a grammar or extractor bug must not lose the file: index as text
        reason = f"parser failed ({type(e).__name__}: {e}); indexed as text"
        ex = extract(t.path, text, "text", data, limits.max_chunk_tokens, limits.min_chunk_tokens)
    return _file_row(t, "indexed", reason, language, digest, len(ex.chunks)), ex


def chunk_calls(chunks: list, refs: list[tuple[str, str, int, str]]) -> list[str]:
    """The names each chunk calls (space-separated, first call first): the calls on its
    lines that no smaller chunk holds. The graph signal follows them both ways."""
    out: list[dict[str, None]] = [{} for _ in chunks]
    calls = [(n, line) for n, k, line, _ in refs if k == "call"]
    if calls and chunks:
        owner = [-1] * (max(c.end_line for c in chunks) + 2)
        for i in sorted(range(len(chunks)), key=lambda i: chunks[i].start_line - chunks[i].end_line):
            c = chunks[i]  # largest first: a smaller chunk inside it takes its own lines
            owner[c.start_line : c.end_line + 1] = [i] * (c.end_line - c.start_line + 1)
        for name, line in calls:
            if 0 <= line < len(owner) and (i := owner[line]) >= 0:
                out[i]["_".join(name.split())] = None
    return [" ".join(names) for names in out]


def run_task(root: str, files: list[TaskFile], limits: Limits, out_prefix: str) -> TaskResult:
    """Process `files` and write their rows to files named after `out_prefix` (replacing
    what a file of that name held)."""
    result = TaskResult(out_prefix)
    dumps = json.dumps
    with (
        open(result.files, "w", encoding="utf-8") as f_files,
        open(result.chunks, "w", encoding="utf-8") as f_chunks,
        open(result.symbols, "w", encoding="utf-8") as f_symbols,
        open(result.refs, "w", encoding="utf-8") as f_refs,
    ):
        for t in files:
            row, ex = process_file(root, t, limits)
            f_files.write(dumps(row) + "\n")
            status = row["status"]
            if status == "skipped":
                result.n_skipped += 1
            elif status in ("error", "vanished"):
                result.n_errors += 1
                result.messages.append(f"{t.path}: {row['reason']}")
            elif not row["changed"]:
                result.n_unchanged += 1
            result.n_files += 1
            if ex is None:
                continue
            language = row["language"]
            lines = []
            calls = chunk_calls(ex.chunks, ex.refs)
            for ordinal, c in enumerate(ex.chunks):
                names = chunk_names(c)
                # the lexical index's text of the chunk: to tantivy from the batch, not kept
                # in the database, which keeps the names it is made from (when they are
                # more than the qualified name) to make it again
                lex = index_text(t.path, c.text, names, c.docstring)
                row_json = dumps({
                    "path": t.path, "ord": ordinal, "language": language, "kind": c.kind,
                    "name": c.name, "qualified_name": c.qualified_name,
                    "start_line": c.start_line, "end_line": c.end_line,
                    "signature": c.signature, "docstring": c.docstring, "text": c.text,
                    "hash": content_hash(c.text.encode("utf-8")), "tokens": c.tokens,
                    "calls": calls[ordinal],
                    "names": "" if names == c.qualified_name else names,
                })
                # the index text is terms (identifier characters, lowercased) and spaces: a
                # JSON string as it is, without the encoder's pass over each character (the
                # longest field, 5% of a parsing process's instructions went to encoding)
                lex_json = f'"{lex}"' if '"' not in lex and "\\" not in lex else dumps(lex)
                lines.append(f'{row_json[:-1]}, "lex": {lex_json}}}')
            if lines:
                f_chunks.write("\n".join(lines) + "\n")
            result.n_chunks += len(ex.chunks)
            # names and signatures hold no tab or newline (signatures are whitespace-collapsed);
            # a path may hold anything: it goes as a JSON string (the loader decodes it)
            prefix = f"{dumps(t.path, ensure_ascii=False)}\t{language}\t"
            if ex.symbols:
                f_symbols.write("".join(
                    f"{prefix}{n}\t{q}\t{k}\t{s}\t{e}\t{sig}\n" for n, q, k, s, e, sig in ex.symbols))
            if ex.refs:
                f_refs.write("".join(f"{prefix}{n}\t{k}\t{line}\t{c}\n" for n, k, line, c in ex.refs))
    return result


__all__ = ["TaskFile", "Limits", "TaskResult", "run_task", "process_file"]

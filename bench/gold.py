"""The functions that a SWE-bench fix edits, found again from its patch and base commit.

The `gold_functions` of our SWE-bench Lite file were derived from the hunks' line numbers,
read against the base file as they stand. A hunk whose stated lines are off (the patch
still applies, `git apply` finds it some lines away) names whatever function sits at the
stated lines: sympy__sympy-14317 edits `LatexPrinter._print_Poly`, 41 lines below the
`_print_FourierSeries` it is labelled with. Insertions of new functions are labelled with
the function that follows them.

The published function-level figures (CodeRankEmbed and BM25 on 274 instances, from the
CoRNStack evaluation) count the functions that exist at the base commit and whose lines
the fix changes, over the instances that have one. This module computes that set from the
repository itself, with Python's own parser, so it owes nothing to codevm's chunker (in
other languages, for pairs mined from history, with codevm's tree-sitter extractor, whose
names are the ones its chunks carry; the innermost function holds a line there, as a
JavaScript factory's inner functions are the units that change): each
hunk is located in the base file as `git apply` would (its old lines, nearest to the stated
place), removed lines belong to the definitions that enclose them (a nested function to the
outermost function), an insertion belongs to a function only when both its neighbours do;
new functions, class bodies outside methods and module code are not functions edited.
Results are cached in `<cache>/edited-functions.json`.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Callable, Collection
from pathlib import Path

from codevm.indexers.chunker import extract
from codevm.indexers.languages import detect_language

# the languages whose edited functions are found: SWE-bench's protocol counts Python's
PYTHON = frozenset({"python"})
# code with functions, for pairs mined in other languages
CODE_LANGUAGES = frozenset({"python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp",
                            "csharp", "ruby", "php", "kotlin", "swift", "scala", "lua"})

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def hunks(patch: str) -> dict[str, list[tuple[int, list[str]]]]:
    """Per file of the patch, its hunks as (stated first old line, lines with their marks)."""
    out: dict[str, list[tuple[int, list[str]]]] = {}
    path = None
    current: list[str] | None = None
    for line in patch.splitlines():
        if line.startswith("--- "):
            current = None
            continue
        if line.startswith("+++ "):
            name = line[4:].strip()
            path = name[2:] if name.startswith("b/") else None  # /dev/null: a deleted file
            if path is not None:
                out.setdefault(path, [])
            continue
        match = HUNK.match(line)
        if match and path is not None:
            current = []
            out[path].append((int(match.group(1)), current))
            continue
        if current is not None and line[:1] in (" ", "-", "+"):
            current.append(line)
        elif current is not None and line == "":
            current.append(" ")  # a context line that was an empty line
    return out


def locate(base: list[str], stated: int, old: list[str]) -> int:
    """0-based index in `base` where the hunk's old lines start: the match nearest to
    where the hunk says it starts (as `git apply` does), or the stated place if none."""
    start = max(stated - 1, 0)
    if not old:
        return start
    n = len(old)
    matches = [i for i in range(len(base) - n + 1) if base[i] == old[0] and base[i:i + n] == old]
    return min(matches, key=lambda i: abs(i - start)) if matches else start


def definitions(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of each function and method, 1-based;
    nested functions are part of the function around them."""
    out: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((first, child.end_lineno or child.lineno, f"{prefix}{child.name}"))
            elif isinstance(child, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                walk(child, prefix)  # definitions under `if TYPE_CHECKING:` and the like

    walk(ast.parse(source), "")
    return out


def extracted_definitions(path: str, source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of each function and method that codevm's
    extractor finds, innermost first (the first that holds a line is its owner)."""
    data = source.encode("utf-8")
    ex = extract(path, source, detect_language(path), data, 400, 20)
    defs = {(s, e, q) for _, q, kind, s, e, _ in ex.symbols if kind in ("function", "method")}
    return sorted(defs, key=lambda d: (d[1] - d[0], d[0]))


def edited_in_file(source: str, file_hunks: list[tuple[int, list[str]]], path: str = "") -> set[str]:
    base = source.splitlines()
    try:
        python = not path or detect_language(path) == "python"
        defs = definitions(source) if python else extracted_definitions(path, source)
    except (SyntaxError, ValueError):
        return set()

    def owner(line: int) -> str | None:  # 1-based
        for first, last, name in defs:
            if first <= line <= last:
                return name
        return None

    edited: set[str] = set()
    for stated, lines in file_hunks:
        old = [line[1:] for line in lines if line[0] in (" ", "-")]
        at = locate(base, stated, old)  # 0-based index of the hunk's first old line
        offset = 0  # old lines seen so far
        for i, line in enumerate(lines):
            if line[0] == "-":
                name = owner(at + offset + 1)
                if name:
                    edited.add(name)
                offset += 1
            elif line[0] == " ":
                offset += 1
            elif line[0] == "+" and (i == 0 or lines[i - 1][0] != "+"):
                # an inserted run between old lines `at+offset` and `at+offset+1` (1-based)
                before, after = owner(at + offset), owner(at + offset + 1)
                if before and before == after:
                    edited.add(before)
    return edited


def edited_functions(git_dir: Path, instance: dict, languages: Collection[str] = PYTHON) -> list[str]:
    """`path::Qualified.name` of each function that exists at the base commit and whose
    lines the instance's fix changes (in files of `languages`: Python's by default)."""
    out: set[str] = set()
    for path, file_hunks in hunks(instance["patch"]).items():
        if detect_language(path) not in languages:
            continue
        shown = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{instance['commit']}:{path}"],
                               capture_output=True)
        if shown.returncode != 0:
            continue  # a file that the fix creates
        source = shown.stdout.decode("utf-8", "replace")
        out.update(f"{path}::{name}" for name in edited_in_file(source, file_hunks, path))
    return sorted(out)


def edited_gold(instances: list[dict], cache: Path, mirror: Callable[[str], Path]) -> dict[str, list[str]]:
    """Edited functions of every instance whose repository has a mirror, cached."""
    cache_file = cache / "edited-functions.json"
    known: dict[str, list[str]] = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    changed = False
    for inst in instances:
        if inst["id"] in known:
            continue
        git_dir = mirror(inst["repo"])
        if not git_dir.exists():
            continue
        known[inst["id"]] = edited_functions(git_dir, inst)
        changed = True
    if changed:
        cache.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(known, indent=0, sort_keys=True))
    return known

"""Index speed on a corpus (default: this interpreter's standard library). Prints one JSON object.

Measured in one run: a bare single-threaded tree-sitter parse of the same files (the
baseline), the cold index, a no-change re-index, one changed file searchable, and search
latency over 100+ queries. Also where the cold index's time goes: each per-file stage's
single-threaded CPU time, the CPU time of the parsing processes and of the main process
(the database), and the floor that sets with every core busy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tree_sitter import QueryCursor  # noqa: E402
from tree_sitter_language_pack import get_parser  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.indexers.chunker import _parser_and_query, chunk_names  # noqa: E402
from codevm.indexers.discovery import Candidate, walk_project  # noqa: E402
from codevm.indexers.identifiers import index_text  # noqa: E402
from codevm.indexers.languages import LANGUAGES, detect_language  # noqa: E402
from codevm.indexers.worker import Limits, TaskFile, process_file  # noqa: E402

if TYPE_CHECKING:
    from codevm.engine import Engine


def bare_parse_seconds(root: Path) -> tuple[float, int, int]:
    """Parse every file the indexer would parse, one thread, nothing else."""
    files = []
    for item in walk_project(str(root)):
        if isinstance(item, Candidate):
            data = (root / item.path).read_bytes()
            language = detect_language(item.path, data[:256])
            if language in LANGUAGES:
                files.append((LANGUAGES[language].name, data))
    parsers = {name: get_parser(name) for name, _ in files}
    started = time.perf_counter()
    for name, data in files:
        parsers[name].parse(data)
    return time.perf_counter() - started, len(files), sum(d.count(b"\n") for _, d in files)


def stage_seconds(root: Path) -> dict[str, float]:
    """Single-threaded CPU seconds of the indexer's per-file stages on the same files:
    where a cold index spends its time besides the parse."""
    settings = Settings()
    limits = Limits(settings.max_file_bytes, settings.max_line_chars, settings.max_chunk_tokens,
                    settings.min_chunk_tokens)
    files = [item for item in walk_project(str(root)) if isinstance(item, Candidate)]
    clock = time.process_time
    query_s = 0.0
    for item in files:
        data = (root / item.path).read_bytes()
        language = detect_language(item.path, data[:256])
        if language in LANGUAGES:
            parser, query, _ = _parser_and_query(language)
            tree = parser.parse(data)
            started = clock()
            QueryCursor(query).matches(tree.root_node)
            query_s += clock() - started
    per_file = terms = 0.0
    for item in files:  # nothing kept: the peak RSS is the indexer's
        started = clock()
        _, ex = process_file(str(root), TaskFile(item.path, item.size, item.mtime_ns, None), limits)
        per_file += clock() - started
        started = clock()
        for chunk in ex.chunks if ex is not None else []:
            index_text(item.path, chunk.text, chunk_names(chunk), chunk.docstring)
        terms += clock() - started
    return {"tag_query": round(query_s, 2),
            "per_file_work": round(per_file, 2),  # read, hash, parse, tag query, chunking
            "index_terms": round(terms, 2)}


def copy_corpus(source: Path, into: Path | None = None) -> tuple[Path, Path]:
    """A scratch copy of `source` to index (edits never touch the real corpus), with its own
    CODEVM_HOME; returns (the scratch folder to delete, the project root). With `into`, the
    copy (and the index) is kept there and reused by later runs."""
    work = into or Path(tempfile.mkdtemp(prefix="codevm-bench-"))
    os.environ["CODEVM_HOME"] = str(work / "home")
    root = work / "corpus"
    if not root.is_dir():
        shutil.copytree(source, root, symlinks=True,
                        ignore=shutil.ignore_patterns("site-packages", "__pycache__"))
    (root / ".git").mkdir(exist_ok=True)
    return work, root


def bench_queries(engine: Engine, n: int) -> list[str]:
    """Half symbol names of the corpus, half natural phrases; the same for every run."""
    rng = random.Random(7)
    symbols = [r[0] for r in engine.store.cursor().execute(
        "SELECT DISTINCT name FROM symbols ORDER BY name").fetchall()]
    words = ["parse header", "open file for reading", "thread lock acquire", "decode utf-8",
             "socket timeout", "http request headers", "json encoder", "temporary directory",
             "regular expression compile", "date time format", "zip archive", "email message"]
    queries = [rng.choice(symbols) for _ in range(n // 2)]
    return queries + [rng.choice(words) for _ in range(n - len(queries))]


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[max(0, int(len(sorted_values) * share) - 1)]


def as_installed() -> None:
    """Commands from here on start as after an install, which compiles codevm's modules
    once: with PYTHONDONTWRITEBYTECODE set (as on this machine) every command compiled ~45
    of them again, 0.1-0.2 s of each command's start."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parent.parent / "codevm")],
                   check=False, stdout=subprocess.DEVNULL)


def latency_summary(ms: list[float], digits: int = 1) -> dict[str, float]:
    """p50 and p95 of latencies in milliseconds."""
    ms = sorted(ms)
    return {"p50_ms": round(percentile(ms, 0.5), digits), "p95_ms": round(percentile(ms, 0.95), digits)}


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--queries", type=int, default=120)
    parser.add_argument("--edits", type=int, default=11, help="one-file updates to time")
    args = parser.parse_args()
    source = Path(args.path).resolve()

    work, root = copy_corpus(source)
    try:
        bare, n_parsed_files, n_lines = bare_parse_seconds(root)

        # imported here: the parsing processes (spawned) import this module again, and the
        # engine's imports (ollama, numpy, ...) would cost them time that `codevm index`,
        # whose main module is light, does not pay
        from codevm.engine import Engine

        engine = Engine(root, Settings())
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        report = engine.index()
        cold = time.perf_counter() - started
        main_cpu = cpu_seconds(resource.RUSAGE_SELF) - own.ru_utime - own.ru_stime
        parsing_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - children.ru_utime - children.ru_stime

        started = time.perf_counter()
        again = engine.index()
        no_change = time.perf_counter() - started

        engine.search("warm up the search path")
        # one changed file: the engine is told about it (as the LSP/watcher does); the
        # median of several edits, each adding a new function that must then be found
        files = sorted(root.rglob("*.py"))
        target = next((p for p in files if p.stat().st_size > 2000),
                      max(files, key=lambda p: p.stat().st_size))
        rel = target.relative_to(root).as_posix()
        original = target.read_text()
        one_file_ms, update_ms = [], []
        for i in range(args.edits):
            marker = f"freshly_added_bench_marker_{i}"
            target.write_text(original + f"\n\ndef {marker}():\n    return {i}\n")
            started = time.perf_counter()
            engine.update_file(rel)
            updated = time.perf_counter()
            found = engine.search(marker, k=1)
            one_file_ms.append((time.perf_counter() - started) * 1000)
            update_ms.append((updated - started) * 1000)
            assert found and found[0].symbol == marker, found

        queries = bench_queries(engine, args.queries)
        engine.search(queries[0])  # warm
        latencies = []
        for q in queries:
            t = time.perf_counter()
            engine.search(q, k=10)
            latencies.append((time.perf_counter() - t) * 1000)
        latencies.sort()
        status = engine.status()
        engine.close()
        # last: its garbage (the identifier cache of a whole corpus) must not slow the rest
        stages = stage_seconds(root)
        print(json.dumps({
            "corpus": str(source),
            "files_indexed": status.files,
            "files_parsed_by_tree_sitter": n_parsed_files,
            "lines_parsed": n_lines,
            "chunks": status.chunks,
            "bare_parse_single_thread_s": round(bare, 2),
            "cold_index_s": round(cold, 2),
            "cold_over_bare_parse": round(cold / bare, 2),
            "lines_per_s": round(n_lines / cold),
            "cores": os.cpu_count(),
            "single_thread_cpu_s": {"bare_parse": round(bare, 2), **stages},
            # CPU time of the cold index: the parsing processes, and the main process that
            # writes the database; with every core busy all along, the wall time would be
            # their sum over the cores
            "cold_index_cpu_s": {"parsing_processes": round(parsing_cpu, 2),
                                 "main_process": round(main_cpu, 2)},
            "all_cores_busy_floor_over_bare_parse": round(
                (parsing_cpu + main_cpu) / (os.cpu_count() or 1) / bare, 2),
            "peak_rss_mib": peak_rss_mib(),
            "no_change_reindex_s": round(no_change, 3),
            "no_change_parsed": again.parsed,
            "one_changed_file_searchable_ms_median": round(statistics.median(one_file_ms), 1),
            "one_changed_file_searchable_ms_max": round(max(one_file_ms), 1),
            "one_changed_file_update_ms_median": round(statistics.median(update_ms), 1),
            "search_queries": len(latencies),
            "search_p50_ms": round(statistics.median(latencies), 1),
            "search_p95_ms": round(percentile(latencies, 0.95), 1),
            "database_mb": round(status.database_bytes / 1e6, 1),
            "index_errors": report.errors,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""codevm at the scale of a tree (flask, django, sympy, u-boot...), against universal-ctags
on the same tree in the same run. Prints one JSON object.

Measured, each as a user meets it:
- cold index: `codevm index` as a whole process with the index in that process
  (CODEVM_SERVICE=false), wall time, CPU time (the process and its parsing workers, from
  os.wait4), peak RSS, and the size of the database and the lexical index; beside it
  `ctags -R` on the same tree (wall, CPU, peak RSS) just before and just after, the ratio
  to their mean (the tree is read once before, so that both meet it in the page cache);
- no-change re-index: `codevm index` again, as a whole process;
- search in-process: p50/p95 over a fixed mix of identifier queries (symbol names drawn
  from the index with a fixed seed) and developer questions (a fixed list), CPU next to wall;
- the same queries through the CLI with the service running (`codevm search`), and
  `codevm symbol` for the identifiers: p50/p95 wall and CPU of the whole command, once the
  new service is idle (its catch-up walk of the tree done) and warmed by the same ten
  queries as in-process; the first search after the service starts, apart;
- edit-to-searchable through the service's watcher: a file written on disk until
  `symbol` finds the function it adds;
- a rebuild of the lexical index from the database (a compaction, a lost index): wall, CPU
  of this process and of the rebuild's worker processes;
- the service's RSS when idle after all that;
- the writer (--writer, a second cold index in this process): each batch's time in the
  main process (DuckDB and tantivy), the first 20 batches against the last 20 (per batch,
  and per chunk: batches of 400 files differ in size), the share
  of the wall time the writer takes, and the CPU time of the main process and of the
  parsing workers.
The tree is indexed in place (nothing in it changes but one file the bench adds and
removes); the index goes to a scratch CODEVM_HOME (or --keep DIR).

    python bench/scale.py PATH [--queries N] [--edits N] [--keep DIR]
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
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_speed import as_installed, latency_summary  # noqa: E402

QUESTIONS = [
    "how is the configuration file parsed", "where are command line arguments handled",
    "how does the cache get invalidated", "where is the connection closed on error",
    "how are errors reported to the user", "what happens when a timeout expires",
    "where is memory allocated for the buffer", "how is the device initialized",
    "how does the parser handle unexpected tokens", "where are files opened for writing",
    "how is authentication checked", "how is the output formatted",
    "where is the main loop", "how are threads or locks used", "how are tests set up",
    "what validates the user input", "how does logging work", "where are environment variables read",
    "how is a request routed to its handler", "how is data serialized to json",
    "how does the interrupt handler acknowledge the interrupt", "where is the clock frequency set",
    "how are pages mapped in memory", "how is a checksum computed", "where is the version string defined",
]
CODEVM = [sys.executable, "-P", "-m", "codevm"]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 3600) -> dict:
    """Wall s, CPU s (the process and the children it waited for) and peak RSS MiB of a command."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watchdog = threading.Timer(timeout, proc.kill)  # nothing waits forever
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {err[-400:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def read_tree(root: Path) -> None:
    """Read every file of the tree once, untimed: ctags and codevm then both meet it in the
    page cache (the first reader of a tree that was not read lately paid for the disk)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def wait_idle(pid: int, timeout: float = 300) -> float:
    """Seconds until process `pid` uses under 5% of a core over half a second (a service
    just started walks the tree to catch up, and sets up its watches)."""
    started = time.perf_counter()

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    while time.perf_counter() - started < timeout:
        time.sleep(0.5)
        now = cpu()
        if now - before < 0.025:
            break
        before = now
    return round(time.perf_counter() - started, 1)


def timed_calls(fn, queries: list[str]) -> dict:
    walls, cpus = [], []
    for q in queries:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(q)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return {"wall": latency_summary(walls), "cpu": latency_summary(cpus)}


def timed_commands(commands: list[list[str]], cwd: Path) -> dict:
    runs = [run(c, cwd) for c in commands]
    return {"wall": latency_summary([r["wall_s"] * 1000 for r in runs]),
            "cpu": latency_summary([r["cpu_s"] * 1000 for r in runs])}


def lexical_rebuild(engine) -> dict:  # type: ignore[no-untyped-def]
    """The lexical index made again from the database (what a compaction or a lost index
    costs): wall, and CPU of this process and of the rebuild's worker processes."""
    from codevm.db.lexical import database_state

    store = engine.store
    with store.lock:
        con = store.cursor()
        generation, database = database_state(con)
        before, children = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        store._rebuild_lexical(con, generation, database)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return {"wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(time.process_time() - before, 2),
            "workers_cpu_s": round(max(0.0, workers), 2)}


def writer_profile(root: Path, home: Path) -> dict:
    """A cold index in this process with each batch's write timed (see the docstring)."""
    from codevm.db.index_tables import IndexTables
    from codevm.engine import Engine

    shutil.rmtree(home, ignore_errors=True)
    os.environ["CODEVM_HOME"] = str(home)
    real = IndexTables.load_batch
    batches: list[float] = []
    chunks: list[int] = []  # each batch's chunks: the last batches of u-boot hold 1.7x the first's

    def timed(self, files, chunk_files, *args, **kwargs):  # type: ignore[no-untyped-def]
        count = 0
        for name in chunk_files:
            with open(name, "rb") as f:
                count += sum(1 for _ in f)
        chunks.append(count)
        started = time.perf_counter()
        try:
            return real(self, files, chunk_files, *args, **kwargs)
        finally:
            batches.append((time.perf_counter() - started) * 1000)

    IndexTables.load_batch = timed  # type: ignore[method-assign]
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with Engine(root) as engine:
            started = time.perf_counter()
            engine.index()
            wall = time.perf_counter() - started
    finally:
        IndexTables.load_batch = real  # type: ignore[method-assign]
    after, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    n = min(20, len(batches) // 2) or 1
    per_chunk = [1000 * ms / max(count, 1) for ms, count in zip(batches, chunks, strict=True)]
    return {"batches": len(batches), "first_batches_ms_median": round(statistics.median(batches[:n]), 1),
            "last_batches_ms_median": round(statistics.median(batches[-n:]), 1),
            "first_batches_us_per_chunk_median": round(statistics.median(per_chunk[:n])),
            "last_batches_us_per_chunk_median": round(statistics.median(per_chunk[-n:])),
            "writer_share_of_wall": round(sum(batches) / 1000 / wall, 3), "wall_s": round(wall, 1),
            "main_cpu_s": round(after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime, 1),
            "workers_cpu_s": round(after_children.ru_utime + after_children.ru_stime
                                   - children.ru_utime - children.ru_stime, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--queries", type=int, default=50, help="identifier queries, and as many questions")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the index here (a later run re-indexes cold anyway)")
    parser.add_argument("--writer", action="store_true", help="also profile the writer in a second cold index")
    args = parser.parse_args()
    as_installed()
    root = args.path.resolve()
    work = args.keep or Path(tempfile.mkdtemp(prefix="codevm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    os.environ["CODEVM_HOME"] = str(home)
    (root / ".git").mkdir(exist_ok=True)
    out: dict = {"corpus": str(root), "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2)}
    from codevm.service import RemoteEngine, stop_service

    try:
        tags = work / "tags"
        ctags = ["ctags", "-R", "-f", str(tags), "."]
        read_tree(root)
        out["ctags"] = run(ctags, root)
        out["ctags"]["tags_mb"] = round(tags.stat().st_size / 1e6, 1)
        local = {**os.environ, "CODEVM_SERVICE": "false"}
        out["cold_index"] = run([*CODEVM, "index"], root, local)
        # ctags again: this machine's speed drifts within minutes, and the ratio is to the
        # mean of the runs either side of the cold index
        out["ctags_after"] = run(ctags, root)
        out["cold_over_ctags"] = {k: round(out["cold_index"][k] / max((out["ctags"][k] + out["ctags_after"][k]) / 2,
                                                                       1e-9), 2)
                                  for k in ("wall_s", "cpu_s")}
        out["no_change_reindex"] = run([*CODEVM, "index"], root, local)

        from codevm.db.store import lexical_directory
        from codevm.engine import Engine

        with Engine(root) as engine:
            status = engine.status()
            database = engine.store.path
            lexical_bytes = engine.store.lexical.size_bytes()
            rng = random.Random(7)
            names = [r[0] for r in engine.store.cursor().execute(
                "SELECT DISTINCT name FROM symbols WHERE length(name) > 3 ORDER BY name").fetchall()]
            identifiers = [rng.choice(names) for _ in range(args.queries)]
            questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.queries)]
            queries = identifiers + questions
            for q in queries[:10]:
                engine.search(q)  # warm
            out["search_in_process"] = {"all": timed_calls(engine.search, queries),
                                        "identifiers": timed_calls(engine.search, identifiers),
                                        "questions": timed_calls(engine.search, questions)}
            out["lexical_rebuild"] = lexical_rebuild(engine)
        out["files"], out["chunks"], out["symbols"] = status.files, status.chunks, status.symbols
        out["database_mb"] = round(folder_bytes(database.parent) / 1e6 - lexical_bytes / 1e6, 1)
        out["lexical_index_mb"] = round(folder_bytes(lexical_directory(database)) / 1e6, 1)

        run([*CODEVM, "status"], root)  # starts the service
        # the first search while the new service catches up with the tree, apart; then, as
        # in-process, the rest once it is idle and warmed by the same ten queries
        out["cli_first_search_ms"] = round(run([*CODEVM, "search", queries[-1]], root)["wall_s"] * 1000)
        with RemoteEngine(root) as remote:
            out["service_startup_busy_s"] = wait_idle(remote.service_info()["pid"])
        for q in queries[:10]:
            run([*CODEVM, "search", q], root)
        out["cli_search"] = timed_commands([[*CODEVM, "search", q] for q in queries], root)
        out["cli_symbol"] = timed_commands([[*CODEVM, "symbol", n] for n in identifiers], root)
        watched = []
        target = root / "codevm_scale_bench_watched.py"
        with RemoteEngine(root) as remote:
            remote.search("warm")
            for i in range(args.edits):
                marker = f"scale_bench_marker_{i}_{rng.randrange(1 << 30)}"
                started = time.perf_counter()
                target.write_text(f"def {marker}():\n    return {i}\n")
                deadline = started + 60
                while not remote.symbol(marker) and time.perf_counter() < deadline:
                    time.sleep(0.005)
                watched.append((time.perf_counter() - started) * 1000)
            target.unlink()
            time.sleep(5)
            pid = remote.service_info()["pid"]
            out["service_rss_idle_mib"] = rss_mib(pid)
        out["edit_to_searchable_ms"] = latency_summary(watched)
        if args.writer:
            out["writer"] = writer_profile(root, work / "home-writer")
        out["load_after"] = round(os.getloadavg()[0], 2)
        out["bench_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out))
    finally:
        stop_service(root)
        (root / "codevm_scale_bench_watched.py").unlink(missing_ok=True)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

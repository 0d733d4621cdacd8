"""The engine service on a corpus (default: this interpreter's standard library). One JSON object.

Measured in one run, on one index:
- search latency in-process and through the service (the remote hop), same queries;
- a client starting the service and getting its first answer: from this process, and as
  a whole `codevm search` command (interpreter start and imports included);
- recovery after kill -9 of the service: from the kill to the next answer;
- a file written on disk until the service's watcher makes it searchable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_speed import bench_queries, copy_corpus, latency_summary, percentile  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.service import RemoteEngine, ServiceFiles, lock_held, stop_service  # noqa: E402


def timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - started) * 1000


def latencies(engine, queries: list[str]) -> list[float]:
    for q in queries:  # a warm pass: both processes start from the same caches
        engine.search(q, k=10)
    return sorted(timed(engine.search, q) for q in queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="starts, kills and edits to time")
    args = parser.parse_args()
    work, root = copy_corpus(Path(args.path).resolve())
    try:
        with Engine(root) as engine:
            engine.index()
            engine.warm_up()  # as the service does when it starts
            queries = bench_queries(engine, args.queries)
            local = latencies(engine, queries)
            files = engine.status().files

        files_ = ServiceFiles.of(root)
        first_answer = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            with RemoteEngine(root) as remote:
                remote.search(queries[0])
            first_answer.append((time.perf_counter() - started) * 1000)
            stop_service(root)

        cli_first, cli_warm = [], []
        command = [sys.executable, "-P", "-m", "codevm", "search", queries[1], "-k", "3"]  # -P: as the codevm script
        for _ in range(args.repeats):
            cli_first.append(timed(subprocess.run, command, cwd=root, capture_output=True, check=True))
            cli_warm.append(timed(subprocess.run, command, cwd=root, capture_output=True, check=True))
            stop_service(root)

        with RemoteEngine(root) as remote:
            remote_latencies = latencies(remote, queries)
            recovery = []
            for _ in range(args.repeats):
                pid = remote.service_info()["pid"]
                started = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                remote.search(queries[2])
                recovery.append((time.perf_counter() - started) * 1000)
                assert remote.service_info()["pid"] != pid
            watched = []
            target = root / "bench_watched.py"
            for i in range(args.repeats):
                marker = f"written_on_disk_marker_{i}"
                started = time.perf_counter()
                target.write_text(f"def {marker}():\n    return {i}\n")
                while not remote.symbol(marker):
                    time.sleep(0.01)
                watched.append((time.perf_counter() - started) * 1000)
        stop_service(root)
        assert not lock_held(files_)
        added = [r - l for r, l in zip(remote_latencies, local)]  # both sorted: quantile by quantile
        print(json.dumps({
            "corpus": str(args.path), "files": files, "queries": len(queries),
            "search_in_process": latency_summary(local, 2),
            "search_through_service": latency_summary(remote_latencies, 2),
            "remote_hop_added_p50_ms": round(statistics.median(remote_latencies) - statistics.median(local), 2),
            "remote_hop_added_p95_ms": round(percentile(remote_latencies, 0.95) - percentile(local, 0.95), 2),
            "remote_hop_added_max_quantile_ms": round(max(added), 2),
            "start_service_to_first_answer_ms_median": round(statistics.median(first_answer)),
            "start_service_to_first_answer_ms_max": round(max(first_answer)),
            "cli_search_starting_the_service_ms_median": round(statistics.median(cli_first)),
            "cli_search_service_running_ms_median": round(statistics.median(cli_warm)),
            "recovery_after_kill_9_ms_median": round(statistics.median(recovery)),
            "recovery_after_kill_9_ms_max": round(max(recovery)),
            "file_on_disk_searchable_ms_median": round(statistics.median(watched)),
            "file_on_disk_searchable_ms_max": round(max(watched)),
        }))
    finally:
        stop_service(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

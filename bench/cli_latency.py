"""`codevm symbol|refs|search|status` as a user runs them, through a running service.
Prints one JSON object.

On an indexed corpus (default: this interpreter's standard library; any folder with
--corpus), each command is run as a whole process, the way a shell runs it, and timed:
wall time and the process's CPU time (user + system, from the OS). In the same run, and
on the same queries, the full CLI (codevm/cli.py, what every command ran before the quick
path of codevm/quick.py) is timed as the baseline, and `python -c pass` as the floor of
any Python command. Queries: half symbol names of the corpus, half phrases (as
bench/index_speed.py makes them). Runs alternate between the two paths, so that load on
the machine falls on both alike.

    python bench/cli_latency.py [--corpus PATH] [--runs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_speed import as_installed, bench_queries, copy_corpus, latency_summary  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.service import stop_service  # noqa: E402

# -P, as the `codevm` script runs (codevm.quick:main): the corpus folder, the current one,
# must not shadow modules (the standard library's copy would be compiled at every run)
QUICK = [sys.executable, "-P", "-m", "codevm"]
FULL = [sys.executable, "-P", "-c", "from codevm.cli import main; main()"]


def timed(command: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall ms, CPU ms of the process, exit code). os.wait4 blocks until the process ends
    (subprocess.run with a timeout polls, in steps of up to 50 ms) and gives its own usage."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(120, proc.kill)  # nothing waits forever
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = (time.perf_counter() - started) * 1000
    return wall, (usage.ru_utime + usage.ru_stime) * 1000, proc.returncode


def summary(runs: list[tuple[float, float, int]]) -> dict:
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    return {"wall": latency_summary(walls), "cpu": latency_summary(cpus),
            "failed": sum(1 for r in runs if r[2] not in (0, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--runs", type=int, default=40, help="commands of each kind and path")
    parser.add_argument("--keep", type=Path, help="keep the copy and its index here")
    args = parser.parse_args()
    as_installed()
    work, root = copy_corpus(args.corpus, args.keep)
    try:
        with Engine(root) as engine:
            engine.index()
            queries = bench_queries(engine, args.runs)
            names = [q for q in queries if " " not in q] or ["main"]
        commands = {
            "symbol": [["symbol", names[i % len(names)]] for i in range(args.runs)],
            "refs": [["refs", names[i % len(names)]] for i in range(args.runs)],
            "search": [["search", *q.split()] for q in queries],
            "status": [["status"] for _ in range(args.runs)],
        }
        subprocess.run([*QUICK, "status"], cwd=root, capture_output=True, timeout=300)  # starts the service
        floor = [timed([sys.executable, "-P", "-c", "pass"], root) for _ in range(args.runs)]
        out: dict = {"corpus": str(args.corpus), "runs": args.runs, "cpus": os.cpu_count(),
                     "load_before": os.getloadavg()[0], "python_floor": summary(floor)}
        for name, argvs in commands.items():
            quick, full = [], []
            for argv in argvs:
                quick.append(timed([*QUICK, *argv], root))
                full.append(timed([*FULL, *argv], root))
            q, f = summary(quick), summary(full)
            out[name] = {"quick": q, "full_cli": f,
                         "cpu_p50_ratio": round(q["cpu"]["p50_ms"] / max(f["cpu"]["p50_ms"], 1e-9), 3),
                         "wall_p50_ratio": round(q["wall"]["p50_ms"] / max(f["wall"]["p50_ms"], 1e-9), 3)}
        out["load_after"] = os.getloadavg()[0]
        imports = subprocess.run([sys.executable, "-P", "-X", "importtime", "-m", "codevm", "symbol", names[0]],
                                 cwd=root, capture_output=True, text=True, timeout=60).stderr
        self_us = [int(line.split("|")[0].split(":")[1]) for line in imports.splitlines()
                   if line.startswith("import time:") and line.split("|")[0].split(":")[1].strip().isdigit()]
        out["quick_path_import_ms"] = round(sum(self_us) / 1000, 1)
        out["quick_path_modules"] = len(self_us)
        out["median_cpu_ms_all_quick"] = round(statistics.median(
            out[c]["quick"]["cpu"]["p50_ms"] for c in commands), 1)
        print(json.dumps(out))
    finally:
        stop_service(root)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

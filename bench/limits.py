"""Long queries and slow neighbours, on a corpus (default: this interpreter's standard
library). One JSON object.

- search time against query length: the same words cut at 2,000 and 20,000 characters
  (a pasted issue, a long traceback), and a single 20,000-character word; wall and CPU
  time, median of `--repeats`, and their ratio (the target: a 20k query in at most 2x the
  time of a 2k one);
- `status` through the service while another client runs 20k-character searches back to
  back: its latency against an idle service (the target: no request delays it by more
  than 200 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import sysconfig
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index_speed import copy_corpus  # noqa: E402
from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.service import RemoteEngine, stop_service  # noqa: E402


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="of searches next to status")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work, root = copy_corpus(Path(args.path).resolve())
    try:
        with Engine(root, Settings(service=False, embedder="off")) as engine:
            engine.index()
            names = [r[0] for r in engine.store.cursor().execute(
                "SELECT name FROM symbols ORDER BY hash(name) LIMIT 5000").fetchall()]
            text = " ".join(names)
            queries = {"2k": text[:2_000], "20k": text[:20_000], "one 20k word": "x" * 20_000}
            for q in queries.values():
                engine.search(q)  # warm
            lengths = {}
            for label, q in queries.items():
                runs = [timed(lambda q=q: engine.search(q)) for _ in range(args.repeats)]
                lengths[label] = {"wall_ms": round(statistics.median(r[0] for r in runs), 1),
                                  "cpu_ms": round(statistics.median(r[1] for r in runs), 1)}
            files = engine.status().files
        ratio = {"20k/2k wall": round(lengths["20k"]["wall_ms"] / lengths["2k"]["wall_ms"], 2),
                 "20k/2k cpu": round(lengths["20k"]["cpu_ms"] / lengths["2k"]["cpu_ms"], 2)}

        with RemoteEngine(root) as probe, RemoteEngine(root) as busy:
            probe.status()
            idle = sorted(timed(probe.status)[0] for _ in range(30))
            stop = threading.Event()
            searches = [0]

            def hammer() -> None:
                while not stop.is_set():
                    busy.search(queries["20k"])
                    searches[0] += 1

            thread = threading.Thread(target=hammer, daemon=True)
            thread.start()
            loaded: list[float] = []
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                loaded.append(timed(probe.status)[0])
                time.sleep(0.05)
            stop.set()
            thread.join(60)
        loaded.sort()
        print(json.dumps({
            "corpus": str(args.path), "files": files, "query_length": lengths, "ratio": ratio,
            "status_ms": {"idle_median": round(statistics.median(idle), 1), "idle_max": round(idle[-1], 1),
                          "next_to_long_searches_median": round(statistics.median(loaded), 1),
                          "next_to_long_searches_max": round(loaded[-1], 1),
                          "delay_max": round(loaded[-1] - statistics.median(idle), 1),
                          "samples": len(loaded), "searches_meanwhile": searches[0]},
            "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                        "load_after": [round(x, 2) for x in os.getloadavg()]}}))
    finally:
        stop_service(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

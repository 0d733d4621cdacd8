"""SWE-bench Lite paging: does the heuristic pager put the gold code in the working set?
Prints one JSON object.

For each instance the repository is checked out at its base commit and indexed (as in
bench/localization.py, sharing its cache); the issue text is the question. At budgets of
2k, 4k, 8k and 16k tokens for the working set it reports the share of instances whose
gold files (a chunk of each) and gold functions (each one's chunk; `imports` = a
module-level chunk or the first chunk of the file) are in the working set, for the heuristic
pager (the fusion of every retrieval signal, as `codevm ask` pages in) and, in the same run,
for each signal alone filling the same budget (`lexical` is plain search).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from localization import bench_arguments, run_instances  # noqa: E402

from codevm.memory.context import Page  # noqa: E402
from codevm.memory.engine import Engine  # noqa: E402
from codevm.memory.pager import Candidate  # noqa: E402
from codevm.memory.retrieval import SIGNALS  # noqa: E402

BUDGETS = (2000, 4000, 8000, 16000)


def covered(pages: list[Page], kinds: dict[int, str], instance: dict) -> tuple[bool, bool]:
    paths = {p.path for p in pages}
    files_ok = all(g in paths for g in instance["gold_files"])
    have = set()
    for p in pages:
        have.add(f"{p.path}::{p.symbol}")
        if kinds.get(int(p.key.split(":")[1])) == "module" or p.start_line == 1:
            have.add(f"{p.path}::imports")
    functions_ok = all(g in have for g in instance["gold_functions"])
    return files_ok, functions_ok


def evaluate(engine: Engine, instance: dict) -> dict:
    question = instance["query"]
    _, signals = engine.retriever.signals(question, depth=300)
    alone = {name: [Candidate(cid, score, name) for cid, score, _ in ranked.items]
             for name, ranked in signals.items()}
    row: dict[str, object] = {"id": instance["id"]}
    con = engine.store.cursor()
    for budget in BUDGETS:
        started = time.perf_counter()
        pager_pages = engine.pager.prefetch(question, budget)  # what `ask` pages in
        if budget == 8000:
            row["pager_ms"] = round((time.perf_counter() - started) * 1000, 1)
        runs = [("pager", pager_pages)] + [(name, engine.pager.pages(c, budget)) for name, c in alone.items()]
        for name, pages in runs:
            ids = ", ".join(p.key.split(":")[1] for p in pages) or "0"
            kinds = dict(con.execute(f"SELECT id, kind FROM chunks WHERE id IN ({ids})").fetchall())
            files_ok, functions_ok = covered(pages, kinds, instance)
            row[f"{name}_file_{budget}"] = files_ok
            row[f"{name}_function_{budget}"] = functions_ok
    return row


def main() -> None:
    args = bench_arguments(__doc__ or "")
    results, missing, _ = run_instances(
        args, "paging-signals", lambda inst, engine: evaluate(engine, inst),
        lambda row: f"8k pager file {row['pager_file_8000']} function {row['pager_function_8000']}",
        lambda row: all(f"{name}_file_8000" in row for name in SIGNALS))
    n = max(len(results), 1)
    summary: dict[str, object] = {"instances": len(results), "missing_repositories": missing}
    for budget in BUDGETS:
        for name in ("pager", *SIGNALS):
            for what in ("file", "function"):
                key = f"{name}_{what}_{budget}"
                summary[key] = round(sum(1 for r in results if r[key]) / n, 4)
    latencies = sorted(r["pager_ms"] for r in results)
    if latencies:
        summary["pager_p50_ms"] = latencies[len(latencies) // 2]
        summary["pager_p95_ms"] = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

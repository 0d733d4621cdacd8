"""SWE-bench Lite paging: does the heuristic pager put the gold code in the working set?
Prints one JSON object.

For each instance the repository is checked out at its base commit and indexed (as in
bench/localization.py, sharing its cache); the issue text is the question. At budgets of
2k, 4k, 8k and 16k tokens for the working set it reports the share of instances whose
gold files (a chunk of each) and gold functions (each one's chunk; `imports` = a
module-level chunk or the first chunk of the file) are in the working set, for the heuristic
pager (the fusion of every retrieval signal, as `codevm ask` pages in) and, in the same run,
for each signal alone filling the same budget (`lexical` is plain search). `edited` counts
the functions that each fix edits (bench/gold.py), over the instances that edit one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_speed import latency_summary  # noqa: E402
from localization import Bench, bench_arguments, run_instances  # noqa: E402

from codevm.memory.context import Page  # noqa: E402
from codevm.memory.engine import Engine  # noqa: E402
from codevm.memory.pager import Candidate  # noqa: E402
from codevm.memory.retrieval import SIGNALS  # noqa: E402

BUDGETS = (2000, 4000, 8000, 16000)


def covered(pages: list[Page], kinds: dict[int, str], instance: dict) -> tuple[bool, bool, bool | None]:
    paths = {p.path for p in pages}
    files_ok = all(g in paths for g in instance["gold_files"])
    have = set()
    for p in pages:
        have.add(f"{p.path}::{p.symbol}")
        if kinds.get(int(p.key.split(":")[1])) == "module" or p.start_line == 1:
            have.add(f"{p.path}::imports")
    functions_ok = all(g in have for g in instance["gold_functions"])
    edited = instance["edited_functions"]  # None: the fix edits no function that exists
    return files_ok, functions_ok, all(g in have for g in edited) if edited else None


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
            files_ok, functions_ok, edited_ok = covered(pages, kinds, instance)
            row[f"{name}_file_{budget}"] = files_ok
            row[f"{name}_function_{budget}"] = functions_ok
            row[f"{name}_edited_{budget}"] = edited_ok
    return row


PAGING = Bench(
    "paging-signals", lambda inst, engine: evaluate(engine, inst),
    lambda row: f"8k pager file {row['pager_file_8000']} function {row['pager_function_8000']}",
    lambda row: all(f"{name}_edited_8000" in row for name in SIGNALS))


def summary(results: list[dict]) -> dict[str, object]:
    """Shares of instances with their gold in the working set; `edited` (the functions
    that the fix edits, bench/gold.py) over the instances that edit one."""
    out: dict[str, object] = {"instances": len(results)}
    for budget in BUDGETS:
        for name in ("pager", *SIGNALS):
            for what in ("file", "function", "edited"):
                key = f"{name}_{what}_{budget}"
                counted = [r[key] for r in results if r[key] is not None]
                out[key] = round(sum(counted) / max(len(counted), 1), 4)
    out["instances_with_edited_functions"] = sum(1 for r in results if r["pager_edited_8000"] is not None)
    if results:
        out.update({f"pager_{k}": v for k, v in latency_summary([r["pager_ms"] for r in results]).items()})
    return out


def main() -> None:
    args = bench_arguments(__doc__ or "")
    results, missing, _ = run_instances(args, [PAGING])
    print(json.dumps({**summary(results[PAGING.name]), "missing_repositories": missing}))


if __name__ == "__main__":
    main()

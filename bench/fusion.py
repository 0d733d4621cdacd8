"""Fusion weights tuned offline on SWE-bench Lite. Prints one JSON object.

Reads the per-signal rankings that `bench/localization.py` and `bench/paging.py` kept for
every instance (`<cache>/localization-signals.jsonl`, `<cache>/paging-signals.jsonl`) and
scores the fusion, and the pager's 8k working sets, under sets of weights (coordinate
ascent from the shipped ones), without touching an index: the weights that `codevm`
ships come from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gold import edited_gold  # noqa: E402
from localization import DATA, accuracy, edited_accuracy, fused_items, mirror_for, ranks  # noqa: E402
from paging import PAGING, Kept  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.retrieval.fusion import SIGNALS  # noqa: E402
from codevm.retrieval.fusion import weights as weights_of  # noqa: E402

GRID = {"named": (0.0, 0.1, 0.2, 0.35, 0.5), "graph": (0.0, 0.75, 1.0, 1.5, 2.0, 3.0),
        "vector": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0), "text": (1.0, 0.7, 0.5, 0.3, 0.2, 0.1),
        "file": (0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)}


def score(rows: list[dict], data: dict[str, dict], weights: dict[str, float],
          kept: list[tuple[Kept, dict]]) -> dict:
    out = []
    for row in rows:
        gold = data[row["id"]]
        ranked = ranks(fused_items(row["items"], weights), gold["gold_files"], gold["gold_functions"])
        out.append({**ranked, "has_functions": row["has_functions"]})
    edited = edited_accuracy(rows, data, weights, ("fusion",))["fusion"]
    paged: dict[str, list[bool]] = {"function": [], "edited": []}
    for pages, inst in kept:  # the pager's 8k working sets, as bench/paging.py makes them
        for what, ok in pages.covered(pages.pager(8000, weights), inst).items():
            if what in paged and ok is not None:
                paged[what].append(ok)
    return {**accuracy(out), **{f"edited_{k}": v for k, v in edited.items()},
            **{f"pager_{what}_8000": round(sum(oks) / max(len(oks), 1), 4) for what, oks in paged.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--require", action="append", default=[],
                        help="only instances whose rows hold this signal (e.g. vector)")
    args = parser.parse_args()
    instances = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    edited = edited_gold(instances, args.cache, lambda repo: mirror_for(args.mirrors, repo))
    data = {i["id"]: {**i, "edited_functions": edited.get(i["id"], [])} for i in instances}
    latest: dict[str, dict] = {}
    for line in (args.cache / "localization-signals.jsonl").read_text().splitlines():
        row = json.loads(line)
        latest[row["id"]] = row
    rows = [r for r in latest.values() if all(name in r["items"] for name in args.require)]
    # the pager's working sets of the same instances, from bench/paging.py's kept rankings
    kept_rows: dict[str, dict] = {}
    paging_file = args.cache / "paging-signals.jsonl"
    for line in paging_file.read_text().splitlines() if paging_file.exists() else []:
        row = json.loads(line)
        if PAGING.current(row):
            kept_rows[row["id"]] = row
    kept = [(Kept(kept_rows[r["id"]]), data[r["id"]]) for r in rows if r["id"] in kept_rows]
    # lexical is the reference (weight 1); the others are scaled against it. Coordinate
    # ascent from the shipped weights (a full grid of the four is 840 scorings of every row)
    objective: dict[tuple, tuple[float, dict]] = {}

    def scored(weights: dict[str, float]) -> float:
        key = tuple(sorted(weights.items()))
        if key not in objective:
            acc = score(rows, data, weights, kept)
            # file Acc@1 and Acc@5, Acc@10 of the functions edited (the dataset's own gold
            # functions mislabel some instances: bench/gold.py) and the gold functions in
            # the pager's 8k working set, together
            objective[key] = (acc["file_acc@1"] + acc["file_acc@5"] + acc["edited_function_acc@10"]
                              + acc["pager_function_8000"], acc)
        return objective[key][0]

    best = dict(weights_of(Settings()))
    for _ in range(4):
        before = dict(best)
        for name, values in GRID.items():
            best[name] = max((best[name], *values), key=lambda v: scored({**best, name: v}))
        if best == before:
            break
    results = sorted(((total, dict(key), acc) for key, (total, acc) in objective.items()),
                     key=lambda r: -r[0])
    edited_alone = edited_accuracy(rows, data, {}, SIGNALS)
    alone = {name: {**accuracy([{**r[name], "has_functions": r["has_functions"]} for r in rows]),
                    **{f"edited_{k}": v for k, v in edited_alone[name].items()}}
             for name in SIGNALS}
    print(json.dumps({"instances": len(rows), "paged_instances": len(kept), "alone": alone,
                      "scorings": len(objective),
                      "shipped": {"weights": weights_of(Settings()), **score(rows, data, weights_of(Settings()), kept)},
                      "best": [{"weights": w, **acc} for _, w, acc in results[:8]]}))


if __name__ == "__main__":
    main()

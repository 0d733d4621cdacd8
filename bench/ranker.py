"""A learned ranker over codevm's retrieval signals, trained on pairs mined from git
history (bench/mine.py) and measured on pairs it never saw and on SWE-bench Lite. Prints
one JSON object.

    python bench/ranker.py collect --data bench/.cache/mined.jsonl --cache bench/.cache/mined
        keeps, for each pair, the signals' rankings at the depth the pager ranks for 8k
        tokens and the pages of their chunks (bench/paging.py's row format), with each
        repository checked out at the pair's parent commit and indexed there
    python bench/ranker.py evaluate --data FILE --cache D [--model FILE]
        the fusion, the shipped model (or FILE) and its blend on the pairs collected, in all and per
        language (pairs from repositories and languages the model never saw)
    python bench/ranker.py train [--holdout OWNER/NAME ...]
        features (codevm/retrieval/ranker.py) of every candidate, labelled 2 for a chunk
        of a function the commit edits, 1 for another chunk of a file it changes, 0
        otherwise; a LightGBM lambdarank model trained on the pairs of all repositories
        but the held-out ones; then, on the held-out pairs and on SWE-bench Lite (rows
        kept by bench/paging.py), the hand-weighted fusion, the model, its blend with the
        fusion (the pager's order) and the blend with the model codevm ships now (what a
        new model would replace) side by side: file Acc@1/@5, edited-function Acc@10
        (distinct symbols) and the edited functions in the pager's 8k working set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from localization import DATA, Bench, bench_arguments, run_instances, selected  # noqa: E402
from paging import Kept, kept_signals  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.memory.budget import candidates_for  # noqa: E402
from codevm.memory.pager import Candidate, blended, with_file_prior  # noqa: E402
from codevm.retrieval.fusion import Scored, weights  # noqa: E402
from codevm.retrieval.ranker import MODEL_FILE, Model, export, feature_names, features  # noqa: E402
from codevm.retrieval.retriever import signal_depth  # noqa: E402

BUDGET = 8000
FILE_LABEL = 1  # the label of a chunk of a changed file outside the edited functions
PAGED = min(1000, 2 * candidates_for(BUDGET))  # the candidates the pager ranks for BUDGET
DEPTH = signal_depth(PAGED)
ROWS = Bench("ranker-rows", lambda inst, engine: kept_signals(engine, inst, (BUDGET,)),
             lambda row: f"{len(row['chunks'])} chunks kept", lambda row: "chunks" in row and "classes" in row)


def load(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


def instance_table(data: Iterable[Path]) -> dict[str, dict]:
    out = {}
    for path in data:
        for line in path.read_text().splitlines():
            if line.strip():
                inst = json.loads(line)
                out[inst["id"]] = inst
    return out


class Example:
    """One instance: its candidates' features and labels, and what judges a ranking."""

    def __init__(self, row: dict, inst: dict, w: dict[str, float]):
        self.kept = Kept(row)
        self.inst = inst
        signals = self.kept.signals[DEPTH] if DEPTH in self.kept.signals else self.kept.signals[max(self.kept.signals)]
        self.chunks = self.kept.chunk_info()
        self.ids, self.x = features(signals, self.chunks, w)
        self.edited = set(inst.get("edited_functions") or inst.get("gold_functions") or [])
        files = set(inst["gold_files"])
        self.y = [2 if f"{self.chunks[c].path}::{self.chunks[c].symbol}" in self.edited else
                  FILE_LABEL if self.chunks[c].path in files else 0 for c in self.ids]

    def judge(self, ranked: list[Candidate]) -> dict[str, float]:
        """Figures of a ranking of this instance's candidates (best first, as relevant as
        the pager makes them: the working set's whole pages depend on it)."""
        order = [c.chunk_id for c in ranked]
        files: list[str] = []
        symbols: list[str] = []
        for cid in order:
            info = self.chunks[cid]
            if info.path not in files:
                files.append(info.path)
            name = f"{info.path}::{info.symbol}"
            if info.symbol and name not in symbols:
                symbols.append(name)
        gold_files = set(self.inst["gold_files"])
        pages = self.kept.working_set(ranked, BUDGET)
        paged = self.kept.covered(pages, {**self.inst, "edited_functions": sorted(self.edited)})["edited"]
        return {"file_acc@1": float(bool(files) and files[0] in gold_files),
                "file_acc@5": float(gold_files <= set(files[:5])),
                "edited_function_acc@10": float(bool(self.edited) and self.edited <= set(symbols[:10])),
                "pager_edited_8000": float(bool(paged))}


def summary(examples: list[Example], order_of) -> dict[str, float]:
    figures = [e.judge(order_of(e)) for e in examples]
    return {k: round(sum(f[k] for f in figures) / max(len(figures), 1), 4) for k in figures[0]} if figures else {}


def scores(e: Example, model: Model) -> list[float]:
    import numpy as np

    return list(model.score(np.array(e.x, dtype=np.float64))) if e.x else []


def model_order(e: Example, model: Model) -> list[Candidate]:
    """The candidates as `model` alone orders them (relevance falling with the rank)."""
    order = [cid for _, cid in sorted(zip(scores(e, model), e.ids, strict=True), key=lambda p: -p[0])][:PAGED]
    return [Candidate(cid, 1.0 - i / (len(order) + 1), "") for i, cid in enumerate(order)]


def by_hand(e: Example) -> list[Candidate]:
    """What the pager pages in with `ranker = "fusion"`: the hand-weighted fusion's top
    PAGED, with the file prior."""
    fused_at = feature_names().index("fused_score")
    fused = sorted((Scored(cid, row[fused_at], "") for cid, row in zip(e.ids, e.x, strict=True)),
                   key=lambda s: (-s.score, s.chunk_id))[:PAGED]
    return with_file_prior(fused, {cid: e.chunks[cid].path for cid in e.ids})


def blend_order(e: Example, model: Model) -> list[Candidate]:
    """What the pager pages in with the learned ranker `model` (pager.blended)."""
    return blended(e.ids, e.x, scores(e, model), {cid: e.chunks[cid].path for cid in e.ids}, PAGED)


def evaluate(args: argparse.Namespace) -> None:
    """The fusion, the shipped model and its blend (the pager's order) on every collected
    pair of `--data`, in all and per language: pairs from repositories and languages the
    model never saw."""
    w = weights(Settings())
    mined = instance_table([args.data])
    examples = [Example(row, mined[rid], w) for rid, row in load(args.cache / "ranker-rows.jsonl").items()
                if rid in mined and row.get("chunks")]
    packaged = Model.load(args.model)
    groups: dict[str, list[Example]] = {"all": examples}
    for e in examples:
        groups.setdefault(e.inst.get("language", "python"), []).append(e)
    out: dict = {"pairs": len(examples), "model": str(args.model),
                 "trained_on": json.loads(args.model.read_text()).get("trained_on", {})}
    for name, group in sorted(groups.items(), key=lambda g: -len(g[1])):
        out[name] = {"pairs": len(group), "fusion": summary(group, by_hand),
                     "model": summary(group, lambda e: model_order(e, packaged)),
                     "blend": summary(group, lambda e: blend_order(e, packaged))}
    print(json.dumps(out))


def train(args: argparse.Namespace) -> None:
    import lightgbm as lgb
    import numpy as np

    w = weights(Settings())
    mined = instance_table([args.data])
    lite = {i["id"]: i for i in selected(argparse.Namespace(data=DATA, repo=None, ids=None, limit=None,
                                                            cache=HERE / ".cache", mirrors=args.mirrors))}
    mined_rows = load(args.cache / "ranker-rows.jsonl")
    lite_rows = load(HERE / ".cache" / "paging-signals.jsonl")
    train_ex, held_ex = [], []
    for rid, row in mined_rows.items():
        if rid not in mined:
            continue
        e = Example(row, mined[rid], w)
        if not e.ids or not any(y == 2 for y in e.y):
            continue  # the edited functions are not among the candidates: nothing to learn
        (held_ex if mined[rid]["repo"] in args.holdout else train_ex).append(e)
    held_all = [Example(row, mined[rid], w) for rid, row in mined_rows.items()
                if rid in mined and mined[rid]["repo"] in args.holdout]
    lite_ex = [Example(row, lite[rid], w) for rid, row in lite_rows.items() if rid in lite and row.get("chunks")]
    x = np.array([r for e in train_ex for r in e.x], dtype=np.float32)
    y = np.array([v for e in train_ex for v in e.y])
    groups = [len(e.ids) for e in train_ex]
    model = lgb.LGBMRanker(objective="lambdarank", n_estimators=args.trees, learning_rate=0.05, num_leaves=args.leaves,
                           min_child_samples=20, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                           lambdarank_truncation_level=50, verbose=-1, random_state=1)
    model.fit(x, y, group=groups, feature_name=feature_names())

    shipped = Model(export(model.booster_.dump_model()))
    sample = np.array([r for e in (lite_ex[:5] + train_ex[:5]) for r in e.x[:40]], dtype=np.float64)
    expected = model.booster_.predict(sample)
    drift = float(np.max(np.abs(shipped.score(sample) - expected)))
    if drift > 1e-6:
        raise SystemExit(f"the exported model scores differ from LightGBM's by {drift}")

    packaged = Model.load(MODEL_FILE)  # the model codevm ships now: what a new one replaces

    def orders(examples: list[Example]) -> dict[str, dict[str, float]]:
        return {"hand": summary(examples, by_hand), "model": summary(examples, lambda e: model_order(e, shipped)),
                "blend": summary(examples, lambda e: blend_order(e, shipped)),
                "shipped_blend": summary(examples, lambda e: blend_order(e, packaged))}

    importance = sorted(zip(feature_names(), model.booster_.feature_importance("gain"), strict=True),
                        key=lambda p: -p[1])
    out = {"train_pairs": len(train_ex), "train_candidates": len(y), "holdout": args.holdout,
           "heldout_pairs": len(held_all), "lite_instances": len(lite_ex),
           "heldout": orders(held_all), "lite": orders(lite_ex),
           "top_features": [[n, round(float(g), 1)] for n, g in importance[:12]]}
    out["exported_max_drift"] = drift
    if args.save:
        data = export(model.booster_.dump_model())
        # rows and LightGBM's scores of them: a test checks that the numpy evaluator agrees
        data["checks"] = [[row, float(score)] for row, score in zip(sample[::25].tolist(), expected[::25], strict=True)]
        data["trained_on"] = {"pairs": len(train_ex), "repositories": sorted({e.inst["repo"] for e in train_ex}),
                              "holdout": args.holdout, "trees": args.trees, "file_label": FILE_LABEL}
        args.save.write_text(json.dumps(data, separators=(",", ":")))
        out["saved"] = str(args.save)
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "collect":
        sys.argv.pop(1)
        if "--embedder" not in sys.argv:
            sys.argv += ["--embedder", "off"]
        args = bench_arguments(__doc__ or "")
        results, missing, _ = run_instances(args, [ROWS])
        print(json.dumps({"rows": len(results[ROWS.name]), "missing_repositories": missing}))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--data", type=Path, default=HERE / ".cache" / "mined.jsonl")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache" / "mined")
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--holdout", action="append", default=[], help="OWNER/NAME not trained on")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--leaves", type=int, default=15)
    parser.add_argument("--file-label", type=int, default=1, help="0: only the edited functions count")
    parser.add_argument("--save", type=Path, help="write the model here (LightGBM text format)")
    parser.add_argument("--model", type=Path, default=MODEL_FILE, help="evaluate this model (default: the shipped one)")
    args = parser.parse_args()
    if not args.holdout:
        args.holdout = ["pallets/click", "python-attrs/attrs"]
    global FILE_LABEL
    FILE_LABEL = args.file_label
    (evaluate if args.command == "evaluate" else train)(args)


if __name__ == "__main__":
    main()

"""SWE-bench Lite localization from the issue text. Prints one JSON object.

For each instance the repository is checked out at its base commit and indexed; the
issue text is the query; files are ranked by their best chunk and functions by the chunks
that define them. Acc@k counts an instance when all its gold items are in the top k.

One index per repository is moved from commit to commit (only the blobs that differ are
written), so each instance re-parses just what changed: the incremental indexer
at work. Repositories come from bare mirrors (`--mirrors`, default /work/.mirror,
folders named owner+name, with swe-bench/owner__name for django, scikit-learn and
matplotlib). Per-instance results are cached in bench/.cache/localization.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gold import edited_gold  # noqa: E402
from index_speed import latency_summary  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.retrieval.fusion import (  # noqa: E402
    SIGNAL_DEPTH,
    SIGNALS,
    TEXT_KINDS,
    Ranked,
    Scored,
    fused_ranking,
    weights,  # noqa: E402
)

DATA = HERE.parent.parent / "shared" / "bench" / "swebench_lite.jsonl"
SWE_BENCH_MIRRORS = {"django/django", "scikit-learn/scikit-learn", "matplotlib/matplotlib"}
FILE_KS = (1, 3, 5, 10)
FUNCTION_KS = (5, 10)


def mirror_for(mirrors: Path, repo: str) -> Path:
    owner, name = repo.split("/")
    folder = f"swe-bench+{owner}__{name}" if repo in SWE_BENCH_MIRRORS else f"{owner}+{name}"
    return mirrors / folder / "repo"


def checkout(git_dir: Path, tree: Path, manifest_file: Path, commit: str) -> int:
    """Make `tree` hold the files of `commit`, writing only blobs that changed.

    Reads blobs one by one through `git cat-file --batch`, so a blob missing from the
    mirror (large data files are left out of some) is skipped instead of failing the
    checkout. Returns the number of blobs missing.
    """
    tree.mkdir(parents=True, exist_ok=True)
    (tree / ".git").mkdir(exist_ok=True)  # marks the project root for codevm
    git = ["git", f"--git-dir={git_dir}"]
    listing = subprocess.run(git + ["ls-tree", "-r", "-z", commit], check=True,
                             capture_output=True).stdout.decode("utf-8", "surrogateescape")
    wanted: dict[str, str] = {}
    for entry in listing.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob" and mode in ("100644", "100755"):
            wanted[path] = sha
    have: dict[str, str] = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    for path in have.keys() - wanted.keys():
        (tree / path).unlink(missing_ok=True)
    changed = [p for p, sha in wanted.items() if have.get(p) != sha]
    missing = 0
    if changed:
        proc = subprocess.Popen(git + ["cat-file", "--batch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        assert proc.stdin and proc.stdout
        for path in changed:
            proc.stdin.write(wanted[path].encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            target = tree / path
            if len(header) < 3 or header[1] == b"missing":
                missing += 1
                target.unlink(missing_ok=True)
                wanted.pop(path)
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)  # the newline after each object
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                shutil.rmtree(target)
            target.write_bytes(data)
        proc.stdin.close()
        proc.wait()
    manifest_file.write_text(json.dumps(wanted))
    return missing


# A function's own score plus this share of its file's best score: a function in the
# file that matches the issue best is more likely the one than an equal hit elsewhere.
FILE_CONTEXT = 0.3


# one ranked chunk: (path, qualified name, kind, start line, score)
Item = tuple[str, str, str, int, float]


def signal_items(engine: Engine, query: str) -> dict[str, list[Item]]:
    """Each retrieval signal's ranking alone, and their fusion, as chunk rows."""
    _, signals = engine.retriever.signals(query)
    ranked = {name: [(cid, score) for cid, score, _ in r.items] for name, r in signals.items()}
    ranked["fusion"] = [(cid, score) for cid, score, _ in engine.retriever.fuse(signals)[0]]
    ids = {cid for items in ranked.values() for cid, _ in items}
    meta = {r[0]: r[1:] for r in engine.store.cursor().execute(
        f"SELECT id, path, qualified_name, kind, start_line FROM chunks WHERE id IN "
        f"({', '.join(str(int(i)) for i in ids) or 'NULL'})").fetchall()}
    return {name: [(*meta[cid], score) for cid, score in items if cid in meta]
            for name, items in ranked.items()}


def rank(items: list[Item], functions_only: bool = False) -> tuple[list[str], list[str]]:
    """Files by their best chunk; functions (path::Qualified.name) by their best chunk
    plus FILE_CONTEXT x their file's best. SWE-bench names edits of a file's import block
    `path::imports`: a module-level chunk holds them, or the file's first chunk (short
    module code is merged into the definition that follows it). With `functions_only`,
    the second list holds functions and methods alone (no classes, no imports)."""
    best_in_file: dict[str, float] = {}
    for path, _, _, _, score in items:
        best_in_file[path] = max(best_in_file.get(path, 0.0), score)
    files = sorted(best_in_file, key=lambda p: -best_in_file[p])
    functions: dict[str, float] = {}
    for path, symbol, kind, start_line, score in items:
        keys = []
        if symbol and kind in (("function", "method") if functions_only else ("function", "method", "class")):
            keys.append(f"{path}::{symbol}")
        if not functions_only and (kind == "module" or start_line == 1):
            keys.append(f"{path}::imports")
        total = score + FILE_CONTEXT * best_in_file[path]
        for key in keys:
            functions[key] = max(functions.get(key, 0.0), total)
    return files, sorted(functions, key=lambda f: -functions[f])


def first_rank(ranked: list[str], gold: list[str]) -> int | None:
    """Rank (1-based) at which all gold items have appeared, or None."""
    positions = [ranked.index(g) + 1 if g in ranked else None for g in gold]
    return None if any(p is None for p in positions) else max(positions)  # type: ignore[type-var]


def fused_items(items: dict[str, list[Item]], weights: dict[str, float]) -> list[Item]:
    """The fusion that codevm runs, over kept rankings (chunks keyed by their rows)."""
    keys: dict[tuple, int] = {}
    signals = {}
    for name in SIGNALS:
        ranked = []
        for path, symbol, kind, start, score in items.get(name, []):
            cid = keys.setdefault((path, symbol, kind, start), len(keys))
            ranked.append(Scored(cid, score, name))
        signals[name] = Ranked(ranked)
    rows = {cid: key for key, cid in keys.items()}
    text = {cid for key, cid in keys.items() if key[2] in TEXT_KINDS}
    paths = {cid: key[0] for key, cid in keys.items()}
    return [(*rows[cid], score) for cid, score, _ in fused_ranking(signals, weights, text, paths)]


def ranks(items: list[Item], gold_files: list[str], gold_functions: list[str],
          functions_only: bool = False) -> dict:
    files, functions = rank(items, functions_only)
    return {
        "file_rank": first_rank(files, gold_files),
        "file_rr": 1 / min(files.index(g) + 1 for g in gold_files if g in files)
        if any(g in files for g in gold_files) else 0.0,
        "function_rank": first_rank(functions, gold_functions) if gold_functions else None,
    }


def evaluate(instance: dict, engine: Engine) -> dict:
    started = time.perf_counter()
    engine.search(instance["query"], k=10)  # what a front end waits for
    search_ms = (time.perf_counter() - started) * 1000
    signals = signal_items(engine, instance["query"])
    row = {"id": instance["id"], "has_functions": bool(instance["gold_functions"]),
           "search_ms": round(search_ms, 1)}
    for name, items in signals.items():
        row[name] = ranks(items, instance["gold_files"], instance["gold_functions"])
    # every signal's ranking, kept so that fusion weights can be tuned without re-running
    row["items"] = {name: items[:SIGNAL_DEPTH] for name, items in signals.items() if name != "fusion"}
    return row


def bench_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--limit", type=int, help="only the first N instances")
    parser.add_argument("--repo", action="append", help="only this repository (repeatable)")
    parser.add_argument("--id", action="append", dest="ids", help="only this instance")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--embedder", default="local", choices=("local", "ollama", "off"),
                        help="vectors for the vector signal (local: all-MiniLM-L6-v2 in-process)")
    return parser.parse_args()


def selected(args: argparse.Namespace) -> list[dict]:
    """The instances that the options select, each with its `edited_functions`."""
    instances = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    if args.repo:
        instances = [i for i in instances if i["repo"] in args.repo]
    if args.ids:
        instances = [i for i in instances if i["id"] in args.ids]
    if args.limit:
        instances = instances[: args.limit]
    edited = edited_gold(instances, args.cache, lambda repo: mirror_for(args.mirrors, repo))
    return [{**i, "edited_functions": edited.get(i["id"], [])} for i in instances]


@dataclass
class Bench:
    """One evaluation run on every instance: rows cached in `<cache>/<name>.jsonl`;
    cached rows that are not `current` (an older version of the benchmark) are made again."""
    name: str
    evaluate: Callable[[dict, Engine], dict]
    describe: Callable[[dict], str]
    current: Callable[[dict], bool] = lambda row: True


def run_instances(args: argparse.Namespace, benches: list[Bench],
                  ) -> tuple[dict[str, list[dict]], list[str], dict[str, float]]:
    """Check out, index and embed each selected instance, repository by repository, once
    for all `benches`; returns each bench's rows, the repositories without a mirror and the
    seconds spent indexing and embedding."""
    instances = selected(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    cached: dict[str, dict[str, dict]] = {b.name: {} for b in benches}
    for bench in benches:
        results_file = args.cache / f"{bench.name}.jsonl"
        if results_file.exists() and not args.fresh:
            for line in results_file.read_text().splitlines():
                row = json.loads(line)
                if bench.current(row):
                    cached[bench.name][row["id"]] = row
    os.environ["CODEVM_HOME"] = str(args.cache / "home")
    by_repo: dict[str, list[dict]] = defaultdict(list)
    for inst in instances:
        by_repo[inst["repo"]].append(inst)
    results: dict[str, list[dict]] = {b.name: [] for b in benches}
    seconds = {"index": 0.0, "embed": 0.0}
    missing: list[str] = []
    outs = {b.name: (args.cache / f"{b.name}.jsonl").open("a") for b in benches}
    try:
        for repo, items in by_repo.items():
            todo = [i for i in items if any(i["id"] not in cached[b.name] for b in benches)]
            for bench in benches:
                results[bench.name].extend(cached[bench.name][i["id"]] for i in items
                                           if i["id"] in cached[bench.name])
            if not todo:
                continue
            git_dir = mirror_for(args.mirrors, repo)
            if not git_dir.exists():
                missing.append(repo)
                continue
            slug = repo.replace("/", "__")
            tree = args.cache / "trees" / slug
            engine: Engine | None = None
            for inst in todo:
                checkout(git_dir, tree, args.cache / f"{slug}.manifest.json", inst["commit"])
                if engine is None:
                    engine = Engine(tree, Settings(embedder=args.embedder))
                started = time.perf_counter()
                engine.index()
                seconds["index"] += time.perf_counter() - started
                if args.embedder != "off":  # the changed chunks get their vectors
                    started = time.perf_counter()
                    engine.embed()
                    seconds["embed"] += time.perf_counter() - started
                for bench in benches:
                    if inst["id"] in cached[bench.name]:
                        continue
                    row = bench.evaluate(inst, engine)
                    results[bench.name].append(row)
                    outs[bench.name].write(json.dumps(row) + "\n")
                    outs[bench.name].flush()
                    print(f"{inst['id']}: {bench.describe(row)}", file=sys.stderr)
            if engine is not None:
                engine.close()
    finally:
        for out in outs.values():
            out.close()
    return results, missing, seconds


def accuracy(rows: list[dict]) -> dict[str, float]:
    """File and function Acc@k and file MRR over per-instance ranks."""
    n = len(rows)
    with_functions = [r for r in rows if r["has_functions"]]
    out: dict[str, float] = {}
    for k in FILE_KS:
        out[f"file_acc@{k}"] = round(sum(1 for r in rows if r["file_rank"] and r["file_rank"] <= k)
                                     / max(n, 1), 4)
    out["file_mrr"] = round(sum(r["file_rr"] for r in rows) / max(n, 1), 4)
    for k in FUNCTION_KS:
        out[f"function_acc@{k}"] = round(
            sum(1 for r in with_functions if r["function_rank"] and r["function_rank"] <= k)
            / max(len(with_functions), 1), 4)
    return out


def edited_accuracy(rows: list[dict], instances: dict[str, dict], weights: dict[str, float],
                    names: tuple[str, ...] = ("fusion", *SIGNALS)) -> dict[str, dict[str, float]]:
    """Function Acc@k against the functions that each fix edits (bench/gold.py), over the
    instances that edit one, ranking functions and methods alone: the protocol of the
    published function-level figures. Ranks come from the kept rankings, so cached rows
    need no new run."""
    counted = [r for r in rows if instances[r["id"]]["edited_functions"]]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        found = {k: 0 for k in FUNCTION_KS}
        for row in counted:
            inst = instances[row["id"]]
            items = fused_items(row["items"], weights) if name == "fusion" else row["items"].get(name, [])
            at = ranks(items, inst["gold_files"], inst["edited_functions"], True)["function_rank"]
            for k in FUNCTION_KS:
                found[k] += bool(at and at <= k)
        out[name] = {f"function_acc@{k}": round(found[k] / max(len(counted), 1), 4) for k in FUNCTION_KS}
    out["instances"] = len(counted)  # type: ignore[assignment]
    return out


LOCALIZATION = Bench(
    "localization-signals", evaluate,
    lambda row: f"file rank {row['fusion']['file_rank']}, function rank {row['fusion']['function_rank']}",
    lambda row: all(name in row for name in SIGNALS))


def summary(args: argparse.Namespace, results: list[dict]) -> dict[str, object]:
    with_functions = [r for r in results if r["has_functions"]]
    out: dict[str, object] = {"instances": len(results), "weights": weights(Settings()),
                              "embedder": args.embedder}
    instances = {i["id"]: i for i in selected(args)}
    # the fusion under the current weights, from the kept rankings: rows cached by an
    # earlier run count as if made now
    out["fusion"] = accuracy([{**ranks(fused_items(r["items"], weights(Settings())),
                                       instances[r["id"]]["gold_files"], instances[r["id"]]["gold_functions"]),
                               "has_functions": r["has_functions"]} for r in results])
    for name in SIGNALS:
        out[name] = accuracy([{**r[name], "has_functions": r["has_functions"]} for r in results])
    out["instances_with_gold_functions"] = len(with_functions)
    out["edited_functions"] = edited_accuracy(results, instances, weights(Settings()))
    if results:
        out.update({f"search_{k}": v for k, v in latency_summary([r["search_ms"] for r in results]).items()})
    return out


def main() -> None:
    args = bench_arguments(__doc__ or "")
    results, missing, seconds = run_instances(args, [LOCALIZATION])
    out = {**summary(args, results[LOCALIZATION.name]), "missing_repositories": missing,
           "index_seconds_this_run": round(seconds["index"], 1),
           "embed_seconds_this_run": round(seconds["embed"], 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

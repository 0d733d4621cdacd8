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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from codevm.config import Settings  # noqa: E402
from codevm.memory.engine import Engine, weights  # noqa: E402
from codevm.memory.retrieval import SIGNAL_DEPTH, SIGNALS, fuse  # noqa: E402

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
    ranked["fusion"] = [(cid, score) for score, cid, _ in fuse(signals, engine.retriever.weights)]
    ids = {cid for items in ranked.values() for cid, _ in items}
    meta = {r[0]: r[1:] for r in engine.store.cursor().execute(
        f"SELECT id, path, qualified_name, kind, start_line FROM chunks WHERE id IN "
        f"({', '.join(str(int(i)) for i in ids) or 'NULL'})").fetchall()}
    return {name: [(*meta[cid], score) for cid, score in items if cid in meta]
            for name, items in ranked.items()}


def rank(items: list[Item]) -> tuple[list[str], list[str]]:
    """Files by their best chunk; functions (path::Qualified.name) by their best chunk
    plus FILE_CONTEXT x their file's best. SWE-bench names edits of a file's import block
    `path::imports`: a module-level chunk holds them, or the file's first chunk (short
    module code is merged into the definition that follows it)."""
    best_in_file: dict[str, float] = {}
    for path, _, _, _, score in items:
        best_in_file[path] = max(best_in_file.get(path, 0.0), score)
    files = sorted(best_in_file, key=lambda p: -best_in_file[p])
    functions: dict[str, float] = {}
    for path, symbol, kind, start_line, score in items:
        keys = []
        if symbol and kind in ("function", "method", "class"):
            keys.append(f"{path}::{symbol}")
        if kind == "module" or start_line == 1:
            keys.append(f"{path}::imports")
        total = score + FILE_CONTEXT * best_in_file[path]
        for key in keys:
            functions[key] = max(functions.get(key, 0.0), total)
    return files, sorted(functions, key=lambda f: -functions[f])


def first_rank(ranked: list[str], gold: list[str]) -> int | None:
    """Rank (1-based) at which all gold items have appeared, or None."""
    positions = [ranked.index(g) + 1 if g in ranked else None for g in gold]
    return None if any(p is None for p in positions) else max(positions)  # type: ignore[type-var]


def ranks(items: list[Item], gold_files: list[str], gold_functions: list[str]) -> dict:
    files, functions = rank(items)
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


def run_instances(args: argparse.Namespace, name: str,
                  evaluate_one: Callable[[dict, Engine], dict],
                  describe: Callable[[dict], str],
                  current: Callable[[dict], bool] = lambda row: True,
                  ) -> tuple[list[dict], list[str], dict[str, float]]:
    """Check out, index, embed and evaluate each selected instance, repository by repository.

    Per-instance rows are cached in `<cache>/<name>.jsonl` (rows that are not `current`,
    made by an older version of the benchmark, are made again); returns the rows, the
    repositories without a mirror and the seconds spent indexing and embedding.
    """
    instances = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    if args.repo:
        instances = [i for i in instances if i["repo"] in args.repo]
    if args.ids:
        instances = [i for i in instances if i["id"] in args.ids]
    if args.limit:
        instances = instances[: args.limit]
    args.cache.mkdir(parents=True, exist_ok=True)
    results_file = args.cache / f"{name}.jsonl"
    cached: dict[str, dict] = {}
    if results_file.exists() and not args.fresh:
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            if current(row):
                cached[row["id"]] = row
    os.environ["CODEVM_HOME"] = str(args.cache / "home")
    by_repo: dict[str, list[dict]] = defaultdict(list)
    for inst in instances:
        by_repo[inst["repo"]].append(inst)
    results: list[dict] = []
    seconds = {"index": 0.0, "embed": 0.0}
    missing: list[str] = []
    with results_file.open("a") as out:
        for repo, items in by_repo.items():
            todo = [i for i in items if i["id"] not in cached]
            results.extend(cached[i["id"]] for i in items if i["id"] in cached)
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
                row = evaluate_one(inst, engine)
                results.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"{inst['id']}: {describe(row)}", file=sys.stderr)
            if engine is not None:
                engine.close()
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


def main() -> None:
    args = bench_arguments(__doc__ or "")
    results, missing, seconds = run_instances(
        args, "localization-signals", evaluate,
        lambda row: f"file rank {row['fusion']['file_rank']}, "
                    f"function rank {row['fusion']['function_rank']}",
        lambda row: all(name in row for name in SIGNALS))
    n = len(results)
    with_functions = [r for r in results if r["has_functions"]]
    summary: dict[str, object] = {"instances": n, "missing_repositories": missing,
                                  "weights": weights(Settings()), "embedder": args.embedder}
    for name in ("fusion", *SIGNALS):
        summary[name] = accuracy([{**r[name], "has_functions": r["has_functions"]} for r in results])
    summary["instances_with_gold_functions"] = len(with_functions)
    latencies = sorted(r["search_ms"] for r in results)
    if latencies:
        summary["search_p50_ms"] = latencies[len(latencies) // 2]
        summary["search_p95_ms"] = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    summary["index_seconds_this_run"] = round(seconds["index"], 1)
    summary["embed_seconds_this_run"] = round(seconds["embed"], 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

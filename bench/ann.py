"""Approximate nearest neighbours (usearch HNSW) against exact search, on real vectors.
Prints one JSON object.

The vectors are a project's embeddings as codevm stored them (`--db`, an index.duckdb
with an `embeddings_<n>` table); the queries are real questions embedded by the same
model (SWE-bench Lite problem statements and the developer questions of
swe_qa_dev.jsonl), not vectors taken from the index (those would find themselves).

For each storage type (f32, f16, i8) and search width: the build time (wall and CPU),
recall@10 against the exact top 10 (numpy, the same vectors in f32), per-query latency
p50/p95 on one thread, and the index's memory. The exact search runs in the same process
as the baseline. `--scale N` repeats the measure on N vectors made from the real ones
(each copy moved by a small random step and normalised again): what a monorepo's count
costs, with recall measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.index_speed import latency_summary  # noqa: E402
from codevm.retrieval.ann import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "bench"


def stored_vectors(db: Path) -> tuple[np.ndarray, str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        model, dimension = con.execute("SELECT model, dimension FROM embedding_models").fetchone()
        data = con.execute(f"SELECT hash, vec FROM embeddings_{dimension} WHERE model = ?",
                           [model]).fetchnumpy()
    finally:
        con.close()
    return np.stack(list(data["vec"])).astype(np.float32), model


def questions(limit: int) -> list[str]:
    texts = []
    for name in ("swebench_lite.jsonl", "swe_qa_dev.jsonl"):
        path = SHARED / name
        if path.exists():
            for line in path.read_text().splitlines():
                text = json.loads(line).get("query")
                if text:
                    texts.append(text[:2000])
    return texts[:limit]


def embed_queries(model: str, texts: list[str]) -> np.ndarray:
    from codevm.config import Settings
    from codevm.retrieval.embedders import make_embedder
    kind, name = model.split(":", 1)
    embedder = make_embedder(Settings(embedder=kind, embed_model=name))
    return np.stack([embedder.query(t) for t in texts]).astype(np.float32)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[list[set[int]], list[float]]:
    tops, ms = [], []
    for q in queries:
        started = time.perf_counter()
        scores = data @ q
        best = np.argpartition(-scores, k - 1)[:k]
        ms.append((time.perf_counter() - started) * 1000)
        tops.append(set(best.tolist()))
    return tops, ms


def measure(data: np.ndarray, queries: np.ndarray, dtype: str, widths: list[int],
            k: int, truth: list[set[int]]) -> dict:
    from usearch.index import Index
    index = Index(ndim=data.shape[1], metric="cos", dtype=dtype, connectivity=CONNECTIVITY,
                  expansion_add=EXPANSION_ADD)
    wall, cpu = time.perf_counter(), time.process_time()
    index.add(np.arange(len(data), dtype=np.uint64), data, threads=os.cpu_count() or 1)
    out = {"build_s": round(time.perf_counter() - wall, 2),
           "build_cpu_s": round(time.process_time() - cpu, 2),
           "memory_mib": round(index.memory_usage / 2**20, 1)}
    for width in widths:
        index.expansion_search = width
        found, ms = [], []
        for q in queries:
            started = time.perf_counter()
            matches = index.search(q, k, threads=1)
            ms.append((time.perf_counter() - started) * 1000)
            found.append(set(int(x) for x in matches.keys))
        recall = np.mean([len(f & t) / k for f, t in zip(found, truth)])
        out[f"expansion_{width}"] = {"recall_at_10": round(float(recall), 4), **latency_summary(ms, 2)}
    return out


def spread(data: np.ndarray, count: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [data]
    while sum(len(p) for p in parts) < count:
        moved = data + rng.normal(0, 0.02, data.shape).astype(np.float32)
        parts.append(moved / np.linalg.norm(moved, axis=1, keepdims=True))
    return np.concatenate(parts)[:count]


def run(data: np.ndarray, queries: np.ndarray, dtypes: list[str], widths: list[int], k: int) -> dict:
    truth, exact_ms = exact_top(data, queries, k)
    out: dict = {"vectors": len(data), "exact_numpy": latency_summary(exact_ms, 2)}
    for dtype in dtypes:
        out[dtype] = measure(data, queries, dtype, widths, k, truth)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="an index.duckdb with vectors")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--scale", type=int, default=0, help="also measure on N vectors")
    parser.add_argument("--dtypes", default="f32,f16,i8")
    parser.add_argument("--widths", default="32,64,128")
    args = parser.parse_args()
    data, model = stored_vectors(args.db)
    queries = embed_queries(model, questions(args.queries))
    dtypes, widths = args.dtypes.split(","), [int(w) for w in args.widths.split(",")]
    load = os.getloadavg()[0]
    out = {"model": model, "queries": len(queries), "load_1min": round(load, 2),
           "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD,
           "codevm_expansion_search": EXPANSION_SEARCH,
           "real": run(data, queries, dtypes, widths, 10)}
    if args.scale:
        out["spread"] = run(spread(data, args.scale), queries, dtypes, widths, 10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

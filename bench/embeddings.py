"""Dense vectors on a corpus (default: the standard library of the running interpreter).
Prints one JSON object.

- embedding throughput: chunks/s of `Engine.embed()` over the whole corpus (model and
  storage), and of the model alone on a fixed sample of chunk texts, per input length;
- search with vectors on: p50/p95 of `Engine.search` over the queries of index_speed.py,
  each query new to the embedder (its cache is emptied), and in the same process with the
  vector signal off (the baseline); the parts: embedding the query, the SQL ranking.

`--work DIR` keeps the scratch copy, its index and its vectors for the next run (embedding
the whole standard library with the in-process model takes several minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.index_speed import bench_queries, copy_corpus, latency_summary  # noqa: E402
from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.retrieval.embedders import LocalEmbedder, make_embedder  # noqa: E402


def timed(calls: list) -> list[float]:
    """Milliseconds of each call, sorted."""
    out = []
    for call in calls:
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--embedder", default="local", choices=("local", "ollama"))
    parser.add_argument("--model", default="", help="embed_model (default: the embedder's own)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sample", type=int, default=512, help="chunk texts for the model alone")
    parser.add_argument("--work", type=Path, help="keep the scratch copy and index here")
    args = parser.parse_args()

    work, root = copy_corpus(Path(args.path).resolve(), args.work)
    settings = Settings(embedder=args.embedder, embed_model=args.model, service=False)
    out: dict[str, object] = {"corpus": args.path, "embedder": args.embedder}
    try:
        with Engine(root, settings) as engine:
            engine.index()
            before = engine.embedding_progress()
            started = time.perf_counter()
            progress = engine.embed()
            seconds = time.perf_counter() - started
            made = progress.embedded - before.embedded
            out.update({"chunks": progress.total, "embedder_key": progress.embedder,
                        "dimension": progress.dimension, "embedded_this_run": made,
                        "embed_seconds": round(seconds, 1),
                        "embed_chunks_per_s": round(made / seconds, 1) if made else None})

            # the model alone, on the same sample of chunk texts at each input length
            rng = random.Random(7)
            texts = [r[0] for r in engine.store.cursor().execute(
                "SELECT text FROM chunks ORDER BY hash").fetchall()]
            sample = rng.sample(texts, min(args.sample, len(texts)))
            if args.embedder == "local":
                for tokens in (128, 256):
                    model = make_embedder(Settings(embedder="local", embed_model=args.model,
                                                   embed_max_tokens=tokens))
                    assert isinstance(model, LocalEmbedder)
                    model.load()
                    model.documents(sample[:32])  # warm-up
                    started = time.perf_counter()
                    for i in range(0, len(sample), 32):
                        model.documents(sample[i : i + 32])
                    out[f"model_chunks_per_s_{tokens}_tokens"] = round(
                        len(sample) / (time.perf_counter() - started), 1)

            # search with vectors on, and off, over queries each new to the embedder
            queries = bench_queries(engine, args.queries)
            vectors = engine.vectors
            # what the service loads when it starts (the term dictionary, the model and the
            # vectors): without it each search of this process looks its terms up in SQL
            engine.warm_up()
            for q in queries[:20]:
                engine.search(q)  # warm-up: caches, the model's first calls

            def fresh(call):
                def run() -> None:
                    vectors._queries.clear()
                    call()
                return run

            on = timed([fresh(lambda q=q: engine.search(q)) for q in queries])
            embed_ms = timed([fresh(lambda q=q: vectors.query_vector(q)) for q in queries])
            con = engine.store.cursor()
            for q in queries:
                vectors.query_vector(q)  # cached now: the SQL alone is timed next
            sql_ms = timed([lambda q=q: vectors.rank(con, q, 60) for q in queries])
            weights = dict(engine.retriever.weights)
            engine.retriever.weights = {**weights, "vector": 0.0}
            off = timed([lambda q=q: engine.search(q) for q in queries])
            engine.retriever.weights = weights
            out["search_vectors_on"] = latency_summary(on)
            out["search_vectors_off"] = latency_summary(off)
            out["query_embedding"] = latency_summary(embed_ms)
            out["vector_sql"] = latency_summary(sql_ms)
            out["queries"] = len(queries)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

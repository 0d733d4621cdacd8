"""Retrieval signals (named, graph), their fusion and the files' evidence, on a real index."""

from __future__ import annotations

from pathlib import Path

import pytest

from codevm.api import SearchHit
from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import InvalidArgument
from codevm.retrieval.fusion import Ranked, Scored, fuse
from codevm.retrieval.graph import graph_signal
from codevm.retrieval.named import named_signal


def _chunk(engine: Engine, qualified: str) -> int:
    return engine.store.cursor().execute(
        "SELECT id FROM chunks WHERE qualified_name = ?", [qualified]).fetchone()[0]


def _names(engine: Engine, ids: list[int]) -> list[str]:
    rows = dict(engine.store.cursor().execute(
        f"SELECT id, qualified_name FROM chunks WHERE id IN ({', '.join(map(str, ids))})").fetchall())
    return [rows[i] for i in ids]


def test_named_signal_resolves_frames_dotted_names_and_paths(engine: Engine) -> None:
    con = engine.store.cursor()
    question = ('Traceback (most recent call last):\n  File "/home/me/src/py/shapes.py", line 22, '
                'in total_area\nAttributeError: ...\nand Circle.scale returns the wrong radius; '
                "see src/py/app.py")
    ranked = named_signal(con, engine.store.lexical, question)
    names = _names(engine, [cid for cid, _, _ in ranked.items])
    reasons = [why for _, _, why in ranked.items]
    assert names[0] == "total_area" and reasons[0] == "traceback src/py/shapes.py:22"
    assert "Circle.scale" in names and "main" in names  # the dotted name, the named file
    assert named_signal(con, engine.store.lexical, "nothing here is written like code").items == []


def test_exact_names_in_a_long_question_and_the_filters(engine: Engine) -> None:
    index = engine.store.lexical
    # every word of a long question is looked up: the name and the qualified name both hit
    words = [f"word{i}" for i in range(60)]
    scale = _chunk(engine, "Circle.scale")
    assert index.named([*words, "scale"], 50) == [scale]
    assert index.named([*words, "Circle.scale"], 50) == [scale]
    found = index.named(["Circle", "main", "total_area"] + words, 50)
    assert set(_names(engine, found)) >= {"Circle", "main", "total_area"}
    assert index.named(["Circle", "main", "total_area"], 2) == sorted(found)[:2]  # lowest ids kept
    # the search filters
    assert index.named(["scale"], 50, kind="class") == []
    assert index.named(["scale"], 50, language="python") == [scale]
    assert index.named(["scale"], 50, paths=["docs/guide.md"]) == []
    assert index.named(["scale"], 50, paths=[]) == [] and index.named([], 50) == []


def test_graph_signal_walks_calls_callers_and_the_class(engine: Engine) -> None:
    con = engine.store.cursor()
    # from main: what it calls (total_area, Circle) ranks above what it does not reach
    ranked = graph_signal(con, engine.store.lexical, {_chunk(engine, "main"): 1.0})
    names = _names(engine, [cid for cid, _, _ in ranked.items])
    assert names[0] == "main" and {"total_area", "Circle"} <= set(names[1:4])
    # from a method: its class and its sibling
    names = _names(engine, [cid for cid, _, _ in graph_signal(
        con, engine.store.lexical, {_chunk(engine, "Circle.scale"): 1.0}).items])
    assert {"Circle", "Circle.area"} <= set(names)
    # from a function: the chunk that calls it
    names = _names(engine, [cid for cid, _, _ in graph_signal(
        con, engine.store.lexical, {_chunk(engine, "total_area"): 1.0}).items])
    assert names[0] == "total_area" and "main" in names
    assert graph_signal(con, engine.store.lexical, {}).items == []


def test_fusion_rewards_agreement_and_honours_weights() -> None:
    a = Ranked([Scored(1, 9.0, "a"), Scored(2, 8.0, "a"), Scored(3, 7.0, "a")])
    b = Ranked([Scored(3, 1.0, "b"), Scored(4, 0.9, "b"), Scored(1, 0.8, "b")])
    fused = [cid for cid, _, _ in fuse({"lexical": a, "named": b}, {"lexical": 1.0, "named": 1.0})]
    assert fused[:2] == [1, 3] and set(fused) == {1, 2, 3, 4}  # both signals rank 1 and 3
    only_b = [cid for cid, _, _ in fuse({"lexical": a, "named": b}, {"lexical": 0.0, "named": 1.0})]
    assert only_b == [3, 4, 1]


def test_fusion_spreads_the_narrow_band_of_cosines() -> None:
    # 60 cosines between 0.60 and 0.54: scaled to the best alone, the last would still
    # count 0.9; counted above the 50th, the best counts 1 and the 50th nothing
    vector = Ranked([Scored(100 + i, 0.60 - 0.001 * i, "v") for i in range(60)])
    lexical = Ranked([Scored(200, 5.0, "l")])
    fused = {cid: score for cid, score, _ in fuse({"vector": vector, "lexical": lexical},
                                                   {"vector": 1.0, "lexical": 1.0})}
    assert fused[100] == pytest.approx(1.0) and fused[200] == pytest.approx(1.0)
    assert fused[125] == pytest.approx(0.5, abs=0.03)
    assert all(cid not in fused for cid in range(149, 160))


def test_search_fuses_the_signals_and_keeps_its_filters(project) -> None:
    with Engine(project, Settings(service=False)) as engine:
        engine.index()
        question = ("When I call main the printed total is wrong: total_area seems to sum the "
                    "areas of the circles twice, maybe Circle.area is the culprit")
        hits = engine.search(question, k=5)
        assert {h.symbol for h in hits[:3]} >= {"total_area", "Circle.area"}
        assert all(h.language == "go" for h in engine.search(question, k=5, language="go"))
        # each signal can be turned off; with only the named one, only named code comes back
        engine.configure(Settings(service=False, weight_lexical=0.0, weight_graph=0.0))
        named_only = engine.search(question, k=10)
        assert {h.symbol for h in named_only} <= {"total_area", "Circle.area", "main"}


def test_named_ties_follow_the_question_and_the_code_not_the_index_history(tmp_path) -> None:
    # two frames of a pytest trace score alike: they rank as the question lists them, and two
    # definitions of one name in file order, whichever file the index happened to take first
    root = tmp_path / "trace"
    (root / "pkg").mkdir(parents=True)
    (root / ".git").mkdir()
    files = {"pkg/alpha.py": "def first():\n    return compute_alpha()\n\n\ndef shared_name():\n    return 1\n",
             "pkg/beta.py": "def second():\n    return compute_beta()\n\n\ndef shared_name():\n    return 2\n"}
    for path, text in files.items():
        (root / path).write_text(text)
    question = ("pkg/beta.py:2: in second\n    return compute_beta()\npkg/alpha.py:2: in first\n"
                "    return compute_alpha()\nand `shared_name` is involved")
    with Engine(root, Settings(service=False, embedder="off", min_chunk_tokens=1)) as engine:
        orders = []
        for rewritten in (None, "pkg/beta.py", "pkg/alpha.py"):  # new chunk ids for one file, then the other
            if rewritten:
                (root / rewritten).write_text("# moved away\n")
                engine.index()
                (root / rewritten).write_text(files[rewritten])
            engine.index()
            ranked = named_signal(engine.store.cursor(), engine.store.lexical, question)
            located = dict(engine.store.cursor().execute("SELECT id, path || ':' || start_line FROM chunks").fetchall())
            orders.append([(located[cid], reason.split(" ")[0]) for cid, _, reason in ranked.items])
        assert orders[0][:2] == [("pkg/beta.py:1", "named"), ("pkg/alpha.py:1", "named")]
        assert [where for where, why in orders[0] if why == "definition"] == ["pkg/alpha.py:5", "pkg/beta.py:5"]
        assert orders[1] == orders[0] and orders[2] == orders[0]


def test_named_signal_resolves_modules_error_messages_and_quoted_names(tmp_path) -> None:
    root = tmp_path / "solids"
    (root / "src/pkg/geometry").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "src/pkg/geometry/__init__.py").write_text("")
    (root / "src/pkg/geometry/solids.py").write_text(
        "def check(radius):\n"
        "    if radius <= 0:\n"
        "        raise ValueError('radius must be positive, got %r' % radius)\n"
        "    return radius\n\n\n"
        "def unrelated(x):\n    return x * 2\n")
    (root / "src/pkg/volume.py").write_text("def volume(r):\n    return 4 / 3 * 3.14159 * r ** 3\n")
    (root / "src/pkg/other.py").write_text("def noise(y):\n    return y\n")
    with Engine(root, Settings(service=False, min_chunk_tokens=1)) as engine:
        engine.index()
        con = engine.store.cursor()
        question = ("After upgrading, pkg.geometry.solids rejects a sphere:\n"
                    "ValueError: radius must be positive, got -2.5\n"
                    "and then `volume` returns nonsense")
        ranked = named_signal(con, engine.store.lexical, question)
        why = {name: reason for name, (_, _, reason) in
               zip(_names(engine, [cid for cid, _, _ in ranked.items]), ranked.items)}
        assert why["check"] == "holds the error message"
        assert why["volume"] == "definition of volume"  # a plain word, quoted as code
        assert why.get("unrelated", "").startswith("module src/pkg/geometry/solids.py")
        assert "noise" not in why
        # a message too common to point anywhere, and prose with no code, find nothing
        assert named_signal(con, engine.store.lexical, "it just returns the value").items == []


def _search_as_setting_changes(root: Path, query: str, k: int, setting: str,
                               values: tuple[float, ...]) -> list[list[SearchHit]]:
    """Index `root` once and search it under each value of one setting, in turn."""
    out = []
    with Engine(root, Settings(service=False, min_chunk_tokens=1, **{setting: values[0]})) as engine:
        engine.index()
        for value in values:
            engine.configure(Settings(service=False, min_chunk_tokens=1, **{setting: value}))
            out.append(engine.search(query, k=k))
    return out


def test_code_ranks_above_docs_that_match_as_well(tmp_path) -> None:
    root = tmp_path / "docs_and_code"
    (root / "docs").mkdir(parents=True)
    (root / ".git").mkdir()
    # the docs say the query's words more often than the code does
    (root / "docs/retries.md").write_text(
        "# Retry a failed upload\n\nA failed upload is retried with exponential backoff: each "
        "retry of a failed upload waits twice as long as the retry before it (exponential "
        "backoff), until the upload succeeds or the last retry fails.\n")
    (root / "client.py").write_text(
        "def send_again(data, attempts=5):\n"
        "    # retry a failed upload, with exponential backoff\n"
        "    for attempt in range(attempts):\n"
        "        if send(data):\n"
        "            return True\n"
        "        sleep(2 ** attempt)\n"
        "    return False\n")
    even, hits = _search_as_setting_changes(
        root, "retry a failed upload with exponential backoff", 2, "weight_text", (1.0, 0.5))
    assert [h.path for h in even] == ["docs/retries.md", "client.py"]
    # text chunks (docs, prose, configuration) count for weight_text of their score
    assert [h.path for h in hits] == ["client.py", "docs/retries.md"]
    assert hits[0].symbol == "send_again"


def test_a_file_where_many_chunks_match_outranks_a_single_hit(tmp_path) -> None:
    root = tmp_path / "evidence"
    (root / ".git").mkdir(parents=True)
    # one function says the query's words best; a class has several that say them too
    (root / "sweep.py").write_text(
        "def expire_stale(store, now):\n"
        "    # expire stale cache entries: expire every stale entry of the cache store\n"
        "    for key in store.expired(now):\n"
        "        store.expire(key)\n")
    (root / "cache.py").write_text(
        "class Cache:\n"
        "    def drop_old(self, now):\n"
        "        # expire the stale entries of the cache\n"
        "        for key in list(self.entries):\n"
        "            if self.entries[key].stale(now):\n"
        "                del self.entries[key]\n\n"
        "    def stale_keys(self, now):\n"
        "        # the keys of stale cache entries\n"
        "        return [k for k, e in self.entries.items() if e.stale(now)]\n\n"
        "    def count_stale(self, now):\n"
        "        # how many cache entries are stale\n"
        "        return sum(1 for e in self.entries.values() if e.stale(now))\n")
    alone, hits = _search_as_setting_changes(
        root, "stale cache entries expire", 5, "weight_file", (0.0, 0.5))  # no name spelled
    assert [h.path for h in alone[:2]] == ["sweep.py", "cache.py"]
    # the file's best chunk gains a share of its next best; the others keep their scores
    assert [h.path for h in hits[:2]] == ["cache.py", "sweep.py"]
    assert hits[0].score > alone[1].score
    assert {(h.symbol, h.score) for h in hits[2:]} == {(h.symbol, h.score) for h in alone[2:]}


def test_the_shipped_ranker_scores_as_lightgbm_did() -> None:
    """The learned ranker ships as plain trees evaluated with numpy; the rows kept with it
    carry the scores LightGBM gave them when it was trained (bench/ranker.py)."""
    import json

    import numpy as np

    from codevm.retrieval.ranker import MODEL_FILE, Model, feature_names

    data = json.loads(MODEL_FILE.read_text())
    model = Model(data)
    assert data["features"] == feature_names() and len(data["checks"]) >= 5
    rows = np.array([row for row, _ in data["checks"]])
    expected = np.array([score for _, score in data["checks"]])
    assert np.max(np.abs(model.score(rows) - expected)) < 1e-6
    assert len(set(np.round(expected, 6))) > 1  # the checks tell rows apart
    assert set(data["trained_on"]["repositories"]).isdisjoint(
        {"django/django", "sympy/sympy", "psf/requests", "pallets/flask"})  # evaluation only


def test_ranker_features_describe_signals_file_and_chunk() -> None:
    from codevm.retrieval.ranker import ChunkInfo, feature_names, features

    signals = {"lexical": Ranked([Scored(1, 8.0, "hit"), Scored(2, 4.0, "hit"), Scored(3, 2.0, "hit")]),
               "named": Ranked([Scored(3, 1.0, "named a.py")]), "graph": Ranked([]), "vector": Ranked([])}
    chunks = {1: ChunkInfo("a.py", "A.run", "method", 120, 10), 2: ChunkInfo("a.py", "A.run", "method", 90, 8),
              3: ChunkInfo("tests/test_b.py", "test_b", "function", 40, 4)}
    ids, rows = features(signals, chunks, {"lexical": 1.0, "named": 1.0, "file": 0.0})
    named = feature_names()
    row = {cid: dict(zip(named, r, strict=True)) for cid, r in zip(ids, rows, strict=True)}
    assert set(ids) == {1, 2, 3} and row[1]["lexical_score"] == 1.0 and row[2]["lexical_score"] == 0.5
    assert row[3]["named_has"] == 1.0 and row[1]["named_has"] == 0.0 and row[3]["test_path"] == 1.0
    assert row[1]["same_symbol"] == 2.0 and row[3]["same_symbol"] == 1.0  # the split parts of A.run
    assert row[1]["file_chunks"] == row[2]["file_chunks"] > row[3]["file_chunks"]
    assert row[1]["kind_method"] == 1.0 and row[1]["name_length"] == 3.0 and row[1]["name_depth"] == 1.0


@pytest.mark.parametrize("ranker", ["learned", "fusion"])
def test_both_rankers_page_in_the_code_a_question_is_about(project: Path, ranker: str) -> None:
    settings = Settings(embedder="off")
    settings.ranker = ranker
    with Engine(project, settings) as engine:
        engine.index()
        pages = engine.context_for("why does total_area of the shapes ignore an empty list?", 2000)
        assert pages[0].relevance == 1.0 and all(0 < p.relevance <= 1.0 for p in pages)
        assert "total_area" in [p.symbol for p in pages[:3]]
    settings.ranker = "neural"
    with pytest.raises(InvalidArgument, match="ranker"):
        Engine(project, settings)

"""The lexical index in tantivy beside the DuckDB file: made from the database, and kept
consistent with it through crashes, deletion and damage (codevm/db/lexical.py)."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from codevm.db import lexical as lexical_module
from codevm.db.lexical import chunk_rows
from codevm.db.store import lexical_directory
from codevm.engine import Engine
from codevm.retrieval.lexical import lexical

QUERIES = ("total area of shapes", "tokenize input", "CounterWidget render", "parse",
           "greeting message for a user", "área", "def")


def _lexical_rankings(engine: Engine, queries: tuple[str, ...] = QUERIES) -> dict[str, list[tuple[int, float]]]:
    con = engine.store.cursor()
    return {q: [(s.chunk_id, round(s.score, 3)) for s in lexical(con, engine.store.lexical, q, 20)[1]]
            for q in queries}


@pytest.mark.parametrize("parallel", [False, True], ids=["in-process", "worker-processes"])
def test_an_index_rebuilt_from_the_database_ranks_as_the_one_built_batch_by_batch(
        project: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool) -> None:
    """The parsing workers make each chunk's index text and hand it to tantivy; the database
    keeps what makes it again (text, docstring, path, and the names a chunk defines), in this
    process or, for a big index, in worker processes."""
    monkeypatch.setenv("CODEVM_BATCH_FILES", "3")  # many small batches, many segments
    if parallel:  # every rebuild in the two worker processes the setting allows, a few chunks a batch
        monkeypatch.setattr(lexical_module, "PARALLEL_REBUILD", 0)
        monkeypatch.setattr(lexical_module, "REBUILD_BATCH", 4)
        monkeypatch.setenv("CODEVM_WORKERS", "2")
        assert lexical_module.rebuild_workers(10**6, 1) == 1  # workers = 1: in this process
    # a chunk that defines more than its own name: its inner function's name weighs as a name
    (project / "src" / "py" / "jobs.py").write_text(
        "def schedule_jobs(queue):\n    def retry_backoff(attempt):\n        return 2 ** attempt\n\n"
        "    return [retry_backoff(i) for i in queue]\n\n\ndef backoff_note():\n    return 'retry later'\n")
    queries = (*QUERIES, "retry backoff")
    with Engine(project) as engine:
        assert engine.settings.batch_files == 3
        engine.index()
        built = _lexical_rankings(engine, queries)
        folder = lexical_directory(engine.store.path)
    assert sum(1 for r in built.values() if r) >= 5 and sum(len(r) for r in built.values()) > 10
    assert len(built["retry backoff"]) == 2
    shutil.rmtree(folder)  # a deleted index is made again on open
    with Engine(project) as engine:
        assert _lexical_rankings(engine, queries) == built


def test_worker_processes_make_the_rows_this_process_makes_and_stop_when_left(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        con = engine.store.cursor()
        alone = [b for b in chunk_rows(con, batch=5)]
        shared = [b for b in chunk_rows(con, batch=5, workers=2)]
        assert len(alone) > 3 and shared == alone
        rows = chunk_rows(con, batch=5, workers=2)
        next(rows)
        assert multiprocessing.active_children()
        rows.close()  # a failed rebuild stops taking batches: its workers go
        assert not multiprocessing.active_children()


def test_a_damaged_or_foreign_lexical_index_is_rebuilt(project: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with Engine(project) as engine:
        engine.index()
        built = _lexical_rankings(engine)
        folder = lexical_directory(engine.store.path)
    for f in folder.iterdir():  # every file of it overwritten with noise
        if f.is_file():
            f.write_bytes(b"\0garbage\xff" * 10)
    with Engine(project) as engine:
        assert _lexical_rankings(engine) == built
    assert "cannot be read" in capsys.readouterr().err

    # another project's index copied over this one: it belongs to another database
    other = tmp_path / "other"
    other.mkdir()
    (other / ".git").mkdir()
    (other / "lonely.py").write_text("def lonely_function():\n    return 'alone'\n")
    with Engine(other) as engine:
        engine.index()
        other_folder = lexical_directory(engine.store.path)
    shutil.rmtree(folder)
    shutil.copytree(other_folder, folder)
    with Engine(project) as engine:
        assert _lexical_rankings(engine) == built
        assert engine.search("lonely function") == [] or all(
            h.symbol != "lonely_function" for h in engine.search("lonely function"))


_KILL_BETWEEN_COMMITS = """
import os, signal, sys
from pathlib import Path
from codevm.db.lexical import LexicalIndex
from codevm.engine import Engine

def killed(self, *args, **kwargs):  # the database has committed the batch; tantivy has not
    os.kill(os.getpid(), signal.SIGKILL)

engine = Engine(Path(sys.argv[1]))
LexicalIndex.apply = killed
engine.update_file("src/py/shapes.py")
"""


def test_kill_9_between_the_database_and_the_lexical_commit_loses_nothing(project: Path, tmp_path: Path) -> None:
    shapes = project / "src/py/shapes.py"
    with Engine(project) as engine:
        engine.index()
        before = {h.symbol for h in engine.search("area of the circle", k=5)}
    assert "Circle.area" in before
    # a new function comes, and every old one goes
    shapes.write_text("def zanzibar_quokka_area(side):\n    return side * side\n")
    script = tmp_path / "kill.py"
    script.write_text(_KILL_BETWEEN_COMMITS)
    done = subprocess.run([sys.executable, str(script), str(project)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Engine(project) as engine:
        # the database has the batch, and tantivy caught up with it on open
        assert [s.name for s in engine.symbol("zanzibar_quokka_area")] == ["zanzibar_quokka_area"]
        assert [h.symbol for h in engine.search("zanzibar quokka area", k=1)] == ["zanzibar_quokka_area"]
        assert not any(h.path == "src/py/shapes.py" and h.symbol != "zanzibar_quokka_area"
                       for h in engine.search("area of the circle", k=50))
        con = engine.store.cursor()
        assert engine.store.lexical.documents() == con.execute("SELECT count(*) FROM chunks").fetchone()[0]
        assert con.execute("SELECT count(*) FROM lexical_pending").fetchone() == (0,)


def test_the_paths_in_memory_follow_every_change(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        con = engine.store.cursor()

        def in_database() -> dict[int, tuple[str, str]]:
            rows = con.execute("SELECT id, path, kind FROM chunks").fetchall()
            return {cid: (path, kind) for cid, path, kind in rows}

        chunks = engine.store.lexical.chunks
        assert chunks.get(in_database()) == in_database()  # loaded from the database
        (project / "src/py/brand_new.py").write_text("class Fresh:\n    def ünïcode_method(self):\n        return 1\n")
        (project / "src/py/shapes.py").unlink()
        engine.index()
        now = in_database()
        assert chunks.get(now) == now and any(p == "src/py/brand_new.py" for p, _ in now.values())
        assert [h.path for h in engine.search("ünïcode_method", k=1)] == ["src/py/brand_new.py"]
        folder = lexical_directory(engine.store.path)
    shutil.rmtree(folder)
    with Engine(project) as engine:  # rebuilt; the map is read from the database when needed
        chunks = engine.store.lexical.chunks
        assert not chunks.loaded  # a rebuild (or a cold index) does not keep it up
        assert chunks.get(now) == now and chunks.loaded


def test_a_lexical_index_deleted_under_a_running_engine_is_made_again(project: Path) -> None:
    shapes = project / "src/py/shapes.py"
    with Engine(project) as engine:
        engine.index()
        shutil.rmtree(lexical_directory(engine.store.path))
        for i in range(3):  # the first batch after the loss makes it again, then goes on
            shapes.write_text(shapes.read_text() + f"\ndef after_the_loss_{i}():\n    return {i}\n")
            engine.update_file("src/py/shapes.py")
            assert [h.symbol for h in engine.search(f"after_the_loss_{i}", k=1)] == [f"after_the_loss_{i}"]
        assert [h.symbol for h in engine.search("after_the_loss_2", k=1)] == ["after_the_loss_2"]
        assert [h.symbol for h in engine.search("total area of shapes", k=1)]
        con = engine.store.cursor()
        assert engine.store.lexical.documents() == con.execute("SELECT count(*) FROM chunks").fetchone()[0]



def test_after_a_checkout_the_index_ranks_as_one_made_fresh(project: Path) -> None:
    """tantivy counts the old chunks of changed files in BM25 (document frequencies,
    number of documents, lengths) until a merge of their segment drops them; after a change
    of many files (a checkout, a pull) the index is compacted, and ranks as a fresh one."""
    changed = sorted(p for p in (project / "src").rglob("*") if p.is_file())[::2]
    assert len(changed) >= 8
    with Engine(project) as engine:
        engine.index()
        for i, path in enumerate(changed):  # another commit of half the files
            path.write_text(path.read_text() + "\n" * (i + 1))
        engine.index()
        lexical_index = engine.store.lexical
        deleted, held = lexical_index.deleted()
        count = engine.store.cursor().execute("SELECT count(*) FROM chunks").fetchone()[0]
        assert deleted <= 0.25 * held and lexical_index.documents() == count <= held
        kept = _lexical_rankings(engine)
        folder = lexical_directory(engine.store.path)
    shutil.rmtree(folder)
    with Engine(project) as engine:  # made again from the database
        assert engine.store.lexical.deleted() == (0, count)
        assert _lexical_rankings(engine) == kept

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import IndexUnreadable
from codevm.indexers import languages, pipeline, worker
from codevm.indexers.discovery import WalkMemory
from codevm.indexers.worker import Limits, TaskFile, process_file
from tests.conftest import ODD_NAMES, add_bad_files

LIMITS = Limits(1 << 20, 2000, 384, 32)


def test_first_index_covers_every_language(engine: Engine) -> None:
    st = engine.status()
    for language in ["python", "javascript", "typescript", "tsx", "go", "rust", "java", "c",
                     "cpp", "csharp", "ruby", "php", "kotlin", "swift", "scala", "bash", "lua",
                     "markdown", "text"]:
        assert st.languages.get(language, 0) >= 1, language
    assert st.chunks > 20 and st.symbols > 40 and st.refs > 40
    assert st.database_bytes > 0 and st.last_indexed_at
    assert (engine.root / ".codevm/.gitignore").read_text() == "*\n"
    # owner-only: the index holds the text of every file (another user could copy it)
    assert (engine.root / ".codevm").stat().st_mode & 0o777 == 0o700
    assert (engine.root / ".codevm/index.duckdb").stat().st_mode & 0o077 == 0


def test_an_older_world_readable_data_folder_is_made_owner_only(project: Path) -> None:
    (project / ".codevm").mkdir(mode=0o755)
    (project / ".codevm").chmod(0o755)
    with Engine(project) as engine:
        engine.index()
    (project / ".codevm/index.duckdb").chmod(0o644)
    with Engine(project) as engine:
        assert engine.status().files > 0
    assert (project / ".codevm").stat().st_mode & 0o777 == 0o700
    assert (project / ".codevm/index.duckdb").stat().st_mode & 0o777 == 0o600


def test_bad_files_are_recorded_and_the_rest_indexed(project: Path) -> None:
    expected = add_bad_files(project)
    with Engine(project) as engine:
        report = engine.index()
        rows = dict(engine.store.cursor().execute(
            "SELECT path, reason FROM files WHERE status = 'skipped'").fetchall())
        for rel, reason in expected.items():
            assert rows[rel].startswith(reason), (rel, rows.get(rel))
        assert report.errors == 0
        # invalid UTF-8 is indexed with replacement characters, and says so
        latin = engine.store.cursor().execute(
            "SELECT status, reason FROM files WHERE path = 'bad/latin1.py'").fetchone()
        assert latin == ("indexed", "invalid UTF-8 replaced")
        assert engine.symbol("caf\ufffd_menu") or engine.search("menu")
        assert engine.status().skipped["binary"] == 2
        assert engine.search("total_area")  # the good files are all there
        # a file is indexed under its exact name, whatever it holds
        for name, function in {**{f"bad/{n}": f for n, f in ODD_NAMES.items()}, "\\N": "odd_null_root",
                               "bad/z_real/deep.py": "deep_in_real"}.items():
            assert [s.path for s in engine.symbol(function)] == [name], function
            assert engine.search(function)[0].path == name
        paths = [p for (p,) in engine.store.cursor().execute("SELECT path FROM files").fetchall()]
        assert None not in paths and not any(p.startswith("bad/a_link/") for p in paths)


def test_unreadable_and_vanishing_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    row, ex = process_file(str(tmp_path), TaskFile("plain/inner.py", 1, 1, None), LIMITS)
    assert row["status"] == "error" and row["reason"].startswith("unreadable:") and ex is None
    row, ex = process_file(str(tmp_path), TaskFile("gone.py", 1, 1, None), LIMITS)
    assert row["status"] == "vanished" and ex is None


def test_vanished_file_during_a_run_is_reported_and_the_run_goes_on(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = worker._read

    def vanishing_read(root: str, t: TaskFile) -> bytes:
        if t.path == "src/py/app.py":
            os.unlink(os.path.join(root, t.path))
        return real(root, t)

    monkeypatch.setattr(worker, "_read", vanishing_read)
    monkeypatch.setattr(pipeline, "IN_PROCESS_MAX", 10_000)  # keep the patch in this process
    with Engine(project) as engine:
        report = engine.index()
        assert report.errors == 1
        assert any("src/py/app.py" in m and "vanished" in m for m in report.messages)
        assert engine.search("CounterWidget")
        assert not engine.store.cursor().execute(
            "SELECT * FROM files WHERE path = 'src/py/app.py'").fetchall()


def test_one_bad_path_in_a_batch_skips_that_path_only(project: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.py").write_text("def elsewhere():\n    pass\n")
    with Engine(project) as engine:
        engine.index()
        (project / "src/py/new_one.py").write_text("def batch_survivor():\n    pass\n")
        (project / "src/py/link_out.py").symlink_to(tmp_path / "elsewhere.py")
        report = engine.index(["src/py/new_one.py", "src/py/link_out.py", str(tmp_path / "elsewhere.py"), ""])
        assert engine.symbol("batch_survivor") and not engine.symbol("elsewhere")
        assert report.parsed == 1 and len(report.messages) == 2, report.messages
        skipped = engine.store.cursor().execute(
            "SELECT reason FROM files WHERE path = 'src/py/link_out.py'").fetchone()
        assert skipped == ("symlink to outside the project",)


@pytest.mark.parametrize("aged", [False, True], ids=["just-written", "folders-remembered"])
def test_incremental_changes_deletions_and_renames(project: Path, aged: bool) -> None:
    # folders older than the racy window are remembered by the walk (WalkMemory)
    then = time.time() - 3600 if aged else time.time()
    for path in [project, *project.rglob("*")]:
        os.utime(path, (then, then))
    with Engine(project) as engine:
        engine.index()
        again = engine.index()
        assert again.parsed == 0 and again.unchanged > 15
        remembered = WalkMemory.load(engine.indexer.walk_memory_path).records
        assert ("src/web" in remembered) == aged

        shapes = project / "src/py/shapes.py"
        shapes.write_text(shapes.read_text() + "\n\ndef perimeter_of_square(side):\n    return 4 * side\n")
        (project / "src/web/widget.js").unlink()
        (project / "src/native/parser.rs").rename(project / "src/native/lexer.rs")
        report = engine.index()
        assert report.parsed == 2 and report.deleted == 2
        assert [s.path for s in engine.symbol("perimeter_of_square")] == ["src/py/shapes.py"]
        assert engine.symbol("CounterWidget") == []
        assert [s.path for s in engine.symbol("tokenize_input")] == ["src/native/lexer.rs"]
        con = engine.store.cursor()
        for table in ("files", "chunks", "symbols", "refs"):
            assert not con.execute(
                f"SELECT * FROM {table} WHERE path IN ('src/web/widget.js', 'src/native/parser.rs')"
            ).fetchall(), table
        # the lexical index holds the chunks that are there, and none that are gone
        assert all(h.path != "src/web/widget.js" for h in engine.search("CounterWidget", k=50))
        assert engine.store.lexical.documents() == con.execute("SELECT count(*) FROM chunks").fetchone()[0]
        assert [h.path for h in engine.search("tokenize_input", k=1)] == ["src/native/lexer.rs"]

        # touched but unchanged: hashed, not re-parsed
        os.utime(shapes, ns=(1, 1))
        report = engine.index()
        assert report.parsed == 0 and report.unchanged >= 1


def test_extractor_version_change_reindexes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Engine(project) as engine:
        first = engine.index()
        monkeypatch.setattr(pipeline, "IN_PROCESS_MAX", 10_000)  # keep the patch in this process
        for module in (languages, pipeline, worker):
            monkeypatch.setattr(module, "EXTRACTOR_VERSION", "test-next")
        report = engine.index()
        assert report.parsed == first.parsed
        assert engine.store.cursor().execute(
            "SELECT DISTINCT extractor FROM files WHERE status = 'indexed'").fetchall() == [("test-next",)]


def test_unsaved_text_is_searchable_and_disk_wins_on_next_scan(engine: Engine) -> None:
    text = (engine.root / "src/py/app.py").read_text() + "\ndef unsaved_helper_zebra():\n    pass\n"
    engine.update_file("src/py/app.py", text)
    assert [h.symbol for h in engine.search("unsaved_helper_zebra", k=1)] == ["unsaved_helper_zebra"]
    engine.index()  # the file on disk never had it
    assert engine.symbol("unsaved_helper_zebra") == []


def test_settings_from_pyproject_and_environment(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.codevm]\nmax_chunk_tokens = 200\nignore = ['*.gen']\n")
    settings = Settings.load(tmp_path, env={"CODEVM_MAX_FILE_BYTES": "1000"})
    assert settings.max_chunk_tokens == 200 and settings.ignore == ["*.gen"]
    assert settings.max_file_bytes == 1000


def test_kill_9_mid_index_leaves_a_consistent_index_and_the_next_run_finishes(tmp_path: Path) -> None:
    root = tmp_path / "big"
    (root / ".git").mkdir(parents=True)
    for i in range(400):
        (root / f"mod_{i:03d}.py").write_text(textwrap.dedent(f"""
            def function_number_{i}(x):
                '''Doubles x for module {i}.'''
                return x * 2 + {i}
            """) * 3)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from codevm.config import Settings
        from codevm.engine import Engine
        def main():
            settings = Settings(batch_files=24, workers=2)
            with Engine(Path({str(root)!r}), settings) as engine:
                engine.index(progress=lambda p: print(p.phase, p.done, flush=True))
        if __name__ == "__main__":
            main()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        if line.startswith("indexing"):
            seen += 1
            if seen == 6:  # several batches committed, more under way
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    con = duckdb.connect(str(root / ".codevm/index.duckdb"))
    indexed = {r[0] for r in con.execute("SELECT path FROM files WHERE status = 'indexed'").fetchall()}
    with_chunks = {r[0] for r in con.execute("SELECT DISTINCT path FROM chunks").fetchall()}
    assert 0 < len(indexed) < 400
    assert indexed == with_chunks  # every committed file whole, nothing half-written
    # the run commits tantivy every few seconds, not every batch: the batches the database
    # committed since are listed for it
    waiting = {r[0] for r in con.execute("SELECT path FROM lexical_pending").fetchall()}
    assert waiting and waiting <= indexed
    con.close()
    assert list((root / ".codevm/tmp").glob("run-*"))  # the killed run's scratch files

    with Engine(root) as engine:
        report = engine.index()
        assert report.parsed == 400 - len(indexed)
        assert not list((root / ".codevm/tmp").glob("run-*"))  # cleaned up
        assert engine.status().files == 400
        assert [h.symbol for h in engine.search("function_number_399", k=1)] == ["function_number_399"]
        # every file the killed run committed is searchable, those tantivy had not committed too
        for path in sorted(indexed)[:: max(1, len(indexed) // 20)] + sorted(waiting)[:20]:
            number = int(path.rsplit("_", 1)[-1].split(".")[0])
            name = f"function_number_{number}"
            assert [h.symbol for h in engine.search(name, k=1)] == [name], path
        assert engine.store.lexical.documents() == engine.status().chunks



def test_worker_output_files_used_again_keep_every_row_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the workers' output files are named again once their batch is committed (a new file
    # per task cost a tenth of a cold index's CPU on ext4): a name given out while its rows
    # were still to be loaded would lose one task's rows and load another's twice
    root = tmp_path / "many"
    (root / ".git").mkdir(parents=True)
    for i in range(600):
        (root / f"m{i:03d}.py").write_text(f"def unique_function_{i}(x):\n    return x + {i}\n\n\n"
                                           f"class UniqueClass{i}:\n    def method(self):\n        return {i}\n"
                                           + "# filler line to give the class its own chunk\n" * 20)
    names: list[str] = []
    take = pipeline._Outputs.take

    def recorded(self: pipeline._Outputs) -> str:
        names.append(take(self))
        return names[-1]

    monkeypatch.setattr(pipeline._Outputs, "take", recorded)
    monkeypatch.setattr(pipeline, "AHEAD_TASKS", 3)
    with Engine(root, Settings(batch_files=48, workers=2)) as engine:
        threads = engine.store.cursor().execute("SELECT current_setting('threads')").fetchone()
        seen: list[tuple] = []
        commit = pipeline.Indexer._commit

        def watched(self: pipeline.Indexer, *args: object, **kwargs: object) -> None:
            seen.append(engine.store.cursor().execute("SELECT current_setting('threads')").fetchone())
            commit(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(pipeline.Indexer, "_commit", watched)
        report = engine.index()
        # DuckDB gives the parsing processes a core while they run, and takes it back
        assert seen and set(seen) == {(max(1, (os.cpu_count() or 1) - 1),)}
        assert engine.store.cursor().execute("SELECT current_setting('threads')").fetchone() == threads
        assert report.parsed == 600 and not report.errors
        assert len(names) == -(-600 // pipeline.TASK_FILES)
        assert len(set(names)) < len(names) / 2  # names used again
        per_file = dict(engine.store.cursor().execute(
            "SELECT path, count(*) FROM chunks GROUP BY path").fetchall())
        assert len(per_file) == 600 and len(set(per_file.values())) == 1  # each file's chunks once
        assert engine.store.lexical.documents() == sum(per_file.values())
        for i in (0, 257, 599):
            assert [h.symbol for h in engine.search(f"unique_function_{i}", k=1)] == [f"unique_function_{i}"]
        assert not list((root / ".codevm/tmp").glob("run-*"))
        # the run ends with tantivy's last commit and DuckDB's checkpoint at once: both done
        wal = engine.store.path.with_name(engine.store.path.name + ".wal")
        assert not wal.exists() or wal.stat().st_size < 4096  # left: the run's last meta value
        assert engine.store.lexical_uncommitted is None
        assert engine.store.lexical.state()[0] == int(engine.store.get_meta("lexical_generation") or 0)


def test_a_failed_batch_changes_neither_store(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from codevm.db.index_tables import IndexTables
    from codevm.db.lexical import LexicalIndex

    with Engine(project) as engine:
        engine.index()
        shapes = project / "src/py/shapes.py"
        shapes.write_text(shapes.read_text() + "\ndef zanzibar_quokka():\n    return 1\n")
        real_load = IndexTables._load

        def failing_load(self: IndexTables, *args: object) -> None:
            real_load(self, *args)
            raise OSError("disk full")

        monkeypatch.setattr(IndexTables, "_load", failing_load)
        with pytest.raises(OSError):
            engine.update_file("src/py/shapes.py")
        assert engine.search("zanzibar_quokka") == [] and engine.symbol("zanzibar_quokka") == []
        monkeypatch.setattr(IndexTables, "_load", real_load)

        # the database commits and tantivy fails: the next batch brings tantivy up to date
        real_apply = LexicalIndex.apply

        def failing_apply(self: LexicalIndex, *args: object, **kwargs: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(LexicalIndex, "apply", failing_apply)
        with pytest.raises(OSError):
            engine.update_file("src/py/shapes.py")
        assert [s.name for s in engine.symbol("zanzibar_quokka")] == ["zanzibar_quokka"]
        assert not any(h.symbol == "zanzibar_quokka" for h in engine.search("zanzibar quokka"))
        monkeypatch.setattr(LexicalIndex, "apply", real_apply)
        (project / "src/py/other.py").write_text("def other_thing():\n    return 2\n")
        engine.update_file("src/py/other.py")
        assert [h.symbol for h in engine.search("zanzibar quokka", k=1)] == ["zanzibar_quokka"]
        assert [h.symbol for h in engine.search("other thing", k=1)] == ["other_thing"]


def test_repeated_edits_leave_no_stale_hits(engine: Engine) -> None:
    shapes = engine.root / "src/py/shapes.py"
    base = shapes.read_text()
    for i in range(60):  # as an editor sends buffer after buffer
        engine.update_file("src/py/shapes.py", base + f"\ndef rotate_polygon(p):\n    return {i}\n")
    # words, not the name: ranked by BM25, over an index where 59 copies were replaced
    hits = engine.search("rotate polygon", k=10)
    assert [h.symbol for h in hits].count("rotate_polygon") == 1
    con = engine.store.cursor()
    assert engine.store.lexical.documents() == con.execute("SELECT count(*) FROM chunks").fetchone()[0]


def test_an_older_database_is_migrated_in_place(tmp_path: Path) -> None:
    import duckdb

    from codevm.db import migrations, store

    path = tmp_path / "index.duckdb"
    con = duckdb.connect(str(path))
    migrations.apply(con, migrations.MIGRATIONS[:6])  # as an older release left it
    con.execute("INSERT INTO refs VALUES ('a.py', 'python', 'os', 'import', 1, NULL)")
    con.execute("INSERT INTO chunks (id, path, ord, language, kind, name, qualified_name, start_line, "
                "end_line, text, n_terms) VALUES (7, 'a.py', 0, 'python', 'function', 'grüße_quokka', "
                "'grüße_quokka', 1, 2, 'def grüße_quokka(): pass', 5)")
    # main (lines 4-9) calls the quokka on line 5; inner (6-7, inside main) calls it and sleep
    for cid, name, start, end in ((8, "main", 4, 9), (9, "inner", 6, 7)):
        con.execute("INSERT INTO chunks (id, path, ord, language, kind, name, qualified_name, start_line, "
                    "end_line, text, n_terms) VALUES (?, 'a.py', ?, 'python', 'function', ?, ?, ?, ?, '', 0)",
                    [cid, cid - 7, name, name, start, end])
    con.execute("INSERT INTO refs VALUES ('a.py', 'python', 'grüße_quokka', 'call', 5, 'main'), "
                "('a.py', 'python', 'grüße_quokka', 'call', 6, 'main.inner'), "
                "('a.py', 'python', 'time.sleep', 'call', 7, 'main.inner')")
    con.execute("INSERT INTO terms VALUES (1, 'grüße_quokka'), (2, 'quokka')")
    con.execute("INSERT INTO postings VALUES (1, 7, 3, 5), (2, 7, 2, 5)")
    con.close()
    current = store.Store(path)
    try:
        applied = current.con.execute("SELECT id, name FROM migrations ORDER BY id").fetchall()
        assert [i for i, _ in applied] == list(range(1, len(migrations.MIGRATIONS) + 1))
        assert applied[6][1] == "m007_empty_strings_in_references"
        assert current.con.execute("SELECT caller FROM refs WHERE kind = 'import'").fetchall() == [("",)]
        # each chunk's calls, from the refs on its own lines, and tantivy's index of them
        calls = dict(current.con.execute("SELECT id, calls FROM chunks").fetchall())
        assert (calls[7], calls[8], sorted(calls[9].split())) == ("", "grüße_quokka", ["grüße_quokka", "time.sleep"])
        assert current.lexical.holders("calls", ["grüße_quokka", "nobody"], 5) == {"grüße_quokka": [8, 9]}
        # the postings became each chunk's terms (m008), which went again (m011): tantivy's
        # index is made from each chunk's text and names
        columns = {r[0] for r in current.con.execute("DESCRIBE chunks").fetchall()}
        assert "terms" not in columns and "n_terms" not in columns and "names" in columns
        assert [cid for cid, _ in current.lexical.search({"quokka": 1.0}, 5)] == [7]
        tables = {r[0] for r in current.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert not tables & {"postings", "terms", "dead_chunks"}
    finally:
        current.close()
    again = store.Store(path)  # nothing left to apply: opening is idempotent
    try:
        assert again.con.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(
            migrations.MIGRATIONS)
        assert [cid for cid, _ in again.lexical.search({"grüße_quokka": 1.0}, 5)] == [7]
    finally:
        again.close()


def test_the_last_update_time_moves_only_when_the_index_changes(engine: Engine) -> None:
    engine.store.set_meta("last_updated_at", "before")
    engine.index()  # nothing changed on disk
    assert engine.store.get_meta("last_updated_at") == "before"
    shapes = engine.root / "src/py/shapes.py"
    shapes.write_text(shapes.read_text() + "\ndef lately_added():\n    return 2\n")
    engine.update_file("src/py/shapes.py")
    assert engine.store.get_meta("last_updated_at") not in (None, "before")
    assert engine.status().last_updated_at == engine.store.get_meta("last_updated_at")


def test_a_migration_inserted_mid_list_is_applied_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from codevm.db import migrations, store

    path = tmp_path / "index.duckdb"
    store.Store(path).close()  # every migration applied, recorded by name

    def m004b_inserted_later(con: object) -> None:
        con.execute("CREATE TABLE inserted_later (x INTEGER)")  # type: ignore[attr-defined]

    listed = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", listed[:4] + [m004b_inserted_later] + listed[4:])
    for _ in range(2):  # the second open finds nothing to apply
        db = store.Store(path)
        try:
            names = [r[0] for r in db.con.execute("SELECT name FROM migrations ORDER BY id").fetchall()]
            assert names == [m.__name__ for m in listed] + ["m004b_inserted_later"]
            assert db.con.execute("SELECT count(*) FROM inserted_later").fetchone() == (0,)
        finally:
            db.close()


def test_a_corrupt_database_says_what_to_do_and_rebuild_keeps_the_memory(project: Path) -> None:
    from tests.test_cli import codevm

    with Engine(project) as engine:
        engine.index()
        note = engine.add_note("the cache is warmed at start-up", tags=["perf"])
        engine.core_memory_update("project", "Shapes demo")
        engine.ask("what does total_area return?")  # no model: the question is still recorded
    # --rebuild on a readable database keeps every note, block and message (and their ids go on)
    result = codevm(project, "index", "--rebuild", env={"CODEVM_SERVICE": "false"})
    assert result.returncode == 0 and "kept 1 core_blocks, 1 notes, 1 sessions, 1 messages" in result.stderr
    broken = sorted((project / ".codevm").glob("index.duckdb.broken-*"))
    assert broken and any(p.name.endswith(".memory.jsonl") for p in broken)
    with Engine(project) as engine:
        assert [n.text for n in engine.list_notes()] == [note.text]
        assert engine.add_note("a second note").id > note.id
        assert engine.core_memory_block("project").value == "Shapes demo"
        assert engine.conversation_search("total_area")
        assert engine.search("total_area")  # the index is rebuilt from the files
    # a truncated file: one line that says what to do, then a new database
    database = project / ".codevm/index.duckdb"
    os.truncate(database, 5000)
    with pytest.raises(IndexUnreadable, match="cannot be read .*codevm index --rebuild"):
        Engine(project)
    result = codevm(project, "search", "total_area", env={"CODEVM_SERVICE": "false"})
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "--rebuild" in result.stderr
    result = codevm(project, "index", "--rebuild", env={"CODEVM_SERVICE": "false"})
    assert result.returncode == 0 and "kept nothing" in result.stderr and "the whole file" in result.stderr
    assert len(list((project / ".codevm").glob("index.duckdb.broken-*"))) >= 3  # never deleted
    with Engine(project) as engine:
        assert engine.search("total_area")


def test_the_store_draws_no_progress_bar_on_stdout(tmp_path: Path) -> None:
    """DuckDB draws a progress bar on stdout for a query over 2 s (a migration of a big
    index), and stdout is the LSP and MCP channel. Asked in a process of its own: under
    pytest's captured stdout DuckDB turns the bar off by itself."""
    probe = ("import sys; from pathlib import Path; from codevm.db.store import Store; "
             "s = Store(Path(sys.argv[1])); "
             "print(s.con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])")
    shown = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "index.duckdb")],
                           capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "False", shown.stderr

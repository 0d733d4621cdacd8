from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codevm.service import stop_service

ROOT = Path(__file__).parent.parent


def codevm(cwd: Path, *args: str, env: dict[str, str] | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codevm", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, input=stdin)


@pytest.fixture
def indexed(project: Path) -> Path:
    result = codevm(project, "index")
    assert result.returncode == 0, result.stderr
    assert "chunks" in result.stdout
    return project


def test_index_then_every_command_from_a_subfolder(indexed: Path) -> None:
    sub = indexed / "src" / "web"
    hits = json.loads(codevm(sub, "search", "add", "todo", "--json", "-k", "3").stdout)
    assert hits[0]["path"] == "src/web/store.ts"
    assert set(hits[0]) >= {"path", "start_line", "end_line", "symbol", "kind", "score", "snippet"}

    text = codevm(sub, "search", "greetLoudly", "--lang", "kotlin").stdout
    assert "src/jvm/Greeter.kt:6-8" in text

    assert "src/native/server.go:13-16" in codevm(sub, "symbol", "HandleHealth").stdout
    assert "src/py/app.py:6  call in main" in codevm(sub, "refs", "total_area").stdout
    shown = codevm(sub, "show", "src/py/shapes.py:13-14").stdout.splitlines()
    assert shown[0].split(None, 1) == ["13", "def area(self) -> float:"] and len(shown) == 2

    status = json.loads(codevm(sub, "status", "--json").stdout)
    assert status["files"] >= 20 and status["languages"]["python"] == 2
    assert "database" in codevm(sub, "status").stdout


def test_reindex_reports_nothing_to_do(indexed: Path) -> None:
    report = json.loads(codevm(indexed, "index", "--json").stdout)
    assert report["parsed"] == 0 and report["unchanged"] >= 20


@pytest.mark.parametrize("args, message", [
    (("search", ""), "the search query is empty"),
    (("symbol", "no_such_symbol_anywhere"), "no definition of 'no_such_symbol_anywhere'"),
    (("show", "../../etc/passwd"), "outside the project"),
    (("show", "src/py/shapes.py:9-3"), "invalid line range"),
    (("show", "src/py/shapes.py:0"), "invalid line range"),  # it printed the whole file
])
def test_errors_are_one_line_and_a_nonzero_exit(indexed: Path, args: tuple[str, ...],
                                                message: str) -> None:
    result = codevm(indexed, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codevm: error: ") and message in lines[0]


def test_status_of_a_path_lists_what_is_left_out(indexed: Path, tmp_path: Path) -> None:
    (indexed / "tests/target").mkdir(parents=True)
    (indexed / "tests/target/generated.py").write_text("x = 1\n")
    (indexed / "one_line.js").write_text("var a=1;" * 1000 + "\n")
    assert codevm(indexed, "index").returncode == 0
    result = codevm(tmp_path, "status", str(indexed), "--skipped")  # from anywhere
    assert result.returncode == 0, result.stderr
    rows = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert rows["tests/target"].startswith("excluded by default")
    assert rows["one_line.js"].startswith("minified or generated")
    listed = json.loads(codevm(tmp_path, "status", str(indexed), "--skipped", "--json").stdout)
    assert {"path": "one_line.js", "reason": rows["one_line.js"]} in listed
    assert str(indexed) in codevm(tmp_path, "status", str(indexed)).stdout


NO_CHANGE_RUN = """
import runpy, sys
sys.argv = ["codevm", "index"]
try:
    runpy.run_module("codevm", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print(sorted(m for m in ("numpy", "httpx", "torch") if m in sys.modules))
"""


def test_a_no_change_index_loads_nothing_it_does_not_use(project: Path) -> None:
    """A re-index that finds nothing to do pays for no import it does not need (numpy
    was 0.12 s of u-boot's 1.3 s: the learned ranker's arrays, made at start)."""
    local = {**os.environ, "CODEVM_SERVICE": "false", "PYTHONPATH": str(ROOT)}
    assert codevm(project, "index", env=local).returncode == 0
    again = subprocess.run([sys.executable, "-c", NO_CHANGE_RUN], cwd=project, capture_output=True,
                           text=True, timeout=120, env=local)
    assert again.returncode == 0, again.stderr
    assert "0 parsed" in again.stdout and again.stdout.strip().splitlines()[-1] == "[]", again.stdout


QUICK_RUN = """
import sys
from codevm.quick import run
code = run(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m in ("click", "rich", "duckdb", "codevm.api", "codevm.cli")
               or m == "multiprocessing.connection" and sys.version_info < (3, 12))
assert not heavy, heavy
sys.exit(99 if code is None else code)
"""


@pytest.mark.parametrize("args", [
    ("symbol", "bracketed"), ("symbol", "HandleHealth", "--json"), ("refs", "total_area"),
    ("search", "area", "-k", "3"), ("search", "greetLoudly", "--lang", "kotlin"),
    ("search", "bracketed", "--path", "src/*"), ("status",), ("status", "--json"),
    ("symbol", "no_such_symbol_anywhere"), ("search", ""),
])
def test_quick_commands_print_what_the_full_cli_prints(indexed: Path, args: tuple[str, ...]) -> None:
    """symbol/refs/search/status go to the running service without importing click or the
    engine's API (codevm/quick.py); what they print and their exit code are the full CLI's.
    A path with rich markup in its name prints as it is."""
    odd = indexed / "src" / "[bold]odd[/x]"
    odd.mkdir(parents=True)  # a folder "[bold]odd[" holding "x]"
    (odd / "m.py").write_text("def bracketed():\n    return '[/]'\n")
    assert codevm(indexed, "index").returncode == 0  # starts the service
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quick = subprocess.run([sys.executable, "-c", QUICK_RUN, *args], cwd=indexed, capture_output=True,
                           text=True, timeout=60, env=env)
    full = subprocess.run([sys.executable, "-c", "from codevm.cli import main; main()", *args], cwd=indexed,
                          capture_output=True, text=True, timeout=60, env=env)
    assert quick.returncode != 99, "the quick path was not taken"
    assert "Traceback" not in quick.stderr, quick.stderr
    if args[-1] == "--json" and args[0] == "status":  # sizes and times move between the runs
        assert json.loads(quick.stdout).keys() == json.loads(full.stdout).keys()
    elif args == ("status",):  # the database's size and the watcher's last update move too
        def steady(out: str) -> list[str]:
            return [line if not line.startswith(("database ", "indexed ", "updated ")) else line.split()[0]
                    for line in out.splitlines()]

        assert (quick.returncode, steady(quick.stdout), quick.stderr) == (full.returncode, steady(full.stdout),
                                                                          full.stderr)
        assert len(quick.stdout.splitlines()) >= 6
    else:
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
    if args == ("symbol", "bracketed"):
        assert quick.stdout.startswith("src/[bold]odd[/x]/m.py:1-2  function bracketed")


def test_the_quick_path_leaves_to_the_full_cli_what_it_is_not_sure_of(indexed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def quick(*args: str, **extra: str) -> int:
        return subprocess.run([sys.executable, "-c", QUICK_RUN, *args], cwd=indexed, capture_output=True,
                              text=True, timeout=60, env={**env, **extra}).returncode

    assert codevm(indexed, "status").returncode == 0  # a service runs
    assert quick("symbol", "HandleHealth") == 0
    for args in (("symbol", "--help"), ("status", "--skipped"), ("search", "x", "-k", "many"),
                 ("symbol", "a", "b"), ("show", "src/py/app.py"), ("index",)):
        assert quick(*args) == 99, args
    assert quick("symbol", "HandleHealth", CODEVM_SERVICE="0") == 99  # a setting that may turn it off
    (indexed / ".codevm.toml").write_text("service = false\n")
    assert quick("symbol", "HandleHealth") == 99
    (indexed / ".codevm.toml").unlink()
    stop_service(indexed)
    assert quick("symbol", "HandleHealth") == 99  # no service: the full CLI starts one
    assert "src/native/server.go:13-16" in codevm(indexed, "symbol", "HandleHealth").stdout


@pytest.mark.parametrize("service", ["true", "false"])
def test_a_reader_that_stops_early_gets_no_error(indexed: Path, service: str) -> None:
    """`codevm search x | head -1`, through the quick path and through the full CLI (the
    in-process engine): the command ends quietly when its reader has gone, as `git log |
    head` does, not with "codevm: error: Broken pipe" or Python's "Exception ignored"."""
    for n in range(60):  # output longer than a pipe's buffer holds
        (indexed / "src" / f"many_{n}.py").write_text(
            "".join(f"def handler_{n}_{i}_{'with_a_long_name_' * 6}():\n    return 'handler'\n\n\n"
                    for i in range(40)))
    env = {**os.environ, "CODEVM_SERVICE": service}
    stop_service(indexed)  # the in-process engine's turn (the fixture's index started one)
    assert codevm(indexed, "index", env=env).returncode == 0
    for args in (("search", "handler", "-k", "1000"), ("search", "handler", "-k", "1000", "--json")):
        proc = subprocess.Popen([sys.executable, "-m", "codevm", *args], cwd=indexed, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline(), proc.stderr.read()
        proc.stdout.close()  # the reader has what it wanted
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (args, err)
        assert err.decode() == "", (args, err)


def test_lsp_over_tcp_only_on_loopback(tmp_path: Path) -> None:
    result = codevm(tmp_path, "lsp", "--tcp", "--host", "0.0.0.0", "--port", "1")
    assert result.returncode != 0 and "loopback only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_outside_any_project(tmp_path: Path) -> None:
    result = codevm(tmp_path, "search", "x")
    assert result.returncode == 1
    assert "codevm index" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_no_repository_indexed_under_codevm_home(project: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # no .git and, with CODEVM_HOME, no .codevm either: the data folder in the home marks it
    (project / ".git").rmdir()
    monkeypatch.setenv("CODEVM_HOME", str(tmp_path / "home"))
    assert codevm(project, "index").returncode == 0
    assert not (project / ".codevm").exists()
    result = codevm(project / "src" / "web", "search", "add", "todo", "-k", "1")
    assert result.returncode == 0 and "src/web/store.ts" in result.stdout, result.stderr
    # a folder beside it was never indexed: still no project there
    (tmp_path / "other").mkdir()
    result = codevm(tmp_path / "other", "status")
    assert result.returncode == 1 and "codevm index" in result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = "pip install -e '.[test]' && ruff check codevm tests bench && mypy && pytest -q"
    assert command in readme and command in ci
    assert "pip install . && codevm index && codevm ask" in readme


def test_ask_with_a_model_then_memory_from_new_processes(indexed: Path) -> None:
    from tests.fake_ollama import FakeOllama, call

    with FakeOllama() as fake:
        env = {"CODEVM_OLLAMA_HOST": fake.host, "CODEVM_ASK_MODE": "tools"}
        fake.script = [{"tool_calls": [call("archival_memory_insert", text="Circle keeps a radius",
                                            path="src/py/shapes.py", symbol="Circle")]},
                       {"content": "Circle is defined in src/py/shapes.py:8-18."}]
        result = codevm(indexed, "ask", "Where", "is", "Circle?", "--show-context", env=env)
        assert result.returncode == 0, result.stderr
        assert "Circle is defined in src/py/shapes.py:8-18." in result.stdout
        assert "main context" in result.stdout and "working set" in result.stdout
    notes = json.loads(codevm(indexed, "memory", "notes", "list", "--json").stdout)
    assert notes[0]["text"] == "Circle keeps a radius" and notes[0]["source"] == "agent"
    assert codevm(indexed, "memory", "core", "task", "Fix the area bug").returncode == 0
    assert "Fix the area bug" in codevm(indexed, "memory", "core", "task").stdout
    sessions = json.loads(codevm(indexed, "memory", "sessions", "--json").stdout)
    assert sessions[0]["messages"] >= 4
    found = codevm(indexed, "memory", "search", "Circle").stdout
    assert "Where is Circle?" in found


def test_ask_without_ollama_prints_pages_and_how_to_start_it(indexed: Path) -> None:
    result = codevm(indexed, "ask", "how is the total area computed", env={
        "CODEVM_OLLAMA_HOST": "http://127.0.0.1:9"})
    assert result.returncode == 0
    assert "src/py/shapes.py:" in result.stdout and "def total_area" in result.stdout
    assert "no Ollama server answered at http://127.0.0.1:9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chat_keeps_a_session_with_slash_commands(indexed: Path) -> None:
    from tests.fake_ollama import FakeOllama

    with FakeOllama() as fake:
        fake.script = [{"content": "First answer."}, {"content": "Second answer."}]
        result = codevm(indexed, "chat", env={"CODEVM_OLLAMA_HOST": fake.host},
                        stdin="what is Circle?\n/pages\nand total_area?\n/budget\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "First answer." in result.stdout and "Second answer." in result.stdout
    assert "main context" in result.stdout
    second = fake.chat_requests()[1]["body"]["messages"]
    assert "- what is Circle?" in second[0]["content"]  # the same session

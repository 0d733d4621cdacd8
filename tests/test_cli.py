from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def codevm(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codevm", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


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
])
def test_errors_are_one_line_and_a_nonzero_exit(indexed: Path, args: tuple[str, ...],
                                                message: str) -> None:
    result = codevm(indexed, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codevm: error: ") and message in lines[0]


def test_outside_any_project(tmp_path: Path) -> None:
    result = codevm(tmp_path, "search", "x")
    assert result.returncode == 1
    assert "codevm index" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = "pip install -e '.[test]' && pytest -q"
    assert command in readme and command in ci
    assert "pip install . && codevm index && codevm search" in readme

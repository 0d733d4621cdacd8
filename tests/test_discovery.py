from __future__ import annotations

from pathlib import Path

from codevm.indexers.discovery import Candidate, Skipped, walk_project
from tests.conftest import add_bad_files


def walk(root: Path, extra: list[str] | None = None) -> tuple[set[str], dict[str, str]]:
    found, skipped = set(), {}
    for item in walk_project(str(root), extra or []):
        if isinstance(item, Candidate):
            found.add(item.path)
        else:
            assert isinstance(item, Skipped)
            skipped[item.path] = item.reason
    return found, skipped


def test_gitignore_at_every_level_with_negation(tmp_path: Path) -> None:
    (tmp_path / ".git/info").mkdir(parents=True)
    (tmp_path / ".git/info/exclude").write_text("secret.py\n")
    (tmp_path / ".gitignore").write_text("*.log\ngenerated/\n")
    (tmp_path / ".codevmignore").write_text("fixtures_big/\n")
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / ".gitignore").write_text("local_*.py\n!local_keep.py\n")
    for rel in ["main.py", "debug.log", "secret.py", "generated/out.py", "fixtures_big/a.py",
                "pkg/mod.py", "pkg/local_tmp.py", "pkg/local_keep.py", "pkg/deep/trace.log"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    found, _ = walk(tmp_path, ["*.bak"])
    assert found == {".codevmignore", ".gitignore", "main.py", "pkg/.gitignore", "pkg/mod.py",
                     "pkg/local_keep.py"}


def test_default_excludes_and_lock_files(tmp_path: Path) -> None:
    for rel in ["src/app.py", "node_modules/lib/index.js", "build/out.py", "target/x.rs",
                "__pycache__/m.py", "myenv/lib/site.py", "package-lock.json", "Cargo.lock",
                "poetry.lock", "dist/pkg.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    (tmp_path / "myenv/pyvenv.cfg").write_text("home = /usr\n")  # a venv under any name
    found, _ = walk(tmp_path)
    assert found == {"src/app.py"}


def test_bad_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    expected = add_bad_files(tmp_path)
    found, skipped = walk(tmp_path)
    # reasons known without reading the file come from the walk
    for rel in ["bad/image.bin", "bad/huge.txt", "bad/app.min.js", "bad/escape.py",
                "bad/dangling.py", "bad/loop"]:
        assert skipped[rel].startswith(expected[rel]), (rel, skipped.get(rel))
    # content checks (NUL bytes, long lines, encoding) happen when the file is read
    assert {"bad/blob.py", "bad/bundle.js", "bad/latin1.py"} <= found
    assert not any("outside_secret" in p for p in found)

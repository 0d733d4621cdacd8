from __future__ import annotations

import marshal
import os
import time
from pathlib import Path

from codevm.indexers.discovery import Candidate, Skipped, WalkMemory, walk_project
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


def _items(root: Path, memory: WalkMemory | None = None, extra: list[str] | None = None) -> list:
    return list(walk_project(str(root), extra or [], memory=memory))


def _age(root: Path, seconds: float = 3600) -> None:
    """Every folder and file as if last changed `seconds` ago (past the racy window)."""
    then = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.utime(path, (then, then))


def _remembered_walk(root: Path, path: Path, extra: list[str] | None = None) -> list:
    memory = WalkMemory.load(str(path))
    items = _items(root, memory, extra)
    memory.save(str(path))
    return items


def test_a_remembered_walk_finds_what_a_whole_walk_finds(tmp_path: Path) -> None:
    root, saved = tmp_path / "project", tmp_path / "walk"
    for rel in ["main.py", "pkg/mod.py", "pkg/deep/leaf.py", "pkg/deep/data.bin", "other/note.md",
                "pkg/generated.py", "yarn.lock", "node_modules/x.js"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "pkg/.gitignore").write_text("*.tmp\n")
    (root / "links").mkdir()
    (root / "links/link.py").symlink_to(root / "main.py")
    _age(root)
    first = _remembered_walk(root, saved)
    assert first == _items(root)
    memory = WalkMemory.load(str(saved))
    assert {"", "pkg", "pkg/deep", "other"} <= set(memory.records)  # remembered...
    assert "links" not in memory.records  # ...but not a folder with a symlink, read every time
    assert {"main.py", "pkg/deep/leaf.py"} <= {i.path for i in first if isinstance(i, Candidate)}

    # files changed, added, removed; a folder added; a file grown past the size limit
    (root / "pkg/deep/leaf.py").write_text("x = 2  # longer\n")
    (root / "pkg/deep/new.py").write_text("y = 1\n")
    (root / "other/note.md").unlink()
    (root / "other/fresh").mkdir()
    (root / "other/fresh/a.py").write_text("z = 1\n")
    (root / "main.py").write_text("x" * (2 << 20))
    assert _remembered_walk(root, saved) == _items(root)

    # a .gitignore edited in place (its folder's mtime does not move): it rules again
    _age(root)
    _remembered_walk(root, saved)
    folder = (root / "pkg").stat().st_mtime_ns
    (root / "pkg/.gitignore").write_text("*.tmp\ndeep/\n")
    os.utime(root / "pkg/.gitignore", (time.time() - 1800,) * 2)  # past the racy window too
    os.utime(root / "pkg", ns=(folder, folder))
    assert "pkg/deep/leaf.py" not in {i.path for i in _remembered_walk(root, saved)}
    assert _remembered_walk(root, saved) == _items(root)

    # other ignore settings: nothing remembered holds
    assert _remembered_walk(root, saved, ["other/"]) == _items(root, extra=["other/"])
    assert not any(i.path.startswith("other/") for i in _items(root, extra=["other/"]))


def test_a_folder_changed_just_before_a_walk_is_read_again_next_time(tmp_path: Path) -> None:
    """A change within the same tick of the file system's clock leaves a folder's mtime as
    it was: a folder that changed within the racy window is not remembered."""
    root, saved = tmp_path / "project", tmp_path / "walk"
    (root / "src").mkdir(parents=True)
    (root / "src/a.py").write_text("a = 1\n")
    _remembered_walk(root, saved)  # right after the change
    assert "src" not in WalkMemory.load(str(saved)).records
    before = (root / "src").stat().st_mtime_ns
    (root / "src/b.py").write_text("b = 1\n")
    os.utime(root / "src", ns=(before, before))  # the same tick: the folder's mtime stays
    assert "src/b.py" in {i.path for i in _remembered_walk(root, saved)}


def test_an_unreadable_walk_memory_is_a_whole_walk(tmp_path: Path) -> None:
    root, saved = tmp_path / "project", tmp_path / "walk"
    (root / "src").mkdir(parents=True)
    (root / "src/a.py").write_text("a = 1\n")
    for junk in (b"", b"\x00garbage" * 100, marshal.dumps((WalkMemory.FORMAT, {"src": (1, 2)}))):
        saved.write_bytes(junk)
        assert _remembered_walk(root, saved) == _items(root)

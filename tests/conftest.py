from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from codevm.engine import Engine
from codevm.service import stop_service

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # settings and data locations come from the project under test, never from the machine
    for key in list(os.environ):
        if key.startswith("CODEVM_"):
            monkeypatch.delenv(key)
    # a service that a test leaves behind goes away by itself
    monkeypatch.setenv("CODEVM_SERVICE_IDLE_SECONDS", "60")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the polyglot fixture: one small source file per supported language."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "polyglot", root)
    (root / ".git").mkdir()
    yield root
    stop_service(root)  # started by the commands, servers and clients under test


def add_bad_files(root: Path) -> dict[str, str]:
    """Files of every bad kind; returns path -> expected skip reason prefix."""
    (root / "bad").mkdir()
    (root / "bad/image.bin").write_bytes(b"\x89PNG\0\0\0" + bytes(range(256)))
    (root / "bad/blob.py").write_bytes(b"x = 1\n\0\0\0binary\n")
    (root / "bad/latin1.py").write_bytes(b"def caf\xe9_menu():\n    return 'cr\xe8me'\n")
    (root / "bad/huge.txt").write_text("word " * 300_000)
    (root / "bad/bundle.js").write_text("var a=1;" * 1000 + "\n")
    (root / "bad/app.min.js").write_text("var b=2;\n")
    (root / "bad/loop").symlink_to(root / "bad")
    outside = root.parent / "outside_secret.py"
    outside.write_text("def outside_secret():\n    pass\n")
    (root / "bad/escape.py").symlink_to(outside)
    (root / "bad/dangling.py").symlink_to(root / "nowhere.py")
    # a link that sorts before the folder it points to: the folder is indexed under its own path
    (root / "bad/z_real").mkdir()
    (root / "bad/z_real/deep.py").write_text("def deep_in_real():\n    return 1\n")
    (root / "bad/a_link").symlink_to(root / "bad/z_real")
    # any name the filesystem allows (ODD_NAMES); one that is not UTF-8 cannot be stored
    for name, function in ODD_NAMES.items():
        (root / "bad" / name).write_text(f"def {function}():\n    return 1\n")
    (root / "bad").joinpath(os.fsdecode(b"caf\xe9.py")).write_text("def not_utf8_name():\n    pass\n")
    (root / "\\N").write_text("#!/usr/bin/env python\ndef odd_null_root():\n    return 1\n")  # DuckDB's NULL
    return {
        "bad/image.bin": "binary",
        "bad/blob.py": "binary",
        "bad/huge.txt": "too large",
        "bad/bundle.js": "minified or generated",
        "bad/app.min.js": "minified",
        "bad/escape.py": "symlink to outside the project",
        "bad/dangling.py": "broken symlink",
        "bad/loop": "symlink to a folder of the project",
        "bad/a_link": "symlink to a folder of the project",
        "bad/caf\\xe9.py": "its name is not valid UTF-8",
    }


# file names that broke indexing (paths were written unescaped into the workers' TSV files)
ODD_NAMES = {"tab\there.py": "odd_tab", "new\nline.py": "odd_newline", "\\N.py": "odd_null",
             "back\\slash.py": "odd_backslash", 'q"uote.py': "odd_quote", " lead .py": "odd_spaces",
             "données.py": "odd_accents"}


@pytest.fixture
def engine(project: Path):
    with Engine(project) as eng:
        eng.index()
        yield eng

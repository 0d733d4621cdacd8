"""The VS Code extension (editors/vscode): its TypeScript builds and its unit tests pass
(npm and Node from the machine), and every field it reads from the server is one the
server sends. Its run in a real VS Code (code-server driven by Chromium) is
bench/vscode_e2e.py: too heavy for every CI run (see README, "VS Code")."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from codevm import api

EXTENSION = Path(__file__).parent.parent / "editors" / "vscode"
NPM = shutil.which("npm")

# the extension's interfaces -> the server's data, and what the LSP server adds to it
CONTRACT = {
    "Hit": (api.SearchHit, {"uri"}),
    "Note": (api.Note, {"uri"}),
    "CoreBlock": (api.CoreBlock, set()),
    "AskResult": (api.AskResult, {"root"}),
    "Page": (api.PageInfo, {"uri"}),
    "ContextReport": (api.ContextReport, set()),
    "Status": (api.Status, {"folders"}),
}


def _interfaces() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for source in (EXTENSION / "src").glob("*.ts"):
        for name, body in re.findall(r"interface (\w+) \{(.*?)\n\}", source.read_text(), re.DOTALL):
            found[name] = set(re.findall(r"^\s+(\w+)\??:", body, re.MULTILINE))
    return found


def test_every_field_the_extension_reads_is_sent_by_the_server() -> None:
    interfaces = _interfaces()
    assert set(CONTRACT) <= set(interfaces), set(CONTRACT) - set(interfaces)
    for name, (cls, added) in CONTRACT.items():
        sent = {f.name for f in dataclasses.fields(cls)} | added
        assert interfaces[name] <= sent, f"{name} reads {interfaces[name] - sent}, which {cls.__name__} lacks"


@pytest.mark.skipif(NPM is None, reason="no npm: the extension is built with Node.js 20+ and npm")
def test_the_extension_builds_and_its_unit_tests_pass() -> None:
    assert NPM is not None
    install = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=EXTENSION, capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    tests = subprocess.run([NPM, "test"], cwd=EXTENSION, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert re.search(r"# pass [1-9]", tests.stdout) and "# fail 0" in tests.stdout

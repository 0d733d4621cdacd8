"""The VS Code extension end to end, in a real VS Code: code-server (VS Code 1.100 in the
browser, from npm) with the extension's .vsix installed, driven by Debian's Chromium
through playwright-core (editors/vscode/e2e/drive.mjs), against `codevm lsp` on a copy of
the test fixture and a scripted model (tests/fake_ollama.py) that streams its answer.

It checks: the status bar shows the index, the chat view opens from the command palette,
the answer streams in (several partial lengths seen), its citation is a link that opens
src/py/shapes.py at line 21, a follow-up continues the session (the model gets the first
answer back), the answer's code fence and inline code are shown as code, the picture of
main context opens beside it, search's quick pick opens a
hit, and a note remembered on the selection shows in the notes view. Prints one JSON object;
exits 1 if a check fails.

Needs: node and npm (20+), Debian's chromium, and what code-server's install compiles
(apt-get install build-essential pkg-config libkrb5-dev libx11-dev libxkbfile-dev
libsecret-1-dev ripgrep). code-server's install fetches ripgrep from GitHub, which is not
reachable here: Debian's `rg` is put where that download is looked for first.

    python bench/vscode_e2e.py [--screenshot out.png]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_ollama import FakeOllama  # noqa: E402

EXTENSION = ROOT / "editors" / "vscode"
E2E = EXTENSION / "e2e"
FIXTURE = ROOT / "tests" / "fixtures" / "polyglot"
FIRST = ("`total_area` in src/py/shapes.py:21-23 adds up the area of every shape it is given, one at "
         "a time, and returns the sum:\n```python\nreturn sum(s.area() for s in shapes)\n```\n"
         "Circle.area and Square.area give each shape's own area.")
SHOWN = re.sub(r"`([^`\n]+)`", r"\1", re.sub(r"```[\w+-]*\n?", "", FIRST))  # as the chat view shows it
SECOND = "It is called from src/py/app.py, which prints the total for the shapes it builds."


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def ripgrep_for_offline_install() -> None:
    """@vscode/ripgrep's postinstall downloads rg from GitHub unless its cache has it."""
    rg = shutil.which("rg")
    if rg is None:
        raise SystemExit("code-server's install needs ripgrep here: apt-get install ripgrep")
    tmp = Path(tempfile.gettempdir())
    archive = tmp / "codevm-rg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(rg, arcname="rg")
    for version in range(9, 15):  # the @vscode/ripgrep 1.15.x releases and their rg builds
        cache = tmp / f"vscode-ripgrep-cache-1.15.{version}"
        cache.mkdir(exist_ok=True)
        for build in (4, 9, 10, 11, 12, 13):
            target = cache / f"ripgrep-v13.0.0-{build}-x86_64-unknown-linux-musl.tar.gz"
            if not target.exists():
                shutil.copy(archive, target)


def build() -> Path:
    vsix = EXTENSION / "codevm.vsix"
    if not (EXTENSION / "node_modules").is_dir():
        run(["npm", "install", "--no-audit", "--no-fund"], EXTENSION)
    run(["npm", "run", "package"], EXTENSION)
    if not (E2E / "node_modules" / ".bin" / "code-server").exists():
        ripgrep_for_offline_install()
        env = {**os.environ, "npm_config_yes": "true", "npm_config_unsafe_perm": "true"}
        run(["npm", "install", "--no-audit", "--no-fund"], E2E, env)
    return vsix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", default="", help="save the final screen here (PNG)")
    args = parser.parse_args()
    began = time.monotonic()
    vsix = build()
    built = time.monotonic() - began
    code_server = E2E / "node_modules" / ".bin" / "code-server"
    with tempfile.TemporaryDirectory(prefix="codevm-vscode-") as tmp_, FakeOllama() as fake:
        tmp = Path(tmp_)
        project = tmp / "project"
        shutil.copytree(FIXTURE, project)
        (project / ".git").mkdir()
        fake.script = [{"content": FIRST, "trickle": 0.08}, {"content": SECOND, "trickle": 0.02}]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")},
               "HOME": str(tmp / "home"), "CODEVM_OLLAMA_HOST": fake.host,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        dirs = ["--user-data-dir", str(tmp / "user"), "--extensions-dir", str(tmp / "extensions")]
        # VS Code takes the extension host's PATH from a login shell, not from its own
        # environment: the set-up the README gives for a codevm that is not on that PATH
        (tmp / "user" / "User").mkdir(parents=True)
        (tmp / "user" / "User" / "settings.json").write_text(json.dumps({
            "codevm.path": shutil.which("codevm", path=env["PATH"]), "workbench.startupEditor": "none",
            "telemetry.telemetryLevel": "off"}))
        run([str(code_server), *dirs, "--install-extension", str(vsix)], tmp, env)
        port = free_port()
        server = subprocess.Popen(
            [str(code_server), *dirs, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}",
             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", str(project)],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("code-server did not start within 60 s") from None
                    time.sleep(0.5)
            drive = subprocess.run(["node", str(E2E / "drive.mjs"), f"http://127.0.0.1:{port}", str(project),
                                    args.screenshot], cwd=E2E, capture_output=True, text=True, timeout=600)
            seen = json.loads(drive.stdout.strip().splitlines()[-1]) if drive.stdout.strip() else {
                "ok": False, "error": drive.stderr[-2000:]}
        finally:
            server.terminate()
            server.wait(30)
            subprocess.run([sys.executable, "-m", "codevm", "service", "stop"], cwd=project, env=env,
                           capture_output=True)
        asked = [r["body"]["messages"] for r in fake.chat_requests()]
    checks = {
        "status bar shows the index": bool(seen.get("statusBar")) and "files" in seen.get("statusBar", ""),
        "answer streamed in pieces": len(seen.get("partialLengths", [])) >= 3,
        "answer shown whole": seen.get("answer") == SHOWN,
        "markdown: a code block and inline code": seen.get("codeBlocks") == ["return sum(s.area() for s in shapes)\n"]
        and seen.get("inlineCode") == ["total_area"],
        "citation is a link to shapes.py:21-23": {"text": "src/py/shapes.py:21-23", "path": "src/py/shapes.py",
                                                  "line": 21, "end": 23} in seen.get("citations", []),
        "citation opens the file at its lines": "shapes.py" in (seen.get("activeTab") or "")
        and "Ln 21, Col 1" in (seen.get("cursor") or ""),
        "follow-up answered": seen.get("followUp") == SECOND,
        "follow-up continues the session": len(asked) == 2 and {"role": "assistant", "content": FIRST} in asked[1],
        "context picture beside": "main context" in (seen.get("contextPicture") or ""),
        "search quick pick opens a hit": "Circle.scale" in " ".join(seen.get("searchHits") or [])
        and "Ln 17" in (seen.get("searchOpened") or ""),
        "note on the selection in the notes view": "src/py/shapes.py" in (seen.get("noteInTree") or ""),
    }
    report = {"ok": bool(seen.get("ok")) and all(checks.values()), "checks": checks,
              "vscode": "code-server 4.100.3 (VS Code 1.100.3)", "browser": _chromium_version(),
              "build_seconds": round(built, 1), "drive_seconds": seen.get("seconds"),
              "steps": seen.get("steps"), "status_bar": seen.get("statusBar"), "error": seen.get("error")}
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def _chromium_version() -> str:
    try:
        return subprocess.run([os.environ.get("CHROMIUM", "/usr/bin/chromium"), "--version"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except OSError:
        return "not found"


if __name__ == "__main__":
    raise SystemExit(main())

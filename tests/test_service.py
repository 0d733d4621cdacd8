"""One engine service per project: the LSP server, the MCP server and the CLI at once."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError
from multiprocessing.connection import Client as RawClient
from pathlib import Path

import pytest
from lsprotocol import types as t
from mcp import Client, StdioServerParameters
from pytest_lsp import LanguageClient, client_capabilities, make_test_lsp_client

from codevm.api import API_METHODS
from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import ServiceUnavailable
from codevm.service import RemoteEngine, ServiceFiles, lock_held, open_engine, service_info, stop_service, wire
from codevm.service.protocol import receive, send
from tests.helpers import await_until, wait_for, wait_until
from tests.test_cli import codevm
from tests.test_mcp import _result

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
ENV["CODEVM_OLLAMA_HOST"] = "http://127.0.0.1:9"
ENV["CODEVM_SERVICE_IDLE_SECONDS"] = "60"


async def start_lsp(project: Path) -> LanguageClient:
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "codevm", "lsp", env=ENV)
    await client.initialize_session(t.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        workspace_folders=[t.WorkspaceFolder(uri=project.as_uri(), name="project")]))
    await wait_for(lambda: any(isinstance(p, t.WorkDoneProgressEnd)
                               for r in client.progress_reports.values() for p in r),
                   "the LSP server to finish its first index")
    return client


def mcp_params(project: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "codevm", "mcp", "--project", str(project)], env=ENV)


async def hover_text(lsp: LanguageClient, project: Path) -> str:
    app = project / "src/py/app.py"
    text = app.read_text()
    line = next(i for i, l in enumerate(text.splitlines()) if "total_area(" in l)
    col = text.splitlines()[line].index("total_area") + 2
    hover = await lsp.text_document_hover_async(t.HoverParams(
        t.TextDocumentIdentifier(app.as_uri()), t.Position(line, col)))
    return hover.contents.value


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = codevm(project, *args, env=ENV)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.asyncio
async def test_lsp_mcp_and_cli_at_once_share_one_memory(project: Path) -> None:
    cli(project, "index")
    service_pid = service_info(project)["pid"]
    lsp = await start_lsp(project)
    try:
        async with Client(mcp_params(project)) as mcp:
            # a note remembered through MCP shows in the editor's hover and in the CLI
            note = _result(await mcp.call_tool("remember", {
                "text": "total_area is in square metres", "path": "src/py/shapes.py",
                "symbol": "total_area"}))
            assert "square metres" in await hover_text(lsp, project)
            assert "square metres" in cli(project, "memory", "notes", "list").stdout

            # an unsaved edit reported by the editor is found by the assistant
            app = project / "src/py/app.py"
            edited = app.read_text() + "\n\ndef zebra_crossing_counter():\n    return 7\n"
            lsp.text_document_did_open(t.DidOpenTextDocumentParams(
                t.TextDocumentItem(app.as_uri(), "python", 1, app.read_text())))
            lsp.text_document_did_change(t.DidChangeTextDocumentParams(
                t.VersionedTextDocumentIdentifier(version=2, uri=app.as_uri()),
                [t.TextDocumentContentChangeWholeDocument(edited)]))

            async def found() -> bool:
                hits = _result(await mcp.call_tool("search_code", {"query": "zebra_crossing_counter"}))
                top = hits["items"][0] if hits["items"] else {}
                # the top hit's code is the unsaved buffer's (the file on disk has 6 lines)
                return top.get("path") == "src/py/app.py" and "return 7" in top.get("code", "")
            await await_until(found, "the edit to reach the assistant")

            # all at the same time: CLI processes, MCP calls and LSP requests together
            async def cli_search() -> str:
                return (await asyncio.to_thread(cli, project, "search", "zebra", "crossing")).stdout
            results = await asyncio.gather(
                *(cli_search() for _ in range(3)),
                *(mcp.call_tool("recall", {"query": "square metres"}) for _ in range(3)),
                *(lsp.workspace_symbol_async(t.WorkspaceSymbolParams(query="total_area"))
                  for _ in range(3)))
            assert all("src/py/app.py" in r for r in results[:3])
            assert all(_result(r)["items"][0]["id"] == note["note_id"] for r in results[3:6])
            assert all(r and r[0].name == "total_area" for r in results[6:])
            # one process served them all
            status = json.loads(cli(project, "status", "--json").stdout)
            assert status["process"] == service_pid == service_info(project)["pid"]
    finally:
        await lsp.shutdown_session()


@pytest.mark.asyncio
async def test_kill_9_of_the_service_and_every_client_recovers(project: Path) -> None:
    cli(project, "index")
    lsp = await start_lsp(project)
    try:
        async with Client(mcp_params(project)) as mcp:
            _result(await mcp.call_tool("remember", {"text": "first note from the assistant"}))
            cli(project, "memory", "notes", "add", "second note from the terminal")
            await lsp.workspace_execute_command_async(t.ExecuteCommandParams(
                "codevm.remember", [{"text": "third note from the editor"}]))
            pid = service_info(project)["pid"]

            os.kill(pid, signal.SIGKILL)
            files = ServiceFiles.of(project)
            wait_until(lambda: not lock_held(files), "the killed service to be gone")
            assert files.info.exists()  # it had no chance to clean up

            # every client's next request starts a new service and gets its answer
            recalled = _result(await mcp.call_tool("recall", {"query": "note"}))["items"]
            symbols = await lsp.workspace_symbol_async(t.WorkspaceSymbolParams(query="total_area"))
            listed = cli(project, "memory", "notes", "list").stdout
    finally:
        await lsp.shutdown_session()
    assert {n["text"] for n in recalled} == {"first note from the assistant",
                                            "second note from the terminal", "third note from the editor"}
    assert symbols and symbols[0].name == "total_area"
    assert all(n in listed for n in ("first note", "second note", "third note"))
    new_pid = service_info(project)["pid"]
    assert new_pid != pid


def test_clients_starting_at_the_same_instant_make_one_service(project: Path) -> None:
    with Engine(project) as engine:  # in-process: index without any service
        engine.index()
    assert not lock_held(ServiceFiles.of(project))
    starters = [subprocess.Popen([sys.executable, "-m", "codevm", "status", "--json"], cwd=project,
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in starters]
    assert all(p.returncode == 0 for p in starters), [err for _, err in outputs]
    pids = {json.loads(out)["process"] for out, _ in outputs}
    assert len(pids) == 1 and pids == {service_info(project)["pid"]}
    # the services that lost the race have left
    if Path("/proc").is_dir():
        def services() -> int:
            count = 0
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                count += b"codevm.service" in b" ".join(cmd) and str(project).encode() in cmd
            return count
        wait_until(lambda: services() == 1, "one service process")


def test_the_socket_and_key_are_private_and_a_wrong_key_is_refused(project: Path) -> None:
    # the service never imports the project's files as Python modules
    (project / "logging.py").write_text("raise SystemExit('the service imported a project file')\n")
    with RemoteEngine(project) as engine:
        engine.index()
        files = ServiceFiles.of(project)
        info = files.read_info()
        assert info["family"] == "AF_UNIX"  # nothing listens on a network address
        for path in (files.key, files.info, Path(info["address"])):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        with pytest.raises(AuthenticationError):
            RawClient(info["address"], "AF_UNIX", authkey=b"not the key")
        keyless = RawClient(info["address"], "AF_UNIX")
        assert keyless.recv_bytes().startswith(b"#CHALLENGE#")  # and nothing else
        keyless.send_bytes(b"garbage")
        assert keyless.recv_bytes() == b"#FAILURE#"
        with pytest.raises(EOFError):
            keyless.recv_bytes()
        if wire.LIGHT_HANDSHAKE:  # the quick path's own handshake: the same rules
            with pytest.raises(wire.Refused):
                wire.light_handshake(info["address"], "AF_UNIX", b"not the key")
            conn = wire.light_handshake(info["address"], "AF_UNIX", files.key.read_bytes())
            send(conn, ("info",))
            assert conn.poll(30) and receive(conn)[0] == "result"
            conn.close()
        assert engine.search("HandleHealth")[0].path == "src/native/server.go"  # still serving


def test_idle_exit_status_stop_and_stale_files(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ServiceFiles.of(project)
    cli(project, "index")
    shown = cli(project, "service", "status").stdout
    assert f"pid {service_info(project)['pid']}" in shown and "watching   yes" in shown
    assert "stopped the service" in cli(project, "service", "stop").stdout
    assert not lock_held(files) and not files.info.exists()
    assert "no service runs" in cli(project, "service", "status").stdout
    assert "no service was running" in cli(project, "service", "stop").stdout

    # files left by a crashed service: the next client replaces them
    files.info.write_text(json.dumps({"pid": 999999, "family": "AF_UNIX",
                                      "address": str(files.folder / "service.sock")}))
    (files.folder / "service.sock").write_text("not a socket")
    files.key.write_bytes(b"old key")
    assert "src/native/server.go" in cli(project, "search", "HandleHealth").stdout
    assert service_info(project)["pid"] != 999999

    # a service running other code (an upgrade, an edited install) is replaced by the next
    # client
    old = service_info(project)["pid"]
    info = json.loads(files.info.read_text())
    files.info.write_text(json.dumps({**info, "build": "another build"}))
    assert "src/native/server.go" in cli(project, "search", "HandleHealth").stdout
    assert service_info(project)["pid"] != old

    # a service with no client exits after its idle period
    stop_service(project)
    monkeypatch.setenv("CODEVM_SERVICE_IDLE_SECONDS", "1")
    with RemoteEngine(project) as engine:
        assert engine.status().files > 15
        time.sleep(1.5)
        assert lock_held(files)  # a connected client keeps it alive
    wait_until(lambda: not lock_held(files), "the idle service to exit", timeout=15)
    assert not files.info.exists()


def test_the_service_keeps_the_index_fresh_without_an_editor(project: Path) -> None:
    cli(project, "index")
    with RemoteEngine(project) as engine:
        wait_until(lambda: engine.status().watching, "the watcher")
        extra = project / "src/py/extra.py"
        extra.write_text("def freshly_written_helper():\n    return 42\n")
        wait_until(lambda: any(h.path == "src/py/extra.py"
                               for h in engine.search("freshly_written_helper")), "a new file")
        # a file's creation and its writing may come in two batches of the watcher
        wait_until(lambda: engine.status().pending_changes == 0, "nothing pending")
        assert engine.status().last_updated_at
        extra.unlink()
        wait_until(lambda: not engine.symbol("freshly_written_helper"), "a deleted file")
        # an edit saved with a new link to outside the project: the edit is not lost
        outside = project.parent / "outside_target.py"
        outside.write_text("def outside_function():\n    pass\n")
        (project / "src/py/shapes.py").write_text(
            (project / "src/py/shapes.py").read_text() + "\n\ndef edited_next_to_a_link():\n    pass\n")
        (project / "src/py/link_out.py").symlink_to(outside)
        wait_until(lambda: bool(engine.symbol("edited_next_to_a_link")), "the edit")
        # the link may come in a later batch of the watcher than the edit: none stays pending
        wait_until(lambda: engine.status().pending_changes == 0, "nothing pending")
        assert not engine.symbol("outside_function")
    # what changes while no service runs is caught up when the next one starts
    stop_service(project)
    (project / "src/py/late.py").write_text("def written_while_nobody_watched():\n    pass\n")
    with RemoteEngine(project) as engine:
        wait_until(lambda: bool(engine.symbol("written_while_nobody_watched")), "the catch-up")


def test_in_process_mode_and_a_project_another_process_holds(project: Path) -> None:
    settings = Settings(service=False)
    with open_engine(project, settings) as engine:
        assert isinstance(engine, Engine)
        engine.index()
        assert engine.status().process == os.getpid()
        # the database is ours: a service cannot open it, and says why in one line
        result = codevm(project, "status", env=ENV)
        assert result.returncode == 1
        assert "in use by another codevm process" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not lock_held(ServiceFiles.of(project))
    result = codevm(project, "status", "--json", env={**ENV, "CODEVM_SERVICE": "off"})
    assert result.returncode == 0 and not lock_held(ServiceFiles.of(project))


def test_clients_reach_every_engine_method_and_load_no_engine_module(project: Path) -> None:
    public = {n for n in dir(Engine) if not n.startswith("_") and callable(getattr(Engine, n))}
    assert public - {"open", "close", "monitor_changes"} == API_METHODS
    remote = {n for n in dir(RemoteEngine) if not n.startswith("_") and callable(getattr(RemoteEngine, n))}
    assert remote - {"close", "service_info"} == API_METHODS
    # a CLI client unpickles answers without the database, parsers or model client
    cli(project, "index")
    probe = ("import sys, runpy; sys.argv = ['codevm', 'search', 'total_area']\n"
             "try:\n    runpy.run_module('codevm', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('duckdb', 'tree_sitter', 'ollama') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=project, env=ENV, capture_output=True,
                            text=True, timeout=60)
    assert "src/py/shapes.py" in result.stdout and result.stdout.strip().endswith("[]"), result


class _Evil:
    """Unpickled, it would run a command: a service must refuse to build it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_the_service_unpickles_codevm_data_only(project: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with RemoteEngine(project) as engine:
        engine.index()
        files = ServiceFiles.of(project)
        info = files.read_info()
        conn = RawClient(info["address"], "AF_UNIX", authkey=files.key.read_bytes())
        conn.send_bytes(pickle.dumps(("call", "search", (_Evil(marker),), {})))
        with pytest.raises(EOFError):  # the service hangs up on a message that is not its own
            conn.recv_bytes()
        assert not marker.exists()
        assert engine.search("HandleHealth")[0].path == "src/native/server.go"  # still serving


def test_a_call_that_may_have_run_is_not_run_twice(project: Path) -> None:
    from tests.fake_ollama import FakeOllama

    cli(project, "index")
    asked = threading.Event()
    release = threading.Event()

    def slow_answer(_body: dict) -> dict:
        asked.set()
        release.wait(30)
        return {"content": "too late"}

    with FakeOllama() as fake:
        fake.script = [slow_answer, {"content": "a second answer"}]
        with RemoteEngine(project, Settings(ollama_host=fake.host)) as engine:
            pid = service_info(project)["pid"]
            killer = threading.Thread(
                target=lambda: asked.wait(30) and os.kill(pid, signal.SIGKILL), daemon=True)
            killer.start()
            try:
                # asking records the question: a retry on the next service would ask twice
                with pytest.raises(ServiceUnavailable, match="may or may not have been done") as failed:
                    engine.ask("what does total_area return?")
                assert "()" not in str(failed.value)  # an empty exception printed as "()"
            finally:
                release.set()
            assert len(fake.chat_requests()) == 1
            # a read is retried on a new service
            assert engine.search("HandleHealth")[0].path == "src/native/server.go"
            assert service_info(project)["pid"] != pid


def test_a_stopped_service_hangs_no_client(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "HANDSHAKE_TIMEOUT", 1.0)  # 10 s in use
    files = ServiceFiles.of(project)
    with RemoteEngine(project) as engine:
        engine.index()
        note = engine.add_note("kept through a SIGSTOP and a kill")
        pid = service_info(project)["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            # a call on an open connection, and a new client (`service status`)
            with pytest.raises(ServiceUnavailable, match=rf"pid {pid}\) stopped while running status.*kill -CONT"):
                engine.status()
            with pytest.raises(ServiceUnavailable, match=rf"pid {pid}\) did not answer within 1s.*stopped"):
                service_info(project)
            with pytest.raises(ServiceUnavailable, match=rf"pid {pid}\) did not answer within 1s"):
                wire.connect_once(files, light=True)  # the CLI's quick path
            assert time.monotonic() - started < 20
        finally:
            stop_service(project)  # SIGTERM, SIGCONT: it must not wait for a resume
        assert not lock_held(files)
    with RemoteEngine(project) as engine:
        assert [n.id for n in engine.list_notes()] == [note.id]
        assert service_info(project)["pid"] != pid


def test_a_service_whose_data_folder_is_deleted_exits(project: Path) -> None:
    import shutil

    with RemoteEngine(project) as engine:
        engine.index()
        pid = service_info(project)["pid"]
    shutil.rmtree(project / ".codevm")
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _state(pid) == "Z",
               "the service to notice and exit", timeout=15)
    assert "no service was running" in cli(project, "service", "stop").stdout
    with RemoteEngine(project) as engine:  # a new service, a new database
        assert engine.status().files == 0
        assert engine.index().parsed > 15
        assert service_info(project)["pid"] != pid


def test_a_service_whose_folder_was_made_again_leaves_the_new_services_files(project: Path) -> None:
    """rm -rf .codevm, then a command at once: the new service starts before the old one
    notices; the old one must not remove the new one's key and info as it exits (the new
    one then ran, holding the lock, with no client able to reach it: a 30 s failure)."""
    import shutil

    with RemoteEngine(project) as engine:
        engine.index()
        old = service_info(project)["pid"]
    os.kill(old, signal.SIGSTOP)  # it cannot notice before the new service is up
    try:
        shutil.rmtree(project / ".codevm")
        with RemoteEngine(project) as engine:
            assert engine.index().parsed > 15
            new = service_info(project)["pid"]
    finally:
        os.kill(old, signal.SIGCONT)
    wait_until(lambda: not Path(f"/proc/{old}").exists() or _state(old) == "Z",
               "the old service to notice and exit", timeout=15)
    files = ServiceFiles.of(project)
    assert files.key.exists() and files.info.exists()
    started = time.monotonic()
    status = json.loads(cli(project, "status", "--json").stdout)
    assert status["files"] > 15 and time.monotonic() - started < 10
    assert service_info(project)["pid"] == new


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""

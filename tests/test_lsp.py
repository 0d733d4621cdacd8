"""`codevm lsp` as a subprocess over real stdio, driven by pytest-lsp."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types as t
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.helpers import await_until, wait_for

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
ENV["CODEVM_OLLAMA_HOST"] = "http://127.0.0.1:9"  # no model: ask answers with pages


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "codevm", "lsp"],
                                              server_env=ENV))
async def client(lsp_client: LanguageClient, project: Path):
    params = t.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        workspace_folders=[t.WorkspaceFolder(uri=project.as_uri(), name="project")],
        initialization_options={"budget": "lots"})  # invalid: a message, then defaults
    await lsp_client.initialize_session(params)
    await wait_for(lambda: _progress_ended(lsp_client), "initial indexing")
    yield
    await lsp_client.shutdown_session()


def _progress_ended(client: LanguageClient) -> bool:
    return any(isinstance(p, t.WorkDoneProgressEnd) for reports in client.progress_reports.values()
               for p in reports)


def _uri(project: Path, rel: str) -> str:
    return (project / rel).as_uri()


@pytest.mark.asyncio
async def test_progress_messages_and_workspace_symbols(client: LanguageClient, project: Path) -> None:
    reports = next(iter(client.progress_reports.values()))
    assert isinstance(reports[0], t.WorkDoneProgressBegin) and isinstance(reports[-1], t.WorkDoneProgressEnd)
    assert any(isinstance(r, t.WorkDoneProgressReport) for r in reports)
    assert any("invalid settings" in m.message for m in client.messages)
    for name, path in (("total_area", "src/py/shapes.py"), ("HandleHealth", "src/native/server.go"),
                       ("greetLoudly", "src/jvm/Greeter.kt")):
        found = await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=name))
        assert found[0].name == name and found[0].location.uri == _uri(project, path)
    # names match; a dotted query matches qualified names
    method = await client.workspace_symbol_async(t.WorkspaceSymbolParams(query="circle.sc"))
    assert [(s.name, s.container_name) for s in method] == [("scale", "Circle")]
    assert "scale" not in {s.name for s in await client.workspace_symbol_async(t.WorkspaceSymbolParams(query="Circle"))}


@pytest.mark.asyncio
async def test_outline_definition_references_and_hover_with_a_note(client: LanguageClient, project: Path) -> None:
    app = _uri(project, "src/py/app.py")
    text = (project / "src/py/app.py").read_text()
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(app, "python", 1, text)))
    line = next(i for i, l in enumerate(text.splitlines()) if "total_area(" in l)
    col = text.splitlines()[line].index("total_area") + 2
    defs = await client.text_document_definition_async(t.DefinitionParams(
        t.TextDocumentIdentifier(app), t.Position(line, col)))
    assert defs[0].uri == _uri(project, "src/py/shapes.py") and defs[0].range.start.line == 20
    refs = await client.text_document_references_async(t.ReferenceParams(
        text_document=t.TextDocumentIdentifier(app), position=t.Position(line, col),
        context=t.ReferenceContext(include_declaration=True)))
    assert {r.uri for r in refs} >= {app, _uri(project, "src/py/shapes.py")}

    shapes = _uri(project, "src/py/shapes.py")
    outline = await client.text_document_document_symbol_async(t.DocumentSymbolParams(
        t.TextDocumentIdentifier(shapes)))
    circle = next(s for s in outline if s.name == "Circle")
    assert [c.name for c in circle.children] == ["area", "scale"]

    note = await client.workspace_execute_command_async(t.ExecuteCommandParams(
        "codevm.remember", [{"text": "sums lazily", "path": "src/py/shapes.py", "symbol": "total_area"}]))
    assert note["source"] == "lsp"
    hover = await client.text_document_hover_async(t.HoverParams(
        t.TextDocumentIdentifier(app), t.Position(line, col)))
    assert "def total_area" in hover.contents.value and "sums lazily" in hover.contents.value
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(
        shapes, "python", 1, (project / "src/py/shapes.py").read_text())))
    lenses = await client.text_document_code_lens_async(t.CodeLensParams(t.TextDocumentIdentifier(shapes)))
    assert [lens.command.title for lens in lenses] == ["1 note"] and lenses[0].range.start.line == 20
    actions = await client.text_document_code_action_async(t.CodeActionParams(
        text_document=t.TextDocumentIdentifier(shapes),
        range=t.Range(t.Position(20, 4), t.Position(20, 14)), context=t.CodeActionContext(diagnostics=[])))
    assert [(a.title, a.command) for a in actions] == [
        ("Ask codevm about this selection", "codevm.ask"), ("Remember a note about total_area", "codevm.remember")]
    assert "total_area" in actions[0].arguments[0]["question"] and actions[0].arguments[0]["uri"] == shapes


@pytest.mark.asyncio
async def test_unsaved_edits_are_found_and_saves_follow_the_disk(client: LanguageClient, project: Path) -> None:
    path = project / "src/py/shapes.py"
    uri = path.as_uri()
    text = path.read_text()
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
    end = len(text.splitlines())
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        t.VersionedTextDocumentIdentifier(uri=uri, version=2),
        [t.TextDocumentContentChangePartial(range=t.Range(t.Position(end, 0), t.Position(end, 0)),
                                           text="\n\ndef perimeter_of_hexagon(side):\n    return 6 * side\n")]))

    async def found(name: str) -> list:
        return await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=name))

    await await_until(lambda: found("perimeter_of_hexagon"), "the unsaved function")  # debounced
    assert (await found("perimeter_of_hexagon"))[0].location.uri == uri  # before any save
    assert "def perimeter_of_hexagon" not in path.read_text()

    path.write_text(text.replace("def total_area(shapes):", "def total_area_renamed(shapes):"))
    client.text_document_did_save(t.DidSaveTextDocumentParams(t.TextDocumentIdentifier(uri)))
    await await_until(lambda: _only(found("total_area"), "total_area_renamed"), "the saved rename")
    names = [s.name for s in await found("total_area")]
    assert names == ["total_area_renamed"] and not await found("perimeter_of_hexagon")


@pytest.mark.asyncio
async def test_commands_and_bad_params(client: LanguageClient, project: Path) -> None:
    run = client.workspace_execute_command_async
    hits = await run(t.ExecuteCommandParams("codevm.search", ["total area of shapes"]))
    assert hits[0]["path"] == "src/py/shapes.py"
    await run(t.ExecuteCommandParams("codevm.remember", [{"text": "areas are floats"}]))
    assert (await run(t.ExecuteCommandParams("codevm.recall", ["floats"])))[0]["text"] == "areas are floats"
    assert (await run(t.ExecuteCommandParams("codevm.status", [])))["files"] > 15
    assert "parsed" in await run(t.ExecuteCommandParams("codevm.reindex", []))
    answer = await run(t.ExecuteCommandParams("codevm.ask", ["How is the total area computed?"]))
    assert not answer["model_used"] and answer["pages"]
    await wait_for(lambda: any("No model answered" in m.message for m in client.messages), "the answer")

    with pytest.raises(Exception, match="empty"):
        await run(t.ExecuteCommandParams("codevm.search", [""]))
    with pytest.raises(Exception, match="outside the project"):
        await run(t.ExecuteCommandParams("codevm.remember", [{"text": "x", "path": "../../etc/passwd"}]))
    with pytest.raises(Exception, match="needs a question"):
        await run(t.ExecuteCommandParams("codevm.ask", []))
    with pytest.raises(Exception, match="at most 32,000"):
        await run(t.ExecuteCommandParams("codevm.search", ["x" * 10_000_000]))
    with pytest.raises(Exception, match="tags must be a list"):
        await run(t.ExecuteCommandParams("codevm.remember", [{"text": "x", "tags": "abc"}]))
    with pytest.raises(Exception, match="text must be text"):
        await run(t.ExecuteCommandParams("codevm.remember", [{"text": {"a": 1}}]))
    # still serving
    assert (await run(t.ExecuteCommandParams("codevm.status", [])))["chunks"] > 0

    # a file outside the workspace is nobody's business here, though the server could read it
    secret = project.parent / "secret_token_file.py"
    secret.write_text("def leaked_secret_function():\n    return 'hunter2'\n")
    outside = t.TextDocumentIdentifier(secret.as_uri())
    actions = await client.text_document_code_action_async(t.CodeActionParams(
        outside, t.Range(t.Position(0, 0), t.Position(1, 20)), t.CodeActionContext(diagnostics=[])))
    hover = await client.text_document_hover_async(t.HoverParams(outside, t.Position(0, 6)))
    defs = await client.text_document_definition_async(t.DefinitionParams(outside, t.Position(0, 6)))
    assert not actions and hover is None and not defs


@pytest.mark.asyncio
async def test_watched_files_and_close_keep_the_index_equal_to_the_disk(
        client: LanguageClient, project: Path) -> None:
    async def found(name: str) -> list:
        return await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=name))

    new = project / "src/py/fresh.py"
    new.write_text("def brand_new_on_disk():\n    return 1\n")
    client.workspace_did_change_watched_files(t.DidChangeWatchedFilesParams(
        [t.FileEvent(uri=new.as_uri(), type=t.FileChangeType.Created)]))
    await await_until(lambda: found("brand_new_on_disk"), "the created file")
    new.unlink()
    client.workspace_did_change_watched_files(t.DidChangeWatchedFilesParams(
        [t.FileEvent(uri=new.as_uri(), type=t.FileChangeType.Deleted)]))
    await await_until(lambda: _none(found("brand_new_on_disk")), "the deleted file")

    app = project / "src/py/app.py"
    text = app.read_text()
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(app.as_uri(), "python", 1, text)))
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=app.as_uri(), version=2),
        content_changes=[t.TextDocumentContentChangeWholeDocument(text=text + "\ndef never_saved():\n    pass\n")]))
    await await_until(lambda: found("never_saved"), "the unsaved function")
    client.text_document_did_close(t.DidCloseTextDocumentParams(t.TextDocumentIdentifier(app.as_uri())))
    await await_until(lambda: _none(found("never_saved")), "the closed buffer to be dropped")


async def _only(pending, name: str) -> bool:
    return [s.name for s in await pending] == [name]


async def _none(pending) -> bool:
    return not await pending




class RawClient:
    """`codevm lsp` over stdio with hand-written JSON-RPC: for what a polite client never
    sends, and for clients that go away without a word."""

    def __init__(self, project: Path, env: dict[str, str] | None = None):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "codevm", "lsp"], cwd=project, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env or ENV)
        self.buffer = b""
        self.seen: list[dict] = []  # every message read, replies and notifications

    def send(self, message: dict) -> None:
        import json

        body = json.dumps(message).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def pump(self, wait: float = 0.2) -> list[dict]:
        """The messages that arrive within `wait` seconds (also kept in `seen`)."""
        import json
        import select

        assert self.proc.stdout is not None
        if select.select([self.proc.stdout], [], [], wait)[0]:
            self.buffer += os.read(self.proc.stdout.fileno(), 65536)
        read = []
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if len(rest) < length:
                break
            message, self.buffer = json.loads(rest[:length]), rest[length:]
            read.append(message)
        self.seen += read
        return read

    def reply_to(self, msg_id: int, timeout: float = 30) -> dict:
        import time

        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while time.monotonic() < deadline:
            for message in self.seen[start:] + self.pump():
                if message.get("id") == msg_id and "method" not in message:
                    return message
            start = len(self.seen)
        raise AssertionError(f"no reply to request {msg_id}")

    def start(self, project: Path, *more_folders: Path, options: dict | None = None) -> None:
        folders = [{"uri": p.as_uri(), "name": p.name} for p in (project, *more_folders)]
        self.send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"rootUri": project.as_uri(), "capabilities": {}, "workspaceFolders": folders,
                              "initializationOptions": options}})
        assert "result" in self.reply_to(1, timeout=60)
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def hang_up(self) -> int:
        """Close the connection without a word (an editor that quits or crashes)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(30)


def test_every_request_gets_a_reply_whatever_its_params(project: Path) -> None:
    """pygls answered nothing to params it could not read, and the editor waited forever."""
    lsp = RawClient(project)
    uri = (project / "src/py/shapes.py").as_uri()
    try:
        lsp.start(project)
        position = {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 5}}
        for msg_id, message, code in [
            (2, {"method": "textDocument/hover", "params": []}, -32602),
            (3, {"method": "textDocument/hover", "params": "abc"}, -32602),
            (4, {"method": "textDocument/definition",
                 "params": {"textDocument": {"uri": uri}, "position": {"line": -1, "character": -5}}}, -32602),
            (5, {"method": "textDocument/hover", "params": position, "jsonrpc": "1.0"}, -32600),
            (6, {"method": "no/such/method", "params": {}}, -32601),
        ]:
            lsp.send({"jsonrpc": "2.0", "id": msg_id, **message})
            assert lsp.reply_to(msg_id)["error"]["code"] == code, message
        lsp.send({"jsonrpc": "2.0", "id": 7, "method": "textDocument/hover",
                  "params": {"textDocument": {"uri": uri}, "position": {"line": 99999, "character": 5}}})
        assert lsp.reply_to(7)["result"] is None
        lsp.send({"jsonrpc": "2.0", "id": 8, "method": "workspace/symbol", "params": {"query": "total_area"}})
        assert "result" in lsp.reply_to(8)  # still serving
    finally:
        lsp.close()


def test_each_workspace_folder_is_its_own_project(project: Path, tmp_path: Path) -> None:
    """Multi-root: every folder is indexed (its own index and service), each request goes
    to the folder of its document, and folders come and go with didChangeWorkspaceFolders."""
    import itertools

    from codevm.service import stop_service
    from tests.helpers import wait_until

    other, third = tmp_path / "other", tmp_path / "third"
    for root, name in ((other, "only_in_other"), (third, "only_in_third")):
        (root / ".git").mkdir(parents=True)
        (root / "lib.py").write_text(f"def {name}():\n    return 1\n\n\ndef use():\n    return {name}()\n")
    lsp = RawClient(project)
    ids = itertools.count(10)

    def request(method: str, params: object) -> dict:
        msg_id = next(ids)
        lsp.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return lsp.reply_to(msg_id)

    def found(query: str) -> list[str]:
        return [s["location"]["uri"] for s in request("workspace/symbol", {"query": query})["result"] or []]

    try:
        lsp.start(project, other)
        wait_until(lambda: bool(found("only_in_other")) and bool(found("total_area")), "both indexes", timeout=60)
        assert found("only_in_other") == [(other / "lib.py").as_uri()]
        assert found("total_area")[0] == (project / "src/py/shapes.py").as_uri()
        # a request on the second folder's file is answered from its own index
        definition = request("textDocument/definition", {"textDocument": {"uri": (other / "lib.py").as_uri()},
                                                         "position": {"line": 5, "character": 12}})["result"]
        assert [d["uri"] for d in definition] == [(other / "lib.py").as_uri()]
        status = request("workspace/executeCommand", {"command": "codevm.status", "arguments": [
            {"uri": other.as_uri()}]})["result"]
        assert status["root"] == str(other.resolve()) and status["files"] == 1
        assert status["folders"] == [str(project.resolve()), str(other.resolve())]
        assert (other / ".codevm").is_dir() and (project / ".codevm").is_dir()

        lsp.send({"jsonrpc": "2.0", "method": "workspace/didChangeWorkspaceFolders", "params": {"event": {
            "added": [{"uri": third.as_uri(), "name": "third"}], "removed": [{"uri": other.as_uri(), "name": "o"}]}}})
        wait_until(lambda: bool(found("only_in_third")), "the added folder's index", timeout=60)
        assert not found("only_in_other")
        shown = [m["params"]["message"] for m in lsp.seen if m.get("method") == "window/showMessage"]
        assert not any("not indexed" in m for m in shown), shown
    finally:
        lsp.close()
        for root in (other, third):
            stop_service(root)


def test_chat_streams_its_answer_and_continues_its_session(project: Path) -> None:
    """What an editor's chat view uses (README "Editors"): codevm.ask with a stream id sends
    the answer as codevm/answer notifications while the model writes, codevm/status while
    it reads, and returns the pages (with their URIs) and the picture of main context; the
    next question continues the session. codevm/progress reports indexing."""
    import itertools

    from tests.fake_ollama import FakeOllama
    from tests.helpers import wait_until

    with FakeOllama() as fake:
        fake.script = [{"content": "total_area in src/py/shapes.py:21-23 adds up the area of every shape it is "
                                   "given, one at a time, and returns the sum as a float.", "trickle": 0.01},
                       {"content": "It is called from src/py/app.py."}]
        lsp = RawClient(project, env={**ENV, "CODEVM_OLLAMA_HOST": fake.host})
        ids = itertools.count(10)

        def ask(**arguments: object) -> dict:
            msg_id = next(ids)
            lsp.send({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
                      "params": {"command": "codevm.ask", "arguments": [arguments]}})
            return lsp.reply_to(msg_id, timeout=60)

        def notes(method: str, stream: str, key: str) -> list[str]:
            return [m["params"][key] for m in lsp.seen
                    if m.get("method") == method and m["params"]["stream"] == stream]

        try:
            lsp.start(project, options={"notifications": True})
            wait_until(lambda: any(m.get("method") == "codevm/progress" and m["params"]["phase"] == "indexed"
                                   for m in lsp.pump() + lsp.seen), "indexing", timeout=60)
            assert any(m.get("method") == "codevm/progress" and m["params"]["phase"] == "indexing"
                       for m in lsp.seen)
            first = ask(question="How is the total area computed?", stream="s1", newSession=True)["result"]
            assert "".join(notes("codevm/answer", "s1", "text")) == first["answer"]
            assert len(notes("codevm/answer", "s1", "text")) > 3  # in pieces (the first 80 characters held)
            assert any("tokens of context" in m for m in notes("codevm/status", "s1", "message"))
            shapes = next(p for p in first["pages"] if p["path"] == "src/py/shapes.py")
            assert shapes["uri"] == (project / "src/py/shapes.py").as_uri()
            context = first["context"]
            assert context["used"] <= context["budget"]
            assert {s["name"] for s in context["sections"]} >= {"core memory", "working set"}
            assert not any(m.get("method") == "window/showMessage" and "adds up the area" in m["params"]["message"]
                           for m in lsp.seen)  # the chat view shows it: no message box as well
            second = ask(question="and where is it called?", stream="s2", session=first["session_id"])["result"]
            assert second["session_id"] == first["session_id"]
            assert "".join(notes("codevm/answer", "s2", "text")) == second["answer"]
            follow_up = fake.chat_requests()[-1]["body"]["messages"]
            assert "- How is the total area computed?" in follow_up[0]["content"]  # the earlier turn
        finally:
            lsp.close()


def test_opened_text_is_indexed_and_unsaved_text_leaves_with_the_editor(project: Path) -> None:
    """didOpen makes the editor the owner of a document's text (a restored unsaved buffer, a
    new file not yet saved); an editor that quits without didClose (Neovim :qa!) takes its
    unsaved text out of the shared index with it."""
    import itertools

    from codevm.service import RemoteEngine, stop_service
    from tests.helpers import wait_until

    lsp = RawClient(project)
    new_file = (project / "src/py/not_saved_yet.py").as_uri()
    shapes = project / "src/py/shapes.py"
    restored = shapes.read_text() + "\n\ndef restored_from_a_swap_file():\n    return 1\n"
    ids = itertools.count(10)

    def request(method: str, params: dict) -> dict:
        msg_id = next(ids)
        lsp.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return lsp.reply_to(msg_id)

    def symbols(query: str) -> list:
        return request("workspace/symbol", {"query": query})["result"] or []

    try:
        lsp.start(project)
        wait_until(lambda: bool(symbols("total_area")), "the first index", timeout=60)
        for uri, text in [(new_file, "def opened_not_saved():\n    return 2\n"), (shapes.as_uri(), restored)]:
            lsp.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": uri, "languageId": "python", "version": 1, "text": text}}})
        # no didChange: the opened text itself
        assert [s["location"]["uri"] for s in symbols("opened_not_saved")] == [new_file]
        assert [s["location"]["uri"] for s in symbols("restored_from_a_swap_file")] == [shapes.as_uri()]
        outline = request("textDocument/documentSymbol", {"textDocument": {"uri": new_file}})["result"]
        assert [s["name"] for s in outline] == ["opened_not_saved"]
        assert lsp.hang_up() == 0  # gone without didClose, shutdown or exit
    finally:
        lsp.close()
    with RemoteEngine(project) as engine:
        wait_until(lambda: not engine.symbol("restored_from_a_swap_file") and not engine.find_symbols(
            "opened_not_saved"), "the unsaved text to leave the index", timeout=30)
        assert engine.symbol("total_area")
    stop_service(project)


def test_an_edit_still_pending_at_shutdown_never_reaches_the_index(project: Path) -> None:
    """A didChange whose debounced update had not run when the editor shut down used to run
    after the shutdown's revert, and left text nobody saved in the shared index."""
    import time

    from codevm.service import RemoteEngine
    from tests.helpers import wait_until

    lsp = RawClient(project)
    shapes = project / "src/py/shapes.py"
    try:
        lsp.start(project)
        ids = iter(range(10, 1000))

        def indexed() -> bool:
            msg_id = next(ids)
            lsp.send({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/symbol", "params": {"query": "total_area"}})
            return bool(lsp.reply_to(msg_id).get("result"))

        wait_until(indexed, "the first index", timeout=60)
        doc = {"uri": shapes.as_uri(), "languageId": "python", "version": 1, "text": shapes.read_text()}
        lsp.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": doc}})
        edited = shapes.read_text() + "\n\ndef typed_just_before_shutdown():\n    return 3\n"
        lsp.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": doc["uri"], "version": 2}, "contentChanges": [{"text": edited}]}})
        lsp.send({"jsonrpc": "2.0", "id": 3, "method": "shutdown", "params": None})
        assert "error" not in lsp.reply_to(3)
        time.sleep(1.0)  # the debounce (0.15 s) is long past; the server still runs, no exit yet
        with RemoteEngine(project) as engine:
            assert not engine.symbol("typed_just_before_shutdown")
            assert engine.symbol("total_area")
        lsp.send({"jsonrpc": "2.0", "method": "exit", "params": None})
    finally:
        lsp.close()


def test_a_buffer_opened_while_the_workspace_is_indexed_keeps_its_text(project: Path) -> None:
    """The first index run reads every changed file from the disk; a buffer opened (or
    edited) meanwhile must not lose its text to it."""
    from tests.helpers import wait_until

    shapes = project / "src/py/shapes.py"
    restored = shapes.read_text() + "\n\ndef opened_during_the_first_index():\n    return 1\n"
    lsp = RawClient(project)
    try:
        lsp.start(project, options={"notifications": True})
        lsp.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": shapes.as_uri(), "languageId": "python", "version": 1, "text": restored}}})
        wait_until(lambda: any(m.get("method") == "codevm/progress" and m["params"]["phase"] == "indexed"
                               for m in lsp.pump() + lsp.seen), "indexing", timeout=60)
        lsp.send({"jsonrpc": "2.0", "id": 5, "method": "workspace/symbol",
                  "params": {"query": "opened_during_the_first_index"}})
        assert [s["location"]["uri"] for s in lsp.reply_to(5)["result"]] == [shapes.as_uri()]
    finally:
        lsp.close()

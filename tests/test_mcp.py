"""The MCP server through the SDK's in-memory client, and once over real stdio."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from codevm.config import Settings
from codevm.engine import Engine
from codevm.mcp_server.server import build_server
from tests.helpers import wait_until


def _result(result: Any) -> dict:
    assert not result.is_error, result.content
    return result.structured_content if result.structured_content is not None else json.loads(
        result.content[0].text)


def _error(result: Any) -> str:
    assert result.is_error
    return result.content[0].text


def run(project: Path, body: Any, host: str = "http://127.0.0.1:9") -> Any:
    async def main() -> Any:
        with Engine(project, Settings(ollama_host=host)) as engine:
            engine.index()
            async with Client(build_server(engine)) as client:
                return await body(client, engine)
    return anyio.run(main)


def test_every_tool(project: Path) -> None:
    async def body(client: Client, engine: Engine) -> None:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names >= {"search_code", "find_symbol", "find_references", "read_code", "outline",
                         "remember", "recall", "forget", "core_memory", "core_memory_update",
                         "conversation_search", "ask", "index_status", "reindex"}
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["search_code"].annotations.read_only_hint
        assert not tools["remember"].annotations.read_only_hint

        hits = _result(await client.call_tool("search_code", {"query": "total_area", "k": 2}))
        top = hits["items"][0]
        assert top["path"] == "src/py/shapes.py" and top["symbol"] == "total_area"
        assert hits["has_more"] and hits["next_offset"] == 2
        more = _result(await client.call_tool("search_code", {"query": "total_area", "k": 2, "offset": 2}))
        assert more["items"][0]["id"] not in {h["id"] for h in hits["items"]}

        code = _result(await client.call_tool("read_code", {"chunk_id": top["id"]}))
        assert "def total_area" in code["text"]
        lines = _result(await client.call_tool("read_code", {"path": "src/py/shapes.py", "start_line": 13,
                                                             "end_line": 14}))
        assert lines["text"].startswith("    def area") and lines["end_line"] == 14
        capped = _result(await client.call_tool("read_code", {"path": "src/py/shapes.py", "max_chars": 200}))
        assert capped["has_more"] and len(capped["text"]) <= 200

        defs = _result(await client.call_tool("find_symbol", {"name": "Circle.area"}))
        assert defs["items"][0]["qualified_name"] == "Circle.area"
        refs = _result(await client.call_tool("find_references", {"name": "total_area"}))
        assert any(r["path"] == "src/py/app.py" for r in refs["items"])
        out = _result(await client.call_tool("outline", {"path": "src/py/shapes.py"}))
        assert [s["qualified_name"] for s in out["symbols"]][:2] == ["Circle", "Circle.area"]

        note = _result(await client.call_tool("remember", {
            "text": "total_area is O(n)", "tags": ["perf"], "path": "src/py/shapes.py",
            "symbol": "total_area"}))
        assert note["source"] == "mcp"
        found = _result(await client.call_tool("recall", {"query": "total_area"}))
        assert found["items"][0]["id"] == note["id"]
        block = _result(await client.call_tool("core_memory_update", {"block": "project",
                                                                      "text": "Shapes demo"}))
        assert block["value"] == "Shapes demo"
        blocks = _result(await client.call_tool("core_memory", {}))
        assert {b["label"] for b in blocks["blocks"]} == {"project", "user", "task"}
        assert _result(await client.call_tool("forget", {"note_id": note["id"]}))["forgotten"]["id"] == note["id"]

        answer = _result(await client.call_tool("ask", {"question": "How is the total area computed?"}))
        assert not answer["model_used"] and "No local model answered" in answer["note"]
        assert any("total_area" in p["symbol"] for p in answer["pages"]["items"])
        past = _result(await client.call_tool("conversation_search", {"query": "total area"}))
        assert past["items"][0]["content"] == "How is the total area computed?"

        status = _result(await client.call_tool("index_status", {}))
        assert status["files"] > 15
        (engine.root / "src/py/extra.py").write_text("def brand_new_function():\n    return 1\n")
        progress: list[float] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        report = _result(await client.call_tool("reindex", {}, progress_callback=on_progress))
        assert report["parsed"] == 1 and progress == [1.0]  # one file: one report
        assert _result(await client.call_tool("find_symbol", {"name": "brand_new_function"}))["items"]

        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"codevm://core/project", "codevm://status"} <= resources
        text = (await client.read_resource("codevm://core/project")).contents[0].text
        assert text == "Shapes demo"
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"onboard", "explain_symbol"} <= prompts
        onboard = await client.get_prompt("onboard", {})
        assert "Shapes demo" in onboard.messages[0].content.text
        explain = await client.get_prompt("explain_symbol", {"name": "Circle"})
        assert "`Circle`" in explain.messages[0].content.text

    run(project, body)


def test_paths_and_bad_arguments_are_tool_errors_and_the_server_goes_on(project: Path) -> None:
    outside = project.parent / "secret.txt"
    outside.write_text("top secret")
    (project / "escape").symlink_to(outside)
    (project / "loop_a").symlink_to(project / "loop_b")
    (project / "loop_b").symlink_to(project / "loop_a")

    async def body(client: Client, engine: Engine) -> None:
        for args in ({"path": "../secret.txt"}, {"path": str(outside)}, {"path": "escape"}):
            assert "outside the project" in _error(await client.call_tool("read_code", args))
        assert "outside the project" in _error(await client.call_tool("outline", {"path": "../secret.txt"}))
        assert "cannot be resolved" in _error(await client.call_tool("outline", {"path": "loop_a"}))
        assert "outside the project" in _error(await client.call_tool(
            "remember", {"text": "x", "path": "/etc/passwd"}))
        assert "empty" in _error(await client.call_tool("search_code", {"query": "  "}))
        assert (await client.call_tool("search_code", {"query": "x", "k": 100000})).is_error
        assert "invalid line range" in _error(await client.call_tool(
            "read_code", {"path": "src/py/shapes.py", "start_line": 9, "end_line": 3}))
        assert "no chunk with id" in _error(await client.call_tool("read_code", {"chunk_id": 99999999}))
        assert "no note" in _error(await client.call_tool("forget", {"note_id": 424242}))
        assert "unknown core memory block" in _error(await client.call_tool(
            "core_memory_update", {"block": "secrets", "text": "x"}))
        assert (await client.call_tool("no_such_tool", {})).is_error
        # sizes and types past their caps: one line that says the cap, nothing stored or echoed
        huge = "x" * 10_000_000
        assert _error(await client.call_tool("search_code", {"query": huge})) == (
            "search_code: query: String should have at most 32000 characters")
        for args in ({"text": "x", "tags": [huge]}, {"text": huge}, {"text": "x", "path": huge}):
            message = _error(await client.call_tool("remember", args))
            assert "at most" in message and len(message) < 200, message
        assert not engine.list_notes()
        # still serving
        assert _result(await client.call_tool("search_code", {"query": "Circle"}))["items"]

    run(project, body)


def test_stdio_end_to_end_with_persistence_across_processes(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "codevm", "mcp", "--project",
                                                                  str(project)], env=env)

    async def first() -> int:
        async with Client(params) as client:
            report = _result(await client.call_tool("reindex", {}))
            assert report["parsed"] > 15
            hits = _result(await client.call_tool("search_code", {"query": "HandleHealth"}))
            assert hits["items"][0]["path"] == "src/native/server.go"
            note = _result(await client.call_tool("remember", {"text": "the health check is cheap",
                                                               "tags": ["ops"]}))
            return int(note["id"])

    async def second() -> list[dict]:
        async with Client(params) as client:
            return _result(await client.call_tool("recall", {"query": "health check"}))["items"]

    note_id = anyio.run(first)
    found = anyio.run(second)
    assert found[0]["id"] == note_id and found[0]["source"] == "mcp"


def test_streamable_http_on_loopback(project: Path) -> None:
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
    proc = subprocess.Popen([sys.executable, "-m", "codevm", "mcp", "--project", str(project),
                             "--transport", "http", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:  # the port, not a fixed time
            assert proc.poll() is None, "the server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, "the server to listen")

        token_file = project / ".codevm/mcp-token"
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600 and len(token) >= 40
        url = f"http://127.0.0.1:{port}/mcp"

        async def body(headers: dict[str, str]) -> dict:
            transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
            async with Client(transport) as client:
                return _result(await client.call_tool("index_status", {}))

        assert "files" in anyio.run(body, {"Authorization": f"Bearer {token}"})
        # another local user, without the token (or with a wrong one, or a foreign Host)
        for headers in ({}, {"Authorization": "Bearer " + "x" * len(token)}):
            refused = httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"]
        foreign = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                             headers={"Authorization": f"Bearer {token}", "Host": "evil.example:80"})
        assert foreign.status_code in (400, 403, 421)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # stdout stays clean: logs go to stderr
    assert token.encode() in err  # shown once, when it was made

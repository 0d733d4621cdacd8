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
from codevm.memory.budget import TokenEstimator
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


TOOLS = {"context_for", "search_code", "find_symbol", "find_references", "read_code", "remember", "recall",
         "forget", "core_memory", "ask", "index_status", "reindex"}


def test_every_tool(project: Path) -> None:
    async def body(client: Client, engine: Engine) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        assert tools["search_code"].annotations.read_only_hint
        assert not tools["remember"].annotations.read_only_hint

        hits = await client.call_tool("search_code", {"query": "total_area", "k": 2})
        found = _result(hits)
        top = found["items"][0]
        assert top["path"] == "src/py/shapes.py" and top["symbol"] == "total_area"
        assert "def total_area(shapes):" in top["code"] and "code" not in found["items"][1]  # the top hit's body
        assert found["has_more"] and found["next_offset"] == 2 and found["ranking"].startswith("keyword only")
        text = hits.content[0].text  # code as code under a path:lines header, not JSON
        assert "src/py/shapes.py:21-23 function total_area" in text and "```\ndef total_area(shapes):\n" in text
        more = _result(await client.call_tool("search_code", {"query": "total_area", "k": 2, "offset": 2}))
        assert more["items"][0]["id"] not in {h["id"] for h in found["items"]}

        code = _result(await client.call_tool("read_code", {"chunk_id": top["id"]}))
        assert "def total_area" in code["text"]
        lines = _result(await client.call_tool("read_code", {"path": "src/py/shapes.py", "start_line": 13,
                                                             "end_line": 14}))
        assert lines["text"].startswith("    def area") and lines["end_line"] == 14
        by_name = _result(await client.call_tool("read_code", {"symbol": "Circle.scale"}))
        assert by_name["start_line"] == 17 and by_name["text"].lstrip().startswith("def scale")

        defs = _result(await client.call_tool("find_symbol", {"name": "Circle.area"}))
        assert defs["items"][0]["qualified_name"] == "Circle.area" and "code" not in defs["items"][0]
        body_ = _result(await client.call_tool("find_symbol", {"name": "total_area", "include_body": True}))
        assert "return sum(s.area() for s in shapes)" in body_["items"][0]["code"]
        circle = _result(await client.call_tool("find_symbol", {"name": "Circle", "depth": 1}))
        assert [m["qualified_name"] for m in circle["items"][0]["members"]] == ["Circle.area", "Circle.scale"]
        miss = await client.call_tool("find_symbol", {"name": "totl_area"})
        assert _result(miss)["items"] == [] and "total_area" in _result(miss)["suggestions"]
        assert "Did you mean: total_area" in miss.content[0].text
        outline = _result(await client.call_tool("find_symbol", {"path": "src/py/shapes.py"}))
        assert [s["qualified_name"] for s in outline["items"]][:2] == ["Circle", "Circle.area"]
        refs = _result(await client.call_tool("find_references", {"name": "total_area"}))
        assert any(r["path"] == "src/py/app.py" for r in refs["items"])
        assert "total_area" in _result(await client.call_tool("find_references", {"name": "total_are"}))["suggestions"]

        context = await client.call_tool("context_for", {"task": "How is the total area of shapes computed?",
                                                         "max_tokens": 1000})
        pages = _result(context)["pages"]
        assert any(p["symbol"] == "total_area" and "def total_area" in p["code"] for p in pages)
        assert [p["relevance"] for p in pages] == sorted((p["relevance"] for p in pages), reverse=True)
        assert _result(context)["tokens"] <= 1000

        note = _result(await client.call_tool("remember", {
            "text": "total_area is O(n)", "tags": ["perf"], "path": "src/py/shapes.py",
            "symbol": "total_area"}))
        assert engine.list_notes()[0].source == "mcp"
        recalled = _result(await client.call_tool("recall", {"query": "total_area"}))
        assert recalled["items"][0]["id"] == note["note_id"] and recalled["items"][0]["symbol"] == "total_area"
        blocks = _result(await client.call_tool("core_memory", {"block": "project", "text": "Shapes demo"}))
        assert {b["label"]: b["value"] for b in blocks["blocks"]}["project"] == "Shapes demo"
        read = _result(await client.call_tool("core_memory", {}))
        assert {b["label"] for b in read["blocks"]} == {"project", "user", "task"}
        assert _result(await client.call_tool("forget", {"note_id": note["note_id"]}))["note_id"] == note["note_id"]
        assert not engine.list_notes()

        answer = _result(await client.call_tool("ask", {"question": "How is the total area computed?"}))
        assert answer["answer"] == "" and "No local model answered" in answer["note"]
        assert "context_for" in answer["note"]
        past = _result(await client.call_tool("recall", {"query": "total area", "source": "conversations"}))
        assert past["items"][0]["text"] == "How is the total area computed?" and past["items"][0]["role"] == "user"

        status = _result(await client.call_tool("index_status", {}))
        assert status["files"] > 15 and "root" not in status and "detail" not in status  # no paths, no pid
        detail = _result(await client.call_tool("index_status", {"detail": True}))["detail"]
        assert detail["root"] == str(engine.root) and "service_pid" in detail
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
        assert "outside the project" in _error(await client.call_tool("find_symbol", {"path": "../secret.txt"}))
        assert "cannot be resolved" in _error(await client.call_tool("find_symbol", {"path": "loop_a"}))
        assert "outside the project" in _error(await client.call_tool(
            "remember", {"text": "x", "path": "/etc/passwd"}))
        assert "empty" in _error(await client.call_tool("search_code", {"query": "  "}))
        assert (await client.call_tool("search_code", {"query": "x", "k": 100000})).is_error
        assert "invalid line range" in _error(await client.call_tool(
            "read_code", {"path": "src/py/shapes.py", "start_line": 9, "end_line": 3}))
        assert "no chunk with id" in _error(await client.call_tool("read_code", {"chunk_id": 99999999}))
        assert "no note" in _error(await client.call_tool("forget", {"note_id": 424242}))
        assert _error(await client.call_tool("core_memory", {"block": "secrets", "text": "x"})).startswith(
            "core_memory: block: Input should be 'project', 'user' or 'task'")  # an enum, in one line
        assert "give both block and text" in _error(await client.call_tool("core_memory", {"block": "task"}))
        assert "needs a name, a path" in _error(await client.call_tool("find_symbol", {}))
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
            return int(note["note_id"])

    async def second() -> list[dict]:
        async with Client(params) as client:
            return _result(await client.call_tool("recall", {"query": "health check"}))["items"]

    note_id = anyio.run(first)
    found = anyio.run(second)
    assert found[0]["id"] == note_id and found[0]["text"] == "the health check is cheap"


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


SNAPSHOT = Path(__file__).parent / "fixtures" / "mcp_tools.json"
TOOLS_LIST_CHARS = 10_000  # 2.5k tokens at 4 characters a token (2,374 Qwen2.5 tokens when written)


def test_tool_surface_schemas_and_exact_caps_over_stdio(project: Path) -> None:
    """Through the SDK's client over real stdio: tools/list is the snapshot kept in the repo
    (UPDATE_SNAPSHOTS=1 rewrites it: a change to the surface is a visible diff), every tool
    publishes an output schema and every result matches it, and max_chars holds on what is
    sent, the text and the structured content alike."""
    import jsonschema

    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "codevm", "mcp", "--project",
                                                                  str(project)], env=env)

    async def body() -> None:
        async with Client(params) as client:
            from codevm import __version__

            assert client.server_info is not None and client.server_info.version == __version__
            assert "context_for" in (client.instructions or "")  # the workflow, taught
            listed = (await client.list_tools()).tools
            surface = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed]
            wire = json.dumps(surface, separators=(",", ":"))
            if os.environ.get("UPDATE_SNAPSHOTS"):
                SNAPSHOT.write_text(json.dumps(surface, indent=1) + "\n")
            assert surface == json.loads(SNAPSHOT.read_text()), "the MCP surface changed: UPDATE_SNAPSHOTS=1"
            assert len(wire) <= TOOLS_LIST_CHARS, len(wire)
            schemas = {t.name: t.output_schema for t in listed}
            assert all(schemas.values()), [n for n, s in schemas.items() if not s]
            await client.call_tool("reindex", {})
            calls = [("search_code", {"query": "area of shapes"}), ("find_symbol", {"name": "Circle", "depth": 1}),
                     ("find_symbol", {"path": "src/py/shapes.py"}), ("find_references", {"name": "area"}),
                     ("read_code", {"path": "src/py/shapes.py"}), ("context_for", {"task": "circle area"}),
                     ("recall", {"query": "x"}), ("core_memory", {}), ("index_status", {})]
            for name, args in calls:  # every result matches its schema
                result = await client.call_tool(name, args)
                assert not result.is_error, (name, result.content)
                jsonschema.validate(result.structured_content, schemas[name])
            for name, args in calls[:6]:
                for cap in (200, 300, 700, 1500):
                    if name == "context_for":
                        result = await client.call_tool(name, {**args, "max_tokens": 500 + cap})
                        limit = TokenEstimator().chars(500 + cap)
                    else:
                        result = await client.call_tool(name, {**args, "max_chars": cap})
                        limit = cap
                    sent_json = json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))
                    assert len(result.content[0].text) <= limit and len(sent_json) <= limit, (name, cap)
            # paging on from a capped read gives the rest, line for line
            first = _result(await client.call_tool("read_code", {"path": "src/py/shapes.py", "max_chars": 300}))
            rest = _result(await client.call_tool("read_code", {"path": "src/py/shapes.py",
                                                                "start_line": first["next_start_line"]}))
            whole = (project / "src/py/shapes.py").read_text().rstrip("\n")
            assert first["text"] + "\n" + rest["text"] == whole

    anyio.run(body)

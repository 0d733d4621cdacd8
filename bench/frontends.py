"""Latency through the front ends on an indexed corpus (default: the standard library).
Prints one JSON object.

MCP: time from starting `codevm mcp` (stdio) to the first `search_code` answer (the
engine service included), and `search_code` p50/p95 over that stdio session. LSP: `workspace/symbol` p50/p95
over stdio against `codevm lsp`, and the time from a `didChange` that adds a function to
`workspace/symbol` returning it (debounce included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsprotocol import types as t  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

from bench.index_speed import bench_queries, copy_corpus  # noqa: E402
from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.service import stop_service  # noqa: E402


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return (round(statistics.median(samples), 1),
            round(samples[max(0, int(len(samples) * 0.95) - 1)], 1))


async def mcp_figures(root: Path, queries: list[str]) -> dict:
    params = StdioServerParameters(command=sys.executable, args=["-m", "codevm", "mcp", "--project",
                                                                  str(root)], env=dict(os.environ))
    started = time.perf_counter()
    async with Client(params) as client:  # the server starts the engine service
        await client.call_tool("search_code", {"query": queries[0], "k": 10})
        first = time.perf_counter() - started
        await client.call_tool("search_code", {"query": "warm up", "k": 10})
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            result = await client.call_tool("search_code", {"query": q, "k": 10})
            latencies.append((time.perf_counter() - t0) * 1000)
            assert not result.is_error, result.content
    p50, p95 = percentiles(latencies)
    return {"mcp_start_to_first_search_s": round(first, 2), "mcp_search_code_p50_ms": p50,
            "mcp_search_code_p95_ms": p95}


async def indexed_lsp_client(root: Path, timeout: float = 120) -> LanguageClient:
    """`codevm lsp` over stdio with `root` as its workspace, once its indexing has ended."""
    client = LanguageClient("codevm-bench", "1")
    ended = asyncio.Event()

    @client.feature(t.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def create(params: t.WorkDoneProgressCreateParams) -> None:
        return None

    @client.feature(t.PROGRESS)
    def progress(params: t.ProgressParams) -> None:
        if isinstance(params.value, dict) and params.value.get("kind") == "end":
            ended.set()

    await client.start_io(sys.executable, "-m", "codevm", "lsp")
    await client.initialize_async(t.InitializeParams(
        capabilities=t.ClientCapabilities(window=t.WindowClientCapabilities(work_done_progress=True)),
        workspace_folders=[t.WorkspaceFolder(uri=root.as_uri(), name="bench")]))
    client.initialized(t.InitializedParams())
    await asyncio.wait_for(ended.wait(), timeout)
    return client


async def lsp_figures(root: Path, names: list[str]) -> dict:
    client = await indexed_lsp_client(root)
    latencies = []
    for name in names:
        t0 = time.perf_counter()
        await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=name))
        latencies.append((time.perf_counter() - t0) * 1000)
    files = sorted(root.rglob("*.py"))
    target = next((p for p in files if p.stat().st_size > 2000), max(files, key=lambda p: p.stat().st_size))
    text = target.read_text()
    uri = target.as_uri()
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
    end = len(text.splitlines())
    edits = []
    for i in range(5):
        marker = f"bench_lsp_marker_{i}"
        t0 = time.perf_counter()
        client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            content_changes=[t.TextDocumentContentChangePartial(
                range=t.Range(t.Position(end, 0), t.Position(end, 0)),
                text=f"\ndef {marker}():\n    return {i}\n")]))
        end += 3
        while not await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=marker)):
            assert time.perf_counter() - t0 < 10, "the edit never became visible"
            await asyncio.sleep(0.01)
        edits.append((time.perf_counter() - t0) * 1000)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    p50, p95 = percentiles(latencies)
    return {"lsp_workspace_symbol_p50_ms": p50, "lsp_workspace_symbol_p95_ms": p95,
            "lsp_edit_to_symbol_ms_median": round(statistics.median(edits), 1),
            "lsp_edit_to_symbol_ms_max": round(max(edits), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    os.environ["CODEVM_OLLAMA_HOST"] = "http://127.0.0.1:9"
    work, root = copy_corpus(Path(args.path).resolve())
    try:
        with Engine(root, Settings()) as engine:
            engine.index()
            queries = bench_queries(engine, args.queries)
            symbols = [r.name for r in engine.find_symbols("", limit=1000)]
        rng = random.Random(7)
        names = [rng.choice(symbols)[: rng.randint(3, 8)] for _ in range(args.queries)]
        out = {"corpus": args.path}
        out.update(asyncio.run(mcp_figures(root, queries)))
        stop_service(root)  # the LSP server starts its own
        out.update(asyncio.run(lsp_figures(root, names)))
        print(json.dumps(out))
    finally:
        stop_service(root)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

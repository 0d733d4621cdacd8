"""What an editor waits for on a big repository: LSP request latency through `codevm lsp`
and its engine service (the default set-up), and how soon an unsaved new file is found.
Prints one JSON object.

On a checkout of django (the SWE-bench mirror; any folder with --tree): the workspace is
indexed first (not timed), then a pygls client over stdio, as an editor does it, opens
files and asks, at identifiers picked at random in them: textDocument/definition,
references, hover and documentSymbol, and workspace/symbol for name prefixes. Then it
opens new files that exist only in the editor (didOpen, never saved) and times until
workspace/symbol finds the function each defines. Timings are wall-clock per request,
p50/p95 per method and over all; CPU seconds of the server and its service are given
beside, with the load average.

    python bench/editor_latency.py [--tree DIR] [--files 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from localization import checkout, mirror_for  # noqa: E402
from lsprotocol import types as t  # noqa: E402

from bench.frontends import indexed_lsp_client  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.service import stop_service  # noqa: E402
from codevm.service.client import service_info  # noqa: E402

IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{2,}\b")


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": round(statistics.median(s), 1),
            "p95_ms": round(s[max(0, int(len(s) * 0.95) - 1)], 1), "max_ms": round(s[-1], 1)}


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def measure(root: Path, files: list[Path], rng: random.Random) -> dict:
    client = await indexed_lsp_client(root, timeout=1800)
    server_pid = client._server.pid  # type: ignore[attr-defined]
    info = service_info(root) or {}
    service_pid = int(info.get("pid", 0))
    cpu0 = cpu_seconds(server_pid) + cpu_seconds(service_pid)
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {"definition": [], "references": [], "hover": [], "documentSymbol": [],
                                     "workspace/symbol": []}

    async def timed(method: str, call):  # noqa: ANN001
        t0 = time.perf_counter()
        result = await call
        times[method].append((time.perf_counter() - t0) * 1000)
        return result

    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        uri = path.as_uri()
        client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
        doc = t.TextDocumentIdentifier(uri)
        await timed("documentSymbol", client.text_document_document_symbol_async(t.DocumentSymbolParams(doc)))
        lines = text.splitlines()
        spots = [(i, m.start() + 1, m.group(0)) for i, line in enumerate(lines) for m in IDENT.finditer(line)
                 if not line.lstrip().startswith("#")]
        for line, col, word in rng.sample(spots, min(3, len(spots))):
            at = t.Position(line, col)
            await timed("definition", client.text_document_definition_async(t.DefinitionParams(doc, at)))
            await timed("hover", client.text_document_hover_async(t.HoverParams(doc, at)))
            await timed("references", client.text_document_references_async(t.ReferenceParams(
                text_document=doc, position=at, context=t.ReferenceContext(include_declaration=True))))
            await timed("workspace/symbol", client.workspace_symbol_async(
                t.WorkspaceSymbolParams(query=word[: rng.randint(3, max(3, len(word)))])))
        client.text_document_did_close(t.DidCloseTextDocumentParams(doc))

    unsaved = []
    for i in range(10):
        name = f"opened_never_saved_{i}_{rng.randrange(10**6)}"
        uri = (root / "django" / f"bench_unsaved_{i}.py").as_uri()
        t0 = time.perf_counter()
        client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(
            uri, "python", 1, f"def {name}():\n    return {i}\n")))
        while not await client.workspace_symbol_async(t.WorkspaceSymbolParams(query=name)):
            assert time.perf_counter() - t0 < 10, "the opened file was never found"
        unsaved.append((time.perf_counter() - t0) * 1000)
        client.text_document_did_close(t.DidCloseTextDocumentParams(t.TextDocumentIdentifier(uri)))
    cpu = cpu_seconds(server_pid) + cpu_seconds(service_pid) - cpu0
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    every = [x for samples in times.values() for x in samples]
    return {"requests": percentiles(every), "by_method": {m: percentiles(s) for m, s in times.items()},
            "unsaved_new_file_found_ms": {"median": round(statistics.median(unsaved), 1),
                                          "max": round(max(unsaved), 1)},
            "server_and_service_cpu_s": round(cpu, 2), "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="a project folder (default: django from the SWE-bench mirror)")
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".cache" / "editor-latency")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["CODEVM_OLLAMA_HOST"] = "http://127.0.0.1:9"
    root = args.tree
    if root is None:
        root = args.work / "django"
        git_dir = mirror_for(args.mirrors, "django/django")
        commit = os.popen(f"git --git-dir={git_dir} rev-parse HEAD").read().strip()
        checkout(git_dir, root, args.work / "django.json", commit)
    root = root.resolve()
    t0, c0 = time.perf_counter(), time.process_time()
    with Engine(root) as engine:  # indexed once (kept for later runs), not timed below
        report = engine.index()
        files_indexed = engine.status().files
    indexed = {"seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
               "parsed_now": report.parsed, "files": files_indexed}
    python = sorted(p for p in root.rglob("*.py") if ".codevm" not in p.parts and p.stat().st_size > 1500)
    runs = []
    try:
        for run in range(args.repeat):
            rng = random.Random(run)
            runs.append(asyncio.run(measure(root, rng.sample(python, min(args.files, len(python))), rng)))
    finally:
        stop_service(root)
    print(json.dumps({"tree": str(root), "index": indexed, "runs": runs,
                      "p95_ms_per_run": [r["requests"]["p95_ms"] for r in runs],
                      "unsaved_found_max_ms_per_run": [r["unsaved_new_file_found_ms"]["max"] for r in runs]}))


if __name__ == "__main__":
    main()

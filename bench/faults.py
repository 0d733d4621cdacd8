"""A repeatable fault campaign. Prints one JSON object: for each class of fault, how many
were tried, how many codevm survived (a clear one-line error or a right answer, within its
documented time limits), crashes, hangs and committed writes lost.

Classes (each on a copy of tests/fixtures/polyglot):
- kill9_index: kill -9 of the service at a random point of an index run; the next run
  must finish and the index must hold every file.
- kill9_writes: three processes add notes through the service; kill -9 of the service at
  a random point; every note a client was told was saved must still be there.
- stopped_service: SIGSTOP of the service; `codevm status` must fail in one line within
  its handshake limit, `codevm service stop` must end it, the next command must work.
- model: a dead, hanging, trickling, babbling, failing or truncating model server, and one
  that hangs before the question: `ask` must end within its limits with one line.
- oversized: every capped argument of every door (the Engine API, the CLI, MCP, LSP) one
  past its cap, and wrong types: each must get one line (or an error reply), nothing stored.
- odd_files: file names with tabs, newlines, `\\N`, quotes, bytes that are not UTF-8, links
  before their targets, identifiers in many scripts: the index run must finish.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from codevm.api import LIST_CAPS, TEXT_CAPS  # noqa: E402
from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.errors import CodevmError  # noqa: E402
from codevm.service import RemoteEngine, service_info, stop_service  # noqa: E402
from tests.conftest import ODD_NAMES, add_bad_files  # noqa: E402
from tests.fake_ollama import FakeOllama  # noqa: E402

FIXTURE = HERE.parent / "tests" / "fixtures" / "polyglot"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}


class Tally:
    def __init__(self) -> None:
        self.classes: dict[str, dict[str, Any]] = {}

    def record(self, name: str, survived: bool, crash: bool = False, hang: bool = False,
               lost: int = 0, note: str = "") -> None:
        c = self.classes.setdefault(name, {"tried": 0, "survived": 0, "crashes": 0, "hangs": 0,
                                           "lost_writes": 0, "failures": []})
        c["tried"] += 1
        c["survived"] += survived
        c["crashes"] += crash
        c["hangs"] += hang
        c["lost_writes"] += lost
        if not survived and len(c["failures"]) < 5:
            c["failures"].append(note[:300])


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codevm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def one_line(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in text


def fresh(work: Path, name: str) -> Path:
    root = work / name
    shutil.copytree(FIXTURE, root)
    (root / ".git").mkdir(exist_ok=True)
    return root


def within(seconds: float, fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value), ("error", exception) or ("hang", None) after `seconds`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - classified by the caller
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return "hang", None
    return ("ok", box["ok"]) if "ok" in box else ("error", box["error"])


# -- classes -------------------------------------------------------------------------------
def kill9_index(work: Path, tally: Tally, n: int, rng: random.Random) -> None:
    root = fresh(work, "kill9-index")
    expected = None
    for i in range(n):
        shutil.rmtree(root / ".codevm", ignore_errors=True)
        if i % 2:  # a second half of runs kills an incremental run, not a first one
            cli(root, "index")
            for k in range(30):
                (root / f"src/py/gen_{i}_{k}.py").write_text(f"def generated_{i}_{k}():\n    return {k}\n")
        proc = subprocess.Popen([sys.executable, "-m", "codevm", "index"], cwd=root, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.0))
        info = service_info(root)
        if info:
            os.kill(int(info["pid"]), signal.SIGKILL)
        proc.wait(60)
        again = cli(root, "index")
        status = cli(root, "status", "--json")
        try:
            files = json.loads(status.stdout)["files"]
        except ValueError:
            files = -1
        on_disk = sum(1 for p in root.rglob("*") if p.is_file() and ".codevm" not in p.parts
                      and ".git" not in p.parts)
        expected = expected or files
        ok = again.returncode == 0 and files > 15 and files >= on_disk - 2
        tally.record("kill9_index", ok, crash="Traceback" in again.stderr,
                     note=f"rc {again.returncode} files {files}/{on_disk}: {again.stderr[-200:]}")
    stop_service(root)


WRITER = """
import sys
from pathlib import Path
from codevm.service import RemoteEngine
root, tag = Path(sys.argv[1]), sys.argv[2]
with RemoteEngine(root) as engine:
    for i in range(1_500):  # on past the kill: a new service takes over
        try:
            note = engine.add_note(f"{tag} note {i}")
        except Exception:
            break
        print(note.id, flush=True)
"""


def kill9_writes(work: Path, tally: Tally, n: int, rng: random.Random) -> None:
    root = fresh(work, "kill9-writes")
    cli(root, "index")
    for _ in range(n):
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), f"w{w}"], env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                   for w in range(3)]
        deadline = time.monotonic() + 60
        while service_info(root) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the writers' service is starting
        time.sleep(rng.uniform(0.2, 2.0))
        info = service_info(root)
        if info:
            os.kill(int(info["pid"]), signal.SIGKILL)
        acknowledged: set[int] = set()
        for proc in writers:
            out, _ = proc.communicate(timeout=120)
            acknowledged.update(int(line) for line in out.split() if line.isdigit())
        stop_service(root)  # the writers' reconnects may have started one
        with Engine(root, Settings(service=False, embedder="off")) as engine:  # every note, no cap
            kept = {row[0] for row in engine.store.cursor().execute("SELECT id FROM notes").fetchall()}
        lost = len(acknowledged - kept)
        tally.record("kill9_writes", lost == 0 and bool(acknowledged) and info is not None, lost=lost,
                     note=f"{len(acknowledged)} acknowledged, {lost} lost, killed: {info is not None}")
        counts = tally.classes["kill9_writes"]
        counts["acknowledged_writes"] = counts.get("acknowledged_writes", 0) + len(acknowledged)
    stop_service(root)


def stopped_service(work: Path, tally: Tally, n: int) -> None:
    root = fresh(work, "stopped")
    cli(root, "index")
    for _ in range(n):
        cli(root, "status")  # a service runs
        info = service_info(root)
        pid = int(info["pid"]) if info else 0
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            status = cli(root, "status", timeout=60)
            hung = False
        except subprocess.TimeoutExpired:
            status, hung = None, True
        took = time.monotonic() - started
        stopped = cli(root, "service", "stop", timeout=90)
        after = cli(root, "search", "total_area")
        ok = (not hung and status is not None and status.returncode != 0 and one_line(status.stderr)
              and took < 30 and stopped.returncode == 0 and after.returncode == 0)
        tally.record("stopped_service", ok, hang=hung,
                     note=f"status {took:.0f}s {status.stderr if status else 'hung'}; stop {stopped.stdout}")
    stop_service(root)


MODEL_FAULTS: dict[str, dict[str, Any]] = {
    "hangs before the first token": {"content": "late", "wait_first": 4},
    "trickles a token every 3 s": {"content": "one two three four five six", "trickle": 3},
    "babbles a schema": {"content": '<tools>{"type": "function", "function": {"name": "search_code"}}</tools>'},
    "fails with 500": {"error": "out of memory", "status": 500},
    "is cut at its limit": {"content": "total_area adds", "done_reason": "length"},
    "prints a raw call": {"content": 'send_message\n{"message": "in src/py/shapes.py"}'},
    "sends an empty reply": {"content": ""},
}


def model(work: Path, tally: Tally, rounds: int) -> None:
    root = fresh(work, "model")
    limits = {"model_connect_timeout": 1.0, "model_first_token_timeout": 2.0, "model_idle_timeout": 1.5}
    with Engine(root, Settings(service=False, embedder="off")) as engine:
        engine.index()
        for _ in range(rounds):
            for backend in ("ollama", "openai"):
                with FakeOllama() as fake:
                    where = ({"ollama_host": fake.host} if backend == "ollama"
                             else {"model_url": fake.host + "/v1", "ollama_host": "http://127.0.0.1:9"})
                    cases = dict(MODEL_FAULTS)
                    for name, reply in cases.items():
                        fake.script = [dict(reply)]
                        settings = Settings(service=False, embedder="off", **where, **limits)
                        outcome, value = within(30, lambda s=settings: engine.ask(  # type: ignore[misc]
                            "How is the total area computed?", new_session=True, settings=s))
                        ok = outcome == "ok" or (outcome == "error" and isinstance(value, CodevmError)
                                                 and one_line(str(value)))
                        tally.record("model", ok, crash=outcome == "error" and not isinstance(value, CodevmError),
                                     hang=outcome == "hang", note=f"{backend} {name}: {outcome} {value!r}"[:300])
                    fake.metadata_wait = 33  # hangs before the question (the limit is 30 s)
                    settings = Settings(service=False, embedder="off", **where, **limits)
                    outcome, value = within(45, lambda s=settings: engine.ask(  # type: ignore[misc]
                        "How is the total area computed?", new_session=True, settings=s))
                    ok = outcome == "ok" and "hangs" in value.notice
                    tally.record("model", ok, hang=outcome == "hang",
                                 note=f"{backend} metadata hang: {outcome} {value!r}"[:300])
            for name, host in (("dead", "http://127.0.0.1:9"), ("unroutable", "http://10.255.255.1:11434")):
                settings = Settings(service=False, embedder="off", ollama_host=host, **limits)
                outcome, value = within(30, lambda s=settings: engine.ask(  # type: ignore[misc]
                    "How is the total area computed?", new_session=True, settings=s))
                ok = outcome == "ok" and bool(value.notice) and bool(value.pages)
                tally.record("model", ok, hang=outcome == "hang", note=f"{name}: {outcome} {value!r}"[:300])


def oversized(work: Path, tally: Tally) -> None:
    root = fresh(work, "oversized")
    huge = "x" * 10_000_000
    calls: list[tuple[str, Callable[[Engine], Any]]] = []
    over = {key: "y" * (cap + 1) for key, cap in TEXT_CAPS.items() if "." not in key}
    for method, arguments in [
        ("search", ["query", "language"]), ("symbol", ["name"]), ("find_symbols", ["query"]),
        ("outline", ["path"]), ("definitions", ["name", "from_path"]), ("describe", ["name", "from_path"]),
        ("read", ["path"]), ("refs", ["name"]), ("add_note", ["text", "path", "symbol"]),
        ("search_notes", ["query", "tag"]), ("list_notes", ["path", "symbol"]),
        ("core_memory_block", ["label"]), ("core_memory_update", ["block", "text", "mode"]),
        ("conversation_search", ["query", "session"]), ("new_session", ["title"]),
        ("session_messages", ["session_id"]), ("ask", ["question", "session"]), ("update_file", ["path"]),
    ]:
        for arg in arguments:
            base = {"search": {"query": "area"}, "add_note": {"text": "n"}, "core_memory_update":
                    {"block": "project", "text": "t"}, "definitions": {"name": "area"},
                    "describe": {"name": "area"}, "ask": {"question": "q"}, "conversation_search": {"query": "q"},
                    "search_notes": {"query": "q"}}.get(method, {})
            kwargs = {**base, arg: over[arg]}
            calls.append((f"{method}({arg}={len(over[arg]):,} chars)",
                          lambda e, m=method, k=kwargs: getattr(e, m)(**k)))
    for method, kwargs in [("add_note", {"text": "n", "tags": "abc"}), ("add_note", {"text": {"a": 1}}),
                           ("add_note", {"text": "n", "tags": ["t"] * (LIST_CAPS["tags"][0] + 1)}),
                           ("search", {"query": "q", "k": 0}), ("search", {"query": "q", "k": "5"}),
                           ("search", {"query": "q", "k": 10**12}), ("read", {"path": "src/py/shapes.py",
                                                                             "start_line": -3}),
                           ("index", {"paths": [huge]}), ("read_chunk", {"chunk_id": "1"})]:
        calls.append((f"{method}({kwargs!r:.60})", lambda e, m=method, k=kwargs: getattr(e, m)(**k)))
    with Engine(root, Settings(service=False, embedder="off", ollama_host="http://127.0.0.1:9")) as engine:
        engine.index()
        notes_before = len(engine.list_notes())
        for name, call in calls:
            outcome, value = within(30, lambda c=call: c(engine))  # type: ignore[misc]
            ok = outcome == "error" and isinstance(value, CodevmError) and one_line(str(value)) \
                and len(str(value)) < 400
            tally.record("oversized", ok, crash=outcome == "error" and not isinstance(value, CodevmError),
                         hang=outcome == "hang", note=f"engine {name}: {outcome} {str(value)[:200]!r}")
        tally.record("oversized", len(engine.list_notes()) == notes_before, note="something was stored")
        # a 20k-character query against a 2k one: linear
        words = " ".join(f"word{i} total_area" for i in range(4000))
        for size in (2_000, 20_000):
            engine.search(words[:size])
    for args in [("search", huge[:40_000]), ("memory", "notes", "add", huge[:30_000]), ("symbol", huge[:2_000]),
                 ("show", huge[:5_000]), ("ask", huge[:40_000]), ("refs", huge[:2_000])]:
        result = cli(root, *args, timeout=60)
        ok = result.returncode != 0 and one_line(result.stderr)
        tally.record("oversized", ok, crash="Traceback" in result.stderr,
                     note=f"cli {args[0]}: rc {result.returncode} {result.stderr[:200]!r}")
    stop_service(root)  # the CLI's service holds the database
    oversized_mcp(root, tally, huge)


def oversized_mcp(root: Path, tally: Tally, huge: str) -> None:
    import anyio
    from mcp import Client

    from codevm.mcp_server.server import build_server

    cases = [("search_code", {"query": huge}), ("remember", {"text": huge}), ("remember", {"text": "n", "tags": huge}),
             ("remember", {"text": "n", "tags": [huge]}), ("remember", {"text": "n", "path": huge}),
             ("find_symbol", {"name": huge}), ("find_references", {"name": huge}), ("outline", {"path": huge}),
             ("read_code", {"path": huge}), ("recall", {"query": huge}), ("ask", {"question": huge}),
             ("core_memory_update", {"block": huge, "text": "t"}), ("conversation_search", {"query": huge}),
             ("search_code", {"query": "q", "k": -1}), ("read_code", {"chunk_id": "x"}),
             ("forget", {"note_id": huge})]

    async def body() -> None:
        with Engine(root, Settings(service=False, embedder="off", ollama_host="http://127.0.0.1:9")) as engine:
            async with Client(build_server(engine)) as client:
                for tool, arguments in cases:
                    try:
                        with anyio.fail_after(30):
                            result = await client.call_tool(tool, arguments)
                        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                        ok = result.is_error and one_line(text) and len(text) < 400
                        tally.record("oversized", ok, note=f"mcp {tool}: {text[:200]!r}")
                    except TimeoutError:
                        tally.record("oversized", False, hang=True, note=f"mcp {tool}: hang")
                    except Exception as e:  # noqa: BLE001 - a crash of the door
                        tally.record("oversized", False, crash=True, note=f"mcp {tool}: {e!r}"[:300])
                assert not engine.list_notes(), "an oversized note was stored"

    try:
        anyio.run(body)
    except AssertionError as e:
        tally.record("oversized", False, note=str(e))


def odd_files(work: Path, tally: Tally) -> None:
    root = fresh(work, "odd")
    expected = add_bad_files(root)
    scripts = {"données.py": "def données_brutes():\n    pass\n", "数据.py": "def 数据处理():\n    pass\n",
               "grösse.js": "function größeBerechnen() {}\n",
               "Ünicode.java": "class Ünicode { int wert() { return 1; } }\n"}
    for name, text in scripts.items():
        (root / "src" / name).write_text(text)
    for attempt in ("first run", "second run"):
        result = cli(root, "index")
        tally.record("odd_files", result.returncode == 0, crash="Traceback" in result.stderr,
                     note=f"{attempt}: {result.stderr[-300:]}")
    with RemoteEngine(root) as engine:
        for name, function in ODD_NAMES.items():
            found = [s.path for s in engine.symbol(function)]
            tally.record("odd_files", found == [f"bad/{name}"], note=f"{function}: {found}")
        for function in ("données_brutes", "数据处理", "größeBerechnen", "Ünicode.wert"):
            tally.record("odd_files", bool(engine.symbol(function)), note=f"{function} not found")
        skipped = {s.path: s.reason for s in engine.skipped_files()}
        for path, reason in expected.items():
            tally.record("odd_files", skipped.get(path, "").startswith(reason), note=f"{path}: {skipped.get(path)}")
    stop_service(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=30, help="kill -9 runs of each kind")
    ap.add_argument("--stops", type=int, default=5, help="SIGSTOP runs (each waits ~10 s)")
    ap.add_argument("--model-rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--only", default="", help="run these classes only (comma-separated)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tally = Tally()
    load_before = os.getloadavg()
    cpu_before = os.times()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codevm-faults-") as tmp:
        work = Path(tmp)
        for name, run in [("odd_files", lambda: odd_files(work, tally)),
                          ("oversized", lambda: oversized(work, tally)),
                          ("model", lambda: model(work, tally, args.model_rounds)),
                          ("stopped_service", lambda: stopped_service(work, tally, args.stops)),
                          ("kill9_index", lambda: kill9_index(work, tally, args.kills, rng)),
                          ("kill9_writes", lambda: kill9_writes(work, tally, args.kills, rng))]:
            if args.only and name not in args.only.split(","):
                continue
            print(f"{name}...", file=sys.stderr, flush=True)
            run()
    cpu = os.times()
    totals = {k: sum(c[k] for c in tally.classes.values())
              for k in ("tried", "survived", "crashes", "hangs", "lost_writes")}
    print(json.dumps({"totals": totals, "classes": tally.classes,
                      "seconds": round(time.monotonic() - started, 1),
                      "cpu_seconds": round(cpu.user + cpu.children_user + cpu.system + cpu.children_system
                                           - cpu_before.user - cpu_before.children_user - cpu_before.system
                                           - cpu_before.children_system, 1),
                      "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                                  "load_after": [round(x, 2) for x in os.getloadavg()]}}))


if __name__ == "__main__":
    main()

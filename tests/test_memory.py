"""The memory engine against a scripted model served over real HTTP (tests/fake_ollama.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import InvalidArgument
from codevm.memory.budget import TokenEstimator
from codevm.memory.context import Page
from codevm.memory.pager import WHOLE_SHARE, Candidate, fill
from tests.fake_ollama import FakeOllama, call


@pytest.fixture
def fake() -> FakeOllama:
    with FakeOllama() as server:
        yield server


def _engine(project: Path, host: str, **overrides: object) -> Engine:
    """An indexed engine whose model drives the tools (the loop these tests script)."""
    engine = Engine(project, Settings(ollama_host=host, **{"ask_mode": "tools", **overrides}))
    engine.index()
    return engine


def _within_budget(fake: FakeOllama) -> None:
    """No prompt ever sent is over num_ctx by the engine's own estimate."""
    for request in fake.chat_requests():
        body = request["body"]
        estimate = TokenEstimator().count(json.dumps(body["messages"]) + json.dumps(body.get("tools") or []))
        assert estimate <= body["options"]["num_ctx"], (estimate, body["options"])


def test_model_searches_opens_a_page_and_answers_with_a_citation(project: Path, fake: FakeOllama) -> None:
    fake.script = [
        {"tool_calls": [call("search_code", query="total area of shapes")]},
        lambda body: {"tool_calls": [call("open_code", id=int(
            next(m for m in body["messages"] if m["role"] == "tool")["content"].split("id=")[1].split()[0]))]},
        {"content": "total_area sums s.area() over the shapes (src/py/shapes.py:21-23)."},
    ]
    with _engine(project, fake.host) as engine:
        streamed: list[str] = []
        result = engine.ask("How is the total area computed?", on_text=streamed.append)
    assert result.model_used and result.finished
    assert "src/py/shapes.py" in result.answer and "".join(streamed) in result.answer
    assert [s.function for s in result.steps] == ["search_code", "open_code"]
    assert all(s.ok for s in result.steps)
    assert any(c.startswith("src/py/shapes.py:") for c in result.citations)
    # the heuristic pager had paged the definition in before the model asked for anything
    first = fake.chat_requests()[0]["body"]["messages"][0]["content"]
    assert "## Working set" in first and "def total_area" in first
    assert "## Core memory" in first
    assert fake.chat_requests()[0]["body"]["options"]["num_ctx"] == 4096  # from /api/show
    _within_budget(fake)


def test_send_message_and_json_text_calls(project: Path, fake: FakeOllama) -> None:
    fake.script = [
        {"content": '```json\n{"name": "search_code", "arguments": {"query": "Circle"}}\n```'},
        {"tool_calls": [call("send_message", message="Circle is in src/py/shapes.py:8-18")]},
    ]
    with _engine(project, fake.host) as engine:
        result = engine.ask("Where is Circle?")
    assert result.answer == "Circle is in src/py/shapes.py:8-18"
    assert [s.function for s in result.steps] == ["search_code", "send_message"]
    tool_results = [m for m in fake.chat_requests()[1]["body"]["messages"] if m["role"] == "tool"]
    assert "Circle" in tool_results[0]["content"]


def test_bad_and_unknown_calls_go_back_to_the_model_within_the_step_limit(
        project: Path, fake: FakeOllama) -> None:
    fake.script = [
        {"tool_calls": [call("delete_everything")]},
        {"tool_calls": [call("open_code", id=987654)]},
        {"tool_calls": [call("search_code", wrong_argument=1)]},
        {"tool_calls": [call("open_code", path="../../etc/passwd", start_line=1)]},
        {"tool_calls": [call("core_memory_append", block="nonsense", text="x")]},
        {"tool_calls": [call("search_code", query="area")]},
    ]
    with _engine(project, fake.host, max_steps=5) as engine:
        result = engine.ask("Try things")
    assert not result.finished and len(fake.chat_requests()) == 5
    # said plainly, with the pages it had (the CLI prints them and exits 1)
    assert result.answer == "" and "5 function calls (max_steps) without answering" in result.notice
    assert [s.ok for s in result.steps] == [False] * 5
    sent = fake.chat_requests()[-1]["body"]["messages"]
    errors = [m["content"] for m in sent if m["role"] == "tool"]
    assert "unknown function 'delete_everything'" in errors[0]
    assert "no code with id 987654" in errors[1]
    assert "bad arguments for search_code" in errors[2]
    assert "outside the project" in errors[3]
    assert "unknown core memory block" in result.steps[4].summary  # past the last request


def test_long_conversation_is_warned_evicted_summarized_and_still_findable(
        project: Path, fake: FakeOllama) -> None:
    fake.models["qwen2.5-coder:7b"] = 2048  # a small window
    padding = "The circle radius flows through scale and area. " * 25  # ~300 tokens a turn
    answers = iter(range(100))

    def respond(body: dict) -> dict:
        system = body["messages"][0]["content"]
        if system.startswith("Summarise"):  # the engine asks the model for the summary
            # a summary that keeps what it is given, the earlier summary included
            markers = re.findall(r"Question \d+ about the zebrafish_\d+ marker", body["messages"][1]["content"])
            return {"content": "Summary: " + "; ".join(dict.fromkeys(markers))}
        return {"content": f"Answer {next(answers)}. {padding}"}

    fake.script = [respond] * 40
    with _engine(project, fake.host, answer_reserve=512) as engine:
        session = None
        warned = False
        for i in range(12):
            result = engine.ask(f"Question {i} about the zebrafish_{i} marker? {padding}",
                                session=session)
            session = result.session_id
            warned = warned or any(
                "Memory pressure" in m["content"] for m in fake.chat_requests()[-1]["body"]["messages"]
                if m["role"] == "system")
        assert warned
        assert result.evicted_messages > 0 or engine.recall.session(session).summary
        info = engine.recall.session(session)
        assert "zebrafish_0" in info.summary or "Question 0" in info.summary  # extractive or model
        in_context = engine.recall.messages(session, in_context_only=True)
        assert all("zebrafish_0 " not in m.content for m in in_context)
        found = engine.conversation_search("zebrafish_0")
        assert found and "zebrafish_0" in found[0].content
        assert len(engine.session_messages(session)) == 24  # nothing was lost
    _within_budget(fake)


def test_memory_survives_a_new_process(project: Path, fake: FakeOllama) -> None:
    with _engine(project, fake.host) as engine:
        note = engine.add_note("total_area ignores empty lists", tags=["perf"],
                               path="src/py/shapes.py", symbol="total_area")
        engine.core_memory_update("project", "A polyglot fixture for tests.")
        engine.core_memory_update("project", "Shapes live in src/py.", mode="append")
        fake.script = [{"content": "It is src/py/shapes.py:21-23."}]
        first = engine.ask("Where is total_area?")
    with Engine(project, Settings(ollama_host=fake.host)) as engine:
        assert [n.id for n in engine.search_notes("empty lists")] == [note.id]
        assert engine.list_notes(path="src/py/shapes.py")[0].symbol == "total_area"
        assert engine.core.get("project").value == "A polyglot fixture for tests.\nShapes live in src/py."
        assert engine.sessions()[0].id == first.session_id
        fake.script = [{"content": "Still there."}]
        again = engine.ask("And now?")  # continues the latest session
        assert again.session_id == first.session_id
        sent = fake.chat_requests()[-1]["body"]["messages"]
        assert "- Where is total_area?\n  (answered with src/py/shapes.py:21-23)" in sent[0]["content"]
        assert "Shapes live in src/py." in sent[0]["content"]


def test_notes_go_stale_when_their_code_changes(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        anchored = engine.add_note("area uses pi r squared", path="src/py/shapes.py", symbol="Circle.area")
        other = engine.add_note("total_area is a plain sum", path="src/py/shapes.py", symbol="total_area")
        loose = engine.add_note("no anchor at all")
        shapes = project / "src/py/shapes.py"
        shapes.write_text(shapes.read_text().replace("self.radius ** 2", "self.radius * self.radius"))
        engine.index()
        assert engine.notes.get(anchored.id).stale
        assert not engine.notes.get(other.id).stale and not engine.notes.get(loose.id).stale
        with pytest.raises(InvalidArgument, match="not in the index"):
            engine.add_note("x", path="src/py/shapes.py", symbol="no_such_function")
        with pytest.raises(InvalidArgument, match="outside the project"):
            engine.add_note("x", path="../elsewhere.py")
        assert engine.forget_note(loose.id).id == loose.id
        with pytest.raises(InvalidArgument, match="no note"):
            engine.forget_note(loose.id)
        with pytest.raises(InvalidArgument, match="over its limit"):
            engine.core_memory_update("user", "x" * 5000)


def test_no_ollama_gives_the_pager_pages_and_says_how_to_start_it(project: Path) -> None:
    with _engine(project, "http://127.0.0.1:9") as engine:  # nothing listens on port 9
        result = engine.ask("How is the total area of shapes computed?")
    assert not result.model_used and result.answer == ""
    assert "no Ollama server answered at http://127.0.0.1:9" in result.notice
    assert "ollama serve" in result.notice
    assert any(p.symbol == "total_area" for p in result.pages)
    assert result.citations and all(":" in c for c in result.citations)


def test_missing_model_names_the_pull_command(project: Path, fake: FakeOllama) -> None:
    with _engine(project, fake.host, model="llama-not-pulled:1b") as engine:
        result = engine.ask("Where is Circle?")
    assert not result.model_used
    assert "ollama pull llama-not-pulled:1b" in result.notice
    assert result.pages


def test_the_heuristic_pager_follows_tracebacks_and_named_identifiers(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        question = ('Traceback (most recent call last):\n  File "src/py/shapes.py", line 23, in total_area\n'
                    "AttributeError: 'int' object has no attribute 'area'\nAlso Circle.scale looks odd.")
        candidates = engine.pager.candidates(question)
        reasons = {c.reason.split(" ")[0] for c in candidates}
        assert {"traceback", "definition"} <= reasons
        pages = engine.pager.pages(candidates, budget=600)
        assert sum(p.tokens for p in pages) <= 600
        assert pages[0].symbol == "total_area" and pages[0].reason.startswith("traceback")


def test_a_question_about_callers_pages_the_callers_first(project: Path) -> None:
    with Engine(project) as engine:
        engine.index()
        pages = engine.pager.prefetch("Where is total_area called?", 600)
        assert (pages[0].path, pages[0].symbol, pages[0].reason) == ("src/py/app.py", "main", "calls total_area")
        assert any(p.symbol == "total_area" for p in pages)  # and what it calls
        pages = engine.pager.prefetch("who calls `Circle.area`?", 600)
        assert (pages[0].symbol, pages[0].reason) == ("total_area", "calls area")
        # an issue report says "called" in passing: its words decide
        report = "When total_area is called with " + "a list of many shapes and " * 10 + "it fails."
        assert not any(p.reason.startswith("calls ") for p in engine.pager.prefetch(report, 600))


def test_a_class_outline_does_not_hide_its_methods_from_the_pager() -> None:
    # a class's chunk spans the class but holds only its outline: its methods still page in
    outline = Page("chunk:1", "shapes.py", 10, 40, "class Circle:\n    def area(self) ...\n    def scale(self) ...", 20)
    area = Page("chunk:2", "shapes.py", 12, 20, "\n".join(f"line {i}" for i in range(12, 21)), 30)
    part = Page("chunk:3", "shapes.py", 14, 16, "line 14\nline 15\nline 16", 10)
    candidates = [Candidate(1, 1.0, "hit"), Candidate(2, 0.9, "hit"), Candidate(3, 0.8, "hit")]
    chosen = fill(candidates, {1: outline, 2: area, 3: part}, budget=1000)
    # the outline does not hold area's lines; area does hold the lines of the third
    assert [p.key for p in chosen] == ["chunk:1", "chunk:2"]
    assert [p.key for p in fill(candidates, {1: outline, 2: area, 3: part}, budget=1000,
                                have={"chunk:2"})] == ["chunk:1", "chunk:3"]


def test_a_part_of_a_long_function_pages_in_the_whole_function_when_it_fits(tmp_path: Path) -> None:
    # indexed in parts (each after the first headed by the signature); the question matches
    # only a middle part, and the pager shows the function as the file has it
    body = [f"    total_{i} = measure(shapes[{i}], scale={i}, unit='millimetre', rounding=ROUND_HALF)"
            for i in range(60)]
    body[30] = "    quokka_weight = weigh_the_quokka(shapes, precise=True)  # the one quokka line"
    lines = ["def summarise_every_shape(shapes):", *body, "    return total_59", ""]
    (tmp_path / "long.py").write_text("\n".join(lines) + "\ndef unrelated():\n    return 1\n")
    with Engine(tmp_path, Settings(embedder="off", service=False)) as engine:
        engine.index()
        parts = engine.store.cursor().execute(
            "SELECT count(*) FROM chunks WHERE qualified_name = 'summarise_every_shape'").fetchone()[0]
        assert parts >= 3
        question = "where is the quokka weighed?"
        pages = engine.context_for(question, 8000)
        assert (pages[0].path, pages[0].start_line, pages[0].end_line) == ("long.py", 1, 62)
        assert pages[0].text == "\n".join(lines[:62])  # no part's header repeated inside it
        assert not [p for p in pages[1:] if p.path == "long.py" and p.end_line <= 62]  # no part twice
        # a budget the whole function would take most of: the part that matched, alone
        small = engine.context_for(question, 1000)
        assert small[0].end_line - small[0].start_line < 61 and "quokka" in small[0].text


def test_a_small_class_is_paged_in_whole_in_place_of_its_outline_and_methods(tmp_path: Path) -> None:
    methods = "\n\n".join(f"    def weigh_{i}(self, quokka):\n        return quokka.mass * {i} + self.offset"
                           for i in range(6))
    source = f"class QuokkaScale:\n    \"\"\"Weighs quokkas.\"\"\"\n    offset = 3\n\n{methods}\n"
    (tmp_path / "scale.py").write_text(source + "\n\ndef elsewhere():\n    return 2\n")
    with Engine(tmp_path, Settings(embedder="off", service=False)) as engine:
        engine.index()
        pages = engine.context_for("QuokkaScale weighs each quokka by its mass", 4000)
        mine = [p for p in pages if p.path == "scale.py" and p.start_line < 24]
        assert [(p.start_line, p.end_line) for p in mine] == [(1, 21)]  # one page, not outline + methods
        assert mine[0].text == source.rstrip("\n") and mine[0].verbatim
        # the file changed on disk since it was indexed: the outline, as the index holds it
        (tmp_path / "scale.py").write_text("# moved\n" + source)
        pages = engine.context_for("QuokkaScale weighs each quokka by its mass", 4000)
        outline = [p for p in pages if p.symbol == "QuokkaScale"]
        assert outline and not outline[0].verbatim


def test_parts_of_one_function_paged_in_apart_are_joined_in_file_order() -> None:
    first = Page("chunk:1", "m.py", 1, 3, "def long(x):\n    a = 1\n    b = 2", 20, "long")
    second = Page("chunk:2", "m.py", 4, 5, "def long(x): ...\n    c = 3\n    return a + b + c", 20, "long")
    other = Page("chunk:3", "n.py", 1, 2, "def short():\n    return 1", 10, "short")
    far = Page("chunk:4", "m.py", 9, 9, "def long(x): ...\n    z = 9", 10, "long")  # not next to them
    candidates = [Candidate(cid, relevance, "hit") for cid, relevance in ((2, 1.0), (3, 0.8), (1, 0.5), (4, 0.4))]
    chosen = fill(candidates, {1: first, 2: second, 3: other, 4: far}, budget=1000)
    assert [(p.path, p.start_line, p.end_line) for p in chosen] == [("m.py", 1, 5), ("n.py", 1, 2), ("m.py", 9, 9)]
    assert chosen[0].text == "def long(x):\n    a = 1\n    b = 2\n    c = 3\n    return a + b + c"
    assert chosen[0].relevance == 1.0 and chosen[0].verbatim


def test_the_margin_is_wider_until_the_server_has_counted_a_prompt(project: Path, fake: FakeOllama) -> None:
    from codevm.memory.budget import ESTIMATE_MARGIN, UNCALIBRATED_MARGIN, Budget, TokenEstimator

    fresh = Budget(4096, 512, estimator=TokenEstimator())
    learnt = Budget(4096, 512, estimator=TokenEstimator(1.1, calibrated=True))
    assert fresh.prompt_limit == int(3584 * (1 - UNCALIBRATED_MARGIN))
    assert learnt.prompt_limit == int(3584 * (1 - ESTIMATE_MARGIN))
    fresh.estimator.calibrate(1000, 1066)  # the first counted prompt
    assert fresh.estimator.calibrated and fresh.prompt_limit == learnt.prompt_limit
    fake.script = [{"content": "total_area sums them (src/py/shapes.py:21-23)."}]
    with _engine(project, fake.host) as engine:
        engine.ask("How is the total area computed?")
        assert engine.store.get_meta("calibration:qwen2.5-coder:7b")  # the next question starts calibrated


def test_methods_of_one_class_page_in_as_the_class_when_it_fits(tmp_path: Path) -> None:
    """Two methods of one class page in as their whole class (its attributes and other
    methods with them), in place of the methods, when the class is small for the budget
    and the relevance of the two together; one method, or a tight budget, pages in alone."""
    audit = "\n".join(f"        total_{i} = sum(row.amount for row in self.rows[{i}::7])" for i in range(8))
    source = (
        "class Ledger:\n"
        "    \"\"\"Keeps the accounts of a zoo.\"\"\"\n"
        "    currency = 'EUR'\n\n"
        "    def __init__(self, rows):\n        self.rows = list(rows)\n        self.closed = False\n\n"
        "    def take(self, amount, keeper):\n"
        "        if self.closed:\n            raise ValueError('the ledger is closed')\n"
        "        self.rows.append(Row(amount, keeper, 'wombat fee'))\n        return len(self.rows)\n\n"
        "    def give_back(self, amount, keeper):\n"
        "        if self.closed:\n            raise ValueError('the ledger is closed')\n"
        "        self.rows.append(Row(-amount, keeper, 'wombat fee refund'))\n        return len(self.rows)\n\n"
        f"    def audit(self):\n{audit}\n        return total_0\n")
    end = source.count("\n")
    (tmp_path / "ledger.py").write_text(source + "\n\ndef unrelated_helper():\n    return 2\n")
    with Engine(tmp_path, Settings(embedder="off", service=False)) as engine:
        engine.index()
        methods = engine.store.cursor().execute(
            "SELECT count(*) FROM chunks WHERE kind = 'method' AND qualified_name LIKE 'Ledger.%'").fetchone()[0]
        assert methods >= 3  # the class is an outline, its methods pages of their own
        ids = dict(engine.store.cursor().execute(
            "SELECT name, id FROM chunks WHERE qualified_name LIKE 'Ledger.%'").fetchall())
        pager = engine.pager
        wholes = pager.class_pages([ids["take"], ids["give_back"]])
        assert set(wholes) == {ids["take"], ids["give_back"]}
        whole = wholes[ids["take"]]
        assert (whole.start_line, whole.end_line) == (1, end) and whole.text == source.rstrip("\n")
        assert pager.class_pages([ids["take"]]) == {}  # one method pages in alone
        # the class outline is not a candidate (a question in the words of two bodies): the
        # methods bring their class, which each is not relevant enough to bring alone
        candidates = [Candidate(ids["take"], 0.5, "hit"), Candidate(ids["give_back"], 0.5, "hit")]
        pages = pager.page_map(ids.values())
        budget = int(whole.tokens / (WHOLE_SHARE * 0.8))
        chosen = fill(candidates, pages, budget, wholes=wholes)
        assert [(p.start_line, p.end_line) for p in chosen] == [(1, end)]
        alone = fill(candidates[:1], pages, budget, wholes=wholes)
        assert [p.symbol for p in alone] == ["Ledger.take"]
        # a budget the class would take too much of: the methods
        tight = fill(candidates, pages, int(whole.tokens / (WHOLE_SHARE * 1.2)), wholes=wholes)
        assert {p.symbol for p in tight} == {"Ledger.take", "Ledger.give_back"}

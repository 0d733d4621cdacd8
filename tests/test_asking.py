"""Pager-first asking and the model backends, against a server that speaks each backend's
real protocol (tests/fake_ollama.py): Ollama's /api/chat and the OpenAI-compatible
/v1/chat/completions of llama.cpp's server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import ModelTimeout, ModelUnavailable
from codevm.memory.ask import CALL_SCHEMA, PAGER_CLOSING, fact_to_remember
from codevm.memory.replies import StreamGate, as_answer, parse_call
from codevm.models import Limits, OllamaModel, OpenAIModel
from tests.fake_ollama import FakeOllama

NAMES = {"search_code", "open_code", "send_message"}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture(params=["ollama", "openai"])
def backend(request: pytest.FixtureRequest, fake: FakeOllama) -> dict[str, str]:
    """Settings for each backend, both served by `fake`."""
    if request.param == "ollama":
        return {"ollama_host": fake.host}
    return {"model_url": fake.host + "/v1", "ollama_host": "http://127.0.0.1:9"}


def _engine(project: Path, **settings: object) -> Engine:
    engine = Engine(project, Settings(**settings))  # type: ignore[arg-type]
    engine.index()
    return engine


def test_pager_first_is_one_call_with_the_pages_after_a_stable_prefix(
        project: Path, fake: FakeOllama, backend: dict[str, str]) -> None:
    fake.script = [{"content": "total_area sums the areas (src/py/shapes.py:21-23)."},
                   {"content": "It is called from src/py/app.py."}]
    with _engine(project, **backend) as engine:
        streamed: list[str] = []
        status: list[str] = []
        first = engine.ask("How is the total area of the shapes computed?", on_text=streamed.append,
                           on_status=status.append)
        second = engine.ask("and where is it called?")
    assert first.mode == "pager" and first.model_used and len(first.calls) == 1
    assert "".join(streamed) == first.answer and first.streamed
    assert first.cites_code and any(c.startswith("src/py/shapes.py:") for c in first.citations)
    assert status and status[0].startswith("reading ") and "tokens of context" in status[0]
    requests = [r["body"] for r in fake.chat_requests()]
    assert all("tools" not in body for body in requests)  # no schemas to read or copy
    one, two = (body["messages"] for body in requests)
    assert one[0]["role"] == "system" and "def total_area" not in one[0]["content"]
    last = one[-1]["content"]
    assert "def total_area" in last and last.rstrip().endswith(PAGER_CLOSING)  # the request last
    assert last.index("def total_area") < last.index("Question: How is the total area of the shapes")
    # the follow-up: the same prefix, then the first turn as a record: its question and the
    # code its answer cited, not the answer's words (a reply of the model's own to copy);
    # the pages read with the question before it; the answer's length capped from the
    # answer reserve
    assert len(two) == 2 and two[0]["content"].startswith(one[0]["content"])
    recap = two[0]["content"][len(one[0]["content"]):]
    assert "- How is the total area of the shapes computed?\n  (answered with src/py/shapes.py:21-23)" in recap
    assert "sums the areas" not in recap
    assert "def total_area" in two[-1]["content"] and "Question: and where is it called?" in two[-1]["content"]
    assert second.calls[0].prompt_tokens is not None
    body = requests[0]
    limit = body["options"]["num_predict"] if "options" in body else body["max_tokens"]
    assert limit == Settings().answer_reserve


def test_a_model_that_loops_is_stopped_and_its_answer_cut_after_one_copy(
        project: Path, fake: FakeOllama, backend: dict[str, str]) -> None:
    # Qwen2.5-Coder-1.5B (2026-12-02) wrote this sentence thirty times, to its token limit
    loop = 'In src/py/shapes.py:21-23, total_area sums the areas. The excerpt states: "'
    fake.script = [{"content": loop * 30}, {"content": "A table:\n" + "| area | sum |\n" * 3 + "Done."}]
    with _engine(project, **backend) as engine:
        looped = engine.ask("How is the total area of the shapes computed?")
        table = engine.ask("Show the areas as a table.", new_session=True)
    # one copy, to the end of the sentence nearest its end
    assert looped.repeated and looped.answer == "In src/py/shapes.py:21-23, total_area sums the areas."
    assert looped.calls[0].repeated and not looped.truncated
    assert not table.repeated and table.answer.endswith("Done.")  # short runs again and again: no loop


def test_a_question_that_stands_alone_is_paged_by_its_own_words(project: Path, fake: FakeOllama) -> None:
    fake.script = [{"content": "`total_area` sums the areas (src/py/shapes.py:21-23)."},
                   {"content": "Routes.resolveRoute strips the slash."}, {"content": "In src/py/app.py."}]
    with _engine(project, ollama_host=fake.host) as engine:
        engine.ask("How is the total area of the shapes computed?")
        alone = engine.ask("How does the Scala router resolve a route path?")
        follow_up = engine.ask("and where is it called?")
    assert any(p.path == "src/jvm/Routes.scala" for p in alone.pages)
    assert not any(p.path == "src/py/shapes.py" for p in alone.pages)  # not the question before it
    assert any(p.path == "src/jvm/Routes.scala" for p in follow_up.pages)


def test_follow_ups_are_told_from_questions_that_stand_alone() -> None:
    from codevm.memory.ask import is_follow_up, paging_query
    from codevm.memory.context import ContextMessage

    for question in ("and where is it called?", "What about the tests?", "Also, which class owns it?",
                     "what does it return?", "Where is that defined?", "how is this used", "Why?"):
        assert is_follow_up(question), question
    for question in ("Where does Flask register a blueprint's URL rules on the app?", "what is total_area?",
                     "How does the session interface make sure that a cookie is only sent when it changed?",
                     "Android versions?", ""):
        assert not is_follow_up(question), question
    turns = [ContextMessage("user", "Where is the session cookie saved?", 9),
             ContextMessage("assistant", "In [src/flask/sessions.py:351-399], `save_session` sets it "
                                         "(see `SecureCookieSessionInterface`).", 20),
             ContextMessage("user", "And where is that called during a request?", 10)]
    assert paging_query("And where is that called during a request?", turns[:2]) == (
        "save_session SecureCookieSessionInterface\nWhere is the session cookie saved?\n"
        "And where is that called during a request?")
    assert paging_query("Where are blueprints registered?", turns[:2]) == "Where are blueprints registered?"


def test_a_cited_path_the_project_lacks_is_given_the_path_of_the_page_it_means(
        project: Path, fake: FakeOllama) -> None:
    # Qwen2.5-Coder-1.5B, asked how identifiers are split, answered "In [src/app.py:55-71], the
    # `unicode_parts` function splits ..." for codevm/indexers/identifiers.py:55-71
    fake.script = [{"content": "In [shapes.py:21-23], total_area adds up the areas; it is called in "
                               "src/py/app.py:1 and tested in [tests/nowhere.py:1-2] or " + "t" * 300 + ".py:1."}]
    with _engine(project, ollama_host=fake.host) as engine:
        streamed: list[str] = []
        result = engine.ask("How is the total area of the shapes computed?", on_text=streamed.append)
    assert result.answer.startswith("In [src/py/shapes.py:21-23], total_area")
    assert "src/py/app.py:1 " in result.answer  # a file of the project: as cited
    assert "[tests/nowhere.py:1-2]" in result.answer  # no page it could mean: as cited
    assert result.answer.endswith("t" * 300 + ".py:1.")  # a name too long for the system: as cited
    assert result.corrected == ["shapes.py:21-23 is src/py/shapes.py:21-23"]
    assert "".join(streamed).startswith("In [shapes.py:21-23]")  # streamed as written
    assert result.cites_code and any(c.startswith("src/py/shapes.py:") for c in result.citations)


def test_citations_are_repaired_only_towards_one_page() -> None:
    from codevm.memory.ask import repair_citations
    from codevm.memory.context import Page

    pages = [Page("chunk:1", "codevm/indexers/identifiers.py", 55, 71, "def unicode_parts(...): ...", 90, "f"),
             Page("chunk:2", "codevm/indexers/chunker.py", 526, 551, "def chunk_terms_counts(...): ...", 90, "x"),
             Page("chunk:3", "a/util.py", 1, 9, "x", 5, "f"), Page("chunk:4", "b/util.py", 1, 9, "y", 5, "g")]
    never = lambda path: False  # noqa: E731
    text, fixed = repair_citations("In [src/app.py:55-71], see identifiers.py:60 and chunker.py:530-540.", pages, never)
    assert text == ("In [codevm/indexers/identifiers.py:55-71], see codevm/indexers/identifiers.py:60 and "
                    "codevm/indexers/chunker.py:530-540.")
    assert len(fixed) == 3
    # two pages it could mean, a range no page has, a file that exists: left as written
    for cited in ("util.py:3", "src/other.py:100-120", "codevm/cli.py:5"):
        assert repair_citations(f"see {cited}.", pages, lambda path: path == "codevm/cli.py") == (f"see {cited}.", [])


def test_a_copied_example_citation_is_repaired_towards_the_page_its_sentence_names() -> None:
    from codevm.memory.ask import repair_citations
    from codevm.memory.context import Page

    pages = [Page("chunk:1", "codevm/indexers/identifiers.py", 97, 114, "def split_identifier(...): ...", 90,
                  "split_identifier"),
             Page("chunk:2", "codevm/indexers/identifiers.py", 67, 83, "def unicode_parts(...): ...", 90,
                  "unicode_parts"),
             Page("chunk:3", "bench/answers.py", 166, 173, "def identifiers(...): ...", 40, "identifiers")]
    never = lambda path: False  # noqa: E731
    # Qwen2.5-Coder-1.5B's answer to the README's question (2026-11-30), which copied the
    # example header of the prompt's rules
    answer = ("In [src/app.py:12-30], the `split_identifier` function is defined, which takes an identifier "
              "as input and returns a tuple of terms. The `unicode_parts` function is used to find the "
              "camelCase and snake_case parts of the identifier in any script.")
    text, fixed = repair_citations(answer, pages, never)
    assert text.startswith("In [codevm/indexers/identifiers.py:97-114], the `split_identifier` function")
    assert fixed == ["src/app.py:12-30 is codevm/indexers/identifiers.py:97-114"]
    # (2026-12-01) the example's path with the lines of the next page's header: the sentence
    # names its page, and no other page has the lines 117-133 but the one it does not name
    pages.append(Page("chunk:4", "codevm/indexers/identifiers.py", 117, 133, "def terms_text(...): ...", 60,
                      "terms_text"))
    answer = ("In [src/app.py:117-133], the `split_identifier` function is defined, which splits an "
              "identifier into camelCase and snake_case parts.")
    assert repair_citations(answer, pages, never)[1] == ["src/app.py:117-133 is codevm/indexers/identifiers.py:97-114"]
    # ... but with the sentence naming both, the lines decide
    both = "In [src/app.py:117-133], terms_text joins what split_identifier returns."
    assert repair_citations(both, pages, never)[1] == [
        "src/app.py:117-133 is codevm/indexers/identifiers.py:117-133"]
    # a sentence that names two pages, or none, or cites another page too: left as written
    for sentence in ("See src/app.py:12-30 for split_identifier and unicode_parts.", "See src/app.py:12-30.",
                     "split_identifier (codevm/indexers/identifiers.py:97-114) is tested in src/app.py:12-30."):
        assert repair_citations(sentence, pages, never) == (sentence, [])


def test_remember_then_recall_in_a_new_session(project: Path, fake: FakeOllama) -> None:
    fake.script = [lambda body: {"content": "The app factory is called make_app."
                                 if "make_app" in body["messages"][-1]["content"] else "I do not know."}]
    with _engine(project, ollama_host=fake.host) as engine:
        saved = engine.ask("remember that we call the app factory make_app", new_session=True)
        assert not fake.chat_requests()  # saved without the model
        assert "make_app" in saved.answer
        assert [n.text for n in engine.search_notes("app factory")] == [
            "we call the app factory make_app"]
        answer = engine.ask("what do we call the app factory?", new_session=True)
    assert answer.session_id != saved.session_id and "make_app" in answer.answer


def test_echoed_schemas_and_raw_calls_are_never_the_answer(project: Path, fake: FakeOllama) -> None:
    echo = ('<tools>\n{"type": "function", "function": {"name": "search_code", "parameters": '
            '{"type": "object", "properties": {"query": {"type": "string"}}}}}\n</tools>')
    fake.script = [{"content": echo},
                   {"content": 'send_message\n{"message": "Circle is in src/py/shapes.py:8-18"}'}]
    with _engine(project, ollama_host=fake.host) as engine:
        streamed: list[str] = []
        bad = engine.ask("Where is Circle?", on_text=streamed.append)
        unwrapped = engine.ask("Where is Circle defined?")
    assert bad.answer == "" and bad.malformed == 1 and streamed == []
    assert "not an answer" in bad.notice and bad.pages  # the pager's pages instead
    assert unwrapped.answer == "Circle is in src/py/shapes.py:8-18" and unwrapped.cites_code


def test_tool_mode_held_to_a_json_schema(project: Path, fake: FakeOllama, backend: dict[str, str]) -> None:
    """tool_calls = "json": no native schemas; the functions in words; every request asks
    the server to hold the reply to CALL_SCHEMA; the calls it writes as JSON are run."""
    fake.script = [{"content": '{"name": "search_code", "arguments": {"query": "total area"}}'},
                   {"content": '{"name": "send_message", "arguments": '
                               '{"message": "total_area sums them (src/py/shapes.py:21-23)."}}'}]
    with _engine(project, ask_mode="tools", tool_calls="json", **backend) as engine:
        streamed: list[str] = []
        result = engine.ask("How is the total area computed?", on_text=streamed.append)
    assert [s.function for s in result.steps] == ["search_code", "send_message"] and result.steps[0].ok
    assert result.answer == "total_area sums them (src/py/shapes.py:21-23)." and result.cites_code
    assert streamed == [result.answer]  # the answer once, never the JSON around it
    bodies = [r["body"] for r in fake.chat_requests()]
    assert len(bodies) == 2 and all("tools" not in b for b in bodies)
    held = [b.get("format") or b["response_format"]["json_schema"]["schema"] for b in bodies]
    assert held == [CALL_SCHEMA, CALL_SCHEMA]
    assert "search_code(query, offset?)" in bodies[0]["messages"][0]["content"]
    assert "src/py/shapes.py" in bodies[1]["messages"][-1]["content"]  # the search's result


def test_the_call_schema_admits_calls_and_nothing_else() -> None:
    import jsonschema

    def valid(call: object) -> bool:
        return jsonschema.Draft202012Validator(CALL_SCHEMA).is_valid(call)

    assert valid({"name": "search_code", "arguments": {"query": "x"}})
    assert valid({"name": "open_code", "arguments": {"path": "a.py", "start_line": 3}})
    assert valid({"name": "send_message", "arguments": {"message": "done"}})
    assert not valid({"name": "search_code", "arguments": {}})  # its query is required
    assert not valid({"name": "search_code", "arguments": {"query": "x", "k": 3}})
    assert not valid({"name": "find_best_app", "arguments": {"query": "x"}})
    assert not valid({"name": "open_code", "arguments": {"start_line": "three"}})


@pytest.mark.parametrize("content, answer", [
    ('{"name": "send_message", "arguments": {"message": "In a.py:1-2, x\\n y \\u00', "In a.py:1-2, x\n y"),
    ('{"name": "send_message", "arguments": {"message": "ok"}}', "ok"),
    ('{"name": "search_code", "arguments": {"query": "cut', ""),
])
def test_a_call_cut_at_the_token_limit_shows_only_its_message(content: str, answer: str) -> None:
    assert as_answer(content, NAMES) == (answer, True)


def test_a_cut_answer_is_said_to_be_cut(project: Path, fake: FakeOllama, backend: dict[str, str]) -> None:
    fake.script = [{"content": "total_area adds up", "done_reason": "length"}]
    with _engine(project, **backend) as engine:
        result = engine.ask("How is the total area computed?")
    assert result.truncated and result.answer == "total_area adds up"


def test_each_time_limit_says_which_it_was(fake: FakeOllama) -> None:
    model = OpenAIModel("qwen2.5-coder:7b", fake.host + "/v1")
    messages = [{"role": "user", "content": "hi"}]
    fake.script = [{"content": "late", "wait_first": 3}]
    with pytest.raises(ModelTimeout, match="model_first_token_timeout"):
        model.chat(messages, 4096, Limits(first_token=1, idle=30))
    fake.script = [{"content": "one two three four", "trickle": 3}]
    with pytest.raises(ModelTimeout, match="model_idle_timeout"):
        model.chat(messages, 4096, Limits(first_token=30, idle=1))
    fake.script = [{"content": "in time", "wait_first": 0.5}]
    reply = model.chat(messages, 4096, Limits(first_token=5, idle=5))
    assert reply.content == "in time" and reply.first_token_seconds and reply.first_token_seconds >= 0.5


def test_a_server_that_hangs_before_the_question_is_said_to_hang(
        fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    from codevm.models import base, ollama_api, openai_api

    for module in (base, ollama_api, openai_api):
        monkeypatch.setattr(module, "METADATA_TIMEOUT", 1.0)  # 30 s in use (it was 600)
    fake.metadata_wait = 3
    for model, asked in [(OpenAIModel("qwen2.5-coder:7b", fake.host + "/v1"), "/props"),
                         (OllamaModel("qwen2.5-coder:7b", fake.host), "/api/show")]:
        with pytest.raises(ModelUnavailable, match=f"did not answer {asked} within 1s: the server hangs"):
            model.context_length(4096)


def test_the_server_counts_and_its_prompt_cache_are_reported(project: Path, fake: FakeOllama) -> None:
    fake.n_ctx = 6000
    fake.script = [{"content": "src/py/shapes.py:21-23 sums them."}]
    with _engine(project, model_url=fake.host + "/v1") as engine:
        result = engine.ask("How is the total area computed?")
    call = result.calls[0]
    assert result.context is not None and result.context.num_ctx == 6000  # from /props
    assert call.prompt_tokens and call.cached_tokens and call.estimated_tokens > 0
    assert fake.chat_requests()[0]["body"]["cache_prompt"] is True


@pytest.mark.parametrize(("text", "name"), [
    ('{"name": "search_code", "arguments": {"query": "x"}}', "search_code"),
    ('```json\n{"name": "open_code", "arguments": {"id": 3}}\n```', "open_code"),
    ('<tool_call>\n{"name": "search_code", "arguments": {"query": "x"}}\n</tool_call>', "search_code"),
    ('send_message\n{"message": "done"}', "send_message"),
    ('search_code\n{"query": "app factory"}', "search_code"),
    # both seen from Qwen2.5-Coder-1.5B through llama.cpp (tests/fixtures/recorded)
    ('send_message, {"name": "search_code", "arguments": {"query": "main", "offset": 0}}', "search_code"),
    ('<tools>\n{"name": "search_code", "arguments": {"query": "blueprints"}}\n</tools>', "search_code"),
])
def test_calls_printed_as_text_are_read(text: str, name: str) -> None:
    call = parse_call(text, NAMES)
    assert call is not None and call["name"] == name and isinstance(call["arguments"], dict)


def test_prose_is_an_answer_and_a_gate_holds_back_what_is_not() -> None:
    assert parse_call("Circle is defined in shapes.py", NAMES) is None
    assert as_answer("Circle is defined in shapes.py", NAMES) == ("Circle is defined in shapes.py", False)
    shown: list[str] = []
    gate = StreamGate(shown.append)
    for piece in ('{"name": ', '"search_code", "arguments": {}}'):
        gate(piece)
    gate.finish()
    assert shown == [] and not gate.shown
    gate = StreamGate(shown.append)
    for piece in ("Circle ", "is in ", "shapes.py."):
        gate(piece)
    gate.finish()
    assert "".join(shown) == "Circle is in shapes.py." and gate.shown


@pytest.mark.parametrize(("question", "fact"), [
    ("remember that we call the app factory make_app", "we call the app factory make_app"),
    ("Please remember: tests run with tox.", "tests run with tox"),
    ("note that the CI uses Python 3.12", "the CI uses Python 3.12"),
    ("do you remember what we call the app factory?", None),
    ("remember how the pager works?", None),
    ("How does the app factory work?", None),
])
def test_what_counts_as_a_fact_to_remember(question: str, fact: str | None) -> None:
    assert fact_to_remember(question) == fact


def test_model_check_records_the_mode_that_auto_then_uses(project: Path, fake: FakeOllama) -> None:
    from tests.fake_ollama import call

    fake.script = [{"tool_calls": [call("search_code", query="main")]},
                   {"tool_calls": [call("search_code", query="total area")]},
                   {"content": "src/py/shapes.py:21-23 sums the areas."},
                   {"content": '<tools>{"type": "function", "function": {"name": "search_code"}}</tools>'}]
    with _engine(project, ollama_host=fake.host) as engine:
        found = engine.check_model()
        assert found.mode == "tools" and found.native_calls and "called search_code" in found.reason
        result = engine.ask("How is the total area computed?")
        assert result.mode == "tools" and [s.function for s in result.steps] == ["search_code"]
        assert engine.check_model().mode == "pager"  # it copied the schemas this time
        assert engine.ask("What does Circle do?").mode == "pager"


def test_model_check_tries_a_json_schema_when_native_calls_fail(project: Path, fake: FakeOllama) -> None:
    fake.script = [{"content": "The function main is defined in app.py."},
                   {"content": '{"name": "search_code", "arguments": {"query": "def main"}}'},
                   {"content": '{"name": "send_message", "arguments": {"message": "src/py/shapes.py"}}'}]
    with _engine(project, ollama_host=fake.host) as engine:
        found = engine.check_model()
        assert (found.mode, found.tool_calls, found.native_calls) == ("pager", "json", False)
        assert "JSON schema" in found.reason
        forced = Settings(ollama_host=fake.host, ask_mode="tools")  # tool_calls = auto: json
        assert engine.ask("Where is Circle?", settings=forced).answer == "src/py/shapes.py"
    first, probe, asked = (r["body"] for r in fake.chat_requests())
    assert "tools" in first and "format" not in first
    assert probe["format"] == CALL_SCHEMA and asked["format"] == CALL_SCHEMA and "tools" not in asked


def test_mcp_ask_reports_progress_while_the_model_reads(project: Path, fake: FakeOllama) -> None:
    import anyio
    from mcp import Client

    from codevm.mcp_server.server import build_server

    fake.script = [{"content": "total_area is in src/py/shapes.py:21-23."}]
    messages: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async def body() -> dict:
        with _engine(project, ollama_host=fake.host) as engine:
            async with Client(build_server(engine)) as client:
                result = await client.call_tool("ask", {"question": "How is the total area computed?"},
                                                progress_callback=progress)
                assert "src/py/shapes.py:21-23" in result.content[0].text  # type: ignore[union-attr]
                return result.structured_content or {}

    answer = anyio.run(body)
    assert "src/py/shapes.py:21-23" in answer["answer"] and "src/py/shapes.py:21-23" in answer["citations"]
    assert any(m.startswith("reading ") and "tokens of context" in m for m in messages)

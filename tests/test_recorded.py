"""A real model's replies to codevm's prompts, replayed byte for byte.

tests/fixtures/recorded/*.jsonl hold responses of Qwen2.5-Coder-1.5B (Q4_K_M) served by
llama.cpp, recorded by bench/answers.py and bench/record_cases.py through their recording
proxy: the body of each streamed response as it came, never edited. Each is labelled by
what the model did (`kind`); the test serves it again from the fake server and checks
what codevm makes of it. `loop` replies repeat themselves (bench/answers.py, 2026-12-02):
one to its token limit, one that stopped by itself after its fourth copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from codevm.config import Settings
from codevm.engine import Engine
from codevm.models.base import loop_start
from tests.fake_ollama import FakeOllama

RECORDED = Path(__file__).parent / "fixtures" / "recorded"
CASES = [json.loads(line) for path in sorted(RECORDED.glob("*.jsonl"))
         for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _streamed_text(response: str) -> str:
    """The text a recorded response streams (what the model wrote)."""
    text = []
    for line in response.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            for choice in json.loads(line[5:]).get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def test_every_kind_of_reply_was_recorded() -> None:
    assert {c["kind"] for c in CASES} >= {"answer", "truncated", "text_call", "json_call", "loop"}


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_a_recorded_reply(case: dict, project: Path, fake: FakeOllama) -> None:
    fake.script = [{"recorded": case["response"]}] * 4
    written = _streamed_text(case["response"])
    settings = Settings(model_url=fake.host + "/v1", ask_mode=case["mode"], max_steps=2,
                        tool_calls=case.get("tool_calls", "native"), ollama_host="http://127.0.0.1:9")
    with Engine(project, settings) as engine:
        engine.index()
        streamed: list[str] = []
        result = engine.ask("How is the total area of the shapes computed?", on_text=streamed.append)
    call = result.calls[0]
    usage = [json.loads(line[5:]) for line in case["response"].splitlines()
             if line.startswith("data:") and '"usage"' in line][-1]["usage"]
    if case["kind"] == "loop":  # stopped at its third copy: before the server's count came
        cut = loop_start(written)
        assert cut is not None and result.repeated and not result.truncated
        assert result.answer == written[:cut].strip() and len(result.answer) < len(written.strip())
        assert written.startswith("".join(streamed)) and len("".join(streamed)) < len(written)
        return
    assert call.prompt_tokens == usage["prompt_tokens"]  # the server's own count
    if case["kind"] in ("answer", "truncated"):
        assert result.answer == written.strip() and "".join(streamed) == written
        assert result.malformed == 0 and result.truncated == (case["kind"] == "truncated")
    elif case["kind"] == "echo":  # a copy of the schemas: never shown, never the answer
        assert result.malformed >= 1 and streamed == [] and "<tools>" not in result.answer
    elif case["kind"] == "json_call":  # a call the server held to CALL_SCHEMA: run, never shown
        request = fake.chat_requests()[0]["body"]
        assert "response_format" in request and "tools" not in request
        assert result.steps and result.steps[0].function == case["function"] and result.steps[0].ok
        assert streamed == [] and "{" not in result.answer
    elif case["kind"] == "text_call":  # a call printed as text is run, not shown
        assert result.steps and result.steps[0].function == case["function"]
        assert written.strip() not in result.answer and written.strip() not in "".join(streamed)

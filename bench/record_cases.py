"""Record a real model's replies to codevm's own prompts, verbatim, for the test suite.

Runs through bench/answers.py's recording proxy: `codevm model check`'s probe, a few
questions in tool mode (where small models print calls as text or copy the schemas),
and a pager-first answer with a small answer reserve (a reply cut at its token limit).
Prints one JSON object: what each reply was; the exchanges are in
bench/.cache/recordings-cases.jsonl, from which tests/fixtures/recorded/ is chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from answers import Recorder  # noqa: E402

from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.errors import CodevmError  # noqa: E402

QUESTIONS = [
    "How does Flask decide which JSON provider to use, and where is ensure_ascii set?",
    "Where are blueprints registered on the application?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-url", default="http://127.0.0.1:18080/v1")
    ap.add_argument("--model", default="qwen2.5-coder:1.5b")
    ap.add_argument("--tree", type=Path, default=HERE / ".cache" / "answers-work" / "pallets__flask")
    args = ap.parse_args()
    out = HERE / ".cache" / "recordings-cases.jsonl"
    recorder = Recorder(args.model_url.removesuffix("/v1"), out)
    base = Settings(model=args.model, model_url=recorder.url + "/v1", embedder="off", service=False,
                    watch=False, answer_reserve=512, max_steps=2)
    seen = []
    with Engine(args.tree, base) as engine:
        recorder.tag = "check"
        found = engine.check_model()
        seen.append({"case": "check", "mode": found.mode, "reason": found.reason})
        tools = Settings(**{**base.__dict__, "ask_mode": "tools"})
        for i, question in enumerate(QUESTIONS):
            recorder.tag = f"tools|{i}"
            try:
                result = engine.ask(question, new_session=True, budget=3000, settings=tools)
                seen.append({"case": recorder.tag, "answer": result.answer[:200], "steps": len(result.steps),
                             "malformed": result.malformed, "finished": result.finished})
            except CodevmError as e:
                seen.append({"case": recorder.tag, "error": str(e)})
        recorder.tag = "pager|short"
        short = Settings(**{**base.__dict__, "ask_mode": "pager", "answer_reserve": 40})
        result = engine.ask(QUESTIONS[0], new_session=True, budget=4096, settings=short)
        seen.append({"case": recorder.tag, "answer": result.answer, "truncated": result.truncated})
    print(json.dumps({"recorded": str(out), "cases": seen}))


if __name__ == "__main__":
    main()

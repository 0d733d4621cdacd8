"""Answers with a real model, four ways, on the same questions. Prints one JSON object.

Questions: real developers' questions about flask and requests with reference answers
and the files they cite (../shared/bench/swe_qa_dev.jsonl). Configurations, each with the
same token budget:
- closed: the model alone (the question and nothing else);
- rag_plain: plain RAG, the closed-book prompt with the top BM25 chunks filling the
  pager's share of the budget;
- rag: the same chunks in codevm's pager-first prompt (its instructions and closing), so
  that pager vs rag compares the pager's choice of code and nothing else;
- pager: codevm's pager-first `ask`;
- tools: codevm's tool mode (the MemGPT loop).
Per configuration: the share of answers whose own text cites a reference file (a path,
or its last two parts; the sources codevm lists do not count), identifier recall (the
share of the code identifiers named in the reference answer that the answer names),
the share of malformed or echoed replies, model calls, prompt tokens as the server
counted them (and from its prompt cache), seconds to the first token and per question.
Plus a memory check: facts told in one session, asked for in a new one; and sessions
(`--sessions N`): each repository's first N questions asked one after another in one
session, as `codevm ask` does by default, and hand-written chains (CHAINS): follow-ups
("and where is it called?"), and a question close to the one before it. A session's answers
are judged as above and by how much of each repeats an earlier answer of the session
(`copied`: the share of its five-word runs found in one; 0.5 or more counts as a copy).

The model: an OpenAI-compatible server (`--model-url`; ../shared/tools/local-model/
serves Qwen2.5-Coder-1.5B with llama.cpp). Every request and response goes through a
recording proxy: verbatim, in bench/.cache/recordings.jsonl, for the test suite's replays.
Answers are cached by (question, configuration, model, prompt hash) in
bench/.cache/answers.jsonl: a rerun pays only for what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from localization import checkout, mirror_for  # noqa: E402

from codevm.api import to_dict  # noqa: E402
from codevm.config import Settings  # noqa: E402
from codevm.engine import Engine  # noqa: E402
from codevm.memory.ask import PAGER_CLOSING, PAGER_INSTRUCTIONS  # noqa: E402
from codevm.memory.budget import Budget, TokenEstimator  # noqa: E402
from codevm.memory.functions import TOOL_NAMES  # noqa: E402
from codevm.memory.replies import as_answer  # noqa: E402
from codevm.models import Limits, OpenAIModel  # noqa: E402
from codevm.retrieval.lexical import lexical  # noqa: E402

DATA = HERE.parent.parent / "shared" / "bench" / "swe_qa_dev.jsonl"
REPOS = ("pallets/flask", "psf/requests")
CONFIGS = ("closed", "rag_plain", "rag", "pager", "tools")
# the 1-minute load average at which the machine counts as idle: the model server's own
# two threads keep it near 2 while it reads or writes
IDLE_LOAD = 2.5
TOOL_STEPS = 4


def _code_hash(*names: str, extra: str = "") -> str:
    return hashlib.sha256(extra.encode() + b"".join(
        (HERE.parent / "codevm" / "memory" / name).read_bytes() for name in names)).hexdigest()


# the code that makes each configuration's prompts: a change to it asks those answers again
# (pager-first: its two prompt texts, the context's layout and the pager's choice of pages)
PROMPT_CODE = {"pager": _code_hash("context.py", "pager.py", extra=PAGER_INSTRUCTIONS + PAGER_CLOSING),
               "tools": _code_hash("ask.py", "agent.py", "context.py", "functions.py", "replies.py",
                                   "pager.py"),
               "session": _code_hash("ask.py", "context.py", "conversation.py", "pager.py",
                                     extra=PAGER_INSTRUCTIONS + PAGER_CLOSING)}
CLOSED = """You are an assistant that answers questions about the {repo} codebase.
Cite the code you mean as path:start-end. Be brief and exact."""
CLOSED_CLOSING = "Answer in a few sentences, citing the path:lines of the code you mean."
_IDENT = re.compile(r"`([^`\n]{2,80})`|\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*\b|\b_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"
                    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")
# questions asked one after another in one session, each with the files that answer it
# (none: not judged): follow-ups, and a question close to the one before it
CHAINS = {
    "pallets/flask": [
        [("Where is the session cookie saved to the response?", []),
         ("And where is that called during a request?", ["src/flask/app.py"])],
        [("How does Flask decide which URL rule matches a request, and where is the view function called?", []),
         ("Where does Flask register a blueprint's URL rules on the app?", ["src/flask/sansio/blueprints.py"])],
    ],
    "psf/requests": [
        [("Where is the body of a prepared request encoded?", []),
         ("And which function sends it over the connection?", ["src/requests/adapters.py"])],
        [("How does a Session follow redirects?", []),
         ("Where are the cookies of a session merged into a prepared request?", ["src/requests/cookies.py"])],
    ],
}
FACTS = [  # (told in one session, asked in a new one, the words the answer must hold)
    ("remember that we call the app factory make_app", "what do we call the app factory?", "make_app"),
    ("remember that the release manager is Ana Souza", "who is the release manager?", "Ana Souza"),
    ("remember that our staging server is staging-7.internal", "what is our staging server?", "staging-7"),
    ("remember that we pin the Python version to 3.12.4", "which Python version do we pin?", "3.12.4"),
    ("remember that the on-call channel is #web-oncall", "what is the on-call channel?", "#web-oncall"),
    ("remember that feature flags live in config/flags.yaml", "where do feature flags live?", "flags.yaml"),
    ("remember that we deprecated the legacy_auth module in May",
     "which module did we deprecate in May?", "legacy_auth"),
    ("remember that the default request timeout we use is 17 seconds",
     "what default request timeout do we use?", "17"),
    ("remember that the docs are built with the tool sphinx-autobuild",
     "which tool builds the docs?", "sphinx-autobuild"),
    ("remember that our coverage target is 91 percent", "what is our coverage target?", "91"),
]


# -- the recording proxy -----------------------------------------------------------------------
class Recorder:
    """A proxy in front of the model server that writes each exchange, verbatim."""

    def __init__(self, upstream: str, out: Path):
        self.upstream = upstream.rstrip("/")
        self.out = out
        self.lock = threading.Lock()
        self.tag = ""  # which question and configuration the next exchanges belong to
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks: list[bytes] = []
                with httpx.Client(timeout=None) as client, client.stream(
                        method, recorder.upstream + self.path, content=body or None,
                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                ) as response:
                    self.send_response(response.status_code)
                    self.send_header("Content-Type", response.headers.get("content-type", ""))
                    self.end_headers()
                    try:
                        for chunk in response.iter_raw():
                            chunks.append(chunk)
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except OSError:
                        pass  # the client stopped reading (a time limit)
                if method == "POST":
                    recorder.write({"tag": recorder.tag, "path": self.path,
                                    "request": json.loads(body or b"{}"),
                                    "status": response.status_code,
                                    "response": b"".join(chunks).decode("utf-8", "replace")})

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def write(self, record: dict) -> None:
        with self.lock, self.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# -- measures ----------------------------------------------------------------------------------
def cites_reference(answer: str, gold_files: list[str]) -> bool:
    """Whether the answer's text names a reference file (its path, or its last two parts)."""
    for path in gold_files:
        parts = path.split("/")
        if path in answer or (len(parts) >= 2 and "/".join(parts[-2:]) in answer):
            return True
    return False


def _runs(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def copied(answer: str, earlier: list[str]) -> float | None:
    """The share of the answer's five-word runs that an earlier answer holds (None: too short)."""
    runs = _runs(answer)
    if not runs or not earlier:
        return None
    seen = set().union(*(_runs(e) for e in earlier))
    return len(runs & seen) / len(runs)


def identifiers(text: str) -> set[str]:
    found = set()
    for m in _IDENT.finditer(text):
        name = (m.group(1) or m.group(0)).strip().rstrip("()")
        name = re.split(r"[(\s]", name)[0]
        if re.fullmatch(r"[A-Za-z_][\w.]*", name) and len(name) > 2:
            found.add(name.rsplit(".", 1)[-1])
    return found


def identifier_recall(answer: str, reference: str) -> float | None:
    wanted = identifiers(reference)
    if not wanted:
        return None
    return sum(1 for name in wanted if name in answer) / len(wanted)


# -- configurations ----------------------------------------------------------------------------
def _pages_prompt(engine: Engine, question: str, budget: Budget) -> str:
    """Plain RAG: the best BM25 chunks, in order, until the pager's share is full."""
    con = engine.store.cursor()
    _, ranked = lexical(con, engine.store.lexical, question, 100)
    pages = engine.pager.page_map([item.chunk_id for item in ranked], budget.estimator)
    used, parts = 0, []
    for item in ranked:
        page = pages.get(item.chunk_id)
        if page is None or used + page.tokens > budget.pages:
            continue
        parts.append(page.render())
        used += page.tokens
    return "Code from the project, each part headed by its path:lines:\n\n" + "\n\n".join(parts)


def run_plain(model: OpenAIModel, messages: list[dict], settings: Settings, num_ctx: int) -> dict:
    started = time.monotonic()
    reply = model.chat(messages, num_ctx, Limits(settings.model_connect_timeout,
                                                 settings.model_first_token_timeout,
                                                 settings.model_idle_timeout, settings.answer_reserve))
    answer, bad = as_answer(reply.content, TOOL_NAMES)
    return {"answer": answer, "raw": reply.content, "malformed": int(bad), "calls": 1,
            "prompt_tokens": reply.prompt_tokens or 0, "cached_tokens": reply.cached_tokens or 0,
            "first_token_s": reply.first_token_seconds, "seconds": time.monotonic() - started,
            "truncated": reply.truncated}


def run_codevm(engine: Engine, question: str, settings: Settings, budget: int) -> dict:
    started = time.monotonic()
    result = engine.ask(question, new_session=True, budget=budget, settings=settings)
    calls = result.calls
    return {"answer": result.answer, "raw": result.answer, "malformed": result.malformed,
            "calls": len(calls), "prompt_tokens": sum(c.prompt_tokens or 0 for c in calls),
            "cached_tokens": sum(c.cached_tokens or 0 for c in calls),
            "first_token_s": calls[0].first_token_seconds if calls else None,
            "seconds": time.monotonic() - started, "truncated": result.truncated,
            "notice": result.notice, "over_budget": sum(
                1 for c in calls if c.prompt_tokens and result.context
                and c.prompt_tokens > result.context.budget),
            "estimated_tokens": [c.estimated_tokens for c in calls],
            "counted_tokens": [c.prompt_tokens for c in calls]}


def summarise(rows: list[dict]) -> dict:
    def share(key: str) -> float:
        return round(sum(1 for r in rows if r[key]) / max(len(rows), 1), 3)

    recalls = [r["identifier_recall"] for r in rows if r["identifier_recall"] is not None]
    firsts = [r["first_token_s"] for r in rows if r.get("first_token_s") is not None]
    idle = [r["first_token_s"] for r in rows if r.get("first_token_s") is not None and r.get("load", 9) < IDLE_LOAD]
    return {"questions": len(rows), "cites_reference_file": share("cites"),
            "identifier_recall": round(statistics.mean(recalls), 3) if recalls else None,
            "malformed_or_echoed": share("malformed"), "truncated": share("truncated"),
            "model_calls_per_question": round(statistics.mean(r["calls"] for r in rows), 2) if rows else 0,
            "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in rows) if rows else 0,
            "cached_tokens_median": statistics.median(r["cached_tokens"] for r in rows) if rows else 0,
            "first_token_s_median": round(statistics.median(firsts), 1) if firsts else None,
            "first_token_s_median_idle": round(statistics.median(idle), 1) if idle else None,
            "idle_answers": len(idle),
            "seconds_median": round(statistics.median(r["seconds"] for r in rows), 1) if rows else 0,
            "over_budget": sum(r.get("over_budget", 0) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-url", default="http://127.0.0.1:18080/v1")
    ap.add_argument("--model", default="qwen2.5-coder:1.5b")
    ap.add_argument("--per-repo", type=int, default=12, help="questions per repository")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--budget", type=int, default=4096, help="tokens of main context (num_ctx)")
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=0,
                    help="questions per repository asked one after another in one session")
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "answers-work")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    recorder = Recorder(args.model_url.removesuffix("/v1"), args.cache / "recordings.jsonl")
    settings = Settings(model=args.model, model_url=recorder.url + "/v1", embedder="off",
                        service=False, watch=False, num_ctx=args.budget, answer_reserve=512)
    cache_file = args.cache / "answers.jsonl"
    cache = {}
    if cache_file.exists():
        for line in cache_file.read_text().splitlines():
            row = json.loads(line)
            cache[row["key"]] = row
    questions = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    configs = [c for c in args.configs.split(",") if c]
    results: dict[str, list[dict]] = {c: [] for c in configs}
    checks: dict[str, dict] = {}
    model = OpenAIModel(args.model, settings.model_url)
    server_ctx = model.context_length(args.budget)
    for repo in REPOS:
        chosen = [q for q in questions if q["repo"] == repo][: args.per_repo]
        tree = args.work / repo.replace("/", "__")
        checkout(mirror_for(args.mirrors, repo), tree, args.work / (repo.replace("/", "__") + ".json"),
                 chosen[0]["commit"])
        with Engine(tree, settings) as engine:
            engine.index()
            # the same share-out as codevm's own asking: `--budget` tokens of prompt
            budget = Budget.for_question(server_ctx, settings.answer_reserve, args.budget,
                                         settings.pager_share, TokenEstimator())
            calls = engine.store.get_meta(f"tool_calls:{args.model}")
            if "tools" in configs and not calls:  # as a user would: `codevm model check` first
                recorder.tag = "model check"
                checks[repo] = to_dict(engine.check_model(settings))
                calls = engine.store.get_meta(f"tool_calls:{args.model}")
            for q in chosen:
                for config in configs:
                    if config == "closed":
                        messages = [{"role": "system", "content": CLOSED.format(repo=repo)},
                                    {"role": "user", "content": q["query"] + "\n\n" + CLOSED_CLOSING}]
                        prompt = json.dumps(messages)
                    elif config == "rag_plain":
                        messages = [{"role": "system", "content": CLOSED.format(repo=repo)},
                                    {"role": "user", "content": _pages_prompt(engine, q["query"], budget)
                                     + "\n\nQuestion: " + q["query"] + "\n\n" + CLOSED_CLOSING}]
                        prompt = json.dumps(messages)
                    elif config == "rag":
                        messages = [{"role": "system", "content": PAGER_INSTRUCTIONS},
                                    {"role": "user", "content": _pages_prompt(engine, q["query"], budget)
                                     + "\n\nQuestion: " + q["query"] + "\n\n" + PAGER_CLOSING}]
                        prompt = json.dumps(messages)
                    else:
                        pages = engine.pager.prefetch(q["query"], budget.pages)
                        prompt = json.dumps([config, PROMPT_CODE[config], [p.citation for p in pages]]
                                            + ([calls] if config == "tools" else []))
                    key = hashlib.sha256(json.dumps(
                        [q["id"], config, args.model, args.budget, hashlib.sha256(prompt.encode()).hexdigest()]
                    ).encode()).hexdigest()[:24]
                    row = cache.get(key)
                    if row is None:
                        recorder.tag = f"{q['id']}|{config}"
                        # tool mode: at most TOOL_STEPS calls (each reads the whole prompt again)
                        run_settings = Settings(**{**settings.__dict__, "max_steps": TOOL_STEPS,
                                                   "ask_mode": config if config in ("pager", "tools")
                                                   else "pager"})
                        try:
                            if config in ("closed", "rag_plain", "rag"):
                                outcome = run_plain(model, messages, settings, budget.num_ctx)
                            else:
                                outcome = run_codevm(engine, q["query"], run_settings, args.budget)
                        except Exception as e:  # noqa: BLE001 - recorded as a failed answer
                            outcome = {"answer": "", "raw": "", "malformed": 0, "calls": 0,
                                       "prompt_tokens": 0, "cached_tokens": 0, "first_token_s": None,
                                       "seconds": 0.0, "truncated": False, "error": str(e)}
                        row = {"key": key, "id": q["id"], "config": config, "load": os.getloadavg()[0],
                               **outcome}
                        with cache_file.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
                        cache[key] = row
                        print(f"{q['id']} {config}: {row['seconds']:.0f}s {row['answer'][:80]!r}",
                              file=sys.stderr, flush=True)
                    row = {**row, "cites": cites_reference(row["answer"], q["gold_files"]),
                           "identifier_recall": identifier_recall(row["answer"], q["answer"])}
                    results[config].append(row)
    memory = memory_check(args, settings, cache, cache_file, recorder) if args.facts else None
    sessions = session_check(args, settings, cache, cache_file, recorder, questions) if args.sessions else None
    print(json.dumps({
        "model": args.model, "server": args.model_url, "budget": args.budget,
        "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "configs": {c: summarise(rows) for c, rows in results.items()},
        "model_check": checks or None,
        "memory": memory, "sessions": sessions}))


def session_check(args: argparse.Namespace, settings: Settings, cache: dict, cache_file: Path,
                  recorder: Recorder, questions: list[dict]) -> dict:
    """Questions asked one after another in one session (pager-first), and follow-ups."""
    chains = []
    for repo in REPOS:
        chosen = [q for q in questions if q["repo"] == repo][: args.sessions]
        chains.append((repo, [(q["id"], q["query"], q["gold_files"], q["answer"]) for q in chosen]))
        for i, chain in enumerate(CHAINS[repo]):
            chains.append((repo, [(f"{repo}#chain{i}.{n}", query, files, "")
                                  for n, (query, files) in enumerate(chain)]))
    code = PROMPT_CODE["session"]
    rows: list[dict] = []
    for repo, chain in chains:
        key = hashlib.sha256(json.dumps(["session", [c[0] for c in chain], args.model, args.budget, code]
                                        ).encode()).hexdigest()[:24]
        cached = cache.get(key)
        if cached is None:
            answers = []
            with Engine(args.work / repo.replace("/", "__"),
                        Settings(**{**settings.__dict__, "ask_mode": "pager"})) as engine:
                for n, (qid, query, _, _) in enumerate(chain):
                    recorder.tag = f"{qid}|session"
                    started = time.monotonic()
                    answer = engine.ask(query, new_session=n == 0, budget=args.budget).answer
                    answers.append(answer)
                    print(f"{qid} session: {time.monotonic() - started:.0f}s {answer[:80]!r}",
                          file=sys.stderr, flush=True)
            cached = {"key": key, "chain": [c[0] for c in chain], "answers": answers}
            with cache_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(cached) + "\n")
            cache[key] = cached
        for n, ((qid, _, files, reference), answer) in enumerate(zip(chain, cached["answers"])):
            if not files and not reference:  # a chain's opening question: not judged
                continue
            rows.append({"id": qid, "position": n, "follow_up": "#chain" in qid,
                         "cites": cites_reference(answer, files),
                         "identifier_recall": identifier_recall(answer, reference) if reference else None,
                         "copied": copied(answer, cached["answers"][:n]), "answer": answer[:160]})
    later = [r for r in rows if r["position"] > 0 and r["copied"] is not None]
    recalls = [r["identifier_recall"] for r in rows if r["identifier_recall"] is not None and not r["follow_up"]]
    return {
        "questions": sum(1 for r in rows if not r["follow_up"]),
        "cites_reference_file": round(statistics.mean(r["cites"] for r in rows if not r["follow_up"]), 3),
        "identifier_recall": round(statistics.mean(recalls), 3) if recalls else None,
        "after_an_answer": len(later),
        "copied_mean": round(statistics.mean(r["copied"] for r in later), 3) if later else None,
        "copies": sum(1 for r in later if r["copied"] >= 0.5),
        "chains_cite": f"{sum(r['cites'] for r in rows if r['follow_up'])}/"
                           f"{sum(1 for r in rows if r['follow_up'])}",
        "details": rows}


def memory_check(args: argparse.Namespace, settings: Settings, cache: dict, cache_file: Path,
                 recorder: Recorder) -> dict:
    """Each fact told in one session and asked for in a new one (pager-first)."""
    tree = args.work / REPOS[0].replace("/", "__")
    recalled = 0
    details = []
    with Engine(tree, Settings(**{**settings.__dict__, "ask_mode": "pager"})) as engine:
        for told, asked, expected in FACTS[: args.facts]:
            key = hashlib.sha256(json.dumps(["fact", told, asked, args.model]).encode()).hexdigest()[:24]
            row = cache.get(key)
            if row is None:
                recorder.tag = f"fact|{expected}"
                engine.ask(told, new_session=True, budget=args.budget)
                answer = engine.ask(asked, new_session=True, budget=args.budget).answer
                row = {"key": key, "fact": told, "asked": asked, "answer": answer}
                with cache_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            ok = expected.lower() in row["answer"].lower()
            recalled += ok
            details.append({"asked": asked, "expected": expected, "recalled": ok,
                            "answer": row["answer"][:200]})
    return {"facts": len(details), "recalled": recalled, "details": details}


if __name__ == "__main__":
    main()

"""Asking: one question answered by the local model inside a bounded main context.

Two modes (setting `ask_mode`; "auto" takes what `codevm model check` recorded):

- pager-first (the default): the heuristic pager fills the working set for the question
  (and, for a follow-up, the turn before it); notes that match are added; the model
  answers in one call, with no function schemas to read or copy, the earlier turns a
  record in its instructions rather than replies of its own to copy. Small models (1.5B-7B)
  answer best this way. "Remember that ..." is saved as a note without the model.
- tools: the MemGPT loop; the model pages code and uses memory through function calls.

Both restore the session from recall storage, record every message, keep the prompt
within the budget, cap the answer's length and say when it was cut.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from codevm.api import AskResult, ModelCall, ModelCheck, PageInfo
from codevm.config import Settings
from codevm.db.store import Store
from codevm.errors import CodevmError, InvalidArgument, ModelMissing, ModelUnavailable
from codevm.memory.agent import INSTRUCTIONS, Agent
from codevm.memory.budget import Budget, TokenEstimator
from codevm.memory.context import CITED, ContextMessage, MainContext, Page, answer_code
from codevm.memory.conversation import SUMMARY_PROMPT, Conversation
from codevm.memory.core import CoreMemory
from codevm.memory.functions import TOOL_NAMES, TOOLS, MemoryFunctions, Reader, call_schema, describe_tools
from codevm.memory.notes import Notes
from codevm.memory.pager import HeuristicPager
from codevm.memory.recall import Recall
from codevm.memory.replies import StreamGate, as_answer, echoes_schema, parse_call
from codevm.models import ChatModel, ModelReply, limits_of, make_model
from codevm.models.base import SENTENCE_END
from codevm.project import project_path
from codevm.retrieval.retriever import Retriever

ASK_MODES = ("auto", "pager", "tools")
TOOL_CALLS = ("auto", "native", "json")
CALL_SCHEMA = call_schema(TOOLS)
# tool mode for a model without native tool calling: the functions as text, each reply a call
JSON_INSTRUCTIONS = INSTRUCTIONS + "\n\n" + describe_tools(TOOLS)
MAX_NOTES = 5  # notes that match a question, added to its prompt

PAGER_INSTRUCTIONS = """You are codevm, an assistant that answers questions about one codebase.
With each question you get excerpts of the code that matter most for it. Each excerpt
starts with a header in brackets, its file path and lines, like [src/app.py:12-30].
Rules:
1. Answer from the excerpts (and the notes saved in earlier sessions, if any).
2. Name the functions, classes and parameters involved.
3. Cite each excerpt you use by its header, for example (src/app.py:12-30).
4. If the excerpts do not answer the question, say so."""
# after the question: small models follow the last thing they read most closely
PAGER_CLOSING = ('Answer in a few sentences. Start with "In <path>:<lines>," naming the excerpt '
                 "that answers it, and cite any other excerpt you use the same way.")

# "remember that we call the app factory make_app", "note: tests run with tox"
_REMEMBER = re.compile(
    r"^\s*(?:please\s+)?(?:remember|note|keep in mind|don'?t forget|do not forget)"
    r"(?:\s+that\b|\s*:|\s*,)\s*(?P<fact>.+?)\s*$", re.IGNORECASE | re.DOTALL)


# "and where is it called?", "what about the tests?"; "what does it return?"
_CONNECTIVE = re.compile(r"^\W*(?:and|also|but|so|then|or|what about|how about|what else|where else)\b",
                         re.IGNORECASE)
_POINTS_BACK = re.compile(r"\b(?:it|its|this|that|these|those|they|them|their|there|same|above)\b",
                          re.IGNORECASE)
SHORT_QUESTION = 10  # words: a question this short that points back leans on the turn before


def is_follow_up(question: str) -> bool:
    """Whether a question leans on the turn before it: it starts with a connective, it is
    one word, or it is short and points back ("what does it return?"). One that stands
    alone ("Where does Flask register a blueprint's URL rules?") is paged by its own words."""
    words = len(question.split())
    if _CONNECTIVE.match(question) or words == 1:  # "why?"
        return True
    return words <= SHORT_QUESTION and bool(_POINTS_BACK.search(question))


def paging_query(question: str, messages: list[ContextMessage]) -> str:
    """What the pager searches for a question: a follow-up with the question before it and
    the code its answer named (in "and where is that called?", "that" is in the answer)."""
    if not is_follow_up(question):
        return question
    turns = [m for m in messages if m.role in ("user", "assistant") and m.content.strip()]
    asked = [m.content for m in turns if m.role == "user"][-1:]
    answered = [m.content for m in turns if m.role == "assistant"][-1:]
    named = [c.strip("`") for a in answered for c in answer_code(a) if c.startswith("`")]
    # the names first: what a question about callers looks up is what "it" stands for
    return "\n".join([" ".join(named)] * bool(named) + asked + [question])


def fact_to_remember(question: str) -> str | None:
    """The fact of a "remember that ..." request, or None for anything else."""
    m = _REMEMBER.match(question)
    if not m or question.rstrip().endswith("?"):
        return None
    return m.group("fact").rstrip(".")


@dataclass
class Memory:
    """The parts a question uses: the project's memory and its code."""

    root: Path
    read: Reader  # lines of a project file, as the engine shows them
    store: Store  # for the calibration of token estimates, per model
    retriever: Retriever
    pager: HeuristicPager
    notes: Notes
    recall: Recall
    core: CoreMemory


def mode_for(settings: Settings, store: Store) -> str:
    """How `ask` uses the model: pager or tools."""
    return _chosen(settings, store, "ask_mode", ASK_MODES, "pager")


def calls_for(settings: Settings, store: Store) -> str:
    """How the model calls functions in tool mode: native or json."""
    return _chosen(settings, store, "tool_calls", TOOL_CALLS, "native")


def _chosen(settings: Settings, store: Store, name: str, choices: tuple[str, ...], default: str) -> str:
    """A setting's value; for "auto", what `codevm model check` recorded for the model."""
    value = str(getattr(settings, name)).strip().lower()
    if value not in choices:
        raise InvalidArgument(f"setting {name!r} must be one of {', '.join(choices)}, got {value!r}")
    if value == "auto":
        return store.get_meta(f"{name}:{settings.model}") or default
    return value


def ask(memory: Memory, settings: Settings, question: str, session: str | None = None,
        budget: int | None = None, on_text: Callable[[str], None] | None = None,
        new_session: bool = False, on_status: Callable[[str], None] | None = None) -> AskResult:
    """Answer `question` in `session` (None: the latest, unless `new_session`)."""
    mode = mode_for(settings, memory.store)
    if session:
        info = memory.recall.session(session)
    else:
        latest = None if new_session else memory.recall.latest()
        info = latest or memory.recall.new_session()
    fact = fact_to_remember(question) if mode == "pager" else None
    if fact:  # no model needed: not even its context size
        question_ = _Question(memory, settings, info.id, mode, settings.num_ctx, budget, None)
        return question_.remember(question, fact, on_text)
    with closing(make_model(settings)) as client:
        notice = ""
        model: ChatModel | None = client
        num_ctx = settings.num_ctx
        try:
            num_ctx = client.context_length(settings.num_ctx)
        except (ModelUnavailable, ModelMissing) as e:
            notice, model = str(e), None
        return _Question(memory, settings, info.id, mode, num_ctx, budget, model).answer(
            question, notice, on_text, on_status)


class _Question:
    """One question's main context, conversation and model."""

    def __init__(self, memory: Memory, settings: Settings, session_id: str, mode: str,
                 num_ctx: int, budget: int | None, model: ChatModel | None):
        self.memory, self.settings, self.mode, self.model = memory, settings, mode, model
        self.factor_key = f"calibration:{settings.model}"
        learnt = memory.store.get_meta(self.factor_key)
        self.estimator = TokenEstimator(float(learnt or 1.0), calibrated=learnt is not None)
        self.limits = Budget.for_question(num_ctx, settings.answer_reserve, budget,
                                          settings.pager_share, self.estimator)
        pager_first = mode == "pager"
        self.json_calls = not pager_first and calls_for(settings, memory.store) == "json"
        if pager_first:
            self.context = MainContext(self.limits, PAGER_INSTRUCTIONS, [], layout="pager")
        elif self.json_calls:  # the functions in words, and no native schemas sent
            self.context = MainContext(self.limits, JSON_INSTRUCTIONS, [])
        else:
            self.context = MainContext(self.limits, INSTRUCTIONS, TOOLS)
        self.context.core = memory.core.blocks()
        self.conversation = Conversation(self.context, memory.recall, session_id,
                                         _summarizer(model, self.limits, settings))
        self.conversation.restore()
        self.session_id = session_id

    def record(self, role: str, text: str) -> None:
        self.conversation.record(ContextMessage(role, text, self.estimator.count(text) + 4))

    def result(self, question: str, notice: str = "") -> AskResult:
        return AskResult(question, "", self.session_id, self.settings.model, self.model is not None,
                         notice, mode=self.mode)

    def remember(self, question: str, fact: str, on_text: Callable[[str], None] | None) -> AskResult:
        """"remember that ...": a note, saved without the model."""
        self.record("user", question)
        note = self.memory.notes.insert(fact, ["remembered"], "agent")
        result = self.result(question)
        result.answer = f"I will remember that {fact} (note {note.id})."
        result.model_used = False
        self.record("assistant", result.answer)
        if on_text:
            on_text(result.answer)
        return self.finish(result)

    def answer(self, question: str, notice: str, on_text: Callable[[str], None] | None,
               on_status: Callable[[str], None] | None) -> AskResult:
        memory, context, limits = self.memory, self.context, self.limits
        pager_first = self.mode == "pager"
        query = paging_query(question, context.messages) if pager_first else question
        self.record("user", question)
        result = self.result(question, notice)
        # the heuristic pager fills the working set's share before the model sees anything
        for page in memory.pager.prefetch(query, max(0, limits.pages - context.working_set.tokens),
                                          set(context.working_set.pages), self.estimator):
            page.last_used = context.working_set.clock
            context.working_set.page_in(page)
        if pager_first:
            context.notes = _matching_notes(memory.notes, question)
            context.closing = PAGER_CLOSING
        self.conversation.fit()
        model = self.model
        if model is None:
            return self.finish(result)

        def chat(messages: list[dict], estimate: int, stream: Callable[[str], None] | None) -> ModelReply:
            assert estimate <= limits.tokens, "fit() keeps every prompt within budget"
            if on_status:
                on_status(f"reading {estimate:,} tokens of context...")
            # a constrained reply is a call: its answer is shown when send_message is read
            gate = StreamGate(None if self.json_calls else stream)
            reply = model.chat(messages, limits.num_ctx, limits_of(self.settings, limits.answer_reserve),
                               tools=None if pager_first or self.json_calls else TOOLS,
                               json_schema=CALL_SCHEMA if self.json_calls else None, on_text=gate)
            gate.finish()
            self.estimator.calibrate(estimate, reply.prompt_tokens)
            result.calls.append(ModelCall(estimate, reply.prompt_tokens, reply.cached_tokens,
                                          reply.completion_tokens, reply.first_token_seconds,
                                          round(reply.seconds, 2), reply.truncated, reply.repeated))
            result.streamed = result.streamed or gate.shown
            return reply

        try:
            if pager_first:
                reply = chat(*context.prompt(), on_text)
                result.answer, bad = as_answer(reply.content, TOOL_NAMES)
                result.malformed = int(bad)
                self.correct(result)
                if result.answer:
                    self.record("assistant", result.answer)
            else:
                functions = MemoryFunctions(memory.root, memory.read, context, memory.retriever, memory.pager,
                                            memory.notes, memory.recall, memory.core)
                agent = Agent(functions, context, chat, self.settings.max_steps, self.conversation.record)
                outcome = agent.run(self.conversation.fit, on_text)
                result.answer, result.steps, result.finished = (
                    outcome.answer, outcome.steps, outcome.finished)
                result.malformed = outcome.malformed
                self.correct(result)
            result.truncated = bool(result.calls) and result.calls[-1].truncated
            result.repeated = bool(result.calls) and result.calls[-1].repeated
            memory.store.set_meta(self.factor_key, f"{self.estimator.factor:.4f}")
        except (ModelUnavailable, ModelMissing) as e:
            result.model_used, result.notice = False, str(e)
        if result.model_used and not result.answer and not result.notice:
            result.notice = (f"the model made {len(result.steps)} function calls (max_steps) without "
                             "answering: these are the pages it had" if not result.finished else
                             "the model's reply was not an answer (it repeated its instructions or "
                             "printed a call): these are the pages the pager chose")
        return self.finish(result)

    def correct(self, result: AskResult) -> None:
        """The answer's citations of files the project does not have, given the path of the
        one page they mean (a small model shortens or invents a path for lines it was shown)."""
        root = self.memory.root

        def exists(path: str) -> bool:
            try:  # outside the project, or a babbled name longer than the system allows: no
                return (root / project_path(root, path)).is_file()
            except (CodevmError, OSError):
                return False

        result.answer, result.corrected = repair_citations(
            result.answer, list(self.context.working_set.pages.values()), exists)

    def finish(self, result: AskResult) -> AskResult:
        _cite(result, sorted(self.context.working_set.pages.values(), key=lambda p: -p.relevance))
        result.context = self.context.report()
        result.evicted_messages = sum(e.messages for e in self.conversation.state.evictions)
        return result


def _matching_notes(notes: Notes, question: str) -> str:
    try:
        found = notes.search(question, k=MAX_NOTES)
    except InvalidArgument:  # no searchable word in the question
        return ""
    return "\n".join(f"- {n.text}" + (" (its code has changed since)" if n.stale else "") for n in found)


def _summarizer(model: ChatModel | None, limits: Budget,
                settings: Settings) -> Callable[[str, str, int], str | None]:
    """How evicted messages are summarised: by the model, or None (extractive)."""

    def summarize(previous: str, transcript: str, words: int) -> str | None:
        if model is None:
            return None
        prompt = SUMMARY_PROMPT.format(words=words)
        room = limits.summary_input_chars(prompt)
        text = (f"Earlier summary:\n{previous}\n\n" if previous else "") + transcript
        try:
            reply = model.chat([{"role": "system", "content": prompt},
                                {"role": "user", "content": text[-room:]}], limits.num_ctx,
                               limits_of(settings, limits.answer_reserve))
        except (ModelUnavailable, ModelMissing):
            return None
        return reply.content.strip() or None

    return summarize


def page_info(p: Page) -> PageInfo:
    return PageInfo(p.citation, p.path, p.start_line, p.end_line, p.symbol, p.tokens, p.relevance, p.reason,
                    p.text, p.verbatim)




def repair_citations(answer: str, pages: list[Page], exists: Callable[[str], bool]) -> tuple[str, list[str]]:
    """`answer` with each `path:lines` it cites that is neither a page's path nor a file of
    the project (`exists`) given the path of the one page it means: the page whose path ends
    with it (`identifiers.py:55` for codevm/indexers/identifiers.py), else the one of its file
    name whose lines it overlaps; else, path and lines, the one page whose symbol the
    sentence of the citation names, when it cites nothing else (a small model copies the
    prompt's example path: "In [src/app.py:12-30], the `split_identifier` function ...");
    else the one with exactly its lines. (The sentence comes before the lines: the same
    model wrote "In [src/app.py:117-133], the `split_identifier` function", the lines of the
    header after split_identifier's page.) Returns the answer and the corrections made
    ("cited is right")."""
    if not answer or not pages:
        return answer, []
    known = {p.path for p in pages}
    corrected: list[str] = []

    def named(m: re.Match[str]) -> Page | None:
        """The one page whose symbol's name the sentence around the match holds, if the
        sentence cites nothing else."""
        after = answer[m.end():]
        end = SENTENCE_END.search(after)
        sentence = SENTENCE_END.split(answer[: m.start()])[-1] + after[: end.start() if end else None]
        if CITED.search(sentence):
            return None
        found: dict[str, Page] = {}
        for p in pages:
            name = p.symbol.rsplit(".", 1)[-1]
            if len(name) > 2 and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", sentence):
                found[p.citation] = p
        return next(iter(found.values())) if len(found) == 1 else None

    def fix(m: re.Match[str]) -> str:
        path, start = m.group(1), int(m.group(2))
        end = int(m.group(3) or start)
        if path in known or exists(path):
            return m.group(0)
        name = path.rsplit("/", 1)[-1]

        def only(rule: Callable[[Page], bool]) -> str | None:
            found = {p.path for p in pages if rule(p)}
            return found.pop() if len(found) == 1 else None

        right = None
        found = only(lambda p: p.path.endswith("/" + path)) or only(
            lambda p: p.path.rsplit("/", 1)[-1] == name and p.start_line <= end and start <= p.end_line)
        if found is None and (page := named(m)) is not None:
            right = page.citation  # the page the sentence names: before one that only has the lines
        elif found := found or only(lambda p: (p.start_line, p.end_line) == (start, end)):
            right = m.group(0).replace(path, found, 1)
        if right is None:
            return m.group(0)
        corrected.append(f"{m.group(0)} is {right}")
        return right

    return CITED.sub(fix, answer), corrected


def _cite(result: AskResult, pages: list[Page]) -> None:
    """The pages of the working set, and the answer's citations: the pages it cites, else
    the best pages it was given (with no answer: every page)."""
    result.pages = [page_info(p) for p in pages]
    cited = [p.citation for p in pages if p.path in result.answer]
    result.cites_code = bool(cited)
    if result.answer:
        result.citations = cited or [p.citation for p in pages[:5]]
    else:
        result.citations = [p.citation for p in pages]


PROBE = ("Find where the function `main` is defined in this project. Use the search_code "
         "function: call it, do not answer in words.")


def check_model(store: Store, settings: Settings) -> ModelCheck:
    """Ask the configured model once to call a function; record which mode it can use
    (`ask_mode = "auto"` then takes it)."""
    with closing(make_model(settings)) as client:
        return _probe(store, settings, client)


def _probe(store: Store, settings: Settings, client: ChatModel) -> ModelCheck:
    num_ctx = client.context_length(settings.num_ctx)
    started = time.monotonic()
    search = [t for t in TOOLS if t["function"]["name"] == "search_code"]
    reply = client.chat([{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": PROBE}],
                        num_ctx, limits_of(settings, 256), tools=search)
    native = _searched(reply.tool_calls[0] if reply.tool_calls else None)
    printed = None if reply.tool_calls else parse_call(reply.content, TOOL_NAMES)
    if native:
        mode, why = "tools", "it called search_code"
    elif printed is not None:
        # measured with Qwen2.5-Coder-1.5B: a model that prints its calls as text also
        # wraps them wrongly and loses the thread within a few steps
        mode, why = "pager", "it printed the call as text instead of making it: tool mode would be unreliable"
    elif echoes_schema(reply.content):
        mode, why = "pager", "it copied the function schemas instead of calling one"
    else:
        mode, why = "pager", "it answered in words instead of calling a function"
    calls = "native" if native else ""
    if not native:  # can the server hold it to a call? (for ask_mode = "tools")
        constrained = client.chat([{"role": "system", "content": JSON_INSTRUCTIONS},
                                   {"role": "user", "content": PROBE}], num_ctx, limits_of(settings, 256),
                                  json_schema=CALL_SCHEMA)
        if _searched(parse_call(constrained.content, TOOL_NAMES)):
            calls = "json"
            why += "; held to a JSON schema it called search_code (tool mode would use that)"
    store.set_meta(f"ask_mode:{settings.model}", mode)
    if calls:
        store.set_meta(f"tool_calls:{settings.model}", calls)
    return ModelCheck(settings.model, client.where, num_ctx, mode, why, native,
                      round(time.monotonic() - started, 1), calls)


def _searched(call: dict | None) -> bool:
    return bool(call and call.get("name") == "search_code" and (call.get("arguments") or {}).get("query"))

"""Asking: one question answered by the local model inside a bounded main context.

The path of a question: the session's main context is restored from recall storage; the
question is recorded; the heuristic pager fills the working set's share of the budget;
the agent loop lets the model page code and use memory through its functions; the
answer is recorded and returned with the pages it could cite. Without a reachable model
the answer is the pages the pager chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from codevm.api import AskResult, PageInfo
from codevm.config import Settings
from codevm.db.store import Store
from codevm.errors import InvalidArgument, ModelMissing, ModelUnavailable
from codevm.memory.agent import INSTRUCTIONS, Agent
from codevm.memory.budget import Budget, TokenEstimator
from codevm.memory.context import ContextMessage, MainContext, Page
from codevm.memory.conversation import SUMMARY_PROMPT, Conversation
from codevm.memory.core import CoreMemory
from codevm.memory.functions import TOOLS, MemoryFunctions
from codevm.memory.notes import Notes
from codevm.memory.pager import HeuristicPager
from codevm.memory.recall import Recall
from codevm.model_client import ModelReply, OllamaModel
from codevm.retrieval.retriever import Retriever


@dataclass
class Memory:
    """The parts a question uses: the project's memory and its code."""

    root: Path
    store: Store  # for the calibration of token estimates, per model
    retriever: Retriever
    pager: HeuristicPager
    notes: Notes
    recall: Recall
    core: CoreMemory


def ask(memory: Memory, settings: Settings, question: str, session: str | None = None,
        budget: int | None = None, on_text: Callable[[str], None] | None = None,
        new_session: bool = False) -> AskResult:
    """Answer `question` in `session` (None: the latest, unless `new_session`)."""
    if not question or not question.strip():
        raise InvalidArgument("the question is empty")
    recall = memory.recall
    if session:
        info = recall.session(session)
    else:
        latest = None if new_session else recall.latest()
        info = latest or recall.new_session()
    client = OllamaModel(settings.model, settings.ollama_host)
    model: OllamaModel | None = client
    notice = ""
    num_ctx = settings.num_ctx
    try:
        num_ctx = client.context_length(settings.num_ctx)
    except (ModelUnavailable, ModelMissing) as e:
        model, notice = None, str(e)
    factor_key = f"calibration:{settings.model}"
    estimator = TokenEstimator(float(memory.store.get_meta(factor_key) or 1.0))
    limits = Budget.for_question(num_ctx, settings.answer_reserve, budget, settings.pager_share,
                                 estimator)
    context = MainContext(limits, INSTRUCTIONS, TOOLS)
    context.core = memory.core.blocks()
    conversation = Conversation(context, recall, info.id, _summarizer(model, limits))
    conversation.restore()
    conversation.record(ContextMessage("user", question, estimator.count(question) + 4))
    # the heuristic pager fills the working set's share before the model sees anything
    share = limits.pages - context.working_set.tokens
    for page in memory.pager.prefetch(question, max(0, share), set(context.working_set.pages),
                                      estimator):
        page.last_used = context.working_set.clock
        context.working_set.page_in(page)
    conversation.fit()
    result = AskResult(question, "", info.id, settings.model, model is not None, notice)
    if model is not None:
        def chat(messages: list[dict], estimate: int,
                 stream: Callable[[str], None] | None) -> ModelReply:
            assert estimate <= limits.tokens, "fit() keeps every prompt within budget"
            reply = client.chat(messages, TOOLS, limits.num_ctx, stream)
            estimator.calibrate(estimate, reply.prompt_tokens)
            return reply

        functions = MemoryFunctions(memory.root, context, memory.retriever, memory.pager,
                                    memory.notes, recall, memory.core)
        agent = Agent(functions, context, chat, settings.max_steps, conversation.record)
        try:
            outcome = agent.run(conversation.fit, on_text)
            result.answer, result.steps, result.finished = (
                outcome.answer, outcome.steps, outcome.finished)
            memory.store.set_meta(factor_key, f"{estimator.factor:.4f}")
        except (ModelUnavailable, ModelMissing) as e:
            result.model_used, result.notice = False, str(e)
    _cite(result, sorted(context.working_set.pages.values(), key=lambda p: -p.relevance))
    result.context = context.report()
    result.evicted_messages = sum(e.messages for e in conversation.state.evictions)
    return result


def _summarizer(model: OllamaModel | None,
                limits: Budget) -> Callable[[str, str, int], str | None]:
    """How evicted messages are summarised: by the model, or None (extractive)."""

    def summarize(previous: str, transcript: str, words: int) -> str | None:
        if model is None:
            return None
        prompt = SUMMARY_PROMPT.format(words=words)
        room = limits.summary_input_chars(prompt)
        text = (f"Earlier summary:\n{previous}\n\n" if previous else "") + transcript
        try:
            reply = model.chat([{"role": "system", "content": prompt},
                                {"role": "user", "content": text[-room:]}], [], limits.num_ctx)
        except (ModelUnavailable, ModelMissing):
            return None
        return reply.content.strip() or None

    return summarize


def _cite(result: AskResult, pages: list[Page]) -> None:
    """The pages of the working set, and the citations of the answer (its sources)."""
    result.pages = [PageInfo(p.citation, p.path, p.start_line, p.end_line, p.symbol, p.tokens,
                             p.relevance, p.reason, p.text) for p in pages]
    cited = [p.citation for p in pages if p.path in result.answer]
    if result.answer and not cited and pages:
        cited = [p.citation for p in pages[:5]]
        result.answer += "\n\nSources: " + ", ".join(cited)
    result.citations = cited if result.answer else [p.citation for p in pages]

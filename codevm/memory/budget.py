"""The token budget of main context: how text is counted in tokens, and how the budget is
shared out. The only place that knows a number of characters per token or a share of
the budget; everything else asks a Budget.

Tokens are estimated locally before each call (no tokenizer endpoint) and the estimate
is calibrated from the token count the server reports after it, so that no prompt is
sent over budget (Ollama would silently cut it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codevm.api import MIN_BUDGET
from codevm.errors import InvalidArgument

CHARS_PER_TOKEN = 3.6  # code and prose with a BPE tokenizer, before calibration
# a transcript sent to be summarised is cut to this many characters a token: on the safe
# side of the estimate, since the summary's prompt must fit whatever the calibration says
SUMMARY_INPUT_CHARS_PER_TOKEN = 3.0
MIN_CONTEXT_TOKENS = 512  # what main context must hold after the answer reserve
# kept free of the estimate: the chat template's own tokens and what calibration has not
# learnt yet, so that the server's count of a prompt stays within the budget
ESTIMATE_MARGIN = 0.05
# before a model's first counted prompt: its chat template and tokenizer are unknown (the
# estimate was 6.6% under to 11.3% over llama.cpp's count for Qwen2.5-Coder)
UNCALIBRATED_MARGIN = 0.12

PRESSURE_WARNING = 0.72  # share of the budget at which the model is warned
EVICT_TO = 0.55  # after an eviction main context is at most this share of the budget
SUMMARY_SHARE = 0.12  # the recursive summary never takes more of the budget than this
SUMMARY_WORDS_PER_TOKEN = 1 / 1.5
OPENED_PAGE_PARTS = 3  # one page the model opens takes at most this part of the budget
RESERVE_PARTS = 4  # the answer reserve takes at most this part of num_ctx
# the pager ranks enough candidates to fill its share: one per this many tokens, at least
# MIN_CANDIDATES (chunks average ~250 tokens; some are skipped as duplicates or too big)
TOKENS_PER_CANDIDATE = 150
MIN_CANDIDATES = 30


class TokenEstimator:
    """chars / CHARS_PER_TOKEN, times a factor learnt from what the server counted."""

    def __init__(self, factor: float = 1.0, calibrated: bool = False):
        self.factor = factor
        self.calibrated = calibrated  # a server's count has tuned the factor

    def count(self, text: str) -> int:
        return int(len(text) / CHARS_PER_TOKEN * self.factor) + 1

    def chars(self, tokens: int) -> int:
        """About how many characters `tokens` tokens hold (the inverse of `count`)."""
        return int(tokens * CHARS_PER_TOKEN / max(self.factor, 0.5))

    def calibrate(self, estimated: int, counted: int | None) -> None:
        if not counted or estimated <= 0:
            return  # prompt_eval_count may be missing (e.g. a cached prompt)
        observed = self.factor * counted / estimated
        # move towards what was observed, but never so far that one odd reply misleads
        self.factor = min(2.5, max(0.5, 0.5 * self.factor + 0.5 * observed))
        self.calibrated = True


def candidates_for(tokens: int) -> int:
    """How many fused hits the pager ranks for a working set of `tokens` tokens."""
    return max(MIN_CANDIDATES, tokens // TOKENS_PER_CANDIDATE)


@dataclass
class Budget:
    """Main context's share-out: `tokens` for the prompt (num_ctx less the answer
    reserve), of which `pager_share` may go to code pages."""

    num_ctx: int
    answer_reserve: int
    pager_share: float = 0.5
    estimator: TokenEstimator = field(default_factory=TokenEstimator)

    def __post_init__(self) -> None:
        if self.num_ctx - self.answer_reserve < MIN_CONTEXT_TOKENS:
            raise InvalidArgument(
                f"num_ctx {self.num_ctx} leaves no room after the answer reserve of "
                f"{self.answer_reserve} tokens: raise num_ctx or lower answer_reserve")

    @classmethod
    def for_question(cls, num_ctx: int, answer_reserve: int, requested: int | None,
                     pager_share: float, estimator: TokenEstimator) -> Budget:
        """The budget of one question: the model's context, or less when `requested`."""
        reserve = min(answer_reserve, num_ctx // RESERVE_PARTS)
        if requested is not None:
            if requested < MIN_BUDGET:
                raise InvalidArgument(f"a budget of {requested} tokens is too small: instructions and "
                                      f"function schemas alone take ~1,000 (at least {MIN_BUDGET})")
            num_ctx = min(num_ctx, requested + reserve)
        return cls(num_ctx, reserve, pager_share, estimator)

    @property
    def tokens(self) -> int:
        return self.num_ctx - self.answer_reserve

    @property
    def prompt_limit(self) -> int:
        """The most a prompt may be estimated at: the budget less a margin for the error
        of the estimate (wider until a server's count has calibrated it)."""
        margin = ESTIMATE_MARGIN if self.estimator.calibrated else UNCALIBRATED_MARGIN
        return int(self.tokens * (1 - margin))

    @property
    def pages(self) -> int:
        """Tokens the working set of code pages may take."""
        return int(self.pager_share * self.tokens)

    @property
    def opened_page(self) -> int:
        """Tokens one page that the model opens may take."""
        return self.tokens // OPENED_PAGE_PARTS

    def under_pressure(self, used: int) -> bool:
        return used >= PRESSURE_WARNING * self.tokens

    def after_eviction(self) -> float:
        """Tokens main context is brought down to when messages are evicted."""
        return EVICT_TO * self.tokens

    @property
    def summary_words(self) -> int:
        return max(40, int(SUMMARY_SHARE * self.tokens * SUMMARY_WORDS_PER_TOKEN))

    @property
    def summary_chars(self) -> int:
        return int(SUMMARY_SHARE * self.tokens * CHARS_PER_TOKEN)

    def summary_input_chars(self, prompt: str) -> int:
        """Characters of transcript that fit beside the summary's `prompt`."""
        return int((self.tokens - self.estimator.count(prompt) - 64) * SUMMARY_INPUT_CHARS_PER_TOKEN)

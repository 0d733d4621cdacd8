"""The plain data of the Engine API: what it takes and returns, JSON-serialisable.

Kept apart from the modules that compute them, so that a client of the engine service
can unpickle answers without importing the database, the parsers or the model client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


MIN_BUDGET = 1500  # tokens of main context: instructions and schemas take ~1,000

# label -> (character limit, what the block is for); the model sees these descriptions
CORE_BLOCKS: dict[str, tuple[int, str]] = {
    "project": (2000, "what this codebase is, its layout and conventions"),
    "user": (1000, "the user's preferences"),
    "task": (2000, "the current goal and a scratchpad"),
}


def to_dict(obj: object) -> object:
    if isinstance(obj, list):
        return [to_dict(o) for o in obj]
    return asdict(obj)  # type: ignore[call-overload]


@dataclass
class Progress:
    phase: str  # "scanning", "indexing", "done"
    done: int = 0
    total: int = 0
    chunks: int = 0
    skipped: int = 0
    errors: int = 0


@dataclass
class IndexReport:
    files_seen: int = 0
    parsed: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: int = 0
    deleted: int = 0
    chunks: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


@dataclass
class SearchHit:
    id: int
    path: str
    start_line: int
    end_line: int
    symbol: str  # qualified name ('' for module code, windows)
    kind: str
    language: str
    score: float
    snippet: str
    signature: str = ""


@dataclass
class CoreBlock:
    label: str
    value: str
    limit: int
    description: str


@dataclass
class Note:
    id: int
    text: str
    tags: list[str] = field(default_factory=list)
    source: str = "user"
    path: str | None = None
    symbol: str | None = None
    stale: bool = False
    created_at: str = ""
    updated_at: str = ""


@dataclass
class SessionInfo:
    id: str
    title: str
    created_at: str
    updated_at: str
    messages: int
    summary: str = ""


@dataclass
class MessageRecord:
    id: int
    session_id: str
    role: str  # system | user | assistant | tool
    content: str
    created_at: str
    tool_name: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    in_context: bool = True


@dataclass
class SectionReport:
    name: str
    tokens: int
    items: list[str] = field(default_factory=list)


@dataclass
class ContextReport:
    """What main context holds, for `--show-context` and status views."""

    budget: int
    num_ctx: int
    used: int
    sections: list[SectionReport]
    pressure: bool


@dataclass
class StepLog:
    function: str
    arguments: dict
    ok: bool
    summary: str


@dataclass
class SymbolInfo:
    name: str
    qualified_name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str
    language: str


@dataclass
class RefInfo:
    name: str
    kind: str  # call | import
    path: str
    line: int
    caller: str  # qualified name of the enclosing definition ('' at module level)
    language: str


@dataclass
class CodeText:
    path: str
    start_line: int
    end_line: int
    total_lines: int
    text: str


@dataclass
class EmbeddingProgress:
    """How far the dense vectors of the index are (search uses whatever is done)."""

    embedder: str = ""  # "ollama:nomic-embed-text", "local:all-MiniLM-L6-v2"; "" when off
    dimension: int = 0  # 0 until the first vector is made
    embedded: int = 0  # chunks that have a vector
    total: int = 0  # chunks in the index
    running: bool = False  # the background embedder is working
    state: str = "off"  # off | waiting | running | done | unavailable
    message: str = ""  # why it is off or unavailable, and what to do

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.embedded >= self.total

    @property
    def partial(self) -> bool:
        """An embedder works on this index but has not embedded all of it (yet)."""
        return bool(self.embedder) and self.state != "off" and not self.complete

    def describe(self) -> str:
        """How far the vectors are, in a line."""
        if not self.embedder or self.state == "off":
            return f"vectors: off ({self.message})" if self.message else "vectors: off"
        line = f"vectors: {self.embedded:,} of {self.total:,} chunks embedded ({self.embedder}"
        line += ", working)" if self.running else ")"
        return line + (f"; {self.message}" if self.message else "")


@dataclass
class Status:
    root: str
    database: str
    database_bytes: int
    files: int
    chunks: int
    symbols: int
    refs: int
    languages: dict[str, int] = field(default_factory=dict)  # language -> files
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    errors: list[str] = field(default_factory=list)
    last_indexed_at: str | None = None  # the last full or partial index run
    last_updated_at: str | None = None  # the last time a change reached the index
    process: int = 0  # pid of the process that owns the database
    watching: bool = False  # files are re-indexed as they change on disk
    pending_changes: int = 0  # changed files waiting to be indexed
    watch_error: str = ""
    embeddings: EmbeddingProgress = field(default_factory=EmbeddingProgress)


@dataclass
class SymbolDetail:
    """What an editor shows for a symbol: where, its signature, docstring and notes."""

    definition: SymbolInfo
    signature: str
    docstring: str
    notes: list[Note] = field(default_factory=list)


@dataclass
class PageInfo:
    citation: str
    path: str
    start_line: int
    end_line: int
    symbol: str
    tokens: int
    relevance: float
    reason: str
    text: str


@dataclass
class AskResult:
    question: str
    answer: str  # empty when no model answered
    session_id: str
    model: str
    model_used: bool
    notice: str = ""  # why no model answered, and what to do
    citations: list[str] = field(default_factory=list)
    pages: list[PageInfo] = field(default_factory=list)
    steps: list[StepLog] = field(default_factory=list)
    context: ContextReport | None = None
    evicted_messages: int = 0
    finished: bool = True

"""The Engine API: `EngineAPI`, the typed list of what the CLI and both servers may call,
and the plain data it takes and returns (JSON-serialisable dataclasses).

Kept apart from the modules that compute them, so that a client of the engine service
imports neither the database, the parsers nor the model client. Both `Engine` (in
process) and the service's `RemoteEngine` implement EngineAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol, TypeVar

from codevm.errors import InvalidArgument

if TYPE_CHECKING:
    from codevm.config import Settings


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
class SkippedFile:
    path: str
    reason: str


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
    verbatim: bool = True  # every line of the range (a class's page may be its outline)


@dataclass
class ModelCall:
    """One request to the model: the prompt's tokens as estimated and as the server counted
    them (and how many came from its prompt cache), the answer's tokens, the times."""

    estimated_tokens: int
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_seconds: float | None = None
    seconds: float = 0.0
    truncated: bool = False
    repeated: bool = False  # the model began repeating itself: stopped, its text cut there


@dataclass
class ModelCheck:
    """What `codevm model check` found: which mode of asking the model can use."""

    model: str
    server: str
    context_length: int
    mode: str  # pager | tools
    reason: str
    native_calls: bool  # it calls functions through the API, not as text
    seconds: float
    tool_calls: str = ""  # how tool mode has it call: native | json (held to a schema) | "" (neither)


@dataclass
class AskResult:
    question: str
    answer: str  # empty when no model answered (or it gave no answer)
    session_id: str
    model: str
    model_used: bool
    notice: str = ""  # why no model answered, and what to do
    # the pages the answer cites; if it cites none, the best pages it was given; with no
    # answer, every page of the working set
    citations: list[str] = field(default_factory=list)
    pages: list[PageInfo] = field(default_factory=list)
    steps: list[StepLog] = field(default_factory=list)
    context: ContextReport | None = None
    evicted_messages: int = 0
    finished: bool = True  # False: the model ran out of steps (tool mode)
    mode: str = "pager"  # how the model was used: pager (one answer) or tools
    cites_code: bool = False  # the answer's own text names a page's path
    truncated: bool = False  # the answer was cut at its token limit (answer_reserve)
    repeated: bool = False  # the model began repeating itself: the answer was cut where it did
    malformed: int = 0  # replies that were no answer (an echoed schema, a stray call)
    streamed: bool = False  # the answer's text reached on_text as it came
    calls: list[ModelCall] = field(default_factory=list)
    # citations of the answer given a page's path ("src/app.py:55-71 is a/b.py:55-71"): the
    # model named a file the project does not have for lines of a page it was given
    corrected: list[str] = field(default_factory=list)


# -- the API ------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., object])


def idempotent(method: F) -> F:
    """Marks a method that may run twice with the same effect as once (reads, and writes
    that converge): a client may retry it when the service died in the middle of it."""
    method.__codevm_idempotent__ = True  # type: ignore[attr-defined]
    return method


# -- caps on every argument of every door (CLI, LSP, MCP, the service) ----------------------
# characters of a text argument, by parameter name (per method where one name means two things)
TEXT_CAPS: dict[str, int] = {
    "query": 32_000, "question": 32_000,  # a pasted traceback or issue fits; 10 MB does not
    "text": 20_000,  # a note or a core memory edit
    "update_file.text": 16_000_000,  # an editor's unsaved buffer (larger files are skipped anyway)
    "path": 4_096, "from_path": 4_096, "name": 1_000, "symbol": 1_000,
    "language": 100, "tag": 100, "label": 100, "block": 100, "mode": 100,
    "session": 200, "session_id": 200, "title": 200,
    "path_glob": 4_096, "kind": 100, "source": 100, "since": 100, "until": 100, "old": 20_000,
}
LIST_CAPS: dict[str, tuple[int, int]] = {"tags": (20, 100), "paths": (100_000, 4_096)}  # items, chars each
COUNT_CAP = 10_000  # k and limit
INT_ARGUMENTS = ("k", "limit", "start_line", "end_line", "chunk_id", "note_id", "budget", "max_tokens")
MAX_CONTEXT_TOKENS = 200_000  # context_for's max_tokens


def check_arguments(method: str, arguments: dict[str, object]) -> None:
    """Every argument of an API call within its type and cap, or InvalidArgument that says
    which and what is allowed (a dict is no note's text; "abc" is no list of tags)."""
    for key, value in arguments.items():
        if value is None:
            continue
        if isinstance(value, PurePath):
            value = str(value)
        elif key == "paths" and isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, PurePath) else v for v in value]
        cap = TEXT_CAPS.get(f"{method}.{key}", TEXT_CAPS.get(key))
        if cap is not None:
            if not isinstance(value, str):
                raise InvalidArgument(f"{key} must be text, not {type(value).__name__}")
            if len(value) > cap:
                raise InvalidArgument(f"{key} is {len(value):,} characters long: at most {cap:,} are taken")
        elif key in LIST_CAPS:
            items, chars = LIST_CAPS[key]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise InvalidArgument(f"{key} must be a list of text, not {type(value).__name__}")
            if len(value) > items or any(len(v) > chars for v in value):
                raise InvalidArgument(f"{key}: at most {items:,} of at most {chars:,} characters each")
        elif key in INT_ARGUMENTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"{key} must be a whole number, not {type(value).__name__}")
            if key in ("k", "limit") and not 1 <= value <= COUNT_CAP:
                raise InvalidArgument(f"{key} must be between 1 and {COUNT_CAP:,}, got {value}")
            if value < 0 or value > 1 << 40:
                raise InvalidArgument(f"{key} must be between 0 and {1 << 40}, got {value}")


class EngineAPI(Protocol):
    """What the CLI, the LSP server and the MCP server may call on a project's engine."""

    root: Path
    settings: Settings

    def relative_path(self, path: str) -> str: ...

    # indexing
    @idempotent
    def index(self, paths: list[str] | None = None,
              progress: Callable[[Progress], None] | None = None) -> IndexReport: ...

    @idempotent
    def update_file(self, path: str, text: str | None = None) -> IndexReport: ...

    @idempotent
    def configure(self, settings: Settings) -> None: ...

    @idempotent
    def warm_up(self) -> None: ...

    @idempotent
    def embed(self, progress: Callable[[EmbeddingProgress], None] | None = None,
              reset: bool = False) -> EmbeddingProgress: ...

    @idempotent
    def embedding_progress(self) -> EmbeddingProgress: ...

    # code
    @idempotent
    def search(self, query: str, k: int = 10, language: str | None = None,
               path_glob: str | None = None, kind: str | None = None) -> list[SearchHit]: ...

    @idempotent
    def symbol(self, name: str, limit: int = 50) -> list[SymbolInfo]: ...

    @idempotent
    def find_symbols(self, query: str, limit: int = 200) -> list[SymbolInfo]: ...

    @idempotent
    def outline(self, path: str) -> list[SymbolInfo]: ...

    @idempotent
    def definitions(self, name: str, from_path: str | None = None,
                    limit: int = 50) -> list[SymbolInfo]: ...

    @idempotent
    def describe(self, name: str, from_path: str | None = None) -> SymbolDetail | None: ...

    @idempotent
    def read(self, path: str, start_line: int | None = None,
             end_line: int | None = None) -> CodeText: ...

    @idempotent
    def read_chunk(self, chunk_id: int) -> CodeText: ...

    @idempotent
    def refs(self, name: str, limit: int = 200) -> list[RefInfo]: ...

    @idempotent
    def status(self) -> Status: ...

    @idempotent
    def skipped_files(self, limit: int = 1000) -> list[SkippedFile]:
        """Every path the index leaves out, with its reason (excluded folders included)."""
        ...

    # memory: notes (archival), core blocks, conversations (recall)
    def add_note(self, text: str, tags: list[str] | None = None, path: str | None = None,
                 symbol: str | None = None, source: str = "user") -> Note: ...

    @idempotent
    def search_notes(self, query: str, k: int = 10, tag: str | None = None) -> list[Note]: ...

    @idempotent
    def list_notes(self, path: str | None = None, symbol: str | None = None,
                   limit: int = 100) -> list[Note]: ...

    def forget_note(self, note_id: int) -> Note: ...

    @idempotent
    def core_memory(self) -> list[CoreBlock]: ...

    @idempotent
    def core_memory_block(self, label: str) -> CoreBlock: ...

    def core_memory_update(self, block: str, text: str, mode: str = "replace",
                           old: str | None = None) -> CoreBlock: ...

    @idempotent
    def conversation_search(self, query: str, k: int = 10, session: str | None = None,
                            since: str | None = None,
                            until: str | None = None) -> list[MessageRecord]: ...

    @idempotent
    def sessions(self, limit: int = 50) -> list[SessionInfo]: ...

    def new_session(self, title: str = "") -> SessionInfo: ...

    @idempotent
    def session_messages(self, session_id: str) -> list[MessageRecord]: ...

    # asking
    def ask(self, question: str, session: str | None = None, budget: int | None = None,
            on_text: Callable[[str], None] | None = None, new_session: bool = False,
            settings: Settings | None = None,
            on_status: Callable[[str], None] | None = None) -> AskResult: ...

    @idempotent
    def check_model(self, settings: Settings | None = None) -> ModelCheck: ...

    @idempotent
    def context_for(self, question: str, max_tokens: int = 4000) -> list[PageInfo]:
        """The heuristic pager's working set for a question, most relevant first, within
        `max_tokens` (no model involved, nothing recorded)."""
        ...


class EngineHandle(EngineAPI, Protocol):
    """An engine that its opener closes (Engine, or a client of the service)."""

    def close(self) -> None: ...

    def __enter__(self) -> EngineHandle: ...

    def __exit__(self, *exc: object) -> None: ...


# the methods a client may call, and those it may retry after a broken connection
API_METHODS = frozenset(name for name, value in vars(EngineAPI).items()
                        if callable(value) and not name.startswith("_"))
IDEMPOTENT_METHODS = frozenset(name for name in API_METHODS
                               if getattr(vars(EngineAPI)[name], "__codevm_idempotent__", False))

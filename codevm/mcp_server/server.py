"""The MCP server: tools, resources and prompts -> Engine calls, nothing else.

Started by `codevm mcp`; logs go to stderr (stdout is the wire).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from codevm.api import CORE_BLOCKS, TEXT_CAPS, EngineAPI, Progress, to_dict
from codevm.errors import CodevmError
from codevm.mcp_server import tools

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

INSTRUCTIONS = """codevm is a persistent, local memory of this codebase: a code-aware index
(search_code, find_symbol, find_references, outline, read_code), notes that survive
sessions (remember, recall, forget), core memory blocks (core_memory,
core_memory_update) and past conversations (conversation_search). Search before reading
whole files; remember what you learn that the next session should know."""


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors reach the client as tool errors with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CodevmError as e:
            raise ToolError(str(e)) from None
        except UnicodeError as e:
            raise ToolError(f"invalid text: {e}") from None

    return wrapper


Query = Annotated[str, Field(description="words, identifiers or symbol names", max_length=TEXT_CAPS["query"])]
K = Annotated[int, Field(description="number of results", ge=1, le=tools.MAX_K)]
Offset = Annotated[int, Field(description="skip this many results (from next_offset)", ge=0)]
MaxChars = Annotated[int, Field(description="cap on the size of the result",
                                ge=200, le=tools.MAX_CHARS)]
PathArg = Annotated[str, Field(description="file path, relative to the project root")]


class CodevmMCPServer(MCPServer):
    """Arguments that fail their schema get one line that says which and why (the SDK's
    own message is pydantic's, several lines with a link and the rejected value echoed)."""

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context | None = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            cause = e.__cause__
            if isinstance(cause, ValidationError) and cause.errors():
                first = cause.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "arguments"
                raise ToolError(f"{name}: {where}: {first['msg']}") from None
            raise


def build_server(engine: EngineAPI) -> MCPServer:
    server = CodevmMCPServer(name="codevm", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    @_errors
    def search_code(query: Query, k: K = 10,
                    language: Annotated[str | None, Field(description="only this language")] = None,
                    path_glob: Annotated[str | None, Field(description="only paths matching")] = None,
                    kind: Annotated[str | None, Field(description="function, method, class, ...")] = None,
                    offset: Offset = 0, max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> dict:
        """Ranked code search: hits with path, lines, symbol, snippet and an id for read_code."""
        return tools.search_code(engine, query, k, language, path_glob, kind, offset, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def find_symbol(name: Annotated[str, Field(description="name or Class.method")]) -> dict:
        """Where a symbol is defined."""
        return tools.find_symbol(engine, name)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def find_references(name: Annotated[str, Field(description="name or Class.method")],
                        offset: Offset = 0, max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> dict:
        """Who calls or imports a symbol."""
        return tools.find_references(engine, name, offset, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def read_code(path: Annotated[str | None, Field(description="file path")] = None,
                  start_line: Annotated[int | None, Field(ge=1)] = None,
                  end_line: Annotated[int | None, Field(ge=1)] = None,
                  chunk_id: Annotated[int | None, Field(description="id from search_code")] = None,
                  max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> dict:
        """Lines of a project file (or the code of a search hit), confined to the project."""
        return tools.read_code(engine, path, start_line, end_line, chunk_id, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def outline(path: PathArg) -> dict:
        """The symbols of a file, in order."""
        return tools.outline(engine, path)

    @server.tool(annotations=WRITES)
    @_errors
    def remember(text: Annotated[str, Field(description="the note", max_length=TEXT_CAPS["text"])],
                 tags: Annotated[list[str] | None, Field(description="tags")] = None,
                 path: Annotated[str | None, Field(description="file the note is about")] = None,
                 symbol: Annotated[str | None, Field(description="symbol in that file")] = None) -> dict:
        """Save a note for later sessions (anchored notes go stale when their code changes)."""
        return tools.remember(engine, text, tags, path, symbol)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def recall(query: Query, k: K = 10) -> dict:
        """Search saved notes."""
        return tools.recall(engine, query, k)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    @_errors
    def forget(note_id: Annotated[int, Field(description="id of the note")]) -> dict:
        """Delete a note."""
        return tools.forget(engine, note_id)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def core_memory() -> dict:
        """The core memory blocks (project, user, task)."""
        return tools.core_memory(engine)

    @server.tool(annotations=WRITES)
    @_errors
    def core_memory_update(block: Annotated[str, Field(description="project, user or task")],
                           text: Annotated[str, Field(description="new text", max_length=4000)],
                           mode: Annotated[str, Field(description="replace or append")] = "replace") -> dict:
        """Replace or append to a core memory block."""
        return tools.core_memory_update(engine, block, text, mode)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def conversation_search(query: Query, k: K = 10) -> dict:
        """Search past conversations with codevm's local model."""
        return tools.conversation_search(engine, query, k)

    @server.tool(annotations=READ_ONLY)
    async def ask(ctx: Context,
                  question: Annotated[str, Field(description="the question", max_length=TEXT_CAPS["question"])],
                  session: Annotated[str | None, Field(description="session to continue")] = None,
                  max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> dict:
        """The local model's answer; without one, the code pages codevm selected. Progress
        notifications say what the model is doing (reading its prompt can take a minute)."""
        steps = 0

        def status(message: str) -> None:
            nonlocal steps
            steps += 1
            anyio.from_thread.run(ctx.report_progress, steps, None, message)

        def run() -> dict:
            return _errors(tools.ask)(engine, question, session, max_chars, status)

        return await anyio.to_thread.run_sync(run)

    @server.tool(annotations=READ_ONLY)
    @_errors
    def index_status() -> dict:
        """Files, chunks, languages, skipped files and the last index time."""
        return tools.index_status(engine)

    @server.tool(annotations=WRITES)
    async def reindex(ctx: Context,
                      paths: Annotated[list[str] | None, Field(description="only these")] = None) -> dict:
        """Bring the index up to date (with progress notifications)."""

        def progress(p: Progress) -> None:
            if p.phase == "indexing" and p.total:
                anyio.from_thread.run(ctx.report_progress, p.done, p.total,
                                      f"{p.done}/{p.total} files, {p.chunks} chunks")

        def run() -> dict:
            try:
                return to_dict(engine.index(paths, progress))  # type: ignore[return-value]
            except CodevmError as e:
                raise ToolError(str(e)) from None

        return await anyio.to_thread.run_sync(run)

    def block_reader(label: str) -> Callable[[], str]:
        def read_block() -> str:
            return engine.core_memory_block(label).value
        return read_block

    for label in CORE_BLOCKS:
        server.resource(f"codevm://core/{label}", name=f"core-{label}",
                        description=f"core memory block '{label}': {CORE_BLOCKS[label][1]}",
                        mime_type="text/plain")(block_reader(label))

    @server.resource("codevm://status", name="status", mime_type="application/json")
    def status_resource() -> dict:
        return tools.index_status(engine)

    @server.prompt(description="Onboard an assistant to this project and codevm's tools")
    def onboard() -> str:
        st = engine.status()
        blocks = "\n".join(f"- {b.label}: {b.value or '(empty)'}" for b in engine.core_memory())
        languages = ", ".join(f"{k} ({v})" for k, v in list(st.languages.items())[:8])
        return (f"You are working in {st.root}: {st.files} files indexed ({languages}).\n"
                f"Core memory:\n{blocks}\n\n{INSTRUCTIONS}\nStart with recall and search_code.")

    @server.prompt(description="Explain a symbol: its definition, callers and notes")
    def explain_symbol(name: str) -> str:
        return (f"Explain `{name}` in this codebase. Use find_symbol to locate it, read_code to "
                f"read it, find_references for its callers, and recall for notes about it. "
                f"Cite path:lines.")

    return server

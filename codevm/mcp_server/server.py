"""The MCP server: tools, resources and prompts -> Engine calls, nothing else.

Started by `codevm mcp`; logs go to stderr (stdout is the wire).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from codevm import __version__
from codevm.api import CORE_BLOCKS, MAX_CONTEXT_TOKENS, TEXT_CAPS, EngineAPI, Progress
from codevm.errors import CodevmError
from codevm.mcp_server import tools

READ_ONLY = ToolAnnotations(read_only_hint=True)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False)

INSTRUCTIONS = """codevm: a local index and a persistent memory of this codebase.
Work like this: context_for(task) gives the code most relevant to a task or issue in one
call (paste the issue as it is). Or search_code (words; the top hit comes with its code)
and find_symbol (exact names, Class.method); then read_code (by symbol, path and lines,
or a hit's id) and find_references. recall notes first; remember what the next session
should know. Results fit max_chars; has_more/next_offset page on."""

KINDS = Literal["function", "method", "class", "interface", "enum", "module", "type", "impl", "macro"]
LANGUAGES = Literal["python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "csharp",
                    "ruby", "php", "kotlin", "swift", "scala", "bash", "lua", "markdown"]
BLOCKS = Literal["project", "user", "task"]


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """Domain errors and undecodable text reach the client as tool errors with their message."""
    try:
        yield
    except CodevmError as e:
        raise ToolError(str(e)) from None
    except UnicodeError as e:
        raise ToolError(f"invalid text: {e}") from None


def _tool(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A tool body that returns (typed result, text), sync or async -> a tool that sends
    the result as structured content and the text as its content; domain errors reach the
    client as tool errors with their message. The tool's signature is the body's with the
    typed result as its return annotation: the SDK publishes that as the output schema."""
    signature = inspect.signature(fn, eval_str=True)
    result_type = typing.get_args(signature.return_annotation)[0]  # tuple[Result, str]

    def sent(outcome: tuple[Any, str]) -> CallToolResult:
        result, text = outcome
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=result)

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with _tool_errors():
                return sent(await fn(*args, **kwargs))

        wrapper: Callable[..., Any] = run_async
    else:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _tool_errors():
                return sent(fn(*args, **kwargs))

        wrapper = run
    wrapper.__signature__ = signature.replace(return_annotation=result_type)  # type: ignore[attr-defined]
    return wrapper


Query = Annotated[str, Field(description="words the code would use, identifiers, or an error message",
                             max_length=TEXT_CAPS["query"])]
K = Annotated[int, Field(ge=1, le=tools.MAX_K)]
Offset = Annotated[int, Field(description="next_offset of the previous page", ge=0)]
MaxChars = Annotated[int, Field(ge=200, le=tools.MAX_CHARS)]
Name = Annotated[str, Field(description="exact name or Class.method", max_length=TEXT_CAPS["name"])]


def _lean(schema: Any) -> Any:
    """A JSON schema as short as it can say the same: without pydantic's titles and null
    defaults, `X or null` as one type list (a host reads every token of tools/list)."""
    if isinstance(schema, list):
        return [_lean(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _lean(v) for k, v in schema.items()
           if not (k == "title" and isinstance(v, str)) and not (k == "default" and v is None)
           and k != "maxLength"}  # caps are enforced all the same, with a message that says so
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if isinstance(other.get("type"), str) and "$ref" not in other:
            del out["anyOf"]
            out.update({**other, "type": [other["type"], "null"]})
    return out


def _lean_output(schema: Any) -> Any:
    """An output schema `_lean`, and without `required`: every field is always sent but the
    optional ones (a hit's code, a definition's members), which the text says."""
    if isinstance(schema, list):
        return [_lean_output(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: _lean_output(v) for k, v in _lean(schema).items() if k != "required"}


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
    server = CodevmMCPServer(name="codevm", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    @_tool
    def context_for(task: Annotated[str, Field(description="the question, task or issue text, as it is",
                                               max_length=TEXT_CAPS["question"])],
                    max_tokens: Annotated[int, Field(ge=500, le=MAX_CONTEXT_TOKENS)] = 4000,
                    ) -> tuple[tools.ContextResult, str]:
        """The code most relevant to a task in one call: search hits, what the text names and
        their callers, ranked, within max_tokens. Start here for an issue or a question."""
        return tools.context_for(engine, task, max_tokens)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def search_code(query: Query, k: K = 10, language: LANGUAGES | None = None,
                    path_glob: Annotated[str | None, Field(description="e.g. src/**/*.py")] = None,
                    kind: KINDS | None = None, offset: Offset = 0,
                    max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> tuple[tools.SearchResult, str]:
        """Code search by words and identifiers (and meaning, if an embedder runs: see
        `ranking`). The top hit comes with its code, the others with an id for read_code.
        For an exact name, find_symbol is cheaper."""
        return tools.search_code(engine, query, k, language, path_glob, kind, offset, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def find_symbol(name: Annotated[str | None, Field(description="exact name or Class.method")] = None,
                    path: Annotated[str | None, Field(description="a file: its definitions")] = None,
                    include_body: bool = False,
                    depth: Annotated[int, Field(description="1: a class with its members' signatures",
                                                ge=0, le=3)] = 0,
                    max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> tuple[tools.SymbolResult, str]:
        """Where a name is defined (exact: `parse`, `Request.send`), optionally with its code;
        or, by path, a file's outline. A miss returns near names in `suggestions`; search_code
        finds code by words."""
        return tools.find_symbol(engine, name, path, include_body, depth, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def find_references(name: Name, offset: Offset = 0,
                        max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> tuple[tools.ReferencesResult, str]:
        """Where a name is called or imported (path:line and the enclosing definition)."""
        return tools.find_references(engine, name, offset, max_chars)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def read_code(symbol: Annotated[str | None, Field(description="a defined name: reads its code")] = None,
                  path: Annotated[str | None, Field(description="a file, relative to the project")] = None,
                  start_line: Annotated[int | None, Field(ge=1)] = None,
                  end_line: Annotated[int | None, Field(ge=1)] = None,
                  chunk_id: Annotated[int | None, Field(description="id of a search hit")] = None,
                  max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> tuple[tools.Code, str]:
        """Code by symbol name, by path and lines, or by a search hit's id. Long code comes
        in pages: has_more and next_start_line."""
        return tools.read_code(engine, path, start_line, end_line, chunk_id, symbol, max_chars)

    @server.tool(annotations=WRITES)
    @_tool
    def remember(text: Annotated[str, Field(max_length=TEXT_CAPS["text"])],
                 tags: list[str] | None = None,
                 path: Annotated[str | None, Field(description="file it is about")] = None,
                 symbol: Annotated[str | None, Field(description="definition it is about")] = None,
                 ) -> tuple[tools.NoteId, str]:
        """Keep a note for later sessions (a fact, a decision, a pitfall). Anchored to a path
        or symbol, it goes stale when that code changes."""
        return tools.remember(engine, text, tags, path, symbol)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def recall(query: Annotated[str, Field(max_length=TEXT_CAPS["query"])],
               k: K = 10, source: Literal["notes", "conversations"] = "notes",
               max_chars: MaxChars = tools.DEFAULT_MAX_CHARS) -> tuple[tools.RecallResult, str]:
        """Notes kept by earlier sessions (check before you explore), or past conversations
        with codevm's local model, that match the query."""
        return tools.recall(engine, query, k, source, max_chars)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    @_tool
    def forget(note_id: int) -> tuple[tools.NoteId, str]:
        """Delete a note (wrong or no longer true)."""
        return tools.forget(engine, note_id)

    @server.tool(annotations=WRITES)
    @_tool
    def core_memory(block: BLOCKS | None = None, text: Annotated[str | None, Field(max_length=4000)] = None,
                    mode: Literal["replace", "append"] = "replace",
                    old: Annotated[str | None, Field(description="replace only this text")] = None,
                    ) -> tuple[tools.BlocksResult, str]:
        """The core memory blocks: project (what it is, conventions), user, task (now). With
        block and text, rewrites or adds to that block first (each has a size limit)."""
        return tools.core_memory(engine, block, text, mode, old)

    @server.tool(annotations=READ_ONLY)
    @_tool
    async def ask(ctx: Context,
                  question: Annotated[str, Field(max_length=TEXT_CAPS["question"])],
                  session: Annotated[str | None, Field(description="session_id to continue")] = None,
                  ) -> tuple[tools.AskToolResult, str]:
        """Ask codevm's local model (slow: minutes on a laptop; progress is reported)."""
        steps = 0

        def status(message: str) -> None:
            nonlocal steps
            steps += 1
            anyio.from_thread.run(ctx.report_progress, steps, None, message)

        def run() -> tuple[tools.AskToolResult, str]:
            return tools.ask(engine, question, session, status)

        return await anyio.to_thread.run_sync(run)

    @server.tool(annotations=READ_ONLY)
    @_tool
    def index_status(detail: Annotated[bool, Field(description="add paths and the service's pid")] = False,
                     ) -> tuple[tools.StatusResult, str]:
        """What is indexed, how search ranks now, and whether the index follows file changes."""
        return tools.index_status(engine, detail)

    @server.tool(annotations=WRITES)
    @_tool
    async def reindex(ctx: Context,
                      paths: Annotated[list[str] | None, Field(description="only these")] = None,
                      ) -> tuple[tools.IndexResult, str]:
        """Bring the index up to date now (with progress)."""

        def progress(p: Progress) -> None:
            if p.phase == "indexing" and p.total:
                anyio.from_thread.run(ctx.report_progress, p.done, p.total,
                                      f"{p.done}/{p.total} files, {p.chunks} chunks")

        def run() -> tuple[tools.IndexResult, str]:
            return tools.reindex_result(engine.index(paths, progress))

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
        return dict(tools.index_status(engine)[0])

    @server.prompt(description="Onboard an assistant to this project and codevm's tools")
    def onboard() -> str:
        st = engine.status()
        blocks = "\n".join(f"- {b.label}: {b.value or '(empty)'}" for b in engine.core_memory())
        languages = ", ".join(f"{k} ({v})" for k, v in list(st.languages.items())[:8])
        return (f"You are working in {st.root}: {st.files} files indexed ({languages}).\n"
                f"Core memory:\n{blocks}\n\n{INSTRUCTIONS}")

    @server.prompt(description="Explain a symbol: its definition, callers and notes")
    def explain_symbol(name: str) -> str:
        return (f"Explain `{name}` in this codebase. Use find_symbol (include_body) to read it, "
                f"find_references for its callers, and recall for notes about it. Cite path:lines.")

    for tool in server._tool_manager.list_tools():  # noqa: SLF001 - no public way to edit a schema
        tool.description = " ".join((tool.description or "").split())
        tool.parameters = _lean(tool.parameters)
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _lean_output(tool.fn_metadata.output_schema)
    return server

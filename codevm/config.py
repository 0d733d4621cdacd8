"""Settings: defaults < [tool.codevm] in pyproject.toml < .codevm.toml < CODEVM_* environment."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from codevm.errors import InvalidArgument


@dataclass
class Settings:
    max_file_bytes: int = 1024 * 1024  # larger files are skipped
    max_line_chars: int = 2000  # a file with a longer line counts as minified/generated
    max_chunk_tokens: int = 384
    min_chunk_tokens: int = 32  # smaller neighbours are merged
    workers: int = 0  # parser processes; 0 = one per core
    batch_files: int = 400  # files committed per transaction
    ignore: list[str] = field(default_factory=list)  # extra gitignore-style patterns
    # the local model
    model: str = "qwen2.5-coder:7b"  # an Ollama model with tool calling
    ollama_host: str = field(default_factory=lambda: os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434"))
    # an OpenAI-compatible server (llama.cpp, LM Studio, vLLM, LocalAI, Ollama's /v1) at
    # this URL instead of Ollama's own API, e.g. http://127.0.0.1:8080/v1
    model_url: str = ""
    model_api_key: str = ""  # sent as a bearer token to model_url, if the server wants one
    # seconds: to connect; for the prompt to be read (a CPU reads ~25-50 tokens/s); between
    # two tokens of the answer
    model_connect_timeout: float = 10.0
    model_first_token_timeout: float = 600.0
    model_idle_timeout: float = 120.0
    # how `ask` uses the model: "pager" (one answer over the pager's working set: what
    # small models get right), "tools" (the model pages code and memory itself through
    # function calls: for models that drive them), "auto" (what `codevm model check`
    # recorded for this model, else pager)
    ask_mode: str = "auto"
    # read_code / show / the model's open_code also show files the project ignores, secrets
    # (.env, *.pem, ...) and .git internals
    read_ignored: bool = False
    # how a model calls functions in tool mode: "native" (the server's tool calling; calls
    # printed as text are read too), "json" (each reply is one call, constrained to a JSON
    # schema by the server: for models without native tool calling), "auto" (what
    # `codevm model check` found for this model, else native)
    tool_calls: str = "auto"
    num_ctx: int = 8192  # used when the server does not report the model's context size
    answer_reserve: int = 1024  # tokens of num_ctx kept free for the answer
    max_steps: int = 8  # function calls per question
    pager_share: float = 0.5  # share of the budget the working set may take
    # retrieval: weights of each signal in the fusion (0 turns one off)
    # (defaults from bench/fusion.py on SWE-bench Lite)
    weight_lexical: float = 1.0
    weight_named: float = 0.2
    weight_graph: float = 1.0
    weight_vector: float = 0.5  # with all-MiniLM-L6-v2: see the notes of issue 7
    weight_text: float = 0.2  # scales text chunks (docs, prose, config) against code
    weight_file: float = 0.5  # share of its file's next best hits that a file's best gains
    # how the pager orders candidates: "learned" (a model trained on commits mined from
    # git history, bench/ranker.py) or "fusion" (the weights above, with a file prior)
    ranker: str = "learned"
    # dense vectors: "auto" uses Ollama's embed_model when that Ollama server has it,
    # "ollama" and "local" (in-process sentence-transformers, the local-embeddings extra)
    # always, "off" never
    embedder: str = "auto"
    embed_model: str = ""  # name or local path; "" = nomic-embed-text / all-MiniLM-L6-v2
    embed_batch: int = 32  # chunks per request and per transaction
    # in-process model: longer chunks are cut (Ollama: at its own context). 128 tokens, the
    # length all-MiniLM-L6-v2 was trained at, embed 2.2x as many chunks/s as 256 here
    embed_max_tokens: int = 128
    # the engine service (one process per project owns the database)
    service: bool = True  # False: every command opens the database in its own process
    service_idle_seconds: int = 600  # the service exits after this long without clients
    watch: bool = True  # the service re-indexes files as they change on disk
    watch_debounce_ms: int = 300

    @classmethod
    def load(cls, root: Path | None, env: dict[str, str] | None = None) -> Settings:
        values: dict[str, object] = {}
        if root is not None:
            pyproject = root / "pyproject.toml"
            if pyproject.is_file():
                values.update(_read_toml(pyproject).get("tool", {}).get("codevm", {}))
            local = root / ".codevm.toml"
            if local.is_file():
                values.update(_read_toml(local))
        environ = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        for name in known:
            raw = environ.get(f"CODEVM_{name.upper()}")
            if raw is not None:
                values[name] = raw.split(",") if name == "ignore" else raw
        settings = cls()
        for name, value in values.items():
            if name not in known:
                continue  # unknown keys belong to later versions or other tools
            default = getattr(settings, name)
            try:
                if isinstance(default, list):
                    value = [str(v) for v in (value if isinstance(value, list) else [value])]
                elif isinstance(default, bool):
                    value = _boolean(value)
                else:
                    value = type(default)(value)
            except (TypeError, ValueError):
                raise InvalidArgument(
                    f"setting {name!r} must be a {type(default).__name__}, got {value!r}"
                ) from None
            setattr(settings, name, value)
        return settings


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"cannot read settings from {path}: {e}") from None

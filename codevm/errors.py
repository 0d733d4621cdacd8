"""Domain errors. Each edge (CLI, LSP, MCP) turns them into its own form of one clear line."""

from __future__ import annotations


class CodevmError(Exception):
    """Base of every error codevm reports to a user; the message says what to do."""


class ProjectNotFound(CodevmError):
    pass


class NotIndexed(CodevmError):
    pass


class InvalidArgument(CodevmError):
    pass


class PathOutsideProject(InvalidArgument):
    pass


class IndexBusy(CodevmError):
    pass


class IndexUnreadable(CodevmError):
    """The database file is truncated or corrupt (`codevm index --rebuild` makes a new one)."""


class ModelUnavailable(CodevmError):
    """No Ollama server answered."""


class ModelMissing(CodevmError):
    """Ollama runs but does not have the model."""


class ModelTimeout(ModelUnavailable):
    """The model's server did not answer within one of the time limits (which one: the
    message says)."""


class ServiceUnavailable(CodevmError):
    """The project's engine service could not be reached or started."""


class EmbeddingUnavailable(CodevmError):
    """The configured embedder cannot make vectors (search goes on without them)."""

"""Model backends: Ollama's native API and any OpenAI-compatible server, behind one
interface (`ChatModel`), chosen by settings: `model_url` set -> OpenAI-compatible."""

from __future__ import annotations

from codevm.config import Settings
from codevm.models.base import ChatModel, Limits, ModelReply
from codevm.models.ollama_api import OllamaModel
from codevm.models.openai_api import OpenAIModel

__all__ = ["ChatModel", "Limits", "ModelReply", "OllamaModel", "OpenAIModel", "limits_of", "make_model"]


def limits_of(settings: Settings, max_tokens: int) -> Limits:
    return Limits(connect=settings.model_connect_timeout,
                  first_token=settings.model_first_token_timeout,
                  idle=settings.model_idle_timeout, max_tokens=max_tokens)


def make_model(settings: Settings) -> ChatModel:
    """The configured model's backend."""
    limits = limits_of(settings, settings.answer_reserve)
    if settings.model_url.strip():
        return OpenAIModel(settings.model, settings.model_url.strip(), limits, settings.model_api_key)
    return OllamaModel(settings.model, settings.ollama_host, limits)

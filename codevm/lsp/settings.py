"""The editor's settings (initializationOptions, workspace/didChangeConfiguration, section
`codevm`) -> codevm's Settings. Invalid values are reported and the defaults kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codevm.api import MIN_BUDGET
from codevm.config import Settings


def editor_settings(root: Path, options: Any) -> tuple[Settings, int | None, list[str]]:
    """The project's settings with the editor's on top, the editor's answer budget (None:
    the default), and what was wrong with the options (one phrase each)."""
    settings = Settings.load(root)
    if not isinstance(options, dict):
        return settings, None, []
    problems = []
    budget = None
    for key, attr, kind in (("model", "model", str), ("ollamaHost", "ollama_host", str),
                            ("numCtx", "num_ctx", int), ("ignore", "ignore", list)):
        if key in options:
            value = options[key]
            if isinstance(value, kind) and not isinstance(value, bool):
                setattr(settings, attr, value)
            else:
                problems.append(f"{key} must be a {kind.__name__}")
    if "budget" in options:
        value = options["budget"]
        if isinstance(value, int) and not isinstance(value, bool) and value >= MIN_BUDGET:
            budget = value
        else:
            problems.append(f"budget must be a number of tokens >= {MIN_BUDGET}")
    return settings, budget, problems

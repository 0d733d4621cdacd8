"""numpy, imported on first use: `codevm index` with nothing to do, and the commands that
never rank vectors, do not pay its ~0.1 s of start-up (u-boot's no-change re-index is
held to 1 s)."""

from __future__ import annotations

import importlib
from typing import Any


class _Lazy:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._name)
        return getattr(module, attribute)


numpy: Any = _Lazy("numpy")

"""The per-project engine service: one process owns the database, front ends are its
clients (client.py starts it when none runs). See server.py.

Names are imported on first use: the CLI's quick path (codevm/quick.py) imports
codevm.service.wire alone, not the client with the engine's API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codevm.service.client import RemoteEngine, open_engine, service_info, stop_service
    from codevm.service.files import ServiceFiles, lock_held

_WHERE = {"RemoteEngine": "client", "open_engine": "client", "service_info": "client",
          "stop_service": "client", "ServiceFiles": "files", "lock_held": "files"}

__all__ = ["RemoteEngine", "ServiceFiles", "lock_held", "open_engine", "service_info",
           "stop_service"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"codevm.service.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'codevm.service' has no attribute {name!r}")

"""The per-project engine service: one process owns the database, front ends are its
clients (client.py starts it when none runs). See server.py."""

from codevm.service.client import RemoteEngine, open_engine, service_info, stop_service
from codevm.service.files import ServiceFiles, lock_held

__all__ = ["RemoteEngine", "ServiceFiles", "lock_held", "open_engine", "service_info",
           "stop_service"]

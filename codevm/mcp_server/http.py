"""MCP over streamable HTTP, for assistants that connect to a URL.

Anyone who can reach the port could otherwise read the project's code and notes and
delete notes, so every request must carry the project's bearer token
(`Authorization: Bearer <token>`, the streamable-HTTP transport's auth header). The token
is made once per project, kept owner-only in its data folder and shown when it is made.
Host and Origin are checked on any bind address (DNS rebinding).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from codevm.project import data_folder

TOKEN_FILE = "mcp-token"

Scope = dict[str, Any]


def project_token(root: Path) -> tuple[str, Path, bool]:
    """The project's token, where it is kept, and whether it was made just now."""
    path = data_folder(root) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, path, False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, path, True


class BearerAuth:
    """ASGI middleware: an HTTP request without the token gets 401 and goes no further."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # the lifespan of the session manager
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        body = b'{"error": "unauthorized: send Authorization: Bearer <token> (codevm mcp prints where it is)"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="codevm"'),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve_http(server: Any, host: str, port: int, token: str) -> None:
    """Serve `server` (an MCPServer) on host:port, every request checked for `token`."""
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    names = {host, "127.0.0.1", "localhost", "[::1]"}
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:*" for name in names] + sorted(names),
        allowed_origins=[f"http://{name}:*" for name in names])
    app = server.streamable_http_app(host=host, transport_security=security)
    uvicorn.run(BearerAuth(app, token), host=host, port=port, log_level="warning")

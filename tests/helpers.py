"""Helpers the tests share: waiting on a condition with a timeout (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_SECONDS = 0.05


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Block until `condition()` is true; fail the test saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """`wait_until` inside an event loop (the loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)


async def await_until(condition: Callable[[], Awaitable[object]], what: str,
                      timeout: float = 30.0) -> None:
    """Like `wait_for`, for a condition that must be awaited (a request to a server)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)

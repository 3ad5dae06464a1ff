"""Process groups: every child runs in its own, so a stop reaches HAProxy's workers and
Ollama's runners too. The one way a group is signalled, and the one way it is stopped."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def stop_group(pgid: int, sig: int, timeout: float, gone: Callable[[], Awaitable[Any]]) -> bool:
    """`sig` to the group, SIGKILL to it if `gone()` has not finished within `timeout`. True
    when it had to be killed."""
    signal_group(pgid, sig)
    try:
        await asyncio.wait_for(gone(), timeout)
        return False
    except TimeoutError:
        signal_group(pgid, signal.SIGKILL)
        await gone()
        return True

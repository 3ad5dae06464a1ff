"""A child's stdout and stderr: read as lines into `output` log events, the last few kept so
that a failed start can say what the program printed before it died."""

from __future__ import annotations

import asyncio
from collections import deque

from ai_server.base import logs

# A program that never prints a newline must not grow a line without bound.
MAX_LINE = 16384


class Output:
    def __init__(self, process: str, keep: int = 5) -> None:
        self.process = process
        self.last: deque[str] = deque(maxlen=keep)
        self._log = logs.get()

    async def pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Every line of `stream` (named "stdout" or "stderr"), until it closes."""
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._emit(name, line)
            if len(pending) > MAX_LINE:
                self._emit(name, pending)
                pending = b""
        if pending:
            self._emit(name, pending)

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        if not line:
            return
        self.last.append(line)
        self._log.info("output", process=self.process, stream=stream, line=line)

"""structlog set-up (JSON lines to a rotated file, readable console on a TTY) and `tail`.

After structlog's production recipe: one processor chain, stdlib logging routed through it so
library warnings land in the same file, and no logger caching, so tests can reconfigure.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import structlog

# Not read by any renderer here: LogRecord need not look up the caller's frame, thread,
# process or multiprocessing name for every record (the logging HOWTO's "Optimization"
# names these switches, _srcfile included).
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class CountedRotatingHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that keeps the file's size as it writes.

    The stdlib's check formats each record a second time and stats and seeks the file for
    it (Python 3.11): 60% of the supervisor's cost of logging, which it pays twice for every
    request (its `request` event and the engine's own line). The supervisor is the file's one
    writer, so what it wrote is the file's size. A file that is not a regular one (/dev/null)
    is never rotated, as in the stdlib.
    """

    def __init__(self, filename: Path, maxBytes: int, backupCount: int) -> None:
        super().__init__(filename, maxBytes=maxBytes, backupCount=backupCount, encoding="utf-8")
        self.size = self.stream.seek(0, os.SEEK_END) if self.stream is not None else 0
        self.regular = os.path.isfile(filename)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + self.terminator).encode("utf-8", "backslashreplace")
            if self.maxBytes > 0 and self.regular and self.size > 0 and self.size + len(data) > self.maxBytes:
                self.doRollover()
                self.size = 0
            if self.stream is None:
                self.stream = self._open()
            self.stream.buffer.write(data)
            self.stream.flush()
            self.size += len(data)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure(log_file: Path | None, max_bytes: int = 10 << 20, backups: int = 5,
              stderr: TextIO | None = None, level: int = logging.INFO) -> None:
    """Route structlog and stdlib logging to `log_file` (JSON) and stderr.

    stderr gets the readable console rendering when it is a TTY; otherwise only warnings and
    errors, as JSON, so a service manager's own log does not duplicate the file.
    """
    stderr = stderr or sys.stderr
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    json_formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
        foreign_pre_chain=_SHARED,
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = CountedRotatingHandler(log_file, max_bytes, backups)
        file_handler.setFormatter(json_formatter)
        root.addHandler(file_handler)
    console = logging.StreamHandler(stderr)
    if stderr.isatty():
        console.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=True)],
            foreign_pre_chain=_SHARED))
    else:
        console.setLevel(logging.WARNING)
        console.setFormatter(json_formatter)
    root.addHandler(console)
    # watchfiles reports every batch of changes at INFO; we log our own reload events.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def get(name: str = "ai_server") -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


# ---------------------------------------------------------------------------------------------
# Reading the log back: `ai-server tail`.


def _matches(record: dict[str, Any], name: str | None, client: str | None = None) -> bool:
    if client is not None and record.get("who") != client:
        return False
    return name is None or record.get("process") == name


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def last_lines(log_file: Path, count: int, name: str | None, client: str | None = None) -> list[str]:
    """The last `count` lines (of process `name`, if given), oldest first, across rotations."""
    found: deque[str] = deque(maxlen=count)
    if count <= 0:
        return []
    rotated = sorted(log_file.parent.glob(log_file.name + ".*"),
                     key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in [*rotated, log_file]:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    record = _parse(line)
                    if record is not None and _matches(record, name, client):
                        found.append(line.rstrip("\n"))
        except FileNotFoundError:
            continue
    return list(found)


def follow(log_file: Path, name: str | None, client: str | None = None, poll: float = 0.2) -> Iterator[str]:
    """New lines as they are written, surviving rotation. Runs until interrupted."""
    handle = None
    inode = None
    while True:
        if handle is None:
            try:
                handle = log_file.open(encoding="utf-8", errors="replace")
                inode = os.fstat(handle.fileno()).st_ino
                handle.seek(0, os.SEEK_END)
            except FileNotFoundError:
                time.sleep(poll)
                continue
        line = handle.readline()
        if line.endswith("\n"):
            record = _parse(line)
            if record is not None and _matches(record, name, client):
                yield line.rstrip("\n")
            continue
        try:
            rotated = os.stat(log_file).st_ino != inode
        except FileNotFoundError:
            rotated = True
        if rotated:
            handle.close()
            handle = None
            # The rotated file was read to its end above; start the new one from the top.
            try:
                handle = log_file.open(encoding="utf-8", errors="replace")
                inode = os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                pass
            continue
        time.sleep(poll)


_SKIP = {"timestamp", "level", "event", "process"}


def render(line: str) -> str:
    """One JSON log line as a person reads it."""
    record = _parse(line)
    if record is None:
        return line
    stamp = str(record.get("timestamp", ""))[:19].replace("T", " ")
    level = str(record.get("level", "")).ljust(7)
    event = record.get("event", "")
    process = record.get("process")
    head = f"{stamp} {level} {process + ' ' if process else ''}"
    if event == "output":
        return f"{head}| {record.get('line', '')}"
    if event == "state":
        return f"{head}{record.get('from')} -> {record.get('to')}: {record.get('reason', '')}"
    if event == "request":
        return (f"{head}{record.get('who', 'unknown')}@{record.get('client')} {record.get('method')} {record.get('path')} "
                f"{record.get('status')} {record.get('t_total_ms')}ms {record.get('bytes_out')}B")
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in _SKIP)
    return f"{head}{event} {rest}".rstrip()

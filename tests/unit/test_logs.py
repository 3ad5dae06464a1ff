"""The supervisor's log file handler: rotation by a size it counts as it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ai_server.base.logs import CountedRotatingHandler


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)


def test_it_rotates_at_the_size_it_counted_and_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "ai-server.jsonl"
    handler = CountedRotatingHandler(path, maxBytes=1000, backupCount=100)
    # Two-byte characters: the count is of bytes, not characters.
    lines = [json.dumps({"n": i, "pad": "é" * 40}, ensure_ascii=False) for i in range(100)]
    for line in lines:
        handler.emit(record(line))
    handler.close()
    files = [path, *sorted(tmp_path.glob("ai-server.jsonl.*"), key=lambda p: int(p.suffix[1:]))]
    assert len(files) > 5
    for f in files:
        assert f.stat().st_size <= 1000, f
    written = [line for f in reversed(files) for line in f.read_text(encoding="utf-8").splitlines()]
    assert written == lines


def test_the_count_starts_from_what_the_file_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "ai-server.jsonl"
    path.write_bytes(b"x" * 990 + b"\n")
    handler = CountedRotatingHandler(path, maxBytes=1000, backupCount=2)
    handler.emit(record("a line that does not fit"))
    handler.close()
    assert (tmp_path / "ai-server.jsonl.1").read_bytes() == b"x" * 990 + b"\n"
    assert path.read_text() == "a line that does not fit\n"


def test_a_file_that_is_not_regular_is_never_rotated(tmp_path: Path) -> None:
    path = tmp_path / "ai-server.jsonl"
    path.symlink_to("/dev/null")     # a link, so that a rotation would move the link, not the device
    handler = CountedRotatingHandler(path, maxBytes=10, backupCount=2)
    for _ in range(5):
        handler.emit(record("longer than ten bytes"))
    handler.close()
    assert path.is_symlink() and not (tmp_path / "ai-server.jsonl.1").exists()

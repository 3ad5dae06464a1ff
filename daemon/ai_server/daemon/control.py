"""The control socket: newline-delimited JSON over a unix socket, mode 0600.

A request is one line, {"command": ..., "args": {...}}. The answer is zero or more progress
lines, {"progress": ...}, then one final line with "ok": true or false.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from ai_server.base.errors import ControlError, NotRunning

Handler = Callable[[str, dict[str, Any]], AsyncIterator[dict[str, Any]]]
_LIMIT = 1 << 20


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    path.unlink(missing_ok=True)  # we hold the state dir's lock: a socket here is stale

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                command, args = str(request["command"]), dict(request.get("args") or {})
            except (ValueError, KeyError, TypeError):
                writer.write(b'{"ok": false, "error": "malformed request"}\n')
                return
            async for message in handler(command, args):
                writer.write(json.dumps(message).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path), limit=_LIMIT)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def stream(path: Path, command: str, args: dict[str, Any] | None = None,
           timeout: float | None = 30.0) -> Iterator[dict[str, Any]]:
    """Send one request; yield each progress line and finally the answer (or raise)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise NotRunning(f"ai-server is not running (no supervisor answers on {path})") from None
    except OSError as err:
        raise ControlError(f"cannot reach the supervisor on {path}: {err.strerror or err}") from None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        # The supervisor's own socket is ours and 0600; anything else may be somebody's trap.
        raise ControlError(f"{path} is not owned by you (uid {info.st_uid}) or not a socket: not talking to it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NotRunning(f"ai-server is not running (no supervisor answers on {path})") from None
    except PermissionError:
        sock.close()
        raise ControlError(f"not allowed to use {path}: run as the user who runs ai-server") from None
    except OSError as err:
        sock.close()
        raise ControlError(f"cannot reach the supervisor on {path}: {err.strerror or err}") from None
    with sock, sock.makefile("rwb") as handle:
        try:
            handle.write(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
            handle.flush()
            for raw in handle:
                message = json.loads(raw)
                yield message
                if "ok" in message:
                    if not message["ok"]:
                        raise ControlError(str(message.get("error", "the supervisor refused the request")))
                    return
        except TimeoutError:
            raise ControlError(f"the supervisor did not answer {command!r} within {timeout:g}s") from None
        except OSError as err:
            raise ControlError(f"lost the supervisor while waiting for {command!r}: {err}") from None
    raise ControlError(f"the supervisor closed the connection without answering {command!r}")


def request(path: Path, command: str, args: dict[str, Any] | None = None, timeout: float | None = 30.0) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for message in stream(path, command, args, timeout):
        answer = message
    return answer

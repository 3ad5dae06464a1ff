"""HAProxy's runtime API (its stats socket): maps replaced live, server stats read."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from pathlib import Path

from ai_server.base.errors import HaproxyRuntimeError
from ai_server.haproxy.maps import MapFile


def command(stats_socket: Path, text: str, timeout: float = 5.0) -> str:
    """One command (or several, joined by ';') and its answer. HaproxyRuntimeError when the
    socket cannot be reached or goes quiet."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(stats_socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as err:
        raise HaproxyRuntimeError(f"HAProxy's runtime API ({stats_socket.name}): {err.strerror or err}") from None
    return b"".join(chunks).decode("utf-8", "replace")


def swap(stats_socket: Path, maps: Iterable[MapFile]) -> None:
    """Each map's contents replaced atomically in the running worker (prepare/add/commit), in
    the order given. Maps are named by their file name (HAProxy runs with default-path config)."""
    for item in maps:
        answer = command(stats_socket, f"prepare map {item.name}")
        found = re.search(r"New version created: (\d+)", answer)
        if not found:
            raise HaproxyRuntimeError(f"prepare map {item.name}: {answer.strip()}")
        version = found.group(1)
        commands = [f"add map @{version} {item.name} {key} {value}" for key, value in item.entries]
        commands.append(f"commit map @{version} {item.name}")
        answer = command(stats_socket, ";".join(commands)).strip()
        if answer:
            raise HaproxyRuntimeError(f"updating {item.name}: {answer.splitlines()[0]}")


def set_value(stats_socket: Path, name: str, key: str, value: str) -> None:
    answer = command(stats_socket, f"set map {name} {key} {value}").strip()
    if answer:
        raise HaproxyRuntimeError(f"set map {name}: {answer}")


def stats(stats_socket: Path) -> list[dict[str, str]]:
    """`show stat`, one dict per row, by column name (pxname, svname, scur, qcur, status, ...)."""
    text = command(stats_socket, "show stat")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise HaproxyRuntimeError(f"show stat: {text.strip()[:200]}")
    header = lines[0][2:].split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]


def server_stats(stats_socket: Path, backend: str = "engine", server: str = "engine") -> dict[str, str]:
    for row in stats(stats_socket):
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    raise HaproxyRuntimeError(f"show stat: no server {backend}/{server}")


def table(stats_socket: Path, name: str) -> dict[str, dict[str, int]]:
    """`show table NAME`: key -> {"use": streams tracking it, "http_req_rate": ...}."""
    rows: dict[str, dict[str, int]] = {}
    for line in command(stats_socket, f"show table {name}").splitlines():
        found = re.search(r"key=(\S+)\s+use=(\d+)", line)
        if not found:
            continue
        row = {"use": int(found.group(2))}
        for counter, value in re.findall(r"(\w+)\(\d+\)=(\d+)", line):
            row[counter] = int(value)
        rows[found.group(1)] = row
    return rows


def set_ssl_cert(stats_socket: Path, name: str, pem: str) -> None:
    """Replace the certificate HAProxy serves from file `name`, in the running process."""
    answer = command(stats_socket, f"set ssl cert {name} <<\n{pem.strip()}\n")
    if "Transaction" not in answer and "Success" not in answer:
        raise HaproxyRuntimeError(f"set ssl cert {name}: {answer.strip()[:200]}")
    answer = command(stats_socket, f"commit ssl cert {name}")
    if "Success" not in answer:
        raise HaproxyRuntimeError(f"commit ssl cert {name}: {answer.strip()[:200]}")


def _seconds(human: str) -> float:
    """HAProxy's human time ("59s", "1m2s", "2h3m", "1d2h") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", human)))


def oldest_queued(stats_socket: Path, backend: str) -> float:
    """How long the request queued longest in `backend` has waited (seconds; HAProxy counts its
    age in whole seconds). 0 when nothing waits."""
    ages = [0.0]
    for line in command(stats_socket, "show sess").splitlines():
        # A queued stream has no server yet and its server side is in state 2 (SC_ST_QUE).
        if f" be={backend} " in line and " srv=<none> " in line and " scb=[2," in line:
            found = re.search(r" age=(\S+)", line)
            if found:
                ages.append(_seconds(found.group(1)))
    return max(ages)
